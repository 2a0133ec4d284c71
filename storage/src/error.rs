//! Errors of the storage layer.

/// A storage failure. Any of these on the write path is fatal to the node: the caller stops
/// Raft rather than carry on with state it cannot trust.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("open rocksdb at {path}")]
    Open {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("read column family {cf}")]
    Read {
        cf: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("write column family {cf}")]
    Write {
        cf: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("fsync the write-ahead log: {reason}")]
    WalSync { reason: String },
    #[error(
        "RocksDB still refuses writes to column family {cf} {waited_secs} s after the disk has \
         room again: it has stopped for good after the disk filled, and only reopening the \
         database (restarting the node) brings it back"
    )]
    StoppedForGood { cf: &'static str, waited_secs: u64 },
    #[error("corrupt record in column family {cf} at key {key:?}: {reason}")]
    Corrupt {
        cf: &'static str,
        key: Vec<u8>,
        reason: String,
    },
}

impl StorageError {
    /// The filesystem is full (or RocksDB stopped writes after it was): a wait, not a failure.
    /// Writes of a node in this state are retried until space returns (see [`crate::db`]).
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Write { source, .. } => is_no_space(source),
            _ => false,
        }
    }

    pub(crate) fn corrupt(cf: &'static str, key: &[u8], reason: impl ToString) -> Self {
        StorageError::Corrupt {
            cf,
            key: key.to_vec(),
            reason: reason.to_string(),
        }
    }
}

impl From<StorageError> for std::io::Error {
    fn from(err: StorageError) -> Self {
        std::io::Error::other(err)
    }
}

/// RocksDB reports ENOSPC, and every write refused until it has recovered from it, as an IO
/// error whose text names the condition; `ErrorKind` has no finer variant.
pub(crate) fn is_no_space(err: &rocksdb::Error) -> bool {
    let text = err.as_ref();
    text.contains("No space left on device") || text.contains("Space limit reached")
}
