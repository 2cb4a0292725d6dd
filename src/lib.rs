//! coffer: a content-addressed, encrypted, incremental backup engine.
//!
//! The library knows nothing about terminals or command lines; the `coffer` binary is a
//! thin layer on top. Layers, from the bottom: [`backend`] (storage); the repository
//! (crypto, chunking, packs, the index, manifests, snapshots, locks, and the
//! [`Repository`] handle over them); the pipelines ([`backup`], [`restorer`], [`pg`]);
//! and maintenance ([`check`], [`prune`], forget, repair).

// The layers, from the bottom (DESIGN.md): storage, the repository and what it is
// made of, the pipelines that fill and read it, and the maintenance commands.
pub mod backend;
mod error;
mod id;
pub mod interrupt;
mod maintenance;
mod pipelines;
mod repository;
mod system;
pub use system::{host_name, user_name};

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use maintenance::{inspect, prune};
pub use pipelines::{pg, restorer, tarball, ziparchive};
pub use repository::audit;
/// Every kind of object in a repository: names, sealing, reading (for tools and tests).
pub use repository::objects;

pub use error::{Error, Result};
pub use id::{BlobId, IndexId, KeyId, LockId, PackId, RepositoryId, RestoreId, SnapshotId};
pub use maintenance::check::{check, AffectedSnapshot, CheckOptions, CheckReport, Damage, ReadSubset};
pub use maintenance::forget::{
    apply_policy, emptied_groups, parse_duration, remove_snapshots, Decision, GroupBy, Removal, RetentionPolicy,
};
pub use maintenance::prune::{PruneOptions, PrunePlan, PruneReport, Repack};
pub use maintenance::repair::{repair_index, repair_snapshots, RepairIndexReport, SnapshotRepair, DAMAGED_TAG};
pub use pipelines::archiver::{
    backup, dry_run, BackupOptions, BackupReport, ChangeRules, DryRunReport, Excludes, FileChange, FileListener,
    InputCommand, PlannedFile,
};
pub use pipelines::progress::{Progress, ProgressSnapshot};
pub use repository::chunker::{Chunker, ChunkerParams};
pub use repository::crypto::{KdfParams, KeyFile, MasterKey, KEY_FILE_VERSION};
pub use repository::object_lock::{LockClock, ObjectLockSetting};

pub use repository::index::{
    BlobLocation, IndexCache, IndexFile, IndexedPack, ScratchIndex, INDEX_VERSION, MAX_OBJECT_BLOBS,
};
pub use repository::lock::{
    list_locks, remove_locks, LockGuard, LockRecord, LockTiming, HOLD_LIMIT, REFRESH_EVERY, STALE_AFTER,
};
pub use repository::manifest::{ChunkRef, Entry, EntryKind, Manifest, ManifestWriter, MANIFEST_SCHEMA};
pub use repository::pack::{BlobType, PackEntry};
pub use repository::packer::{Packer, PackerStats};
pub use repository::snapshot::{
    parse_instant, ManifestRef, PostgresSource, Snapshot, SnapshotFilter, Source, Summary, SNAPSHOT_VERSION,
};
pub use repository::{
    pack_key, read_config, Config, Exclusive, InitOptions, Locked, Repository, RestoreOutcome, RestoreRecord, Shared,
    StoredKey, DEFAULT_COMPRESSION, DEFAULT_PACK_SIZE, REPOSITORY_VERSION, RESTORE_RECORD_VERSION,
};

/// Reads one file of a snapshot into `out`, verifying every blob and the file's SHA-256;
/// `sink` names `out` in errors (a path, "standard output", "pg_restore's input").
pub fn dump_file(
    repository: &Repository,
    manifest: &Manifest,
    path: &[u8],
    out: &mut dyn std::io::Write,
    sink: &str,
) -> Result<u64> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let (entry_id, entry) =
        manifest.entry(path)?.ok_or_else(|| Error::NotFound { what: format!("path {shown} in the snapshot") })?;
    if entry.kind != EntryKind::File {
        return Err(Error::InvalidInput(format!("{shown} is a {}, not a file", entry.kind.name())));
    }
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut written = 0u64;
    for chunk in manifest.chunks(entry_id)? {
        // SIGINT or SIGTERM (a `timeout`, a systemd stop) ends a long dump promptly.
        interrupt::check()?;
        let data = repository.read_blob(&chunk.blob, BlobType::Data).map_err(|error| match error {
            Error::Integrity { object, reason } => {
                Error::Integrity { object, reason: format!("{reason}; file {shown} is affected") }
            }
            other => other,
        })?;
        sha2::Digest::update(&mut hasher, &data);
        out.write_all(&data).map_err(|e| Error::io("cannot write", sink, e))?;
        written += data.len() as u64;
    }
    let actual: [u8; 32] = sha2::Digest::finalize(hasher).into();
    if entry.sha256.is_some_and(|expected| expected != actual) {
        return Err(Error::integrity(
            format!("file {shown}"),
            "its content does not match the SHA-256 in the manifest",
        ));
    }
    Ok(written)
}
