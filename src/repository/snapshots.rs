//! Snapshot records: stored at the commit point, listed, found by name, and cached
//! locally (a record never changes, and its name is the hash of its bytes).

use std::path::PathBuf;

use super::*;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::repository::objects::Kind;
use crate::repository::snapshot::{Resolved, Snapshot, SnapshotFilter};

/// Readable snapshots (oldest first) and the errors of damaged snapshot records.
pub type SnapshotList = (Vec<(SnapshotId, Snapshot)>, Vec<Error>);
/// Readable snapshots (oldest first) and the ids and errors of damaged records.
pub(super) type LoadedSnapshots = (Vec<(SnapshotId, Snapshot)>, Vec<(SnapshotId, Error)>);

impl Repository {
    /// Stores a snapshot record; it is the commit point of a backup.
    /// Everything written before it is made durable first, and the record is durable
    /// when this returns: a backup reported committed survives a power cut.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId> {
        self.backend.sync()?;
        let id = SnapshotId(Kind::Snapshot.write_sealed(&*self.backend, &self.master, &snapshot.encode())?);
        self.backend.sync()?;
        Ok(id)
    }

    /// Loads one snapshot record: from the local cache when it holds the record (a
    /// record never changes, and its name is the hash of its bytes), else from storage,
    /// keeping a copy.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.read_snapshot(id, true)
    }

    pub(super) fn read_snapshot(&self, id: &SnapshotId, cached: bool) -> Result<Snapshot> {
        let name = Kind::Snapshot.key(id);
        let copy = self.snapshot_cache_dir().join(id.to_hex());
        let stored = std::fs::read(&copy).ok().filter(|_| cached);
        let plain = match stored.and_then(|bytes| Kind::Snapshot.open(&self.master, id, &bytes).ok()) {
            Some(plain) => plain,
            None => {
                let bytes = self.backend.get(&name)?;
                let plain = Kind::Snapshot.open(&self.master, id, &bytes)?;
                // Best effort: a cache that cannot be written costs a request next time.
                let _ = crate::system::create_private_dir(&self.snapshot_cache_dir())
                    .and_then(|()| std::fs::write(&copy, &bytes));
                plain
            }
        };
        Snapshot::decode(&plain, &name)
    }

    pub(super) fn snapshot_cache_dir(&self) -> PathBuf {
        self.cache_dir.join("snapshots")
    }

    /// Drops cached records of snapshots no longer in storage (forgotten).
    pub(super) fn forget_cached_snapshots(&self, stored: &[SnapshotId]) {
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
    pub(super) fn load_snapshots(&self, cached: bool) -> Result<LoadedSnapshots> {
        let ids: Vec<SnapshotId> = Kind::Snapshot.list(&*self.backend)?;
        self.forget_cached_snapshots(&ids);
        let loaded: Vec<(SnapshotId, Result<Snapshot>)> =
            crate::backend::in_flight(&*self.backend, &ids, |id| (*id, self.read_snapshot(id, cached)));
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
        self.find_snapshot_filtered(spec, &SnapshotFilter::default())
    }

    /// The same, `latest` meaning the newest snapshot `filter` lets through.
    pub fn find_snapshot_filtered(&self, spec: &str, filter: &SnapshotFilter) -> Result<(SnapshotId, Snapshot)> {
        let (mut snapshots, mut damaged) = self.load_snapshots(true)?;
        let ids: Vec<SnapshotId> = damaged.iter().map(|(id, _)| *id).collect();
        if spec != "latest" && filter.at.is_some() {
            return Err(Error::InvalidInput(format!(
                "--at picks among snapshots, so it goes with \"latest\", not with the snapshot {spec}"
            )));
        }
        match crate::repository::snapshot::resolve_filtered(spec, &snapshots, &ids, filter)? {
            Resolved::Readable(index) => Ok(snapshots.swap_remove(index)),
            Resolved::Damaged(index) => Err(damaged.swap_remove(index).1),
        }
    }
}
