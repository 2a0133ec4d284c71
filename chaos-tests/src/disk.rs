//! Small filesystems for the nodes' data dirs, and filling them up: the disk faults.
//!
//! Each node's data dir becomes a tmpfs of a fixed size (root needed, as for the network
//! namespaces). A fault fills it with a filler file, either to the last byte (the node's
//! writes then meet ENOSPC) or to a chosen amount of free space (below the node's
//! `min_free_disk` mark); healing deletes the filler.
//!
//! A data dir can instead be an ext4 filesystem in an image file on a loop device, mounted with
//! `errors=remount-ro`: [`fail_disk`] then raises a filesystem error in the kernel, which turns
//! the filesystem read-only under the running node, as a failing disk does. [`repair_disk`]
//! checks it and mounts it writable again, with what it held. [`slow_down`] throttles one
//! process's writes to such a disk instead, as a worn or overloaded disk is slow: its fsyncs
//! then take tens of milliseconds while every other node's disk stays fast.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use raftmq_storage::DiskSpace;

use crate::netns::run;

const FILLER: &str = "chaos-disk-filler";

/// Mount a tmpfs of `mb` MiB on `dir` (created if missing).
pub fn mount_small_disk(dir: &Path, mb: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir_text = path_text(dir)?;
    let size = format!("size={mb}m");
    run(&["mount", "-t", "tmpfs", "-o", &size, "tmpfs", dir_text])
        .context("harness: small data dirs need root (mount tmpfs)")
}

/// The kind of filesystem a small data dir is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmallDisk {
    /// In memory: fills and frees instantly (the disk-full faults).
    #[default]
    Tmpfs,
    /// ext4 on a loop device: can fail and be repaired ([`fail_disk`], [`repair_disk`]).
    Ext4,
}

/// Mount a small filesystem of `kind` and `mb` MiB on `dir` (created if missing).
pub fn mount(dir: &Path, kind: SmallDisk, mb: u64) -> anyhow::Result<()> {
    match kind {
        SmallDisk::Tmpfs => mount_small_disk(dir, mb),
        SmallDisk::Ext4 => mount_ext4_disk(dir, mb),
    }
}

fn image_of(dir: &Path) -> PathBuf {
    dir.with_extension("ext4")
}

fn path_text(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("harness: data dir path is not UTF-8")
}

/// Make an ext4 image of `mb` MiB beside `dir` (no reserved blocks) and mount it on `dir`.
pub fn mount_ext4_disk(dir: &Path, mb: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let image = image_of(dir);
    std::fs::File::create(&image)
        .and_then(|file| file.set_len(mb << 20))
        .with_context(|| format!("harness: create {}", image.display()))?;
    run(&["mkfs.ext4", "-q", "-F", "-m", "0", path_text(&image)?])?;
    mount_image(dir)
}

fn mount_image(dir: &Path) -> anyhow::Result<()> {
    run(&[
        "mount",
        "-o",
        "loop,errors=remount-ro",
        path_text(&image_of(dir))?,
        path_text(dir)?,
    ])
    .context("harness: ext4 data dirs need root and loop devices")
}

/// Raise an error in the ext4 filesystem on `dir` (the kernel's own test hook): it turns
/// read-only at once, open files included, and every write on it fails with EROFS.
pub fn fail_disk(dir: &Path) -> anyhow::Result<()> {
    let device = loop_device(dir)?;
    let hook = format!("/sys/fs/ext4/{device}/trigger_fs_error");
    std::fs::write(&hook, "raftmq chaos test: disk failure\n")
        .with_context(|| format!("harness: write {hook}"))
}

/// The loop device (`loop3`) an ext4 data dir is mounted from.
fn loop_device(dir: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "--mountpoint", path_text(dir)?])
        .output()
        .context("harness: run findmnt")?;
    let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
    source
        .strip_prefix("/dev/")
        .filter(|name| name.starts_with("loop"))
        .map(str::to_string)
        .with_context(|| format!("harness: {} is not an ext4 loop mount", dir.display()))
}

/// Where the kernel throttles a group of processes' block I/O: cgroup v1's `blkio`
/// controller, or v2's `io` controller.
enum IoControl {
    V1(PathBuf),
    V2(PathBuf),
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl IoControl {
    fn find() -> anyhow::Result<IoControl> {
        let root = Path::new(CGROUP_ROOT);
        let v1 = root.join("blkio");
        if v1.join("blkio.throttle.write_iops_device").exists() {
            return Ok(IoControl::V1(v1));
        }
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "io") {
            return Ok(IoControl::V2(root.to_path_buf()));
        }
        bail!(
            "harness: slow disks need root and the kernel's block I/O throttling (cgroup v1 \
             blkio or v2 io controller under {CGROUP_ROOT})"
        )
    }

    fn root(&self) -> &Path {
        match self {
            IoControl::V1(root) | IoControl::V2(root) => root,
        }
    }
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)
        .with_context(|| format!("harness: write {text:?} to {}", path.display()))
}

