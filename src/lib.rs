//! coffer: a content-addressed, encrypted, incremental backup engine.
//!
//! The library knows nothing about terminals or command lines; the `coffer` binary is a
//! thin layer on top. Layers, from the bottom: [`backend`] (storage), crypto and
//! chunking, packs, the index and manifests, the [`Repository`], and the pipelines
//! ([`backup`], [`restorer`]).

mod archiver;
pub mod backend;
mod check;
mod chunker;
mod crypto;
mod error;
mod forget;
pub mod fuzzing;
mod id;
mod index;
pub mod interrupt;
mod lock;
mod manifest;
mod pack;
mod packer;
pub mod pg;
mod progress;
pub mod prune;
mod repair;
mod repository;
pub mod restorer;
mod snapshot;
mod system;

pub use archiver::{
    backup, dry_run, BackupOptions, BackupReport, ChangeRules, DryRunReport, Excludes, FileChange, InputCommand,
    PlannedFile,
};
pub use check::{check, AffectedSnapshot, CheckOptions, CheckReport, Damage, ReadSubset};
pub use chunker::{Chunker, ChunkerParams};
pub use crypto::{KdfParams, MasterKey};
pub use error::{Error, Result};
pub use forget::{apply_policy, emptied_groups, parse_duration, remove_snapshots, Decision, GroupBy, RetentionPolicy};
pub use id::{BlobId, IndexId, KeyId, LockId, PackId, RepositoryId, SnapshotId};
pub use index::{BlobLocation, IndexCache, IndexFile, IndexedPack, ScratchIndex, MAX_OBJECT_BLOBS};
pub use lock::{remove_locks, LockGuard, LockRecord, LockTiming, HOLD_LIMIT, REFRESH_EVERY, STALE_AFTER};
pub use manifest::{ChunkRef, Entry, EntryKind, Manifest, ManifestWriter, MANIFEST_SCHEMA};
pub use pack::{BlobType, PackEntry};
pub use packer::{Packer, PackerStats};
pub use progress::{Progress, ProgressSnapshot};
pub use prune::{PruneOptions, PrunePlan, PruneReport, Repack};
pub use repair::{repair_index, repair_snapshots, RepairIndexReport, SnapshotRepair, DAMAGED_TAG};
pub use repository::{pack_key, read_config, Config, InitOptions, Repository, DEFAULT_PACK_SIZE, REPOSITORY_VERSION};
pub use snapshot::{ManifestRef, PostgresSource, Snapshot, Source, Summary};

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
