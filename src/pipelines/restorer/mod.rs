//! Restore: plan which entries go where and what must be fetched, then execute the plan.
//!
//! Every path is resolved beneath the target without following a symlink
//! ([`beneath`]). Entries are made under unique temporary names (`O_EXCL`, mode 0600),
//! get their owner, mode, extended attributes and times through the open handle, and
//! are renamed into place only once complete and verified, so a failed restore never
//! leaves a half-written file under a real name, and nothing outside the target is
//! ever touched.

mod beneath;
mod fetch;
mod metadata;
mod postgres;

pub use postgres::{restore_postgres, select_source, verify_pg_dump, PgRestoreReport};

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::patterns::RestorePatterns;
use beneath::{Found, TargetDir, TargetLock};

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::repository::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use crate::repository::pack::BlobType;
use crate::repository::Repository;

/// What to restore and where.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only this path of the snapshot (`SNAP:PATH`); its content lands in `target`.
    pub subpath: Option<Vec<u8>>,
    pub target: PathBuf,
    /// Glob patterns; a pattern without `/` matches a name at any depth.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Re-read every restored file and compare it with the manifest's SHA-256.
    pub verify: bool,
    /// Skip the final flush of the target's file system to disk.
    pub no_sync: bool,
}

/// What will happen to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Overwrite,
    /// A further name of a file restored under another name.
    HardLink,
    /// Cannot be restored here (a device without root, a socket); the reason is a warning.
    Skip,
}

/// One entry of a plan.
#[derive(Debug, Clone)]
pub struct PlannedEntry {
    pub entry_id: i64,
    pub entry: Entry,
    /// Where the entry lands, for messages.
    pub target: PathBuf,
    /// Where the entry lands below the target (`a/b`; empty for the target itself).
    pub relative: Vec<u8>,
    pub action: Action,
    /// For `HardLink`: the relative path of the first restored name.
    pub link_to: Option<Vec<u8>>,
    pub chunks: Vec<ChunkRef>,
    /// Extended attributes to set.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A restore plan: every entry's action and what must be fetched.
#[derive(Debug, Default)]
pub struct RestorePlan {
    pub entries: Vec<PlannedEntry>,
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub file_bytes: u64,
    pub creates: u64,
    pub overwrites: u64,
    /// Distinct blobs to fetch, and their stored size.
    pub blobs: u64,
    pub fetch_bytes: u64,
    pub packs: u64,
    pub warnings: Vec<String>,
}

/// Why an entry was not restored: what the exit code reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureCause {
    /// The local file system refused (permissions, a full disk, a folder in the way).
    LocalIo,
    /// Storage failed to answer (after retries).
    Storage,
    /// Storage refused the credentials or the request.
    Denied,
    /// Storage could not be reached (after retries).
    Unreachable,
    /// Data in the repository is damaged or missing.
    Damage,
}

impl FailureCause {
    /// The cause for a library error met while fetching.
    pub fn of(error: &Error) -> Self {
        match error {
            error if error.is_integrity() => FailureCause::Damage,
            Error::Unreachable { .. } => FailureCause::Unreachable,
            Error::AccessDenied { .. } => FailureCause::Denied,
            Error::Io { .. } | Error::Cache { .. } => FailureCause::LocalIo,
            _ => FailureCause::Storage,
        }
    }
}

/// One entry that could not be restored.
#[derive(Debug, Clone)]
pub struct Failure {
    pub path: PathBuf,
    pub reason: String,
    pub cause: FailureCause,
}

/// The outcome of a restore.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes_written: u64,
    pub bytes_fetched: u64,
    pub requests: u64,
    /// Entries not restored, with the reason (naming the damaged object).
    pub failed: Vec<Failure>,
    pub warnings: Vec<String>,
    /// Temporary files of earlier, killed restores that were removed.
    pub stale_removed: usize,
}

impl RestoreReport {
    /// The most serious cause among the failures.
    pub fn worst_cause(&self) -> Option<FailureCause> {
        self.failed.iter().map(|failure| failure.cause).max()
    }
}

