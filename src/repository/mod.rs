//! A repository: config, keys, the index cache, blobs, snapshots and manifests.
//!
//! Commit protocol: packs, then the index objects naming them, then the snapshot
//! record. A crash at any point leaves only objects nothing refers to.

pub mod chunker;
pub mod crypto;
pub mod index;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod packer;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, KeyId, PackId, RepositoryId, SnapshotId};
use crate::repository::chunker::{Chunker, ChunkerParams};
use crate::repository::crypto::{unwrap_master_key, wrap_master_key, KdfParams, KeyFile, MasterKey, KEY_FILE_VERSION};
use crate::repository::index::{BlobLocation, IndexCache, IndexFile, IndexedPack, ScratchIndex, MAX_OBJECT_BLOBS};
use crate::repository::lock::{LockGuard, LockTiming};
use crate::repository::manifest::Manifest;
use crate::repository::pack::{
    decode_header, header_bounds, open_object, seal_object, visit_blob, BlobType, PackEntry,
};
use crate::repository::snapshot::{Resolved, Snapshot};

/// The repository format version this program writes and reads.
pub const REPOSITORY_VERSION: u64 = 1;
/// Default target pack size on local disk.
pub const DEFAULT_PACK_SIZE: u64 = 16 * 1024 * 1024;
/// Smallest pack size a repository may be configured with.
pub const MIN_PACK_SIZE: u64 = 1024;
/// Largest pack size: offsets inside a pack are 32-bit.
pub const MAX_PACK_SIZE: u64 = 1 << 31;

/// Readable snapshots (oldest first) and the errors of damaged snapshot records.
pub type SnapshotList = (Vec<(SnapshotId, Snapshot)>, Vec<Error>);
/// Readable snapshots (oldest first) and the ids and errors of damaged records.
type LoadedSnapshots = (Vec<(SnapshotId, Snapshot)>, Vec<(SnapshotId, Error)>);
/// Readable index objects in force, and the errors of damaged ones.
/// The index loaded by [`Repository::scratch_index`].
pub struct ScratchLoad {
    pub index: ScratchIndex,
    /// Why each damaged index object cannot be read.
    pub damaged: Vec<Error>,
    /// Index objects stored, damaged and superseded ones included.
    pub objects: usize,
    /// Intact index objects no other object supersedes.
    pub in_force: usize,
}

/// The plaintext `config` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub version: u64,
    pub id: RepositoryId,
    pub chunker: ChunkerParams,
    pub metadata_chunker: ChunkerParams,
    /// FastCDC sizes for database dumps, whose nightly changes are small and scattered.
    pub dump_chunker: ChunkerParams,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u64,
    /// zstd level for blobs; 0 stores them uncompressed.
    pub compression_level: i32,
}

impl Serialize for RepositoryId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for RepositoryId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Parses `config`, refusing versions this program does not know.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|e| Error::integrity("config", format!("it is not a coffer config: {e}")))?;
        if version.version != REPOSITORY_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "the repository".into(),
                found: version.version,
                supported: REPOSITORY_VERSION,
            });
        }
        let config: Config = serde_json::from_slice(bytes)
            .map_err(|e| Error::integrity("config", format!("it is not a coffer config: {e}")))?;
        for params in [config.chunker, config.metadata_chunker, config.dump_chunker] {
            params.validate().map_err(|reason| Error::integrity("config", reason))?;
        }
        if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&config.pack_size) || !(0..=22).contains(&config.compression_level)
        {
            return Err(Error::integrity("config", "its pack size or compression level is out of range"));
        }
        Ok(config)
    }
}

