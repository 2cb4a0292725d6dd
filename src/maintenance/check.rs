//! Repository check: structure (index, packs, snapshots, manifests) and, on request,
//! the content of packs, reporting which snapshots and files any damage takes away.
//!
//! Read only. The caller holds a shared lock.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use bytes::Bytes;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, SnapshotId};
use crate::maintenance::repair::DAMAGED_TAG;
use crate::repository::index::{IndexedPack, ScratchIndex};
use crate::repository::objects::read_pack_header;
use crate::repository::pack::{verify_blob, BlobType, PackEntry};
use crate::repository::snapshot::Snapshot;
use crate::repository::{pack_key, Repository, ScratchLoad};

/// Most paths a report lists per affected snapshot; `AffectedSnapshot::files` counts all.
pub const PATHS_LISTED: usize = 10_000;

/// Which packs `--read-data` downloads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadSubset {
    /// Every pack.
    All,
    /// Part `n` of `m` (1-based): the packs whose id, read as a number, is `n - 1` mod `m`.
    /// The parts are disjoint and `1/m` to `m/m` cover every pack.
    Part { n: u32, m: u32 },
    /// A share of the packs, in percent: those verified longest ago (per the local
    /// cache) first, never-verified ones in random order.
    Percent(f64),
    /// Packs up to this many bytes, in the same order as `Percent`.
    Size(u64),
}

impl FromStr for ReadSubset {
    type Err = Error;

    /// Parses `N/M`, `P%` or a size such as `500M` or `2G` (K, M, G, T: powers of 1024).
    fn from_str(text: &str) -> Result<Self> {
        let invalid = || {
            Error::InvalidInput(format!(
                "{text:?} is not a subset: give N/M (such as 2/7), P% (such as 10%) or a size (such as 500M)"
            ))
        };
        if let Some(bytes) = parse_size(text) {
            return Ok(Self::Size(bytes));
        }
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent.trim().parse().map_err(|_| invalid())?;
            return if value > 0.0 && value <= 100.0 { Ok(Self::Percent(value)) } else { Err(invalid()) };
        }
        let (n, m) = text.split_once('/').ok_or_else(invalid)?;
        let (n, m): (u32, u32) = (n.trim().parse().map_err(|_| invalid())?, m.trim().parse().map_err(|_| invalid())?);
        if n == 0 || n > m {
            return Err(invalid());
        }
        Ok(Self::Part { n, m })
    }
}

/// `500M`, `2G`, `100K`, `1T` (powers of 1024) as bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let shift = match text.chars().last()?.to_ascii_uppercase() {
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return None,
    };
    let number: u64 = text[..text.len() - 1].parse().ok().filter(|n| *n > 0)?;
    number.checked_mul(1u64 << shift)
}

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Download and verify these packs; `None` checks the structure only.
    pub read_data: Option<ReadSubset>,
    /// Packs downloaded at once.
    pub jobs: usize,
    /// Counters to update as packs are read (totals: the packs selected and their bytes).
    pub progress: Option<std::sync::Arc<crate::Progress>>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self { read_data: None, jobs: 4, progress: None }
    }
}

/// One damaged or missing object and the blobs lost with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The object's name, such as `data/3f/3f0a...` or `index/...`.
    pub object: String,
    pub reason: String,
    /// Blobs that can no longer be read because of it (no other copy is indexed).
    pub lost_blobs: Vec<BlobId>,
}

/// A snapshot that cannot be restored in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffectedSnapshot {
    pub id: SnapshotId,
    pub time: String,
    pub host: String,
    /// Why the manifest cannot be read, if it cannot: then every file is lost.
    pub manifest_lost: Option<String>,
    /// Data blobs the manifest names that are lost.
    pub lost_blobs: u64,
    /// Files that lose content.
    pub files: u64,
    /// Paths of the first [`PATHS_LISTED`] files that lose content, in path order.
    pub paths: Vec<Vec<u8>>,
    /// The snapshot carries the `damaged` tag of `repair snapshots`: the loss is known
    /// and accepted, so it alone does not make the check fail.
    pub marked: bool,
}

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub index_objects: usize,
    pub packs: usize,
    pub snapshots: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    pub blobs_read: u64,
    pub damage: Vec<Damage>,
    pub affected: Vec<AffectedSnapshot>,
    /// Findings that lose nothing, such as packs no index names (left by an
    /// interrupted backup or prune; prune removes them).
    pub warnings: Vec<String>,
    /// Packs that could not be read for a storage reason (not damage): not verified.
    pub unreadable: Vec<(String, String)>,
}

