//! Prune: remove data no snapshot uses and repack mostly-unused packs, planned first
//! and executed in the order new packs, new index, old index objects, old packs, so a
//! crash at any point loses nothing and the next prune finishes the job.
//!
//! The caller holds an exclusive lock for both planning and execution.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::id::{IndexId, PackId, SnapshotId};
use crate::repository::index::{IndexedPack, ScratchIndex};
use crate::repository::objects::Kind;
use crate::repository::pack::{open_blob, BlobType};
use crate::repository::packer::Packer;
use crate::repository::{pack_key, Exclusive, Locked, Repository, ScratchLoad};

/// Limits of one prune.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Repack a pack when more than this share (0 to 1) of its bytes is unused.
    pub max_unused: f64,
    /// Repack at most this many bytes of packs (`None`: no limit).
    pub max_repack_size: Option<u64>,
    /// Packs no index names are deleted only once they are this old: younger ones may
    /// belong to a backup that is still writing (on a host whose lock looked stale) or
    /// that just failed and whose index waits in its cache.
    pub unindexed_age: std::time::Duration,
}

/// The default of [`PruneOptions::unindexed_age`].
pub const UNINDEXED_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

impl Default for PruneOptions {
    fn default() -> Self {
        Self { max_unused: 0.05, max_repack_size: None, unindexed_age: UNINDEXED_AGE }
    }
}

/// A pack to rewrite: the blobs still used are copied into new packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repack {
    pub pack: PackId,
    pub size: u64,
    /// Blobs of it still in use, and their stored bytes.
    pub used_blobs: u64,
    pub used_bytes: u64,
}

/// What a prune will do. Nothing is changed until it is executed. Which blobs stay in
/// use, and in which pack, is kept in a scratch index on disk, not in memory.
#[derive(Debug)]
pub struct PrunePlan {
    pub snapshots: usize,
    pub used_blobs: u64,
    /// Packs kept as they are, with their sizes.
    pub keep: Vec<(PackId, u64)>,
    pub repack: Vec<Repack>,
    /// Indexed packs that hold nothing in use, with their sizes.
    pub delete: Vec<(PackId, u64)>,
    /// Packs no index object names (left by interrupted runs), with their sizes.
    pub unindexed: Vec<(PackId, u64)>,
    /// Packs no index names that are younger than [`PruneOptions::unindexed_age`]: kept.
    pub recent_unindexed: u64,
    /// Every stored index object; replaced by new ones when `rewrite_index`.
    pub old_indexes: Vec<IndexId>,
    pub rewrite_index: bool,
    /// Packs that would be deleted or repacked but are under S3 Object Lock: left as
    /// they are, for a prune after their lock ends.
    pub locked: Vec<(PackId, u64)>,
    /// Old index objects under Object Lock: superseded by the new ones, not deleted.
    pub locked_indexes: HashSet<IndexId>,
    /// When the last of the locked packs and index objects is free.
    pub locked_until: Option<jiff::Timestamp>,
    index: ScratchIndex,
}

impl PrunePlan {
    /// Bytes of packs deleted outright.
    pub fn bytes_deleted(&self) -> u64 {
        self.delete.iter().chain(&self.unindexed).map(|(_, size)| size).sum()
    }

    /// Bytes of packs that are read and rewritten.
    pub fn bytes_repacked(&self) -> u64 {
        self.repack.iter().map(|repack| repack.size).sum()
    }

    /// About how many bytes the prune frees (deleted packs and the unused part of repacked ones).
    pub fn bytes_freed(&self) -> u64 {
        let kept: u64 = self.repack.iter().map(|repack| repack.used_bytes).sum();
        self.bytes_deleted() + self.bytes_repacked().saturating_sub(kept)
    }

    /// True if executing the plan would change nothing.
    /// Bytes of packs left under Object Lock.
    pub fn bytes_locked(&self) -> u64 {
        self.locked.iter().map(|(_, size)| size).sum()
    }

