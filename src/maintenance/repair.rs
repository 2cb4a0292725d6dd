//! Repair: rebuild the index from the pack headers, and mark or drop snapshots that lost data.
//!
//! The caller holds an exclusive lock.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::id::{IndexId, PackId, SnapshotId};
use crate::repository::index::IndexedPack;
use crate::repository::objects::{read_pack_header, Kind};
use crate::repository::pack::PackEntry;
use crate::repository::{Exclusive, Locked};

/// What rebuilding the index found and did.
#[derive(Debug, Clone, Default)]
pub struct RepairIndexReport {
    /// Packs whose headers were read and indexed.
    pub packs: usize,
    pub blobs: u64,
    /// Packs whose header cannot be read, and why; they are left in place, unindexed.
    pub unreadable: Vec<(PackId, String)>,
    /// The new index objects (none in a dry run).
    pub written: Vec<IndexId>,
    /// Index objects it replaced (and deleted).
    pub replaced: Vec<IndexId>,
}

/// Reads every pack's header (`jobs` at a time) and, unless `dry_run`, writes index
/// objects listing them, the last of which supersedes every stored index object, then
/// deletes those. Headers are read a batch at a time, so memory does not grow with the
/// repository.
pub fn repair_index(repository: &Locked<'_, Exclusive>, jobs: usize, dry_run: bool) -> Result<RepairIndexReport> {
    let mut stored: Vec<(PackId, u64)> = repository.list_packs()?.into_iter().collect();
    stored.sort();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start {jobs} threads: {e}")))?;
    let mut report = RepairIndexReport { replaced: repository.index_object_ids()?, ..Default::default() };
    let mut unreadable = Vec::new();
    let mut blobs = 0u64;
    let packs = stored.chunks(jobs.max(1) * 8).flat_map(|batch| {
        let headers: Vec<(PackId, u64, Result<Vec<PackEntry>>)> = pool.install(|| {
            batch
                .par_iter()
                .map(|(id, size)| {
                    (*id, *size, read_pack_header(&**repository.backend(), repository.master(), id, *size, None))
                })
                .collect()
        });
        let mut packs = Vec::new();
        for (id, size, header) in headers {
            match header {
                Ok(entries) => {
                    blobs += entries.len() as u64;
                    packs.push(Ok(IndexedPack { id, size, blobs: entries }));
                }
                Err(error) if error.is_integrity() => unreadable.push((id, error.to_string())),
                Err(error) => packs.push(Err(error)),
            }
        }
        packs
    });
    if dry_run {
        let mut count = 0;
        for pack in packs {
            pack?;
            count += 1;
        }
        report.packs = count;
    } else {
        let mut count = 0;
        let counted = packs.inspect(|pack| count += pack.is_ok() as usize);
        report.written = repository.write_index_objects(counted, report.replaced.clone())?;
        report.packs = count;
        for id in &report.replaced {
            Kind::Index.delete(&**repository.backend(), id)?;
        }
    }
    report.blobs = blobs;
    report.unreadable = unreadable;
    Ok(report)
}

/// What `repair snapshots` did, or would do, to one snapshot that lost data.
#[derive(Debug, Clone)]
pub struct SnapshotRepair {
    pub old: SnapshotId,
    /// The replacing record when the snapshot was marked; `None` when it was dropped
    /// (or in a dry run).
    pub new: Option<SnapshotId>,
    /// Files that lose content; every file when the manifest itself is lost.
    pub lost_files: u64,
    pub manifest_lost: bool,
}

/// Marks (tag `damaged`, `complete: false`) or, with `forget`, drops every snapshot the
/// check found damaged (marking skips those already marked). Without `apply` it only reports. A marked snapshot keeps every
/// intact file restorable; its new record is written before the old one is deleted.
pub fn repair_snapshots(
    repository: &Locked<'_, Exclusive>,
    report: &crate::maintenance::check::CheckReport,
    forget: bool,
    apply: bool,
) -> Result<Vec<SnapshotRepair>> {
    let mut repairs = Vec::new();
    for affected in &report.affected {
        if affected.marked && !forget {
            continue; // marked by an earlier run
        }
        let mut repair = SnapshotRepair {
            old: affected.id,
            new: None,
            lost_files: affected.files,
            manifest_lost: affected.manifest_lost.is_some(),
        };
        if apply && !forget {
            let mut snapshot = repository.load_snapshot(&affected.id)?;
            snapshot.complete = false;
            if !snapshot.tags.iter().any(|tag| tag == DAMAGED_TAG) {
                snapshot.tags.push(DAMAGED_TAG.to_string());
            }
            repair.new = Some(repository.save_snapshot(&snapshot)?);
        }
        if apply {
            Kind::Snapshot.delete(&**repository.backend(), &affected.id)?;
        }
        repairs.push(repair);
    }
    Ok(repairs)
}

/// The tag `repair snapshots` gives a snapshot that lost data.
pub const DAMAGED_TAG: &str = "damaged";