impl CheckReport {
    /// True if any object is damaged or missing, or a snapshot not marked `damaged`
    /// cannot be restored in full.
    pub fn is_damaged(&self) -> bool {
        !self.damage.is_empty() || self.affected.iter().any(|affected| !affected.marked)
    }
}

/// Checks the repository; see the module documentation. The index is worked on in a
/// scratch file, so memory does not grow with the number of blobs.
pub fn check(repository: &Repository, options: &CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let stored = repository.list_packs()?;
    let ScratchLoad { mut index, damaged, objects, in_force } = repository.scratch_index()?;
    report.index_objects = in_force + damaged.len();
    report.damage.extend(damaged.iter().map(damage_of));
    let leftover = objects.saturating_sub(report.index_objects);
    if leftover > 0 {
        report.warnings.push(format!(
            "{leftover} superseded index object(s) are still stored; the next prune deletes them ({in_force} in use)"
        ));
    }
    check_packs(&mut index, &stored, &mut report)?;
    report.packs = stored.len();
    if let Some(subset) = options.read_data {
        read_packs(repository, &mut index, subset, options, &mut report)?;
    }
    check_snapshots(repository, &index, &mut report)?;
    Ok(report)
}

fn damage_of(error: &Error) -> Damage {
    let (object, reason) = match error {
        Error::Integrity { object, reason } => (object.clone(), reason.clone()),
        Error::MissingObject { object } => (object.clone(), "it is missing".to_string()),
        other => (String::new(), other.to_string()),
    };
    Damage { object, reason, lost_blobs: Vec::new() }
}

/// Takes the indexed packs that are missing or of the wrong size out of the index,
/// recording what they lose, and warns about stored packs no index names.
fn check_packs(index: &mut ScratchIndex, stored: &HashMap<PackId, u64>, report: &mut CheckReport) -> Result<()> {
    let indexed = index.packs()?;
    for (id, size) in &indexed {
        let reason = match stored.get(id) {
            None => "it is in the index but missing from storage".to_string(),
            Some(stored) if stored != size => format!("it has {stored} bytes but the index says {size}"),
            Some(_) => continue,
        };
        let key = pack_key(id);
        let lost = index.lose(id, None, &format!("{key} is damaged or missing"))?;
        report.damage.push(Damage { object: key, reason, lost_blobs: lost });
    }
    let listed: HashSet<PackId> = indexed.into_iter().map(|(id, _)| id).collect();
    let mut unindexed: Vec<&PackId> = stored.keys().filter(|id| !listed.contains(id)).collect();
    unindexed.sort();
    for pack in unindexed {
        report
            .warnings
            .push(format!("{} is in no index object (left by an interrupted run, or unused and kept under Object Lock; prune removes it)", pack_key(pack)));
    }
    Ok(())
}

/// The packs a subset selects, in id order. `verified` gives when packs were last
/// verified; the shares and sizes take the longest unverified first.
fn select_packs(packs: &HashMap<PackId, u64>, subset: ReadSubset, verified: &HashMap<PackId, i64>) -> Vec<PackId> {
    let mut ids: Vec<PackId> = packs.keys().copied().collect();
    ids.sort();
    let mut selected = match subset {
        ReadSubset::All => return ids,
        ReadSubset::Part { n, m } => {
            return ids
                .into_iter()
                .filter(|id| u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) % m == n - 1)
                .collect()
        }
        ReadSubset::Percent(percent) => {
            let count = ((ids.len() as f64) * percent / 100.0).ceil() as usize;
            oldest_verified_first(ids, verified).into_iter().take(count).collect::<Vec<_>>()
        }
        ReadSubset::Size(limit) => {
            let mut total = 0u64;
            let ordered = oldest_verified_first(ids, verified);
            ordered
                .into_iter()
                .take_while(|id| {
                    total += packs[id];
                    total <= limit
                })
                .collect()
        }
    };
    selected.sort();
    selected
}

/// Packs never verified first (in random order), then by when they were last verified.
fn oldest_verified_first(mut ids: Vec<PackId>, verified: &HashMap<PackId, i64>) -> Vec<PackId> {
    rand::seq::SliceRandom::shuffle(&mut ids[..], &mut rand::rng());
    ids.sort_by_key(|id| verified.get(id).copied().unwrap_or(i64::MIN));
    ids
}

/// What reading one pack found.
struct PackReading {
    bytes: u64,
    blobs: u64,
    problems: Vec<String>,
    bad_blobs: Vec<(BlobId, BlobType)>,
}