    /// True if executing the plan would change nothing.
    pub fn is_empty(&self) -> bool {
        self.repack.is_empty() && self.delete.is_empty() && self.unindexed.is_empty() && !self.rewrite_index
    }
}

/// What executing a plan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub packs_written: u64,
    pub bytes_written: u64,
    pub packs_deleted: u64,
    pub index_objects_deleted: u64,
    /// Unfinished multipart uploads older than [`STALE_UPLOAD_AGE`] that were aborted.
    pub uploads_aborted: u64,
}

/// Unfinished multipart uploads older than this are aborted by prune: no backup runs
/// for a day, and their parts cost storage.
pub const STALE_UPLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Plans a prune: finds the blobs the remaining snapshots use, and for each pack
/// whether it is kept, repacked or deleted. Refuses on any damage it would make worse.
///
/// `forgotten` snapshots are treated as already removed, so a dry run of
/// `forget --prune` shows what the prune after it would do.
pub fn plan(
    repository: &Locked<'_, Exclusive>,
    options: &PruneOptions,
    forgotten: &HashSet<SnapshotId>,
) -> Result<PrunePlan> {
    let ScratchLoad { index, damaged, .. } = repository.scratch_index()?;
    if let Some(error) = damaged.into_iter().next() {
        return Err(refusal(error));
    }
    let snapshots = mark_used(repository, &index, forgotten)?;
    let listed_packs = repository.list_packs_with_times()?;
    let stored: HashMap<PackId, u64> = listed_packs.iter().map(|(id, (size, _))| (*id, *size)).collect();
    let mut plan = PrunePlan {
        snapshots,
        used_blobs: index.used_count()?,
        keep: Vec::new(),
        repack: Vec::new(),
        delete: Vec::new(),
        unindexed: Vec::new(),
        recent_unindexed: 0,
        old_indexes: Vec::new(),
        rewrite_index: false,
        locked: Vec::new(),
        locked_indexes: HashSet::new(),
        locked_until: None,
        index,
    };
    let listed = classify_packs(&stored, options, &mut plan)?;
    let clock = repository.lock_clock();
    let mut index_locks = Vec::new();
    for (id, info) in Kind::Index.list_with_info::<IndexId>(&**repository.backend())? {
        plan.old_indexes.push(id);
        index_locks.extend(clock.locked_until(info.modified).map(|until| (id, until)));
    }
    leave_locked_packs(&clock, &listed_packs, &mut plan);
    let old_enough = |modified: &Option<std::time::SystemTime>| {
        modified.is_none_or(|time| time.elapsed().is_ok_and(|age| age >= options.unindexed_age))
    };
    let mut unindexed = Vec::new();
    for (id, (size, modified)) in listed_packs.iter().filter(|(id, _)| !listed.contains(*id)) {
        match (old_enough(modified), clock.locked_until(*modified)) {
            (false, _) => plan.recent_unindexed += 1,
            (true, Some(until)) => {
                plan.locked.push((*id, *size));
                plan.locked_until = plan.locked_until.max(Some(until));
            }
            (true, None) => unindexed.push((*id, *size)),
        }
    }
    unindexed.sort();
    plan.unindexed = unindexed;
    // Many index objects are merged into few; locked ones cannot go, so merging only
    // them would just add one more locked object per prune.
    let unlocked_indexes = plan.old_indexes.len() - index_locks.len();
    plan.rewrite_index = !plan.delete.is_empty() || !plan.repack.is_empty() || unlocked_indexes > 1;
    // Locked index objects matter only when new ones replace them.
    if plan.rewrite_index {
        for (id, until) in index_locks {
            plan.locked_indexes.insert(id);
            plan.locked_until = plan.locked_until.max(Some(until));
        }
    }
    Ok(plan)
}

