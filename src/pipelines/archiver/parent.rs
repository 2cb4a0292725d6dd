//! Change detection against a parent snapshot: a file whose size, mtime, ctime and
//! inode match its entry in the parent is not read again; its chunks and SHA-256 are
//! reused when every chunk is still in the index.

use crate::error::Result;
use crate::id::SnapshotId;
use crate::repository::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use crate::repository::pack::BlobType;
use crate::repository::snapshot::Snapshot;
use crate::repository::Repository;

/// A file modified less than this before its backup started may change again within
/// the file system's timestamp granularity without its mtime changing, so it is read
/// again next time even if nothing seems to have changed.
const RACY_WINDOW_NS: i64 = 1_000_000_000;

/// Which metadata must match for a file to count as unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeRules {
    /// Read every file, trusting no parent.
    pub force: bool,
    /// Do not compare inode and device numbers (unstable on some network and FUSE file systems).
    pub ignore_inode: bool,
    /// Do not compare ctimes (changed by tools that rewrite metadata).
    pub ignore_ctime: bool,
}

/// How a file compares with its parent entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Not in the parent: read it.
    New,
    /// In the parent but changed (or not to be trusted): read it. Says why: the first
    /// field that differs, or what made the parent entry unusable.
    Changed(&'static str),
    /// Unchanged: these chunks and this SHA-256 stand for its content.
    Unchanged(Vec<ChunkRef>, [u8; 32]),
}

/// The parent snapshot's manifest, queried file by file.
pub struct Parent<'r> {
    repository: &'r Repository,
    manifest: Manifest,
    racy_after_ns: i64,
    rules: ChangeRules,
}

impl<'r> Parent<'r> {
    /// Opens the parent's manifest.
    pub fn open(repository: &'r Repository, id: &SnapshotId, snapshot: &Snapshot, rules: ChangeRules) -> Result<Self> {
        let manifest = repository.load_manifest(id, snapshot)?;
        let started_ns = snapshot.timestamp().map_or(i64::MAX, |time| time.as_nanosecond() as i64);
        Ok(Self { repository, manifest, racy_after_ns: started_ns.saturating_sub(RACY_WINDOW_NS), rules })
    }

    /// True if the parent holds an entry at `path` (a stream stored again is then a
    /// changed file, not a new one).
    pub fn has(&self, path: &[u8]) -> Result<bool> {
        Ok(self.manifest.entry(path)?.is_some())
    }

    /// Compares a file just stat'ed with its parent entry.
    pub fn compare(&self, entry: &Entry) -> Result<Change> {
        let Some((id, old)) = self.manifest.entry(&entry.path)? else { return Ok(Change::New) };
        if self.rules.force {
            return Ok(Change::Changed("--force"));
        }
        if old.kind != EntryKind::File {
            return Ok(Change::Changed("kind"));
        }
        if let Some(field) = self.changed_field(&old, entry) {
            return Ok(Change::Changed(field));
        }
        let Some(sha256) = old.sha256 else { return Ok(Change::Changed("no checksum in the parent")) };
        let chunks = self.manifest.chunks(id)?;
        for chunk in &chunks {
            if self.repository.lookup(&chunk.blob, BlobType::Data)?.is_none() {
                return Ok(Change::Changed("chunks no longer stored"));
            }
        }
        Ok(Change::Unchanged(chunks, sha256))
    }

    /// The first metadata field that differs from the parent's entry, if any.
    fn changed_field(&self, old: &Entry, new: &Entry) -> Option<&'static str> {
        if old.size != new.size {
            return Some("size");
        }
        if old.mtime_ns != new.mtime_ns {
            return Some("mtime");
        }
        if !self.rules.ignore_ctime && old.ctime_ns != new.ctime_ns {
            return Some("ctime");
        }
        if !self.rules.ignore_inode && (old.inode != new.inode || old.device != new.device) {
            return Some("inode");
        }
        // Modified just before the parent was taken: it may have changed since without
        // its mtime showing it.
        (old.mtime_ns >= self.racy_after_ns).then_some("mtime too close to the parent's start")
    }
}

/// The latest snapshot of the same host whose paths are exactly `paths`.
pub fn find_parent(
    snapshots: &[(SnapshotId, Snapshot)],
    host: &str,
    paths: &[String],
) -> Option<(SnapshotId, Snapshot)> {
    let mut wanted = paths.to_vec();
    wanted.sort();
    snapshots
        .iter()
        .filter(|(_, snapshot)| {
            let mut theirs = snapshot.paths.clone();
            theirs.sort();
            snapshot.host == host && theirs == wanted && !snapshot.is_safety()
        })
        .max_by(|a, b| a.1.timestamp().cmp(&b.1.timestamp()))
        .cloned()
}