/// Where an entry lands below the target: relative to the subpath, or to `/`. Manifest
/// paths were validated when read, so the result has no empty, `.` or `..` component.
fn relative_of(entry_path: &[u8], base: &[u8], base_is_file: bool) -> Vec<u8> {
    if base_is_file {
        return beneath::split_last(entry_path).map(|(_, name)| name.to_vec()).unwrap_or_default();
    }
    let relative = entry_path.get(base.len()..).unwrap_or_default();
    relative.strip_prefix(b"/").unwrap_or(relative).to_vec()
}

/// Builds the plan: reads only the manifest rows below the subpath, and looks at the
/// target (without following symlinks) to tell creations from overwrites.
pub fn plan(repository: &Repository, manifest: &Manifest, options: &RestoreOptions) -> Result<RestorePlan> {
    let base = options.subpath.clone().unwrap_or_else(|| b"/".to_vec());
    let base = if base.len() > 1 { base.strip_suffix(b"/").unwrap_or(&base).to_vec() } else { base };
    let rows = manifest.entries_under(&base)?;
    if rows.is_empty() {
        let shown = String::from_utf8_lossy(&base);
        return Err(Error::NotFound { what: format!("path {shown} in the snapshot") });
    }
    let base_is_file = rows.len() == 1 && rows[0].1.path == base && rows[0].1.kind != EntryKind::Dir;
    let include = RestorePatterns::new(&options.include)?;
    let exclude = RestorePatterns::new(&options.exclude)?;
    let existing = TargetDir::open_existing(&options.target)
        .map_err(|e| Error::io("cannot open restore target", &options.target, e))?;
    let mut plan = RestorePlan::default();
    let mut leaders: HashMap<i64, Vec<u8>> = HashMap::new();
    for (entry_id, entry) in rows {
        let relative = relative_of(&entry.path, &base, base_is_file);
        let wanted =
            include.as_ref().is_none_or(|set| entry.kind == EntryKind::Dir || set.matches(&entry.path, &relative));
        let unwanted = exclude.as_ref().is_some_and(|set| set.matches(&entry.path, &relative));
        if !wanted || unwanted || (entry.path == b"/" && options.subpath.is_none()) {
            continue;
        }
        let found = match &existing {
            Some(target) => target.find(&relative).unwrap_or(Found::Other),
            None => Found::Missing,
        };
        let target = display_path(&options.target, &relative);
        let planned = plan_entry(manifest, entry_id, entry, (target, relative), found, &mut leaders, &mut plan)?;
        plan.entries.push(planned);
    }
    if include.is_some() {
        prune_empty_dirs(&mut plan);
    }
    for (option, set) in [("--include", &include), ("--exclude", &exclude)] {
        for pattern in set.iter().flat_map(|set| set.unmatched()) {
            plan.warnings.push(format!(
                "{option} {pattern:?} matched nothing (patterns without a leading / are relative to the restored folder)"
            ));
        }
    }
    count_fetches(repository, &mut plan)?;
    Ok(plan)
}

fn display_path(target: &Path, relative: &[u8]) -> PathBuf {
    if relative.is_empty() {
        target.to_path_buf()
    } else {
        target.join(OsStr::from_bytes(relative))
    }
}