/// The cgroup that slows writes to the disk of `dir`, and the device's `major:minor`.
fn slow_group(dir: &Path) -> anyhow::Result<(IoControl, PathBuf, String)> {
    let device = loop_device(dir)?;
    let numbers = std::fs::read_to_string(format!("/sys/block/{device}/dev"))
        .with_context(|| format!("harness: read the device numbers of {device}"))?;
    let control = IoControl::find()?;
    let group = control.root().join(format!("raftmq-chaos-{device}"));
    Ok((control, group, numbers.trim().to_string()))
}

/// Let process `pid` write at most `writes_per_sec` times a second to the disk of the ext4
/// data dir `dir` (its reads, and every other process, are untouched). The writes an fsync
/// issues wait their turn in the kernel, so each of the node's fsyncs takes tens of
/// milliseconds or more.
pub fn slow_down(dir: &Path, pid: u32, writes_per_sec: u32) -> anyhow::Result<()> {
    let (control, group, device) = slow_group(dir)?;
    if let IoControl::V2(root) = &control {
        write_file(&root.join("cgroup.subtree_control"), "+io")?;
    }
    if !group.exists() {
        std::fs::create_dir(&group)
            .with_context(|| format!("harness: create the cgroup {}", group.display()))?;
    }
    match &control {
        IoControl::V1(_) => write_file(
            &group.join("blkio.throttle.write_iops_device"),
            &format!("{device} {writes_per_sec}"),
        )?,
        IoControl::V2(_) => write_file(
            &group.join("io.max"),
            &format!("{device} wiops={writes_per_sec}"),
        )?,
    }
    write_file(&group.join("cgroup.procs"), &pid.to_string())
}

/// Undo [`slow_down`] for process `pid` (gone already is fine).
pub fn speed_up(dir: &Path, pid: u32) -> anyhow::Result<()> {
    let (control, group, _) = slow_group(dir)?;
    // Back to the root group; a process that has exited is no longer listed anywhere.
    let moved = std::fs::write(control.root().join("cgroup.procs"), pid.to_string());
    if let Err(e) = moved
        && e.raw_os_error() != Some(nix::libc::ESRCH)
    {
        return Err(e).context("harness: move the node out of its slow-disk cgroup");
    }
    std::fs::remove_dir(&group)
        .with_context(|| format!("harness: remove the cgroup {}", group.display()))
}

/// Unmount the failed filesystem on `dir`, check and fix it (`e2fsck -fy`), and mount it
/// writable again. Its node must have stopped.
pub fn repair_disk(dir: &Path) -> anyhow::Result<()> {
    run(&["umount", path_text(dir)?])?;
    let image = image_of(dir);
    let checked = std::process::Command::new("e2fsck")
        .args(["-f", "-y", path_text(&image)?])
        .output()
        .context("harness: run e2fsck")?;
    // 0: clean; 1: errors fixed. Anything else means the filesystem is not usable.
    if !matches!(checked.status.code(), Some(0 | 1)) {
        bail!(
            "harness: e2fsck {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&checked.stdout).trim()
        );
    }
    mount_image(dir)
}

/// Unmount `dir`. With `keep`, what it holds is copied out first and put back in its place
/// (on the disk under it), so the run's data dirs stay readable afterwards.
pub fn unmount(dir: &Path, keep: bool) -> anyhow::Result<()> {
    let dir_text = path_text(dir)?;
    let copy = dir.with_extension("kept");
    if keep {
        let _ = std::fs::remove_file(dir.join(FILLER));
        run(&["cp", "-a", dir_text, copy.to_str().unwrap_or_default()])?;
    }
    run(&["umount", "-l", dir_text])?;
    // An ext4 disk's image (the loop device lets go of it once the lazy unmount completes).
    std::fs::remove_file(image_of(dir)).ok();
    if keep {
        std::fs::remove_dir_all(dir).ok();
        std::fs::rename(&copy, dir)?;
    }
    Ok(())
}

fn filler(dir: &Path) -> PathBuf {
    dir.join(FILLER)
}

/// Grow the filler in `dir` until at most `leave` bytes are free (0: until ENOSPC). Returns
/// the free bytes left.
pub fn fill(dir: &Path, leave: u64) -> anyhow::Result<u64> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler(dir))
        .with_context(|| format!("harness: create the filler in {}", dir.display()))?;
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        let free = DiskSpace::available_bytes(dir)?;
        if free <= leave {
            return Ok(free);
        }
        let size = (free - leave).min(chunk.len() as u64) as usize;
        match file.write_all(&chunk[..size]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {
                return DiskSpace::available_bytes(dir).map_err(Into::into);
            }
            Err(e) => return Err(e).context("harness: write the filler"),
        }
    }
}

/// The last `lines` lines of the RocksDB info log in `db_dir` that speak of background errors,
/// stopped writes or resuming: what a failure message needs from a disk fault.
pub fn rocksdb_error_lines(db_dir: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(db_dir.join("LOG")).unwrap_or_default();
    let wanted: Vec<&str> = text
        .lines()
        .filter(|line| {
            ["error", "Error", "resume", "Stopping writes"]
                .iter()
                .any(|word| line.contains(word))
                && !line.contains("Options.")
        })
        .collect();
    wanted[wanted.len().saturating_sub(lines)..].join("\n")
}

/// Delete the filler: the space comes back.
pub fn unfill(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(filler(dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context("harness: delete the filler"),
    }
}
