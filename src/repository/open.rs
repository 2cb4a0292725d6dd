//! Creating and opening a repository: `config`, the first key, the local cache.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::keys::{add_key, find_key};
use super::*;
use crate::backend::Backend;
use crate::backend::ObjectLock;
use crate::error::{Error, Result};
use crate::id::{KeyId, RepositoryId};
use crate::repository::chunker::ChunkerParams;
use crate::repository::crypto::{KdfParams, MasterKey};
use crate::repository::index::{IndexCache, MAX_OBJECT_BLOBS};
use crate::repository::lock::LockTiming;
use crate::repository::object_lock::{ObjectLockSetting, MAX_LOCK_DAYS};
use crate::repository::objects::Kind;

/// The repository format version this program writes and reads.
pub const REPOSITORY_VERSION: u64 = 1;
/// Default target pack size on local disk.
pub const DEFAULT_PACK_SIZE: u64 = 16 * 1024 * 1024;
/// Smallest pack size a repository may be configured with.
pub const MIN_PACK_SIZE: u64 = 1024;
/// Largest pack size: offsets inside a pack are 32-bit.
pub const MAX_PACK_SIZE: u64 = 1 << 31;

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
    /// S3 Object Lock retention every object is written with (`init --object-lock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLockSetting>,
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
        if config.object_lock.is_some_and(|lock| !(1..=MAX_LOCK_DAYS).contains(&lock.days)) {
            return Err(Error::integrity("config", format!("its object_lock days are outside 1 to {MAX_LOCK_DAYS}")));
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
    /// Lock every object for this long with S3 Object Lock; `init` refuses storage
    /// without it.
    pub object_lock: Option<ObjectLockSetting>,
}

/// The zstd level of new repositories' blobs. Measured on a 500 MB plain-text pg_dump
/// and 1 GiB of half random, half text-like files (docs/BENCHMARKS.md, "Compression
/// level"): level 2 backed up the 1 GiB in 60% of level 3's time with the same
/// repository size, and the dump in about the same time with a repository 7% larger
/// (4.7 MB against 4.4 MB; restic's was 5.6 MB). Level 1 was no faster than 2 there.
pub const DEFAULT_COMPRESSION: i32 = 2;

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            kdf: KdfParams::default(),
            chunker: ChunkerParams::FILES,
            pack_size: DEFAULT_PACK_SIZE,
            compression_level: DEFAULT_COMPRESSION,
            object_lock: None,
        }
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
        match backend.get(&Kind::Config.key(&"")) {
            Ok(_) => return Err(Error::AlreadyInitialized { location }),
            Err(Error::MissingObject { .. }) => {}
            Err(error) => return Err(error),
        }
        // A listing reports a missing bucket (S3 answers a GET of a missing bucket's
        // object like a missing object, and some servers create buckets on PUT).
        backend.list(Kind::Key.prefix())?;
        options.chunker.validate().map_err(Error::InvalidInput)?;
        if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&options.pack_size)
            || !(0..=22).contains(&options.compression_level)
        {
            return Err(Error::InvalidInput(format!(
                "pack size {} must be between {MIN_PACK_SIZE} and {MAX_PACK_SIZE} bytes and compression level {} between 0 and 22",
                options.pack_size, options.compression_level
            )));
        }
        let object_lock = set_up_object_lock(&*backend, options.object_lock)?;
        backend.checksum_writes(object_lock.is_some());
        let config = Config {
            version: REPOSITORY_VERSION,
            id: RepositoryId::random(),
            chunker: options.chunker,
            metadata_chunker: ChunkerParams::METADATA,
            dump_chunker: ChunkerParams::DUMPS,
            pack_size: options.pack_size,
            compression_level: options.compression_level,
            object_lock,
        };
        let master = MasterKey::generate();
        let key_id = add_key(&*backend, &master, &config.id, password, options.kdf)?;
        backend.sync()?;
        let config_bytes = serde_json::to_vec_pretty(&config).unwrap_or_default();
        if !backend.put_new(&Kind::Config.key(&""), Bytes::from(config_bytes))? {
            return Err(Error::AlreadyInitialized { location });
        }
        backend.sync()?;
        Self::assemble(backend, config, master, key_id, cache_root)
    }

    /// Opens a repository with a password, trying every key file.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8], cache_root: Option<&Path>) -> Result<Self> {
        let config = read_config(&*backend)?;
        Self::open_with_config(backend, config, password, cache_root)
    }

    /// Opens a repository whose config the caller has read already (with
    /// [`read_config`]), saving a second round trip to the storage.
    pub fn open_with_config(
        backend: Arc<dyn Backend>,
        config: Config,
        password: &[u8],
        cache_root: Option<&Path>,
    ) -> Result<Self> {
        let (key_id, master) = find_key(&*backend, &config.id, password)?;
        let repository = Self::assemble(backend, config, master, key_id, cache_root)?;
        repository.sync_index()?;
        Ok(repository)
    }

    pub(super) fn assemble(
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
        backend.checksum_writes(config.object_lock.is_some());
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
}

/// Sets the bucket's default retention when Object Lock is asked for, before any
/// object is written, so every object of the repository is locked. Without the ask, a
/// default retention the bucket already has is recorded, so that forget and prune
/// leave locked objects alone; storage that cannot say is taken to have none.
fn set_up_object_lock(backend: &dyn Backend, asked: Option<ObjectLockSetting>) -> Result<Option<ObjectLockSetting>> {
    let Some(asked) = asked else {
        return Ok(match backend.object_lock() {
            Ok(ObjectLock::Enabled(Some((mode, days)))) => {
                Some(ObjectLockSetting { mode, days: days.min(MAX_LOCK_DAYS) })
            }
            _ => None,
        });
    };
    let location = backend.location();
    match backend.object_lock()? {
        ObjectLock::Unsupported => Err(Error::Refused(format!(
            "{location} does not support S3 Object Lock (it needs an S3 bucket created with Object Lock enabled)"
        ))),
        ObjectLock::Disabled => Err(Error::Refused(format!(
            "the bucket of {location} was created without Object Lock, which can only be enabled when a bucket is \
             created (aws s3api create-bucket --object-lock-enabled-for-bucket)"
        ))),
        ObjectLock::Enabled(_) => {
            backend.set_object_lock(asked.mode, asked.days)?;
            Ok(Some(asked))
        }
    }
}

/// Reads and checks `config`; missing storage or config means there is no repository.
pub fn read_config(backend: &dyn Backend) -> Result<Config> {
    match backend.get(&Kind::Config.key(&"")) {
        Ok(bytes) => Config::decode(&bytes),
        Err(Error::MissingObject { .. }) => Err(Error::NoRepository { location: backend.location() }),
        Err(error) => Err(error),
    }
}