fn plan_entry(
    manifest: &Manifest,
    entry_id: i64,
    entry: Entry,
    (target, relative): (PathBuf, Vec<u8>),
    found: Found,
    leaders: &mut HashMap<i64, Vec<u8>>,
    plan: &mut RestorePlan,
) -> Result<PlannedEntry> {
    let in_the_way = match entry.kind {
        EntryKind::Dir => found == Found::Other,
        _ => found != Found::Missing,
    };
    let mut action = if in_the_way { Action::Overwrite } else { Action::Create };
    let mut link_to = None;
    let mut chunks = Vec::new();
    match entry.kind {
        EntryKind::File => {
            plan.files += 1;
            match entry.hardlink_group.and_then(|group| leaders.get(&group)) {
                Some(leader) => {
                    action = Action::HardLink;
                    link_to = Some(leader.clone());
                }
                None => {
                    if let Some(group) = entry.hardlink_group {
                        leaders.insert(group, relative.clone());
                    }
                    chunks = manifest.chunks(entry_id)?;
                    plan.file_bytes += entry.size;
                }
            }
        }
        EntryKind::Dir => plan.dirs += 1,
        EntryKind::CharDevice | EntryKind::BlockDevice if !crate::system::is_root() => {
            action = Action::Skip;
            plan.warnings.push(format!("skipping device {}: creating devices needs root", target.display()));
        }
        EntryKind::Socket => {
            action = Action::Skip;
            plan.warnings.push(format!(
                "skipping socket {}: sockets are recreated by the programs that own them",
                target.display()
            ));
        }
        _ => plan.others += 1,
    }
    match action {
        Action::Create if entry.kind != EntryKind::Dir => plan.creates += 1,
        Action::Overwrite => plan.overwrites += 1,
        _ => {}
    }
    let xattrs = manifest.xattrs(entry_id)?;
    Ok(PlannedEntry { entry_id, entry, target, relative, action, link_to, chunks, xattrs })
}

/// With `--include`, drops directories that hold nothing included.
fn prune_empty_dirs(plan: &mut RestorePlan) {
    let mut needed: HashSet<PathBuf> = HashSet::new();
    for planned in plan.entries.iter().filter(|p| p.entry.kind != EntryKind::Dir) {
        needed.extend(planned.target.ancestors().skip(1).map(Path::to_path_buf));
    }
    let before = plan.entries.len();
    plan.entries.retain(|p| p.entry.kind != EntryKind::Dir || needed.contains(&p.target));
    plan.dirs -= (before - plan.entries.len()) as u64;
}

fn count_fetches(repository: &Repository, plan: &mut RestorePlan) -> Result<()> {
    let mut blobs: HashSet<BlobId> = HashSet::new();
    let mut packs = HashSet::new();
    for chunk in plan.entries.iter().flat_map(|p| p.chunks.iter()) {
        if blobs.insert(chunk.blob) {
            if let Some(location) = repository.lookup(&chunk.blob, BlobType::Data)? {
                plan.fetch_bytes += location.entry.length as u64;
                packs.insert(location.pack);
            }
        }
    }
    plan.blobs = blobs.len() as u64;
    plan.packs = packs.len() as u64;
    Ok(())
}

/// One restore in progress: the open target and how its temporary names are made.
pub(super) struct Run<'t> {
    target: &'t TargetDir,
    /// `.coffer-restore-<random>-`: this run's temporary names start with it.
    prefix: String,
    counter: AtomicU64,
}

impl<'t> Run<'t> {
    fn new(target: &'t TargetDir) -> Self {
        let token = hex::encode(rand::random::<[u8; 6]>());
        Self { target, prefix: format!("{}{token}-", beneath::TEMPORARY_PREFIX), counter: AtomicU64::new(0) }
    }

    /// A fresh name for a temporary entry: unique within the run, random across runs,
    /// and short whatever the final name's length.
    fn temporary_name(&self) -> OsString {
        OsString::from(format!("{}{}", self.prefix, self.counter.fetch_add(1, Ordering::Relaxed)))
    }

    /// The relative path of `name` in the folder of `relative`.
    fn sibling(relative: &[u8], name: &OsStr) -> Vec<u8> {
        match beneath::split_last(relative) {
            Some((folder, _)) if !folder.is_empty() => [folder, b"/", name.as_bytes()].concat(),
            _ => name.as_bytes().to_vec(),
        }
    }
}

