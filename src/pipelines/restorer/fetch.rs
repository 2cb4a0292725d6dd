//! Restoring file contents: fetch the needed byte ranges of packs, coalesced and in
//! parallel, verify each blob, and write it wherever it belongs, leaving zero blocks as
//! holes. Each file is written under a temporary name of its own, opened below the
//! target without following symlinks and checked to be the file this run created.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Mutex;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{
    beneath, metadata, Action, Failure, FailureCause, PlannedEntry, RestoreOptions, RestorePlan, RestoreReport, Run,
};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::repository::index::BlobLocation;
use crate::repository::manifest::EntryKind;
use crate::repository::pack::BlobType;
use crate::repository::{pack_key, Repository};

/// Ranges closer than this are fetched as one request.
const COALESCE_GAP: u64 = 256 * 1024;
/// A coalesced request grows no larger than this.
const MAX_REQUEST: u64 = 4 * 1024 * 1024;
const BLOCK: u64 = 4096;

/// A file being restored under its temporary name.
struct Pending<'p> {
    planned: &'p PlannedEntry,
    /// Relative path of the temporary file, and its inode once created.
    temporary: Vec<u8>,
    inode: u64,
}

/// Why a pending file failed.
type Failures = Mutex<HashMap<usize, (String, FailureCause)>>;

/// Where one blob's bytes go.
type Destinations = Vec<(usize, u64)>;

/// One request: a range of a pack and the blobs in it.
struct Request {
    pack: PackId,
    start: u64,
    end: u64,
    blobs: Vec<BlobLocation>,
}

/// Restores every regular file of the plan whose folder was made; returns the relative
/// paths of the files that failed.
pub(super) fn restore_contents(
    run: &Run<'_>,
    repository: &Repository,
    plan: &RestorePlan,
    options: &RestoreOptions,
    failed_dirs: &HashSet<Vec<u8>>,
    report: &mut RestoreReport,
) -> Result<HashSet<Vec<u8>>> {
    let mut pending = Vec::new();
    let failures: Failures = Mutex::new(HashMap::new());
    let files = plan
        .entries
        .iter()
        .filter(|p| p.entry.kind == EntryKind::File && matches!(p.action, Action::Create | Action::Overwrite));
    for planned in files.filter(|p| !failed_dirs.contains(&p.relative)) {
        let index = pending.len();
        match create_temporary(run, planned) {
            Ok(file) => pending.push(file),
            Err(error) => {
                pending.push(Pending { planned, temporary: Vec::new(), inode: 0 });
                let reason = format!("cannot create a temporary file for {}: {error}", planned.target.display());
                fail(&failures, index, reason, FailureCause::LocalIo);
            }
        }
    }
    let mut destinations: HashMap<BlobId, Destinations> = HashMap::new();
    for (index, file) in pending.iter().enumerate() {
        for chunk in &file.planned.chunks {
            destinations.entry(chunk.blob).or_default().push((index, chunk.offset));
        }
    }
    let (reused, reused_written) = reuse_local_chunks(run, repository, &pending, &mut destinations, &failures);
    report.bytes_reused += reused;
    report.bytes_written += reused_written;
    let requests = plan_requests(repository, &destinations, &pending, &failures)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(repository.backend().parallel_reads().max(1))
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start restore threads: {e}")))?;
    let fetch = |request: &Request| fetch_request(run, repository, request, &destinations, &pending, &failures);
    let written: u64 = pool.install(|| requests.par_iter().map(fetch).sum());
    report.bytes_written += written;
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(signal) = crate::interrupt::requested() {
        let removed = pending.iter().filter(|file| remove_temporary(run, file)).count();
        let outcome = format!("no file was put in place; {removed} temporary file(s) removed");
        return Err(Error::Interrupted { signal, outcome });
    }
    let mut failed = finish_files(run, &pending, options.verify, failures, report);
    if let Some(signal) = crate::interrupt::requested() {
        let outcome = format!("{} file(s) were put in place; the others' temporary files were removed", report.files);
        return Err(Error::Interrupted { signal, outcome });
    }
    // The inodes this run created, by final name: further names are linked to these
    // inodes only, never to whatever a local user may have put under the name since.
    let inodes: HashMap<&[u8], u64> = pending
        .iter()
        .filter(|file| !failed.contains(&file.planned.relative))
        .map(|file| (file.planned.relative.as_slice(), file.inode))
        .collect();
    link_files(run, plan, &inodes, &mut failed, report);
    Ok(failed)
}

