//! Prune: remove data no snapshot uses and repack mostly-unused packs, planned first
//! and executed in the order new packs, new index, old index objects, old packs, so a
//! crash at any point loses nothing and the next prune finishes the job.
//!
//! The caller holds an exclusive lock for both planning and execution.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, PackId, SnapshotId};
use crate::index::{IndexFile, IndexedPack};
use crate::pack::{open_blob, BlobType, PackEntry};
use crate::packer::Packer;
use crate::repository::{pack_key, Repository};

/// Limits of one prune.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Repack a pack when more than this share (0 to 1) of its bytes is unused.
    pub max_unused: f64,
    /// Repack at most this many bytes of packs (`None`: no limit).
    pub max_repack_size: Option<u64>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self { max_unused: 0.05, max_repack_size: None }
    }
}

/// A pack to rewrite: the blobs still used are copied into new packs.
#[derive(Debug, Clone)]
pub struct Repack {
    pub pack: IndexedPack,
    pub used: Vec<PackEntry>,
}

/// What a prune will do. Nothing is changed until it is executed.
#[derive(Debug, Clone, Default)]
pub struct PrunePlan {
    pub snapshots: usize,
    pub used_blobs: usize,
    /// Packs kept as they are.
    pub keep: Vec<IndexedPack>,
    pub repack: Vec<Repack>,
    /// Indexed packs that hold nothing in use, with their sizes.
    pub delete: Vec<(PackId, u64)>,
    /// Packs no index object names (left by interrupted runs), with their sizes.
    pub unindexed: Vec<(PackId, u64)>,
    /// Every stored index object; replaced by one new object when `rewrite_index`.
    pub old_indexes: Vec<IndexId>,
    pub rewrite_index: bool,
}

impl PrunePlan {
    /// Bytes of packs deleted outright.
    pub fn bytes_deleted(&self) -> u64 {
        self.delete.iter().chain(&self.unindexed).map(|(_, size)| size).sum()
    }

    /// Bytes of packs that are read and rewritten.
    pub fn bytes_repacked(&self) -> u64 {
        self.repack.iter().map(|repack| repack.pack.size).sum()
    }

