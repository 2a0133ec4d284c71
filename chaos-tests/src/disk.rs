//! Small filesystems for the nodes' data dirs, and filling them up: the disk faults.
//!
//! Each node's data dir becomes a tmpfs of a fixed size (root needed, as for the network
//! namespaces). A fault fills it with a filler file, either to the last byte (the node's
//! writes then meet ENOSPC) or to a chosen amount of free space (below the node's
//! `min_free_disk` mark); healing deletes the filler.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use raftmq_storage::DiskSpace;

use crate::netns::run;

const FILLER: &str = "chaos-disk-filler";

/// Mount a tmpfs of `mb` MiB on `dir` (created if missing).
pub fn mount_small_disk(dir: &Path, mb: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir_text = dir
        .to_str()
        .context("harness: data dir path is not UTF-8")?;
    let size = format!("size={mb}m");
    run(&["mount", "-t", "tmpfs", "-o", &size, "tmpfs", dir_text])
        .context("harness: small data dirs need root (mount tmpfs)")
}

/// Unmount `dir`. With `keep`, what it holds is copied out first and put back in its place
/// (on the disk under it), so the run's data dirs stay readable afterwards.
pub fn unmount(dir: &Path, keep: bool) -> anyhow::Result<()> {
    let dir_text = dir
        .to_str()
        .context("harness: data dir path is not UTF-8")?;
    let copy = dir.with_extension("kept");
    if keep {
        let _ = std::fs::remove_file(dir.join(FILLER));
        run(&["cp", "-a", dir_text, copy.to_str().unwrap_or_default()])?;
    }
    run(&["umount", "-l", dir_text])?;
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

/// Delete the filler: the space comes back.
pub fn unfill(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(filler(dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context("harness: delete the filler"),
    }
}