/// Creates a file's temporary sibling: `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, at
/// its full size (sparse), so nothing planted under that name is ever opened.
fn create_temporary<'p>(run: &Run<'_>, planned: &'p PlannedEntry) -> std::io::Result<Pending<'p>> {
    let folder = match run.target.parent(&planned.relative) {
        Ok((folder, _)) => folder,
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
            let parent = beneath::split_last(&planned.relative).map(|(folder, _)| folder).unwrap_or_default();
            run.target.make_dirs(parent)?;
            run.target.parent(&planned.relative)?.0
        }
        Err(error) => return Err(error),
    };
    let name = run.temporary_name();
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    let file = File::from(nix::fcntl::openat(&folder, name.as_os_str(), flags, Mode::from_bits_truncate(0o600))?);
    file.set_len(planned.entry.size)?;
    let inode = file.metadata()?.ino();
    Ok(Pending { planned, temporary: Run::sibling(&planned.relative, &name), inode })
}

/// Opens a pending file's temporary file again, refusing anything but the file this
/// run created (a local user may have swapped the name for another file).
fn reopen(run: &Run<'_>, file: &Pending<'_>, flags: OFlag) -> std::io::Result<File> {
    let opened = File::from(run.target.open(&file.temporary, flags, Mode::empty())?);
    if opened.metadata()?.ino() != file.inode {
        return Err(std::io::Error::other("the temporary file was replaced by another"));
    }
    Ok(opened)
}

fn remove_temporary(run: &Run<'_>, file: &Pending<'_>) -> bool {
    if file.temporary.is_empty() {
        return false;
    }
    let Ok((folder, name)) = run.target.parent(&file.temporary) else {
        return false;
    };
    nix::unistd::unlinkat(&folder, name, nix::unistd::UnlinkatFlags::NoRemoveDir).is_ok()
}

fn fail(failures: &Failures, index: usize, reason: String, cause: FailureCause) {
    failures.lock().unwrap_or_else(|p| p.into_inner()).entry(index).or_insert((reason, cause));
}