fn read_packs(
    repository: &Repository,
    index: &mut ScratchIndex,
    subset: ReadSubset,
    options: &CheckOptions,
    report: &mut CheckReport,
) -> Result<()> {
    let jobs = options.jobs;
    let packs: HashMap<PackId, u64> = index.packs()?.into_iter().collect();
    let selected = select_packs(&packs, subset, &repository.pack_verification_times()?);
    let progress = options.progress.as_deref();
    if let Some(progress) = progress {
        selected.iter().for_each(|id| progress.add_scanned(packs[id]));
        progress.finish_scan();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start {jobs} check threads: {e}")))?;
    let mut intact = Vec::new();
    // A few packs per thread at a time: only their index entries are in memory.
    for batch in selected.chunks(jobs.max(1) * 4) {
        let batch: Vec<IndexedPack> = batch.iter().map(|id| index.pack(id, packs[id])).collect::<Result<_>>()?;
        let readings: Vec<(PackId, Result<PackReading>)> = pool.install(|| {
            batch
                .par_iter()
                .map(|pack| {
                    let reading = read_one_pack(repository, pack);
                    if let Some(progress) = progress {
                        progress.start_file(std::path::Path::new(&pack_key(&pack.id)));
                        progress.add_read(pack.size);
                        progress.file_done();
                    }
                    (pack.id, reading)
                })
                .collect()
        });
        for (id, reading) in readings {
            // Storage that failed after its retries: this pack is not verified, the
            // others are; the report names it and check does not pass.
            let reading = match reading {
                Ok(reading) => reading,
                Err(error) if !error.is_integrity() => {
                    report.unreadable.push((pack_key(&id), error.to_string()));
                    continue;
                }
                Err(error) => return Err(error),
            };
            report.packs_read += 1;
            report.bytes_read += reading.bytes;
            report.blobs_read += reading.blobs;
            if reading.problems.is_empty() && reading.bad_blobs.is_empty() {
                intact.push(id);
                continue;
            }
            let key = pack_key(&id);
            let lost = index.lose(&id, Some(&reading.bad_blobs), &format!("{key} is damaged or missing"))?;
            let mut reason = reading.problems.join("; ");
            if !reading.bad_blobs.is_empty() {
                let sep = if reason.is_empty() { "" } else { "; " };
                reason.push_str(&format!("{sep}{} blob(s) fail authentication", reading.bad_blobs.len()));
            }
            report.damage.push(Damage { object: key, reason, lost_blobs: lost });
        }
    }
    repository.record_verified(&intact)
}

/// A pack is read in pieces of about this size (a larger blob is read whole), so the
/// memory of a check does not grow with the pack size (up to 2 GiB).
const READ_PIECE: u64 = 4 << 20;

/// A byte range of a pack and the indexed blobs that lie wholly inside it.
struct Piece<'p> {
    start: u64,
    end: u64,
    blobs: Vec<&'p PackEntry>,
}

/// Cuts a pack into contiguous pieces, from its start to its end, at blob boundaries.
/// Blobs the index places outside the pack come back separately.
fn pieces(pack: &IndexedPack) -> (Vec<Piece<'_>>, Vec<&PackEntry>) {
    let mut blobs: Vec<&PackEntry> = pack.blobs.iter().collect();
    blobs.sort_by_key(|blob| blob.offset);
    let (mut pieces, mut outside) = (Vec::new(), Vec::new());
    let mut current = Piece { start: 0, end: 0, blobs: Vec::new() };
    for blob in blobs {
        let (start, end) = (blob.offset as u64, blob.offset as u64 + blob.length as u64);
        if end > pack.size {
            outside.push(blob);
            continue;
        }
        if end - current.start > READ_PIECE && start > current.start && current.end <= start {
            let next = Piece { start, end: start, blobs: Vec::new() };
            pieces.push(Piece { end: start, ..std::mem::replace(&mut current, next) });
        }
        current.end = current.end.max(end);
        current.blobs.push(blob);
    }
    pieces.push(Piece { end: pack.size, ..current });
    (pieces, outside)
}

