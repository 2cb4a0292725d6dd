//! Restoring file contents: fetch the needed byte ranges of packs, coalesced and in
//! parallel, verify each blob, and write it wherever it belongs, leaving zero blocks as holes.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{Action, PlannedEntry, RestoreOptions, RestorePlan, RestoreReport};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::index::BlobLocation;
use crate::manifest::EntryKind;
use crate::pack::BlobType;
use crate::repository::{pack_key, Repository};

/// Ranges closer than this are fetched as one request.
const COALESCE_GAP: u64 = 256 * 1024;
/// A coalesced request grows no larger than this.
const MAX_REQUEST: u64 = 4 * 1024 * 1024;
const BLOCK: u64 = 4096;

/// A file being restored under its temporary name.
struct Pending<'p> {
    planned: &'p PlannedEntry,
    temporary: PathBuf,
}

/// Where one blob's bytes go.
type Destinations = Vec<(usize, u64)>;

/// One request: a range of a pack and the blobs in it.
struct Request {
    pack: PackId,
    start: u64,
    end: u64,
    blobs: Vec<BlobLocation>,
}

/// Restores every regular file of the plan; returns the entry ids that failed.
pub(super) fn restore_contents(
    repository: &Repository,
    plan: &RestorePlan,
    options: &RestoreOptions,
    report: &mut RestoreReport,
) -> Result<HashSet<i64>> {
    let mut pending = Vec::new();
    let failures: Mutex<HashMap<usize, String>> = Mutex::new(HashMap::new());
    // Folders already made: one create_dir_all per folder, not one per file.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for planned in plan.entries.iter().filter(|p| p.entry.kind == EntryKind::File && p.action != Action::HardLink) {
        let temporary = temporary_name(&planned.target);
        let parent = planned.target.parent().map(Path::to_path_buf).unwrap_or_default();
        let folder = if made.contains(&parent) {
            Ok(())
        } else {
            std::fs::create_dir_all(&parent).inspect(|()| {
                made.insert(parent.clone());
            })
        };
        let created = folder.and_then(|()| File::create(&temporary)).and_then(|file| file.set_len(planned.entry.size));
        if let Err(error) = created {
            failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pending.len(), format!("cannot create {}: {error}", temporary.display()));
        }
        pending.push(Pending { planned, temporary });
    }
    let mut destinations: HashMap<BlobId, Destinations> = HashMap::new();
    for (index, file) in pending.iter().enumerate() {
        for chunk in &file.planned.chunks {
            destinations.entry(chunk.blob).or_default().push((index, chunk.offset));
        }
    }
    let requests = plan_requests(repository, &destinations, &pending, &failures)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(repository.backend().parallel_reads().max(1))
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start restore threads: {e}")))?;
    let written: u64 = pool.install(|| {
        requests.par_iter().map(|request| fetch_request(repository, request, &destinations, &pending, &failures)).sum()
    });
    report.bytes_written += written;
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    finish_files(&pending, options.verify, &mut failures, report);
    link_files(plan, report);
    let failed_ids = failures.keys().map(|&index| pending[index].planned.entry_id).collect();
    Ok(failed_ids)
}

fn temporary_name(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let short: String = name.chars().take(64).collect();
    target.with_file_name(format!(".{short}.coffer-restore-{}", std::process::id()))
}

fn fail(failures: &Mutex<HashMap<usize, String>>, index: usize, reason: String) {
    failures.lock().unwrap_or_else(|p| p.into_inner()).entry(index).or_insert(reason);
}

