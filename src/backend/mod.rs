//! Storage backends: a small synchronous trait over object storage, plus test backends.
//!
//! Keys are `/`-separated names relative to the repository root, such as
//! `data/3f/3f0a...`. Every backend stores the same keys with the same bytes.

mod aws_profile;
mod bucket;
mod faulty;
mod local;
mod memory;
mod object;
mod retry;
mod s3;

use std::ops::Range;

use bytes::Bytes;

use crate::error::Result;

pub use faulty::{FaultyBackend, ReadDamage};
pub use local::{DurableFs, LocalBackend, RealFs};
pub use memory::MemoryBackend;
pub use object::{chain_text, ObjectStoreBackend};
pub use retry::{RetryPolicy, DEFAULT_RETRY_BUDGET};
pub use s3::{open_s3, S3Options, DEFAULT_CONNECTIONS, DEFAULT_S3_PACK_SIZE};

/// Maps `work` over `items` with as many requests in flight as the backend keeps for
/// reads (`parallel_reads`), in a pool of its own: the global pool has one thread per
/// core, which on remote storage left two requests in flight on two cores while each
/// waited a round trip. Results keep the order of `items`.
pub fn in_flight<T: Sync, R: Send>(backend: &dyn Backend, items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use rayon::prelude::*;
    let threads = backend.parallel_reads().max(1).min(items.len().max(1));
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(|| items.par_iter().map(&work).collect()),
        // No threads to be had: one request at a time still does the work.
        Err(_) => items.iter().map(work).collect(),
    }
}

/// One stored object as listed by a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key, relative to the repository root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written, as the storage reports it (`None` where it does not).
    pub modified: Option<std::time::SystemTime>,
}

/// The mode of S3 Object Lock retention: governance (a user with a special permission
/// may lift it) or compliance (no one can, not even the account's root user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectLockMode {
    Governance,
    Compliance,
}

impl ObjectLockMode {
    /// `governance` or `compliance`, in any case.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "governance" => Some(Self::Governance),
            "compliance" => Some(Self::Compliance),
            _ => None,
        }
    }

    /// The name S3 uses.
    pub fn as_s3(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }
}

/// What storage says of Object Lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectLock {
    /// The storage has no Object Lock (a local disk, a server without it).
    Unsupported,
    /// The bucket was created without Object Lock.
    Disabled,
    /// Object Lock is on, with this default retention (mode, days) if it has one.
    Enabled(Option<(ObjectLockMode, u32)>),
}

/// Byte and request counters of a backend, for reporting what a run cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// What the repository needs from storage. Small enough to wrap.
pub trait Backend: Send + Sync {
    /// A human-readable location for messages (`/srv/repo`, `memory`).
    fn location(&self) -> String;
    /// Reads a whole object. A missing object is `Error::MissingObject`.
    fn get(&self, key: &str) -> Result<Bytes>;
    /// Reads a byte range of an object.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;
    /// Writes an object, replacing any object of that key.
    fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Writes an object from a file that holds exactly its bytes (a pack), replacing any
    /// object of that key. A local repository renames the file into place; the default
    /// reads it and writes it with `put`.
    fn put_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<()> {
        let bytes = std::fs::read(file.path()).map_err(|e| crate::error::Error::io("cannot read", file.path(), e))?;
        self.put(key, Bytes::from(bytes))
    }
    /// Where to write files for `put_file` so that it can rename them into place (a
    /// local repository's `tmp/`); `None` if any directory will do.
    fn staging_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// How many range reads a restore keeps in flight: enough to hide the latency of
    /// remote storage. A local disk overrides it with fewer.
    fn parallel_reads(&self) -> usize {
        8
    }
    /// Writes an object only if none of that key exists; returns false if one did.
    fn put_new(&self, key: &str, data: Bytes) -> Result<bool>;
    /// Lists the objects whose key starts with `prefix` (a folder such as `index/`).
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Makes every write and delete so far durable (a local disk fsyncs the folders
    /// they changed); the repository calls it between the steps of the commit protocol.
    /// Object stores are durable when a write is answered.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Counters since the backend was created.
    fn stats(&self) -> BackendStats {
        BackendStats::default()
    }
    /// Aborts unfinished multipart uploads started more than `age` ago (left by a
    /// crash or an outage; their parts cost storage); returns how many. Only object
    /// stores have them.
    fn abort_stale_uploads(&self, age: std::time::Duration) -> Result<usize> {
        let _ = age;
        Ok(0)
    }
    /// Sends a checksum with every write from now on (S3's Content-MD5, which a bucket
    /// with Object Lock requires).
    fn checksum_writes(&self, on: bool) {
        let _ = on;
    }
    /// Whether the storage locks objects (S3 Object Lock), and its default retention.
    fn object_lock(&self) -> Result<ObjectLock> {
        Ok(ObjectLock::Unsupported)
    }
    /// Makes every object written from now on locked for `days` in `mode`.
    fn set_object_lock(&self, mode: ObjectLockMode, days: u32) -> Result<()> {
        let _ = (mode, days);
        Err(crate::error::Error::InvalidInput(format!("{} does not support Object Lock", self.location())))
    }
}

/// Things a backend had to give up on that do not change a command's outcome (an
/// unfinished upload that could not be aborted), for the CLI to print beside it.
static NOTES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn note(text: String) {
    NOTES.lock().unwrap_or_else(|p| p.into_inner()).push(text);
}

/// Takes the notes gathered so far.
pub fn take_notes() -> Vec<String> {
    std::mem::take(&mut *NOTES.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Cuts `range` out of `data`, reporting a short object as missing bytes.
pub(crate) fn slice_range(key: &str, data: &Bytes, range: Range<u64>) -> Result<Bytes> {
    let (start, end) = (range.start as usize, range.end as usize);
    if range.start > range.end || end > data.len() {
        return Err(crate::error::Error::integrity(
            key,
            format!("range {}..{} is beyond its end ({} bytes)", range.start, range.end, data.len()),
        ));
    }
    Ok(data.slice(start..end))
}