/// Choices made at `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub chunker: ChunkerParams,
    pub pack_size: u64,
    pub compression_level: i32,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            kdf: KdfParams::default(),
            chunker: ChunkerParams::FILES,
            pack_size: DEFAULT_PACK_SIZE,
            compression_level: 3,
        }
    }
}

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
    /// Creates a repository in empty storage and returns it open.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &[u8],
        options: &InitOptions,
        cache_root: Option<&Path>,
    ) -> Result<Self> {
        let location = backend.location();
        // `config` is written last and is the commit point of `init`: key files left by
        // an `init` that crashed before it are bound to another repository id and unused.
        // A read, not a listing: a local store lists `config` as the folder `config/`.
        match backend.get("config") {
            Ok(_) => return Err(Error::AlreadyInitialized { location }),
            Err(Error::MissingObject { .. }) => {}
            Err(error) => return Err(error),
        }
        // A listing reports a missing bucket (S3 answers a GET of a missing bucket's
        // object like a missing object, and some servers create buckets on PUT).
        backend.list("keys/")?;
        options.chunker.validate().map_err(Error::InvalidInput)?;
        if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&options.pack_size)
            || !(0..=22).contains(&options.compression_level)
        {
            return Err(Error::InvalidInput(format!(
                "pack size {} must be between {MIN_PACK_SIZE} and {MAX_PACK_SIZE} bytes and compression level {} between 0 and 22",
                options.pack_size, options.compression_level
            )));
        }
        let config = Config {
            version: REPOSITORY_VERSION,
            id: RepositoryId::random(),
            chunker: options.chunker,
            metadata_chunker: ChunkerParams::METADATA,
            dump_chunker: ChunkerParams::DUMPS,
            pack_size: options.pack_size,
            compression_level: options.compression_level,
        };
        let master = MasterKey::generate();
        let key_id = add_key(&*backend, &master, &config.id, password, options.kdf)?;
        backend.sync()?;
        let config_bytes = serde_json::to_vec_pretty(&config).unwrap_or_default();
        if !backend.put_new("config", Bytes::from(config_bytes))? {
            return Err(Error::AlreadyInitialized { location });
        }
        backend.sync()?;
        Self::assemble(backend, config, master, key_id, cache_root)
    }

    /// Opens a repository with a password, trying every key file.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8], cache_root: Option<&Path>) -> Result<Self> {
        let config = read_config(&*backend)?;
        let (key_id, master) = find_key(&*backend, &config.id, password)?;
        let repository = Self::assemble(backend, config, master, key_id, cache_root)?;
        repository.sync_index()?;
        Ok(repository)
    }

    fn assemble(
        backend: Arc<dyn Backend>,
        config: Config,
        master: MasterKey,
        key_id: KeyId,
        cache_root: Option<&Path>,
    ) -> Result<Self> {
        let (cache_dir, temporary) = match cache_root {
            Some(root) => (root.join(config.id.to_hex()), None),
            None => {
                let temporary = tempfile::tempdir()
                    .map_err(|e| Error::io("cannot create a temporary cache in", std::env::temp_dir(), e))?;
                (temporary.path().to_path_buf(), Some(temporary))
            }
        };
        crate::system::create_private_dir(&cache_dir.join("manifests"))
            .map_err(|e| Error::io("cannot create cache directory", &cache_dir, e))?;
        // Caches made by earlier versions were readable by every local user: the
        // folders are closed, which covers the files in them.
        for folder in
            [Some(cache_dir.as_path()), cache_dir.parent().filter(|_| cache_root.is_some())].into_iter().flatten()
        {
            crate::system::make_private(folder);
        }
        let index = IndexCache::open(&cache_dir.join("index.sqlite"))?;
        Ok(Self {
            backend,
            config,
            master,
            key_id,
            cache_dir,
            _temporary_cache: temporary,
            index: Mutex::new(index),
            index_object_blobs: MAX_OBJECT_BLOBS.into(),
            lock_timing: Mutex::new(LockTiming::default()),
            lease: Mutex::new(std::sync::Weak::new()),
        })
    }

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

    /// Takes a shared or exclusive lock on the repository, then brings the index cache
    /// up to date: a prune that finished between opening and locking may have deleted
    /// packs the cache still names, and a backup must not deduplicate against them.
    pub fn lock(&self, exclusive: bool) -> Result<LockGuard> {
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

    /// Brings the index cache up to date with the `index/` objects in storage.
    pub fn sync_index(&self) -> Result<()> {
        match self.sync_index_reporting()?.into_iter().next() {
            Some(damaged) => Err(damaged),
            None => Ok(()),
        }
    }

    /// Opens a repository whose damaged index objects are skipped and returned, for
    /// `check` and `repair`, which must work on a damaged repository.
    pub fn open_damaged(
        backend: Arc<dyn Backend>,
        password: &[u8],
        cache_root: Option<&Path>,
    ) -> Result<(Self, Vec<Error>)> {
        let config = read_config(&*backend)?;
        let (key_id, master) = find_key(&*backend, &config.id, password)?;
        let repository = Self::assemble(backend, config, master, key_id, cache_root)?;
        let damaged = repository.sync_index_reporting()?;
        Ok((repository, damaged))
    }

    /// Syncs the cache, skipping index objects that are damaged (returned) or that a
    /// loaded object supersedes (FORMAT.md section 8).
    fn sync_index_reporting(&self) -> Result<Vec<Error>> {
        let stored = self.stored_index_ids()?;
        let known = self.index().index_files()?;
        if !known.is_subset(&stored.iter().copied().collect()) {
            self.index().clear()?;
        }
        let damaged = self.load_missing_indexes(&stored)?;
        let loaded = self.index().index_files()?;
        if self.index().superseded()?.is_disjoint(&loaded) {
            return Ok(damaged);
        }
        // A superseded object was loaded before the one superseding it: its rows may
        // point at packs prune has deleted, so rebuild without it.
        self.index().clear()?;
        self.load_missing_indexes(&stored)
    }

    fn stored_index_ids(&self) -> Result<Vec<IndexId>> {
        let listed = self.backend.list("index/")?;
        Ok(listed.iter().filter_map(|info| info.key.strip_prefix("index/").and_then(|n| n.parse().ok())).collect())
    }

    /// Loads the stored index objects the cache does not know and does not skip.
    fn load_missing_indexes(&self, stored: &[IndexId]) -> Result<Vec<Error>> {
        let known = self.index().index_files()?;
        let superseded = self.index().superseded()?;
        let missing: Vec<IndexId> =
            stored.iter().copied().filter(|id| !known.contains(id) && !superseded.contains(id)).collect();
        let mut damaged = Vec::new();
        for batch in missing.chunks(16) {
            let loaded: Vec<(IndexId, Result<IndexFile>)> =
                batch.par_iter().map(|id| (*id, self.load_index(id))).collect();
            let mut index = self.index();
            for (id, file) in loaded {
                match file {
                    Ok(file) => index.add(Some(id), &file)?,
                    Err(error) if is_damage(&error) => damaged.push(error),
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(damaged)
    }

    /// Loads every stored index object (16 at a time, in parallel) into a new scratch
    /// index in the cache directory and drops the packs only superseded objects name.
    /// Damaged objects are skipped and returned; memory does not grow with the index.
    pub fn scratch_index(&self) -> Result<ScratchLoad> {
        let stored = self.stored_index_ids()?;
        let mut index = ScratchIndex::create(&self.cache_dir)?;
        let mut damaged = Vec::new();
        let mut loaded = Vec::new();
        for batch in stored.chunks(16) {
            let files: Vec<(IndexId, Result<IndexFile>)> =
                batch.par_iter().map(|id| (*id, self.load_index(id))).collect();
            for (id, file) in files {
                match file {
                    Ok(file) => {
                        index.add_index_object(&id, &file)?;
                        loaded.push(id);
                    }
                    Err(error) if is_damage(&error) => damaged.push(error),
                    Err(error) => return Err(error),
                }
            }
        }
        let superseded = index.drop_superseded()?;
        let in_force = loaded.iter().filter(|id| !superseded.contains(id)).count();
        Ok(ScratchLoad { index, damaged, objects: stored.len(), in_force })
    }

    /// Every pack in storage and its size, from one listing of `data/`. Names that are
    /// not `data/<xx>/<pack id>` are left out.
    pub fn list_packs(&self) -> Result<std::collections::HashMap<PackId, u64>> {
        Ok(self.list_packs_with_times()?.into_iter().map(|(id, (size, _))| (id, size)).collect())
    }

    /// Every pack in storage with its size and when storage says it was written.
    pub fn list_packs_with_times(
        &self,
    ) -> Result<std::collections::HashMap<PackId, (u64, Option<std::time::SystemTime>)>> {
        let mut packs = std::collections::HashMap::new();
        for info in self.backend.list("data/")? {
            let Some(id) = info.key.rsplit('/').next().and_then(|name| name.parse::<PackId>().ok()) else { continue };
            if info.key == pack_key(&id) {
                packs.insert(id, (info.size, info.modified));
            }
        }
        Ok(packs)
    }

    /// When each pack was last verified in full by `check` on this machine (local cache).
    pub fn pack_verification_times(&self) -> Result<std::collections::HashMap<PackId, i64>> {
        self.index().verification_times()
    }

    /// Records in the local cache that these packs were verified now.
    pub fn record_verified(&self, packs: &[PackId]) -> Result<()> {
        self.index().mark_verified(packs, jiff::Timestamp::now().as_second())
    }

    /// Ids of every object under `index/`, superseded or not.
    pub fn index_object_ids(&self) -> Result<Vec<IndexId>> {
        self.stored_index_ids()
    }

    /// Reads and decodes one index object, checking its name against its hash.
    pub fn load_index(&self, id: &IndexId) -> Result<IndexFile> {
        let name = format!("index/{id}");
        let bytes = self.backend.get(&name)?;
        if *blake3::hash(&bytes).as_bytes() != id.0 {
            return Err(Error::integrity(&name, "its content does not match its name (hash mismatch)"));
        }
        let plain = open_object(&self.master, "index", &bytes, &name)?;
        IndexFile::decode(&plain, &name)
    }

    /// Stores an index object and adds it to the cache. Only while this handle's lock,
    /// if it took one, is held: a prune that ran after the lock was lost may have
    /// deleted the packs the object names.
    /// The packs it names are made durable first, and it is durable when this returns.
    pub fn write_index(&self, file: &IndexFile) -> Result<IndexId> {
        let sealed = seal_object(&self.master, "index", &file.encode());
        let id = IndexId(*blake3::hash(&sealed).as_bytes());
        self.ensure_lock_held()?;
        self.backend.sync()?;
        self.backend.put(&format!("index/{id}"), Bytes::from(sealed))?;
        self.backend.sync()?;
        self.index().add(Some(id), file)?;
        Ok(id)
    }

    /// Where index objects wait that a failed backup could not store.
    fn pending_dir(&self) -> PathBuf {
        self.cache_dir.join("pending-index")
    }

    /// Keeps an index object in the local cache when storage cannot take it (a backup
    /// failed because storage went away): the next run stores it, so the packs it
    /// names are not uploaded again.
    pub fn keep_index_for_later(&self, file: &IndexFile) -> Result<()> {
        let sealed = seal_object(&self.master, "index", &file.encode());
        let id = IndexId(*blake3::hash(&sealed).as_bytes());
        let folder = self.pending_dir();
        crate::system::create_private_dir(&folder).map_err(|e| Error::io("cannot create", &folder, e))?;
        let path = folder.join(id.to_hex());
        std::fs::write(&path, sealed).map_err(|e| Error::io("cannot write", &path, e))
    }

    /// Stores the index objects kept by [`Repository::keep_index_for_later`] whose packs
    /// are all still in storage (a prune in between deletes packs no index names).
    /// Called under a lock; best effort: what cannot be stored now waits.
    fn store_pending_indexes(&self) {
        let Ok(entries) = std::fs::read_dir(self.pending_dir()) else { return };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(|name| name.parse::<IndexId>().ok()) else { continue };
            let Ok(sealed) = std::fs::read(entry.path()) else { continue };
            let decoded = (*blake3::hash(&sealed).as_bytes() == id.0)
                .then(|| open_object(&self.master, "index", &sealed, "pending index").ok())
                .flatten()
                .and_then(|plain| IndexFile::decode(&plain, "pending index").ok());
            let Some(file) = decoded else {
                let _ = std::fs::remove_file(entry.path());
                continue;
            };
            let stored = file.packs.iter().all(|pack| {
                let key = pack_key(&pack.id);
                self.backend.get_range(&key, pack.size.saturating_sub(4)..pack.size).is_ok()
            });
            let put =
                || self.backend.sync().and_then(|()| self.backend.put(&format!("index/{id}"), Bytes::from(sealed)));
            if stored && put().and_then(|()| self.backend.sync()).is_err() {
                continue;
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// Writes `packs` as index objects of at most [`MAX_OBJECT_BLOBS`] blobs each (a pack
    /// is never split); only the last one lists `supersedes`, so until it is stored the
    /// old objects stay in force and a crash loses nothing. Returns the ids written.
    pub fn write_index_objects(
        &self,
        packs: impl IntoIterator<Item = Result<IndexedPack>>,
        supersedes: Vec<IndexId>,
    ) -> Result<Vec<IndexId>> {
        let max_blobs = self.index_object_blobs.load(std::sync::atomic::Ordering::Relaxed);
        let mut written = Vec::new();
        let mut batch: Vec<IndexedPack> = Vec::new();
        let mut blobs = 0;
        for pack in packs {
            let pack = pack?;
            if blobs > 0 && blobs + pack.blobs.len() > max_blobs {
                written
                    .push(self.write_index(&IndexFile { supersedes: Vec::new(), packs: std::mem::take(&mut batch) })?);
                blobs = 0;
            }
            blobs += pack.blobs.len();
            batch.push(pack);
        }
        if !batch.is_empty() || !supersedes.is_empty() {
            written.push(self.write_index(&IndexFile { supersedes, packs: batch })?);
        }
        Ok(written)
    }

    /// Sets the most blobs per index object written by prune and repair (tests use a
    /// small number to split them).
    #[doc(hidden)]
    pub fn set_index_object_blobs(&self, blobs: usize) {
        self.index_object_blobs.store(blobs.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Where a blob is stored, if it is.
    pub fn lookup(&self, id: &BlobId, blob_type: BlobType) -> Result<Option<BlobLocation>> {
        self.index().lookup(id, blob_type)
    }

    /// Reads, decrypts and verifies one blob.
    pub fn read_blob(&self, id: &BlobId, blob_type: BlobType) -> Result<Vec<u8>> {
        let location = self
            .lookup(id, blob_type)?
            .ok_or_else(|| Error::MissingObject { object: format!("blob {id} (not in the index)") })?;
        let entry = location.entry;
        let key = pack_key(&location.pack);
        let sealed = self.backend.get_range(&key, entry.offset as u64..entry.offset as u64 + entry.length as u64)?;
        self.open_sealed_blob(&location, &sealed)
    }

    /// Opens a blob read from its pack, naming the pack if it is damaged.
    pub fn open_sealed_blob(&self, location: &BlobLocation, sealed: &[u8]) -> Result<Vec<u8>> {
        self.visit_sealed_blob(location, sealed, <[u8]>::to_vec)
    }

    /// Opens a blob read from its pack into scratch memory and hands its content to
    /// `visit`, naming the pack if it is damaged.
    pub fn visit_sealed_blob<R>(
        &self,
        location: &BlobLocation,
        sealed: &[u8],
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let entry = location.entry;
        visit_blob(&self.master, entry.blob_type, entry.id, sealed, entry.raw_length, visit).ok_or_else(|| {
            Error::integrity(
                pack_key(&location.pack),
                format!("blob {} at offset {} fails authentication", entry.id, entry.offset),
            )
        })
    }

    /// Reads and authenticates a pack's header, and checks that it agrees with the index
    /// for every blob the index places in this pack. Any changed byte of the header or
    /// of its length trailer fails here; changed blob bytes fail when the blob is opened.
    pub fn verify_pack_header(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        let key = pack_key(pack);
        let size = self
            .index()
            .pack_size(pack)?
            .ok_or_else(|| Error::MissingObject { object: format!("{key} (not in the index)") })?;
        let last_four = self.backend.get_range(&key, size.saturating_sub(4)..size)?;
        let (start, length) = header_bounds(&last_four, size, &key)?;
        let sealed = self.backend.get_range(&key, start..start + length)?;
        let entries = decode_header(&open_object(&self.master, "pack-header", &sealed, &key)?, start, &key)?;
        for entry in &entries {
            let indexed = self.lookup(&entry.id, entry.blob_type)?;
            if indexed.is_some_and(|location| location.pack == *pack && location.entry != *entry) {
                return Err(Error::integrity(
                    &key,
                    format!("its header and the index disagree about blob {}", entry.id),
                ));
            }
        }
        Ok(entries)
    }

    /// Stores a snapshot record; it is the commit point of a backup.
    /// Everything written before it is made durable first, and the record is durable
    /// when this returns: a backup reported committed survives a power cut.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId> {
        let sealed = seal_object(&self.master, "snapshot", &snapshot.encode());
        let id = SnapshotId(*blake3::hash(&sealed).as_bytes());
        self.backend.sync()?;
        self.backend.put_new(&format!("snapshots/{id}"), Bytes::from(sealed))?;
        self.backend.sync()?;
        Ok(id)
    }

    /// Loads one snapshot record: from the local cache when it holds the record (a
    /// record never changes, and its name is the hash of its bytes), else from storage,
    /// keeping a copy.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.read_snapshot(id, true)
    }

    fn read_snapshot(&self, id: &SnapshotId, cached: bool) -> Result<Snapshot> {
        let name = format!("snapshots/{id}");
        let copy = self.snapshot_cache_dir().join(id.to_hex());
        let bytes = match std::fs::read(&copy).ok().filter(|_| cached) {
            Some(bytes) if *blake3::hash(&bytes).as_bytes() == id.0 => Bytes::from(bytes),
            _ => {
                let bytes = self.backend.get(&name)?;
                if *blake3::hash(&bytes).as_bytes() != id.0 {
                    return Err(Error::integrity(&name, "its content does not match its name (hash mismatch)"));
                }
                // Best effort: a cache that cannot be written costs a request next time.
                let _ = crate::system::create_private_dir(&self.snapshot_cache_dir())
                    .and_then(|()| std::fs::write(&copy, &bytes));
                bytes
            }
        };
        Snapshot::decode(&open_object(&self.master, "snapshot", &bytes, &name)?, &name)
    }

    fn snapshot_cache_dir(&self) -> PathBuf {
        self.cache_dir.join("snapshots")
    }

    /// Drops cached records of snapshots no longer in storage (forgotten).
    fn forget_cached_snapshots(&self, stored: &[SnapshotId]) {
        let Ok(entries) = std::fs::read_dir(self.snapshot_cache_dir()) else { return };
        let stored: std::collections::HashSet<&SnapshotId> = stored.iter().collect();
        for entry in entries.flatten() {
            let id = entry.file_name().to_str().and_then(|name| name.parse::<SnapshotId>().ok());
            if id.is_none_or(|id| !stored.contains(&id)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Every readable snapshot, oldest first, and the errors of those that are damaged:
    /// one damaged record must not hide the others.
    pub fn list_snapshots(&self) -> Result<SnapshotList> {
        let (snapshots, damaged) = self.load_snapshots(true)?;
        Ok((snapshots, damaged.into_iter().map(|(_, error)| error).collect()))
    }

    /// The same, every record read from storage rather than the local cache: for
    /// `check`, which must see damage in storage.
    pub fn list_snapshots_from_storage(&self) -> Result<SnapshotList> {
        let (snapshots, damaged) = self.load_snapshots(false)?;
        Ok((snapshots, damaged.into_iter().map(|(_, error)| error).collect()))
    }

    /// Readable snapshots, oldest first, and the ids and errors of damaged records.
    fn load_snapshots(&self, cached: bool) -> Result<LoadedSnapshots> {
        let ids: Vec<SnapshotId> = self
            .backend
            .list("snapshots/")?
            .into_iter()
            .filter_map(|info| info.key.strip_prefix("snapshots/").and_then(|n| n.parse().ok()))
            .collect();
        self.forget_cached_snapshots(&ids);
        let loaded: Vec<(SnapshotId, Result<Snapshot>)> =
            ids.par_iter().map(|id| (*id, self.read_snapshot(id, cached))).collect();
        let mut snapshots = Vec::new();
        let mut damaged = Vec::new();
        for (id, result) in loaded {
            match result {
                Ok(snapshot) => snapshots.push((id, snapshot)),
                Err(error) if is_damage(&error) => damaged.push((id, error)),
                Err(error) => return Err(error),
            }
        }
        snapshots.sort_by(|a, b| a.1.timestamp().cmp(&b.1.timestamp()).then(a.0.cmp(&b.0)));
        damaged.sort_by_key(|(id, _)| *id);
        Ok((snapshots, damaged))
    }

    /// Finds the snapshot a user names: `latest`, an id or a unique prefix. A damaged
    /// record is never silently passed over (see [`crate::repository::snapshot::resolve`]); naming
    /// a damaged record by id gives its damage.
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        let (mut snapshots, mut damaged) = self.load_snapshots(true)?;
        let ids: Vec<SnapshotId> = damaged.iter().map(|(id, _)| *id).collect();
        match crate::repository::snapshot::resolve(spec, &snapshots, &ids)? {
            Resolved::Readable(index) => Ok(snapshots.swap_remove(index)),
            Resolved::Damaged(index) => Err(damaged.swap_remove(index).1),
        }
    }

    /// Path of a snapshot's manifest in the local cache.
    pub fn manifest_cache_path(&self, id: &SnapshotId) -> PathBuf {
        self.cache_dir.join("manifests").join(format!("{id}.sqlite"))
    }

    /// Opens a snapshot's manifest, from the cache if it is there and intact. Hashing
    /// and downloading stream one blob at a time, so memory does not grow with the
    /// manifest (about 200 bytes a file).
    pub fn load_manifest(&self, id: &SnapshotId, snapshot: &Snapshot) -> Result<Manifest> {
        let path = self.manifest_cache_path(id);
        if let Ok(file) = std::fs::File::open(&path) {
            let mut hasher = blake3::Hasher::new();
            if hasher.update_reader(file).is_ok() && hasher.finalize().to_hex().as_str() == snapshot.manifest.blake3 {
                return Manifest::open(&path);
            }
        }
        let mut packs = std::collections::BTreeSet::new();
        for blob in &snapshot.manifest.blobs {
            let location = self
                .lookup(blob, BlobType::Metadata)?
                .ok_or_else(|| Error::MissingObject { object: format!("manifest blob {blob} (not in the index)") })?;
            packs.insert(location.pack);
        }
        for pack in &packs {
            self.verify_pack_header(pack)?;
        }
        let partial = path.with_extension("part");
        let write_error = |e| Error::io("cannot write", &partial, e);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(write_error)?);
        let mut hasher = blake3::Hasher::new();
        for blob in &snapshot.manifest.blobs {
            let content = self.read_blob(blob, BlobType::Metadata)?;
            hasher.update(&content);
            std::io::Write::write_all(&mut file, &content).map_err(write_error)?;
        }
        file.into_inner().map_err(|e| write_error(e.into_error()))?;
        if hasher.finalize().to_hex().as_str() != snapshot.manifest.blake3 {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::integrity(
                format!("manifest of snapshot {}", id.short()),
                "its blobs do not add up to the recorded hash",
            ));
        }
        // Validated once, before it is cached: restore and check trust cached manifests.
        if let Err(error) = Manifest::open(&partial).and_then(|manifest| manifest.validate()) {
            let _ = std::fs::remove_file(&partial);
            return Err(match error {
                Error::Integrity { reason, .. } => {
                    Error::integrity(format!("manifest of snapshot {}", id.short()), reason)
                }
                other => other,
            });
        }
        std::fs::rename(&partial, &path).map_err(|e| Error::io("cannot write", &path, e))?;
        Manifest::open(&path)
    }

    /// Adds a key file for another password; returns its id.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<KeyId> {
        add_key(&*self.backend, &self.master, &self.config.id, password, kdf)
    }
}

/// Damage or an unknown version: reported per object rather than failing a listing.
fn is_damage(error: &Error) -> bool {
    error.is_integrity() || matches!(error, Error::UnsupportedVersion { .. })
}

/// The object name of a pack.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("data/{}/{hex}", &hex[..2])
}

/// Reads and checks `config`; missing storage or config means there is no repository.
pub fn read_config(backend: &dyn Backend) -> Result<Config> {
    match backend.get("config") {
        Ok(bytes) => Config::decode(&bytes),
        Err(Error::MissingObject { .. }) => Err(Error::NoRepository { location: backend.location() }),
        Err(error) => Err(error),
    }
}

fn add_key(
    backend: &dyn Backend,
    master: &MasterKey,
    repository: &RepositoryId,
    password: &[u8],
    kdf: KdfParams,
) -> Result<KeyId> {
    kdf.check().map_err(|reason| Error::InvalidInput(format!("cannot make a key file: {reason}")))?;
    let created = jiff::Timestamp::now().to_string();
    let file = wrap_master_key(
        master,
        password,
        kdf,
        repository,
        created,
        crate::system::host_name(),
        crate::system::user_name(),
    )
    .ok_or_else(|| Error::InvalidInput(format!("key derivation parameters {kdf:?} are not valid for Argon2id")))?;
    let id = KeyId::random();
    let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    backend.put_new(&format!("keys/{id}"), Bytes::from(bytes))?;
    Ok(id)
}

/// Tries the password on every intact key file. A damaged or newer key file does not
/// stop the others from opening; if no key opens, it is what is reported (as damage,
/// exit 13, or an unknown version), not a wrong password.
fn find_key(backend: &dyn Backend, repository: &RepositoryId, password: &[u8]) -> Result<(KeyId, MasterKey)> {
    let mut files = Vec::new();
    let mut unusable = Vec::new();
    for info in backend.list("keys/")? {
        let Some(id) = info.key.strip_prefix("keys/").and_then(|n| n.parse::<KeyId>().ok()) else { continue };
        let bytes = backend.get(&info.key)?;
        match read_key_file(&info.key, &bytes) {
            Ok(file) => files.push((id, info.key, file)),
            Err(error) => unusable.push(error),
        }
    }
    let opened = files
        .par_iter()
        .find_map_any(|(id, _, file)| unwrap_master_key(file, password, repository).map(|key| (*id, key)));
    if let Some(found) = opened {
        return Ok(found);
    }
    match (unusable.into_iter().next(), files.as_slice()) {
        (Some(Error::Integrity { object, reason }), [_, ..]) => Err(Error::Integrity {
            object,
            reason: format!("{reason} (and the password opens none of the {} other key file(s))", files.len()),
        }),
        (Some(error), _) => Err(error),
        (None, []) => Err(Error::integrity(format!("{}/keys", backend.location()), "the repository has no key files")),
        // One key that does not open: a changed byte in it looks exactly like a wrong password.
        (None, [(_, name, _)]) => {
            Err(Error::WrongPassword { location: backend.location(), only_key: Some(name.clone()) })
        }
        (None, _) => Err(Error::WrongPassword { location: backend.location(), only_key: None }),
    }
}

/// Parses a key file and checks everything that can be checked without the password.
fn read_key_file(name: &str, bytes: &[u8]) -> Result<KeyFile> {
    #[derive(Deserialize)]
    struct Version {
        version: u64,
    }
    let version: Version =
        serde_json::from_slice(bytes).map_err(|e| Error::integrity(name, format!("it is not a key file: {e}")))?;
    if version.version != KEY_FILE_VERSION {
        return Err(Error::UnsupportedVersion {
            what: name.to_string(),
            found: version.version,
            supported: KEY_FILE_VERSION,
        });
    }
    let file: KeyFile =
        serde_json::from_slice(bytes).map_err(|e| Error::integrity(name, format!("it is not a key file: {e}")))?;
    file.check().map_err(|reason| Error::integrity(name, format!("its {reason}")))?;
    Ok(file)
}