/// Looks up every blob and groups them into coalesced range requests per pack.
fn plan_requests(
    repository: &Repository,
    destinations: &HashMap<BlobId, Destinations>,
    pending: &[Pending<'_>],
    failures: &Mutex<HashMap<usize, String>>,
) -> Result<Vec<Request>> {
    let mut by_pack: HashMap<PackId, Vec<BlobLocation>> = HashMap::new();
    for (blob, targets) in destinations {
        match repository.lookup(blob, BlobType::Data)? {
            Some(location) => by_pack.entry(location.pack).or_default().push(location),
            None => {
                for &(index, _) in targets {
                    fail(
                        failures,
                        index,
                        format!(
                            "{}: blob {blob} is not in the repository index",
                            pending[index].planned.target.display()
                        ),
                    );
                }
            }
        }
    }
    let packs: Vec<PackId> = by_pack.keys().copied().collect();
    let headers: Vec<(PackId, Result<()>)> =
        packs.par_iter().map(|pack| (*pack, repository.verify_pack_header(pack).map(drop))).collect();
    for (pack, verified) in headers {
        let Err(error) = verified else { continue };
        let Some(blobs) = by_pack.remove(&pack) else {
            continue;
        };
        for location in blobs {
            for &(index, _) in destinations.get(&location.entry.id).map(Vec::as_slice).unwrap_or_default() {
                fail(
                    failures,
                    index,
                    format!("{} cannot be restored: {error}", pending[index].planned.target.display()),
                );
            }
        }
    }
    let mut requests = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|location| location.entry.offset);
        let mut current: Option<Request> = None;
        for location in blobs {
            let (start, end) =
                (location.entry.offset as u64, location.entry.offset as u64 + location.entry.length as u64);
            if let Some(request) =
                current.as_mut().filter(|r| start <= r.end + COALESCE_GAP && end - r.start <= MAX_REQUEST)
            {
                request.end = request.end.max(end);
                request.blobs.push(location);
                continue;
            }
            requests.extend(current.replace(Request { pack, start, end, blobs: vec![location] }));
        }
        requests.extend(current);
    }
    Ok(requests)
}