/// Packs under Object Lock are neither deleted nor repacked (a copy would only add to
/// what cannot be removed yet): one still in use is kept as it is, an unused one is
/// left out of the new index and deleted by a prune after its lock ends.
fn leave_locked_packs(
    clock: &crate::LockClock,
    listed: &HashMap<PackId, (u64, Option<std::time::SystemTime>)>,
    plan: &mut PrunePlan,
) {
    let locked = |id: &PackId| listed.get(id).and_then(|(_, modified)| clock.locked_until(*modified));
    let mut until = plan.locked_until;
    let mut locked_packs = Vec::new();
    plan.delete.retain(|(id, size)| match locked(id) {
        Some(end) => {
            until = until.max(Some(end));
            locked_packs.push((*id, *size));
            false
        }
        None => true,
    });
    let mut kept = Vec::new();
    plan.repack.retain(|repack| match locked(&repack.pack) {
        Some(end) => {
            until = until.max(Some(end));
            kept.push((repack.pack, repack.size));
            false
        }
        None => true,
    });
    plan.locked_until = until;
    plan.locked.extend(locked_packs.iter().chain(&kept));
    plan.keep.extend(kept);
}

fn refusal(error: Error) -> Error {
    Error::integrity(
        match &error {
            Error::Integrity { object, .. } | Error::MissingObject { object } => object.clone(),
            _ => "the repository".to_string(),
        },
        format!("prune stopped before changing anything ({error}); run coffer check"),
    )
}

/// Marks in the scratch index every blob a readable snapshot uses; returns the number
/// of snapshots. Any snapshot or manifest that cannot be read stops the prune: its
/// blobs are unknown.
fn mark_used(repository: &Repository, index: &ScratchIndex, forgotten: &HashSet<SnapshotId>) -> Result<usize> {
    let (mut snapshots, damaged) = repository.list_snapshots()?;
    if let Some(error) = damaged.into_iter().next() {
        return Err(refusal(error));
    }
    snapshots.retain(|(id, _)| !forgotten.contains(id));
    for (id, snapshot) in &snapshots {
        for blob in &snapshot.manifest.blobs {
            index.mark_used(blob, BlobType::Metadata)?;
        }
        let manifest = repository.load_manifest(id, snapshot).map_err(refusal)?;
        index.mark_manifest_used(manifest.path())?;
    }
    Ok(snapshots.len())
}

/// Sorts every indexed pack into keep, repack or delete; returns the ids of all packs
/// the index names. Each used blob is assigned to the first existing pack holding it.
fn classify_packs(
    stored: &HashMap<PackId, u64>,
    options: &PruneOptions,
    plan: &mut PrunePlan,
) -> Result<HashSet<PackId>> {
    let indexed = plan.index.packs()?;
    let mut candidates = Vec::new();
    for &(id, size) in &indexed {
        match stored.get(&id) {
            None => continue,
            Some(&stored) if stored != size => {
                return Err(refusal(Error::integrity(
                    pack_key(&id),
                    format!("it has {stored} bytes but the index says {size}"),
                )))
            }
            Some(_) => {}
        }
        let (in_use, blob_bytes) = plan.index.assign(&id)?;
        let used_bytes: u64 = in_use.iter().map(|entry| entry.length as u64).sum();
        if in_use.is_empty() {
            plan.delete.push((id, size));
        } else if blob_bytes.saturating_sub(used_bytes) as f64 > options.max_unused * size as f64 {
            candidates.push(Repack { pack: id, size, used_blobs: in_use.len() as u64, used_bytes });
        } else {
            plan.keep.push((id, size));
        }
    }
    let missing = plan.index.unassigned_count()?;
    if missing > 0 {
        return Err(refusal(Error::MissingObject {
            object: format!("{missing} blob(s) the snapshots use (in no existing pack)"),
        }));
    }
    choose_repacks(candidates, options, plan);
    Ok(indexed.into_iter().map(|(id, _)| id).collect())
}