    /// About how many bytes the prune frees (deleted packs and the unused part of repacked ones).
    pub fn bytes_freed(&self) -> u64 {
        let kept: u64 = self.repack.iter().flat_map(|r| &r.used).map(|entry| entry.length as u64).sum();
        self.bytes_deleted() + self.bytes_repacked().saturating_sub(kept)
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
}

/// Plans a prune: finds the blobs the remaining snapshots use, and for each pack
/// whether it is kept, repacked or deleted. Refuses on any damage it would make worse.
///
/// `forgotten` snapshots are treated as already removed, so a dry run of
/// `forget --prune` shows what the prune after it would do.
pub fn plan(repository: &Repository, options: &PruneOptions, forgotten: &HashSet<SnapshotId>) -> Result<PrunePlan> {
    let (used, snapshots) = used_blobs(repository, forgotten)?;
    let (files, damaged) = repository.load_index_objects()?;
    if let Some(error) = damaged.into_iter().next() {
        return Err(refusal(error));
    }
    let stored = repository.list_packs()?;
    let mut plan = PrunePlan { snapshots, used_blobs: used.len(), ..Default::default() };
    let listed = classify_packs(&files, &stored, &used, options, &mut plan)?;
    let mut unindexed: Vec<(PackId, u64)> =
        stored.iter().filter(|(id, _)| !listed.contains(*id)).map(|(id, size)| (*id, *size)).collect();
    unindexed.sort();
    plan.unindexed = unindexed;
    plan.old_indexes = repository.index_object_ids()?;
    plan.rewrite_index = !plan.delete.is_empty() || !plan.repack.is_empty() || plan.old_indexes.len() > 1;
    Ok(plan)
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

/// Every (blob, type) a readable snapshot uses, and the number of snapshots. Any
/// snapshot or manifest that cannot be read stops the prune: its blobs are unknown.
fn used_blobs(
    repository: &Repository,
    forgotten: &HashSet<SnapshotId>,
) -> Result<(HashSet<(BlobId, BlobType)>, usize)> {
    let (mut snapshots, damaged) = repository.list_snapshots()?;
    if let Some(error) = damaged.into_iter().next() {
        return Err(refusal(error));
    }
    snapshots.retain(|(id, _)| !forgotten.contains(id));
    let mut used = HashSet::new();
    for (id, snapshot) in &snapshots {
        used.extend(snapshot.manifest.blobs.iter().map(|blob| (*blob, BlobType::Metadata)));
        let manifest = repository.load_manifest(id, snapshot).map_err(refusal)?;
        used.extend(manifest.blobs()?.into_iter().map(|blob| (blob, BlobType::Data)));
    }
    Ok((used, snapshots.len()))
}

/// Sorts every indexed pack into keep, repack or delete; returns the ids of all packs
/// the index names. Each used blob is assigned to the first existing pack holding it.
fn classify_packs(
    files: &[(IndexId, IndexFile)],
    stored: &HashMap<PackId, u64>,
    used: &HashSet<(BlobId, BlobType)>,
    options: &PruneOptions,
    plan: &mut PrunePlan,
) -> Result<HashSet<PackId>> {
    let mut listed = HashSet::new();
    let mut assigned = HashSet::new();
    let mut candidates = Vec::new();
    for pack in files.iter().flat_map(|(_, file)| &file.packs) {
        if !listed.insert(pack.id) {
            continue;
        }
        match stored.get(&pack.id) {
            None => continue,
            Some(&size) if size != pack.size => {
                return Err(refusal(Error::integrity(
                    pack_key(&pack.id),
                    format!("it has {size} bytes but the index says {}", pack.size),
                )))
            }
            Some(_) => {}
        }
        let in_use: Vec<PackEntry> = pack
            .blobs
            .iter()
            .filter(|blob| used.contains(&(blob.id, blob.blob_type)) && assigned.insert((blob.id, blob.blob_type)))
            .copied()
            .collect();
        let used_bytes: u64 = in_use.iter().map(|entry| entry.length as u64).sum();
        let blob_bytes: u64 = pack.blobs.iter().map(|entry| entry.length as u64).sum();
        if in_use.is_empty() {
            plan.delete.push((pack.id, pack.size));
        } else if blob_bytes.saturating_sub(used_bytes) as f64 > options.max_unused * pack.size as f64 {
            candidates.push(Repack { pack: pack.clone(), used: in_use });
        } else {
            plan.keep.push(pack.clone());
        }
    }
    if assigned.len() != used.len() {
        let missing = used.len() - assigned.len();
        return Err(refusal(Error::MissingObject {
            object: format!("{missing} blob(s) the snapshots use (in no existing pack)"),
        }));
    }
    choose_repacks(candidates, options, plan);
    Ok(listed)
}

/// Repacks the emptiest candidates first, within the size limit; keeps the rest.
fn choose_repacks(mut candidates: Vec<Repack>, options: &PruneOptions, plan: &mut PrunePlan) {
    let used_share = |repack: &Repack| {
        repack.used.iter().map(|entry| entry.length as f64).sum::<f64>() / repack.pack.size.max(1) as f64
    };
    candidates.sort_by(|a, b| used_share(a).total_cmp(&used_share(b)));
    let mut budget = options.max_repack_size.unwrap_or(u64::MAX);
    for candidate in candidates {
        if candidate.pack.size <= budget {
            budget -= candidate.pack.size;
            plan.repack.push(candidate);
        } else {
            plan.keep.push(candidate.pack);
        }
    }
}

/// Executes a plan in the crash-safe order. The repository must not have changed since
/// the plan was made (the exclusive lock ensures it).
pub fn execute(repository: &Repository, plan: &PrunePlan) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let new_packs = repack(repository, &plan.repack)?;
    report.packs_written = new_packs.len() as u64;
    report.bytes_written = new_packs.iter().map(|pack| pack.size).sum();
    if plan.rewrite_index {
        let mut packs = plan.keep.clone();
        packs.extend(new_packs);
        repository.write_index(&IndexFile { supersedes: plan.old_indexes.clone(), packs })?;
        for id in &plan.old_indexes {
            repository.backend().delete(&format!("index/{id}"))?;
            report.index_objects_deleted += 1;
        }
    }
    let repacked = plan.repack.iter().map(|repack| &repack.pack.id);
    let indexed_gone = plan.delete.iter().map(|(id, _)| id).chain(repacked);
    // Indexed packs may be deleted only once no index object in force names them.
    let deletable: Vec<&PackId> = if plan.rewrite_index { indexed_gone.collect() } else { Vec::new() };
    for id in deletable.into_iter().chain(plan.unindexed.iter().map(|(id, _)| id)) {
        repository.backend().delete(&pack_key(id))?;
        report.packs_deleted += 1;
    }
    Ok(report)
}

/// Copies the used blobs of each pack into new packs; returns them (not yet indexed).
fn repack(repository: &Repository, repacks: &[Repack]) -> Result<Vec<IndexedPack>> {
    if repacks.is_empty() {
        return Ok(Vec::new());
    }
    let packer = Packer::new(repository);
    for repack in repacks {
        let key = pack_key(&repack.pack.id);
        let bytes = repository.backend().get(&key)?;
        for entry in &repack.used {
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