/// Fetches one range and writes its blobs; returns the bytes written.
fn fetch_request(
    repository: &Repository,
    request: &Request,
    destinations: &HashMap<BlobId, Destinations>,
    pending: &[Pending<'_>],
    failures: &Mutex<HashMap<usize, String>>,
) -> u64 {
    let fail_blob = |location: &BlobLocation, reason: &str| {
        for &(index, _) in destinations.get(&location.entry.id).map(Vec::as_slice).unwrap_or_default() {
            fail(failures, index, format!("{} cannot be restored: {reason}", pending[index].planned.target.display()));
        }
    };
    let bytes = match repository.backend().get_range(&pack_key(&request.pack), request.start..request.end) {
        Ok(bytes) => bytes,
        Err(error) => {
            request.blobs.iter().for_each(|location| fail_blob(location, &error.to_string()));
            return 0;
        }
    };
    // The blobs of one range are opened and written in parallel: a large file whose
    // chunks sit in one range (a database dump deduplicated to a few MiB) would
    // otherwise be decompressed and verified on one core.
    request
        .blobs
        .par_iter()
        .map(|location| {
            let from = (location.entry.offset as u64 - request.start) as usize;
            let Some(sealed) = bytes.get(from..from + location.entry.length as usize) else {
                fail_blob(location, &format!("{} returned fewer bytes than its index says", pack_key(&request.pack)));
                return 0;
            };
            let write = |data: &[u8]| write_blob(data, destinations.get(&location.entry.id), pending, failures);
            match repository.visit_sealed_blob(location, sealed, write) {
                Ok(written) => written,
                Err(error) => {
                    fail_blob(location, &error.to_string());
                    0
                }
            }
        })
        .sum()
}

/// Writes one opened blob wherever it belongs; returns the bytes written.
fn write_blob(
    data: &[u8],
    destinations: Option<&Destinations>,
    pending: &[Pending<'_>],
    failures: &Mutex<HashMap<usize, String>>,
) -> u64 {
    let mut written = 0;
    for &(index, offset) in destinations.map(Vec::as_slice).unwrap_or_default() {
        let file = &pending[index];
        match write_sparse(&file.temporary, offset, data) {
            Ok(()) => written += data.len() as u64,
            Err(error) => fail(failures, index, format!("cannot write {}: {error}", file.temporary.display())),
        }
    }
    written
}

/// Writes `data` at `offset`, skipping 4 KiB blocks of zeros so they stay holes.
fn write_sparse(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut position = 0usize;
    let mut run_start: Option<usize> = None;
    while position < data.len() {
        let block_end = ((((offset + position as u64) / BLOCK) + 1) * BLOCK - offset) as usize;
        let end = block_end.min(data.len());
        let zero = data[position..end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (true, Some(start)) => {
                file.write_all_at(&data[start..position], offset + start as u64)?;
                run_start = None;
            }
            (false, None) => run_start = Some(position),
            _ => {}
        }
        position = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// Verifies (when asked) and renames finished files into place; removes failed ones.
fn finish_files(
    pending: &[Pending<'_>],
    verify: bool,
    failures: &mut HashMap<usize, String>,
    report: &mut RestoreReport,
) {
    for (index, file) in pending.iter().enumerate() {
        let target = &file.planned.target;
        if !failures.contains_key(&index) && verify {
            if let Some(reason) = verify_file(&file.temporary, file.planned.entry.sha256) {
                failures.insert(index, format!("{} failed verification: {reason}", target.display()));
            }
        }
        if let Some(reason) = failures.get(&index) {
            let _ = std::fs::remove_file(&file.temporary);
            report.failed.push((target.clone(), reason.clone()));
            continue;
        }
        match std::fs::rename(&file.temporary, target) {
            Ok(()) => report.files += 1,
            Err(error) => {
                let _ = std::fs::remove_file(&file.temporary);
                let reason = format!("cannot put {} in place: {error}", target.display());
                failures.insert(index, reason.clone());
                report.failed.push((target.clone(), reason));
            }
        }
    }
}

fn verify_file(path: &Path, expected: Option<[u8; 32]>) -> Option<String> {
    let expected = expected?;
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => return Some(error.to_string()),
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => hasher.update(&buffer[..count]),
            Err(error) => return Some(error.to_string()),
        }
    }
    let actual: [u8; 32] = hasher.finalize().into();
    (actual != expected)
        .then(|| format!("SHA-256 {} differs from the manifest's {}", hex::encode(actual), hex::encode(expected)))
}

/// Creates the further names of hard-linked files.
fn link_files(plan: &RestorePlan, report: &mut RestoreReport) {
    let failed: HashSet<PathBuf> = report.failed.iter().map(|(path, _)| path.clone()).collect();
    for planned in plan.entries.iter().filter(|p| p.action == Action::HardLink) {
        let Some(leader) = &planned.link_to else {
            continue;
        };
        if failed.contains(leader) {
            report
                .failed
                .push((planned.target.clone(), format!("its hard link {} could not be restored", leader.display())));
            continue;
        }
        if std::fs::symlink_metadata(&planned.target).is_ok_and(|m| !m.is_dir()) {
            let _ = std::fs::remove_file(&planned.target);
        }
        match std::fs::hard_link(leader, &planned.target) {
            Ok(()) => report.files += 1,
            Err(error) => report.failed.push((
                planned.target.clone(),
                format!("cannot link {} to {}: {error}", planned.target.display(), leader.display()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sparse");
        File::create(&path).unwrap().set_len(1 << 22).unwrap();
        let mut data = vec![0u8; 1 << 22];
        data[100] = 1;
        data[(1 << 22) - 1] = 2;
        write_sparse(&path, 0, &data).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 < 1 << 20);
    }

    #[test]
    fn unaligned_offsets_are_written_exactly() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("f");
        File::create(&path).unwrap().set_len(20_000).unwrap();
        let data: Vec<u8> =
            (0..15_000u32).map(|i| if (5000..12000).contains(&i) { 0 } else { (i % 251 + 1) as u8 }).collect();
        write_sparse(&path, 4_999, &data).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[4_999..19_999], &data[..]);
    }
}