/// Carries out a plan. Damaged data fails only the files that need it; the report lists
/// them. An interrupt (SIGINT, SIGTERM) removes the temporary files and fails with
/// `Error::Interrupted`.
pub fn execute(repository: &Repository, plan: &RestorePlan, options: &RestoreOptions) -> Result<RestoreReport> {
    let _lock = repository.lock_shared()?;
    let target_existed = options.target.is_dir();
    let target = TargetDir::create(&options.target)
        .map_err(|e| Error::io("cannot create restore target", &options.target, e))?;
    let _target_lock = match target.lock().map_err(|e| Error::io("cannot lock restore target", &options.target, e))? {
        TargetLock::Busy => {
            return Err(Error::Refused(format!(
                "another restore is writing into {}; wait for it to finish",
                options.target.display()
            )))
        }
        held => held,
    };
    target.probe().map_err(|e| Error::io("cannot write to restore target", &options.target, e))?;
    let run = Run::new(&target);
    let started = repository.backend().stats();
    let mut report = RestoreReport { warnings: plan.warnings.clone(), ..Default::default() };
    let (mut failed, inodes) = make_dirs(&run, plan, &mut report);
    crate::interrupt::check()?;
    let failed_files = fetch::restore_contents(&run, repository, plan, options, &failed, &mut report)?;
    failed.extend(failed_files);
    let mut owners = crate::system::is_root().then(crate::system::OwnerIds::default);
    let specials: Vec<&PlannedEntry> =
        plan.entries.iter().filter(|p| is_special(p) && !failed.contains(&p.relative)).collect();
    for planned in specials {
        if let Err(error) = metadata::create_special(&run, planned, owners.as_mut(), &mut report.warnings) {
            failed.insert(planned.relative.clone());
            report.failed.push(local_failure(planned, error));
        }
    }
    for planned in plan.entries.iter().rev().filter(|p| p.entry.kind == EntryKind::Dir) {
        // The target folder itself keeps its own metadata if it was there before.
        let kept = planned.relative.is_empty() && target_existed;
        if !failed.contains(&planned.relative) && !kept {
            let inode = inodes.get(&planned.relative).copied();
            metadata::apply_dir(&run, planned, inode, owners.as_mut(), &mut report.warnings);
        }
    }
    // Success is reported only once what was written is on disk: one syncfs of the
    // target's file system, not an fsync per file.
    if !options.no_sync {
        target.sync().map_err(|e| Error::io("cannot flush restored files to disk in", &options.target, e))?;
    }
    let finished = repository.backend().stats();
    report.bytes_fetched = finished.bytes_read - started.bytes_read;
    report.requests = finished.requests - started.requests;
    Ok(report)
}

fn is_special(planned: &PlannedEntry) -> bool {
    !matches!(planned.entry.kind, EntryKind::File | EntryKind::Dir) && planned.action != Action::Skip
}

fn local_failure(planned: &PlannedEntry, error: std::io::Error) -> Failure {
    Failure {
        path: planned.target.clone(),
        reason: format!("cannot restore {}: {error}", planned.target.display()),
        cause: FailureCause::LocalIo,
    }
}

/// Makes the plan's folders in path order (parents first), replacing what is in their
/// way, and removes temporary files of killed restores from the folders that existed.
/// Returns the folders that could not be made.
fn make_dirs(
    run: &Run<'_>,
    plan: &RestorePlan,
    report: &mut RestoreReport,
) -> (HashSet<Vec<u8>>, HashMap<Vec<u8>, u64>) {
    let mut failed = HashSet::new();
    let mut inodes = HashMap::new();
    if let Ok(removed) = run.target.remove_stale_temporaries(b"", &run.prefix) {
        report.stale_removed += removed;
    }
    for planned in plan.entries.iter().filter(|p| p.entry.kind == EntryKind::Dir) {
        match run.target.make_dir(&planned.relative) {
            Ok(made) => {
                report.dirs += 1;
                inodes.insert(planned.relative.clone(), made.inode);
                if made.existed && !planned.relative.is_empty() {
                    report.stale_removed +=
                        run.target.remove_stale_temporaries(&planned.relative, &run.prefix).unwrap_or(0);
                }
            }
            Err(error) => {
                failed.insert(planned.relative.clone());
                report.failed.push(local_failure(planned, error));
            }
        }
    }
    (failed, inodes)
}