/// Downloads one pack piece by piece, checks its hash and header against the index, and
/// opens every blob the index places in it.
fn read_one_pack(repository: &Repository, pack: &IndexedPack) -> Result<PackReading> {
    let key = pack_key(&pack.id);
    let (pieces, outside) = pieces(pack);
    let mut reading =
        PackReading { bytes: 0, blobs: pack.blobs.len() as u64, problems: Vec::new(), bad_blobs: Vec::new() };
    reading.bad_blobs.extend(outside.iter().map(|blob| (blob.id, blob.blob_type)));
    let mut hasher = blake3::Hasher::new();
    let mut tail = (0, Bytes::new());
    for (number, piece) in pieces.iter().enumerate() {
        let bytes = match repository.backend().get_range(&key, piece.start..piece.end) {
            Ok(bytes) => bytes,
            Err(error) if error.is_integrity() => {
                reading.problems.push(error.to_string());
                let unread = pieces[number..].iter().flat_map(|piece| &piece.blobs);
                reading.bad_blobs.extend(unread.map(|blob| (blob.id, blob.blob_type)));
                return Ok(reading);
            }
            Err(error) => return Err(error),
        };
        reading.bytes += bytes.len() as u64;
        hasher.update(&bytes);
        reading.bad_blobs.extend(bad_blobs(repository, piece, &bytes));
        tail = (piece.start, bytes);
    }
    if *hasher.finalize().as_bytes() != pack.id.0 {
        reading.problems.push("its content does not match its name (hash mismatch)".to_string());
    }
    let tail = Some((tail.0, &tail.1[..]));
    match read_pack_header(&**repository.backend(), repository.master(), &pack.id, pack.size, tail) {
        Ok(header) => {
            let listed: HashSet<&PackEntry> = header.iter().collect();
            if pack.blobs.iter().any(|blob| !listed.contains(blob)) {
                reading.problems.push("its header and the index disagree".to_string());
            }
        }
        Err(error) if error.is_integrity() => reading.problems.push(damage_of(&error).reason),
        Err(error) => return Err(error),
    }
    Ok(reading)
}

/// The blobs of a piece that fail to open, opened in parallel: a repository of a few
/// packs (a deduplicated database dump) would otherwise be verified on one core.
fn bad_blobs(repository: &Repository, piece: &Piece<'_>, bytes: &[u8]) -> Vec<(BlobId, BlobType)> {
    piece
        .blobs
        .par_iter()
        .filter(|blob| {
            let from = (blob.offset as u64 - piece.start) as usize;
            let sealed = bytes.get(from..from + blob.length as usize);
            !sealed.is_some_and(|sealed| {
                verify_blob(repository.master(), blob.blob_type, blob.id, sealed, blob.raw_length)
            })
        })
        .map(|blob| (blob.id, blob.blob_type))
        .collect()
}

/// The entries of a pack's header, taken from the last piece read (`tail`, starting at
/// that offset), which holds the header unless the index is wrong about the pack.
fn check_snapshots(repository: &Repository, index: &ScratchIndex, report: &mut CheckReport) -> Result<()> {
    let (snapshots, damaged) = repository.list_snapshots_from_storage()?;
    report.damage.extend(damaged.iter().map(damage_of));
    for (id, snapshot) in &snapshots {
        report.snapshots += 1;
        if let Some(affected) = check_snapshot(repository, index, id, snapshot)? {
            report.affected.push(affected);
        }
    }
    Ok(())
}

