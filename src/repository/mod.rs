//! A repository: config, keys, the index cache, blobs, snapshots and manifests.
//!
//! Commit protocol: packs, then the index objects naming them, then the snapshot
//! record. A crash at any point leaves only objects nothing refers to.

pub mod audit;
pub mod chunker;
pub mod crypto;
pub mod index;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod packer;
pub mod snapshot;

mod blobs;
mod index_sync;
mod keys;
mod manifests;
pub mod object_lock;
pub mod objects;
mod open;
mod restores;
mod snapshots;

pub use index_sync::ScratchLoad;
pub use keys::StoredKey;
pub use objects::pack_key;
pub use open::{read_config, Config, InitOptions, DEFAULT_COMPRESSION, DEFAULT_PACK_SIZE, REPOSITORY_VERSION};
pub use restores::{Outcome as RestoreOutcome, RestoreRecord, RESTORE_RECORD_VERSION};

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::id::KeyId;
use crate::repository::chunker::Chunker;
use crate::repository::crypto::MasterKey;
use crate::repository::index::IndexCache;
use crate::repository::lock::{LockGuard, LockTiming};

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    master: MasterKey,
    key_id: KeyId,
    cache_dir: PathBuf,
    _temporary_cache: Option<tempfile::TempDir>,
    index: Mutex<IndexCache>,
    /// Most blobs per index object that prune and repair write.
    index_object_blobs: std::sync::atomic::AtomicUsize,
    lock_timing: Mutex<LockTiming>,
    /// The lock taken last through [`Repository::lock`], while its guard lives.
    lease: Mutex<std::sync::Weak<crate::repository::lock::Lease>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.backend.location())
    }
}

impl Repository {
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The key file this repository was opened with.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The local cache directory of this repository.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The chunker for file content.
    pub fn file_chunker(&self) -> Chunker {
        Chunker::new(self.master.chunker_secret(), self.config.chunker)
    }

    /// The chunker for database dumps.
    pub fn dump_chunker(&self) -> Chunker {
        Chunker::new(self.master.chunker_secret(), self.config.dump_chunker)
    }

    /// The chunker for manifests.
    pub fn metadata_chunker(&self) -> Chunker {
        Chunker::new(self.master.chunker_secret(), self.config.metadata_chunker)
    }

    fn index(&self) -> MutexGuard<'_, IndexCache> {
        self.index.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes a shared lock (backup, restore, check): the handle it returns is the
    /// repository while the lock is held.
    pub fn lock_shared(&self) -> Result<Locked<'_, Shared>> {
        Ok(Locked { repository: self, guard: self.lock(false)?, kind: PhantomData })
    }

    /// Takes an exclusive lock (forget, prune, repair): what deletes or rewrites takes
    /// this handle, so it cannot run without the lock.
    pub fn lock_exclusive(&self) -> Result<Locked<'_, Exclusive>> {
        Ok(Locked { repository: self, guard: self.lock(true)?, kind: PhantomData })
    }

    /// Takes a shared or exclusive lock on the repository, then brings the index cache
    /// up to date: a prune that finished between opening and locking may have deleted
    /// packs the cache still names, and a backup must not deduplicate against them.
    fn lock(&self, exclusive: bool) -> Result<LockGuard> {
        let timing = *self.lock_timing.lock().unwrap_or_else(|p| p.into_inner());
        let guard = LockGuard::acquire(self.backend.clone(), &self.master, exclusive, timing)?;
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = guard.lease();
        self.store_pending_indexes();
        // Damaged index objects were reported when the repository was opened; check and
        // repair open it knowing of them.
        self.sync_index_reporting()?;
        Ok(guard)
    }

    /// Before a commit step: fails with `Error::LockLost` if the lock this repository
    /// handle took was lost (removed, replaced, or not refreshed in time). Without a
    /// live lock (library callers that did not take one) there is nothing to check.
    pub fn ensure_lock_held(&self) -> Result<()> {
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).upgrade();
        match lease {
            Some(lease) => lease.ensure_held(),
            None => Ok(()),
        }
    }

    /// Shortens lock refreshes, for tests of a lock that is lost.
    #[doc(hidden)]
    pub fn set_lock_timing(&self, timing: LockTiming) {
        *self.lock_timing.lock().unwrap_or_else(|p| p.into_inner()) = timing;
    }
}

/// A lock that shares the repository with other backups, restores and checks.
#[derive(Debug)]
pub struct Shared;

/// A lock that no other command holds at the same time.
#[derive(Debug)]
pub struct Exclusive;

/// The repository while a lock of kind `K` is held on it; dropping it releases the lock.
pub struct Locked<'r, K> {
    repository: &'r Repository,
    guard: LockGuard,
    kind: PhantomData<K>,
}

impl<K> Locked<'_, K> {
    /// Fails with `Error::LockLost` unless the lock is still held (see `lock.rs`).
    pub fn ensure_held(&self) -> Result<()> {
        self.guard.ensure_held()
    }
}

impl<K> std::ops::Deref for Locked<'_, K> {
    type Target = Repository;

    fn deref(&self) -> &Repository {
        self.repository
    }
}

/// Damage or an unknown version: reported per object rather than failing a listing.
fn is_damage(error: &Error) -> bool {
    error.is_integrity() || matches!(error, Error::UnsupportedVersion { .. })
}