/// Repacks the emptiest candidates first, within the size limit; keeps the rest.
fn choose_repacks(mut candidates: Vec<Repack>, options: &PruneOptions, plan: &mut PrunePlan) {
    let used_share = |repack: &Repack| repack.used_bytes as f64 / repack.size.max(1) as f64;
    candidates.sort_by(|a, b| used_share(a).total_cmp(&used_share(b)));
    let mut budget = options.max_repack_size.unwrap_or(u64::MAX);
    for candidate in candidates {
        if candidate.size <= budget {
            budget -= candidate.size;
            plan.repack.push(candidate);
        } else {
            plan.keep.push((candidate.pack, candidate.size));
        }
    }
}

/// Executes a plan in the crash-safe order. The repository must not have changed since
/// the plan was made (the exclusive lock ensures it).
pub fn execute(repository: &Locked<'_, Exclusive>, plan: &PrunePlan) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    repository.ensure_held()?;
    if !plan.is_empty() {
        repository.ensure_may_delete(Kind::Index, "prune")?;
        repository.ensure_may_delete(Kind::Pack, "prune")?;
    }
    let new_packs = repack(repository, plan)?;
    report.packs_written = new_packs.len() as u64;
    report.bytes_written = new_packs.iter().map(|pack| pack.size).sum();
    // Nothing is deleted unless the exclusive lock is still ours: a backup may have
    // started in the meantime if it was lost.
    repository.ensure_held()?;
    if plan.rewrite_index {
        // The kept packs are read back from the scratch index one at a time.
        let kept = plan.keep.iter().map(|(id, size)| plan.index.pack(id, *size));
        repository.write_index_objects(kept.chain(new_packs.into_iter().map(Ok)), plan.old_indexes.clone())?;
        // Locked ones stay, superseded by the new objects: readers skip them.
        for id in plan.old_indexes.iter().filter(|id| !plan.locked_indexes.contains(*id)) {
            Kind::Index.delete(&**repository.backend(), id)?;
            report.index_objects_deleted += 1;
        }
    }
    let repacked = plan.repack.iter().map(|repack| &repack.pack);
    let indexed_gone = plan.delete.iter().map(|(id, _)| id).chain(repacked);
    // Indexed packs may be deleted only once no index object in force names them.
    let deletable: Vec<&PackId> = if plan.rewrite_index { indexed_gone.collect() } else { Vec::new() };
    repository.ensure_held()?;
    for id in deletable.into_iter().chain(plan.unindexed.iter().map(|(id, _)| id)) {
        repository.backend().delete(&pack_key(id))?;
        report.packs_deleted += 1;
    }
    repository.backend().sync()?;
    // Cleanup that loses nothing: a failure is noted, not made the prune's outcome.
    match repository.backend().abort_stale_uploads(STALE_UPLOAD_AGE) {
        Ok(count) => report.uploads_aborted = count as u64,
        Err(error) => crate::backend::note(format!("unfinished uploads were not aborted: {error}")),
    }
    Ok(report)
}

/// Copies the used blobs of each pack to repack into new packs; returns them (not yet indexed).
fn repack(repository: &Repository, plan: &PrunePlan) -> Result<Vec<IndexedPack>> {
    if plan.repack.is_empty() {
        return Ok(Vec::new());
    }
    let packer = Packer::new(repository);
    for repack in &plan.repack {
        let key = pack_key(&repack.pack);
        let bytes = repository.backend().get(&key)?;
        for entry in plan.index.assigned(&repack.pack)? {
            let range = entry.offset as usize..entry.offset as usize + entry.length as usize;
            let data = bytes
                .get(range)
                .and_then(|sealed| open_blob(repository.master(), entry.blob_type, entry.id, sealed, entry.raw_length))
                .ok_or_else(|| refusal(Error::integrity(&key, format!("blob {} fails authentication", entry.id))))?;
            packer.store(entry.id, entry.blob_type, &data)?;
        }
    }
    Ok(packer.flush()?.packs)
}