/// Reads the files the restore replaces, cuts them into chunks as a backup would, and
/// writes every chunk the restore needs (its keyed id proves it is the same bytes)
/// from there instead of fetching it: a large file of which a little changed costs
/// only the changed chunks. Returns the bytes taken from the target, and written.
fn reuse_local_chunks(
    run: &Run<'_>,
    repository: &Repository,
    pending: &[Pending<'_>],
    destinations: &mut HashMap<BlobId, Destinations>,
    failures: &Failures,
) -> (u64, u64) {
    let chunker = repository.file_chunker();
    let (mut reused, mut written) = (0, 0);
    let replaced = pending
        .iter()
        .filter(|file| file.planned.existed && file.planned.action == Action::Overwrite && !file.temporary.is_empty());
    for file in replaced {
        if destinations.is_empty() || crate::interrupt::requested().is_some() {
            break;
        }
        // Only a regular file no larger than twice what it is replaced with is read: a
        // huge or sparse one would cost more to read than the chunks it may save.
        let Ok(Some(stat)) = run.target.lookup(&file.planned.relative) else { continue };
        let regular = nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode) & nix::sys::stat::SFlag::S_IFMT
            == nix::sys::stat::SFlag::S_IFREG;
        if !regular || stat.st_size as u64 > file.planned.entry.size.saturating_mul(2) {
            continue;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let Ok(handle) = run.target.open(&file.planned.relative, flags, Mode::empty()) else { continue };
        let handle = File::from(handle);
        if !handle.metadata().is_ok_and(|metadata| metadata.is_file() && metadata.ino() == stat.st_ino) {
            continue;
        }
        for chunk in chunker.chunks(handle) {
            let Ok(chunk) = chunk else { break };
            if crate::interrupt::requested().is_some() {
                break;
            }
            let id = repository.master().blob_id(&chunk);
            if let Some(targets) = destinations.remove(&id) {
                written += write_blob(run, &chunk, Some(&targets), pending, failures);
                reused += chunk.len() as u64;
            }
        }
    }
    (reused, written)
}

/// Looks up every blob and groups them into coalesced range requests per pack.
fn plan_requests(
    repository: &Repository,
    destinations: &HashMap<BlobId, Destinations>,
    pending: &[Pending<'_>],
    failures: &Failures,
) -> Result<Vec<Request>> {
    let mut by_pack: HashMap<PackId, Vec<BlobLocation>> = HashMap::new();
    for (blob, targets) in destinations {
        match repository.lookup(blob, BlobType::Data)? {
            Some(location) => by_pack.entry(location.pack).or_default().push(location),
            None => {
                for &(index, _) in targets {
                    let shown = pending[index].planned.target.display();
                    let reason = format!("{shown}: blob {blob} is not in the repository index");
                    fail(failures, index, reason, FailureCause::Damage);
                }
            }
        }
    }
    let packs: Vec<PackId> = by_pack.keys().copied().collect();
    let headers: Vec<(PackId, Result<()>)> = crate::backend::in_flight(&**repository.backend(), &packs, |pack| {
        (*pack, repository.verify_pack_header(pack).map(drop))
    });
    for (pack, verified) in headers {
        let Err(error) = verified else { continue };
        let Some(blobs) = by_pack.remove(&pack) else {
            continue;
        };
        for location in blobs {
            for &(index, _) in destinations.get(&location.entry.id).map(Vec::as_slice).unwrap_or_default() {
                let reason = format!("{} cannot be restored: {error}", pending[index].planned.target.display());
                fail(failures, index, reason, FailureCause::of(&error));
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

/// Fetches one range and writes its blobs; returns the bytes written. After an
/// interrupt, requests not yet started are skipped.
fn fetch_request(
    run: &Run<'_>,
    repository: &Repository,
    request: &Request,
    destinations: &HashMap<BlobId, Destinations>,
    pending: &[Pending<'_>],
    failures: &Failures,
) -> u64 {
    if crate::interrupt::requested().is_some() {
        return 0;
    }
    let fail_blob = |location: &BlobLocation, reason: &str, cause: FailureCause| {
        for &(index, _) in destinations.get(&location.entry.id).map(Vec::as_slice).unwrap_or_default() {
            let reason = format!("{} cannot be restored: {reason}", pending[index].planned.target.display());
            fail(failures, index, reason, cause);
        }
    };
    let bytes = match repository.backend().get_range(&pack_key(&request.pack), request.start..request.end) {
        Ok(bytes) => bytes,
        Err(error) => {
            let cause = FailureCause::of(&error);
            request.blobs.iter().for_each(|location| fail_blob(location, &error.to_string(), cause));
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
                let reason = format!("{} returned fewer bytes than its index says", pack_key(&request.pack));
                fail_blob(location, &reason, FailureCause::Damage);
                return 0;
            };
            let write = |data: &[u8]| write_blob(run, data, destinations.get(&location.entry.id), pending, failures);
            match repository.visit_sealed_blob(location, sealed, write) {
                Ok(written) => written,
                Err(error) => {
                    fail_blob(location, &error.to_string(), FailureCause::Damage);
                    0
                }
            }
        })
        .sum()
}

/// Writes one opened blob wherever it belongs; returns the bytes written.
fn write_blob(
    run: &Run<'_>,
    data: &[u8],
    destinations: Option<&Destinations>,
    pending: &[Pending<'_>],
    failures: &Failures,
) -> u64 {
    let mut written = 0;
    for &(index, offset) in destinations.map(Vec::as_slice).unwrap_or_default() {
        let file = &pending[index];
        if file.temporary.is_empty() {
            continue;
        }
        match reopen(run, file, OFlag::O_WRONLY).and_then(|opened| {
            write_sparse(&opened, offset, data)?;
            if file.planned.entry.size >= WRITE_BACK_MINIMUM {
                start_write_back(&opened, offset, data.len());
            }
            Ok(())
        }) {
            Ok(()) => {
                written += data.len() as u64;
                run.wrote(data.len() as u64);
            }
            Err(error) => {
                let reason = format!("cannot write {}: {error}", run.target.display(&file.temporary).display());
                fail(failures, index, reason, FailureCause::LocalIo)
            }
        }
    }
    written
}

/// Files at least this large have their writes sent to disk as they are made; smaller
/// ones are left to the final `syncfs`, which writes many of them at a time (a call per
/// small file cost more than it saved on a tree of 15,000 source files).
const WRITE_BACK_MINIMUM: u64 = 1 << 20;

/// Starts writing a range just written to disk, without waiting for it
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`): the final `syncfs` then finds most
/// of a restore on disk already instead of all of it in the page cache, so the disk
/// works while the restore decrypts and verifies. Advice only: an error is ignored, the
/// final sync still covers everything.
fn start_write_back(file: &File, offset: u64, length: usize) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(length)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(length)) else {
        return;
    };
    // SAFETY: sync_file_range on a descriptor `file` owns; it reads no memory of ours.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset, length, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Writes `data` at `offset`, skipping 4 KiB blocks of zeros so they stay holes.
fn write_sparse(file: &File, offset: u64, data: &[u8]) -> std::io::Result<()> {
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

/// What became of one pending file when files were put in place.
enum Finished {
    Placed(Vec<String>),
    Failed(String, FailureCause),
    /// Not put in place: an interrupt came first (its temporary file was removed).
    Skipped,
}

/// Verifies (when asked), sets the metadata of and renames finished files into place;
/// removes failed ones. Returns the relative paths of the files that failed. Files are
/// finished on all cores: each takes a dozen system calls (open, owner, mode, times,
/// rename...), and one after another they were a third of a restore of 15,000 small
/// files. Reports and warnings keep the plan's order.
fn finish_files(
    run: &Run<'_>,
    pending: &[Pending<'_>],
    verify: bool,
    failures: HashMap<usize, (String, FailureCause)>,
    report: &mut RestoreReport,
) -> HashSet<Vec<u8>> {
    let root = crate::system::is_root();
    let outcomes: Vec<Finished> = pending
        .par_iter()
        .enumerate()
        .map_init(
            || root.then(crate::system::OwnerIds::default),
            |owners, (index, file)| {
                if let Some((reason, cause)) = failures.get(&index) {
                    remove_temporary(run, file);
                    return Finished::Failed(reason.clone(), *cause);
                }
                // Interrupted while files are being put in place: the rest are not.
                if crate::interrupt::requested().is_some() {
                    remove_temporary(run, file);
                    return Finished::Skipped;
                }
                let mut warnings = Vec::new();
                match finish_file(run, file, verify, owners.as_mut(), &mut warnings) {
                    Ok(()) => {
                        run.file_finished(&file.planned.target);
                        Finished::Placed(warnings)
                    }
                    Err((reason, cause)) => {
                        remove_temporary(run, file);
                        Finished::Failed(reason, cause)
                    }
                }
            },
        )
        .collect();
    let mut failed = HashSet::new();
    for (file, outcome) in pending.iter().zip(outcomes) {
        let planned = file.planned;
        match outcome {
            Finished::Placed(warnings) => {
                report.files += 1;
                report.warnings.extend(warnings);
            }
            Finished::Failed(reason, cause) => {
                failed.insert(planned.relative.clone());
                report.failed.push(Failure { path: planned.target.clone(), reason, cause });
            }
            Finished::Skipped => {}
        }
    }
    failed
}

/// One complete file: verified, given its metadata through its handle, renamed.
fn finish_file(
    run: &Run<'_>,
    file: &Pending<'_>,
    verify: bool,
    owners: Option<&mut crate::system::OwnerIds>,
    warnings: &mut Vec<String>,
) -> std::result::Result<(), (String, FailureCause)> {
    let target = file.planned.target.display();
    let local = |error: std::io::Error| (format!("cannot put {target} in place: {error}"), FailureCause::LocalIo);
    let mut opened = reopen(run, file, OFlag::O_RDONLY).map_err(local)?;
    if verify {
        if let Some(reason) = verify_file(&mut opened, file.planned.entry.sha256) {
            return Err((format!("{target} failed verification: {reason}"), FailureCause::Damage));
        }
    }
    metadata::apply_to_handle(&OwnedFd::from(opened), file.planned, owners, warnings);
    let name = beneath::split_last(&file.temporary).map(|(_, name)| name).unwrap_or_default();
    let place = metadata::Place::of(run, file.planned);
    metadata::rename_into_place(run, &file.planned.relative, std::ffi::OsStr::from_bytes(name), place).map_err(local)
}

fn verify_file(file: &mut File, expected: Option<[u8; 32]>) -> Option<String> {
    let expected = expected?;
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

/// Creates the further names of hard-linked files: a link under a temporary name,
/// renamed over the final one.
fn link_files(
    run: &Run<'_>,
    plan: &RestorePlan,
    inodes: &HashMap<&[u8], u64>,
    failed: &mut HashSet<Vec<u8>>,
    report: &mut RestoreReport,
) {
    for planned in plan.entries.iter().filter(|p| p.action == Action::HardLink) {
        let Some(leader) = &planned.link_to else {
            continue;
        };
        let outcome = if failed.contains(leader) {
            let shown = run.target.display(leader);
            Err((format!("its hard link {} could not be restored", shown.display()), FailureCause::LocalIo))
        } else {
            let inode = inodes.get(leader.as_slice()).or_else(|| plan.kept_leaders.get(leader)).copied().unwrap_or(0);
            link_one(run, leader, inode, planned).map_err(|error| {
                let reason = format!(
                    "cannot link {} to {}: {error}",
                    planned.target.display(),
                    run.target.display(leader).display()
                );
                (reason, FailureCause::LocalIo)
            })
        };
        match outcome {
            Ok(()) => report.files += 1,
            Err((reason, cause)) => {
                failed.insert(planned.relative.clone());
                report.failed.push(Failure { path: planned.target.clone(), reason, cause });
            }
        }
    }
}

fn link_one(run: &Run<'_>, leader: &[u8], inode: u64, planned: &PlannedEntry) -> std::io::Result<()> {
    let relative = &planned.relative[..];
    let handle = run.target.open(leader, OFlag::O_PATH, Mode::empty())?;
    if nix::sys::stat::fstat(&handle)?.st_ino != inode {
        return Err(std::io::Error::other("the file it links to was replaced during the restore"));
    }
    let (folder, _) = run.target.parent(relative)?;
    let temporary: OsString = run.temporary_name();
    // `/proc/self/fd/N` followed by linkat names exactly the inode behind the handle.
    let exact = beneath::proc_path(std::os::fd::AsFd::as_fd(&handle), None);
    let linked = nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        &exact,
        &folder,
        temporary.as_os_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    );
    linked?;
    let place = if planned.existed { metadata::Place::Replace } else { metadata::Place::New };
    metadata::rename_into_place(run, relative, &temporary, place)
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
        write_sparse(&File::options().write(true).open(&path).unwrap(), 0, &data).unwrap();
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
        write_sparse(&File::options().write(true).open(&path).unwrap(), 4_999, &data).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[4_999..19_999], &data[..]);
    }
}
