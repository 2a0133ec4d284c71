//! Free space on the filesystem of the data dir, and the high-water mark above which a node
//! asks the group to stop taking new messages (see DESIGN.md: disk full is an expected
//! condition).
//!
//! A node is *low* once the free space falls under `min_free`, and stays low until it is back
//! above `min_free` plus a tenth: without that margin a node near the mark would flip at every
//! check while messages are written and purged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether a check changed the node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskChange {
    Unchanged,
    BecameLow,
    Recovered,
}

pub struct DiskSpace {
    path: PathBuf,
    min_free: u64,
    free: AtomicU64,
    capacity: AtomicU64,
    low: AtomicBool,
}

impl DiskSpace {
    /// `min_free` = 0 turns the mark off (the node never reports low).
    pub fn new(path: &Path, min_free: u64) -> DiskSpace {
        DiskSpace {
            path: path.to_path_buf(),
            min_free,
            free: AtomicU64::new(u64::MAX),
            capacity: AtomicU64::new(0),
            low: AtomicBool::new(false),
        }
    }

    /// Bytes available to this process on the filesystem holding `path`, as `df` shows them.
    pub fn available_bytes(path: &Path) -> std::io::Result<u64> {
        Ok(DiskSpace::statvfs(path)?.0)
    }

    /// (available, total) bytes of the filesystem holding `path`.
    fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
        let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
        let fragment = stat.fragment_size() as u64;
        Ok((
            (stat.blocks_available() as u64).saturating_mul(fragment),
            (stat.blocks() as u64).saturating_mul(fragment),
        ))
    }

    /// Read the free space now and update the state.
    pub fn check(&self) -> std::io::Result<DiskChange> {
        let (free, capacity) = DiskSpace::statvfs(&self.path)?;
        self.capacity.store(capacity, Ordering::Relaxed);
        Ok(self.record(free))
    }

    /// Update the state from a reading of `free` bytes.
    pub fn record(&self, free: u64) -> DiskChange {
        self.free.store(free, Ordering::Relaxed);
        let was_low = self.low.load(Ordering::Relaxed);
        let now_low = if was_low {
            free < self.resume_at()
        } else {
            free < self.min_free
        };
        self.low.store(now_low, Ordering::Relaxed);
        match (was_low, now_low) {
            (false, true) => DiskChange::BecameLow,
            (true, false) => DiskChange::Recovered,
            _ => DiskChange::Unchanged,
        }
    }

    /// Free space of the last check (`u64::MAX` before the first).
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Size of the filesystem at the last check (0 before the first).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    pub fn min_free_bytes(&self) -> u64 {
        self.min_free
    }

    /// Free space a low node needs to count as having room again.
    pub fn resume_at(&self) -> u64 {
        self.min_free.saturating_add(self.min_free / 10)
    }

    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn low_under_the_mark_and_back_only_past_the_margin() {
        let disk = DiskSpace::new(Path::new("."), 100 * MIB);
        assert_eq!(DiskChange::Unchanged, disk.record(500 * MIB));
        assert!(!disk.is_low());
        assert_eq!(DiskChange::BecameLow, disk.record(99 * MIB));
        assert!(disk.is_low());
        // Above the mark but inside the margin: still low.
        assert_eq!(DiskChange::Unchanged, disk.record(105 * MIB));
        assert!(disk.is_low());
        assert_eq!(DiskChange::Recovered, disk.record(110 * MIB));
        assert!(!disk.is_low());
        assert_eq!(DiskChange::Unchanged, disk.record(101 * MIB));
    }

    #[test]
    fn zero_mark_is_never_low() {
        let disk = DiskSpace::new(Path::new("."), 0);
        assert_eq!(DiskChange::Unchanged, disk.record(0));
        assert!(!disk.is_low());
    }

    #[test]
    fn reads_the_free_space_of_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskSpace::new(dir.path(), 1);
        disk.check().unwrap();
        assert!(disk.free_bytes() > 0 && disk.free_bytes() < u64::MAX);
        assert!(!disk.is_low());
        let missing = DiskSpace::new(&dir.path().join("absent"), 1);
        assert!(missing.check().is_err());
    }
}