/// What a snapshot loses, if anything: its manifest, or the files using lost blobs.
fn check_snapshot(
    repository: &Repository,
    index: &ScratchIndex,
    id: &SnapshotId,
    snapshot: &Snapshot,
) -> Result<Option<AffectedSnapshot>> {
    let mut affected = AffectedSnapshot {
        id: *id,
        time: snapshot.time.clone(),
        host: snapshot.host.clone(),
        manifest_lost: None,
        lost_blobs: 0,
        files: 0,
        paths: Vec::new(),
        marked: snapshot.tags.iter().any(|tag| tag == DAMAGED_TAG),
    };
    for blob in &snapshot.manifest.blobs {
        if let Some(reason) = index.lost_reason(blob, BlobType::Metadata)? {
            affected.manifest_lost = Some(format!("a blob of its manifest is lost: {reason}"));
            return Ok(Some(affected));
        }
    }
    let manifest = match repository.load_manifest(id, snapshot) {
        Ok(manifest) => manifest,
        Err(error) if error.is_integrity() || matches!(error, Error::UnsupportedVersion { .. }) => {
            affected.manifest_lost = Some(error.to_string());
            return Ok(Some(affected));
        }
        Err(error) => return Err(error),
    };
    let (lost_blobs, files, paths) = index.lost_in_manifest(manifest.path(), PATHS_LISTED)?;
    if lost_blobs == 0 {
        return Ok(None);
    }
    affected.lost_blobs = lost_blobs;
    affected.files = files;
    affected.paths = paths;
    Ok(Some(affected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pack_of(lengths: &[u32], trailer: u64) -> IndexedPack {
        let mut offset = 0u32;
        let blobs = lengths
            .iter()
            .enumerate()
            .map(|(index, &length)| {
                let entry = PackEntry {
                    id: BlobId([index as u8; 32]),
                    blob_type: BlobType::Data,
                    offset,
                    length,
                    raw_length: length,
                };
                offset += length;
                entry
            })
            .collect();
        IndexedPack { id: PackId([0; 32]), size: offset as u64 + trailer, blobs }
    }

    proptest! {
        #[test]
        fn pieces_cover_the_pack_in_order_and_hold_each_blob_once(
            lengths in proptest::collection::vec(1u32..3_000_000, 0..40),
            trailer in 4u64..100_000,
        ) {
            let pack = pack_of(&lengths, trailer);
            let (pieces, outside) = pieces(&pack);
            prop_assert!(outside.is_empty());
            prop_assert_eq!(pieces[0].start, 0);
            prop_assert_eq!(pieces.last().unwrap().end, pack.size);
            for pair in pieces.windows(2) {
                prop_assert_eq!(pair[0].end, pair[1].start);
            }
            let mut held = 0;
            for piece in &pieces {
                for blob in &piece.blobs {
                    prop_assert!(piece.start <= blob.offset as u64);
                    prop_assert!(blob.offset as u64 + blob.length as u64 <= piece.end);
                }
                held += piece.blobs.len();
                let blobs_end = piece.blobs.iter().map(|b| b.offset as u64 + b.length as u64).max().unwrap_or(0);
                let span = blobs_end.saturating_sub(piece.start);
                prop_assert!(span <= READ_PIECE || piece.blobs.len() == 1, "{} bytes in {} blobs", span, piece.blobs.len());
            }
            prop_assert_eq!(held, lengths.len());
        }
    }

    #[test]
    fn blobs_beyond_the_pack_are_set_apart() {
        let mut pack = pack_of(&[1000, 2000], 50);
        pack.size = 1500;
        let (pieces, outside) = pieces(&pack);
        assert_eq!(outside.len(), 1);
        assert_eq!(pieces.iter().map(|p| p.blobs.len()).sum::<usize>(), 1);
        assert_eq!((pieces[0].start, pieces.last().unwrap().end), (0, 1500));
    }

    #[test]
    fn subsets_parse_and_reject_nonsense() {
        assert_eq!("2/7".parse::<ReadSubset>().unwrap(), ReadSubset::Part { n: 2, m: 7 });
        assert_eq!("12.5%".parse::<ReadSubset>().unwrap(), ReadSubset::Percent(12.5));
        for bad in ["0/3", "4/3", "x/3", "0%", "101%", "7", ""] {
            assert!(bad.parse::<ReadSubset>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_are_disjoint_and_cover_every_pack() {
        let mut view = HashMap::new();
        for byte in 0..=255u8 {
            view.insert(PackId([byte; 32]), 1);
        }
        let never = HashMap::new();
        let mut seen = HashSet::new();
        for n in 1..=5 {
            for id in select_packs(&view, ReadSubset::Part { n, m: 5 }, &never) {
                assert!(seen.insert(id), "{id:?} is in two parts");
            }
        }
        assert_eq!(seen.len(), 256);
        assert_eq!(select_packs(&view, ReadSubset::Percent(10.0), &never).len(), 26);
        assert_eq!(select_packs(&view, ReadSubset::Size(5), &never).len(), 5);
    }

    #[test]
    fn shares_take_the_longest_unverified_first() {
        let mut view = HashMap::new();
        let mut verified = HashMap::new();
        for byte in 0..10u8 {
            let id = PackId([byte; 32]);
            view.insert(id, 1);
            verified.insert(id, 1000 - byte as i64);
        }
        verified.remove(&PackId([4; 32]));
        let chosen = select_packs(&view, ReadSubset::Percent(30.0), &verified);
        assert_eq!(chosen, vec![PackId([4; 32]), PackId([8; 32]), PackId([9; 32])]);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("500M".parse::<ReadSubset>().unwrap(), ReadSubset::Size(500 << 20));
        assert_eq!("2g".parse::<ReadSubset>().unwrap(), ReadSubset::Size(2 << 30));
        assert!("0M".parse::<ReadSubset>().is_err() && "M".parse::<ReadSubset>().is_err());
    }
}
