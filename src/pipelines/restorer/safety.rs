//! Restores that can be undone. Before a restore replaces, changes or deletes anything
//! the target holds, exactly those entries (and the folders around them, for their
//! times) are backed up into a snapshot tagged `safety`, and a restore record naming
//! it and every entry the restore will create is stored durably. If the restore then
//! fails or is interrupted, the created entries are removed and the others put back
//! from the safety snapshot; after a SIGKILL or a power cut, `restore --rollback` does
//! the same from the record.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::beneath::{self, TargetDir, TargetLock};
use super::{Action, Overwrite, PlannedEntry, RestoreOptions, RestorePlan, RestoreReport};
use crate::error::{Error, Result};
use crate::id::{RestoreId, SnapshotId};
use crate::pipelines::archiver::{self, BackupOptions, ChangeRules};
use crate::repository::manifest::{EntryKind, Manifest};
use crate::repository::{Repository, RestoreOutcome, RestoreRecord};

/// The tag of safety snapshots.
pub const SAFETY_TAG: &str = "safety";

/// What is known once a restore's record is stored, before the target is changed.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: RestoreId,
    pub safety: Option<SnapshotId>,
    /// Entries of the target the restore will replace, change or delete.
    pub touched: usize,
}

/// How a restore run through [`restore`] ended.
#[derive(Debug)]
pub struct SafeRestore {
    pub started: Started,
    /// The restore's own report, if it ran to its end.
    pub report: Option<RestoreReport>,
    /// What stopped it, if anything.
    pub error: Option<Error>,
    /// If it failed and had a safety snapshot: what putting things back did.
    pub rollback: Option<Rollback>,
}

/// What a rollback did.
#[derive(Debug, Default)]
pub struct Rollback {
    /// Entries the restore had made, removed.
    pub removed: usize,
    /// Entries put back from the safety snapshot.
    pub put_back: u64,
    /// What could not be undone, one sentence each.
    pub failures: Vec<String>,
}

/// Where a relative path of the target is, absolutely.
fn absolute_in(target: &Path, relative: &[u8]) -> PathBuf {
    if relative.is_empty() {
        target.to_path_buf()
    } else {
        target.join(OsStr::from_bytes(relative))
    }
}

fn parent_of(relative: &[u8]) -> Option<&[u8]> {
    beneath::split_last(relative).map(|(folder, _)| folder)
}

/// True for entries whose present state the restore changes.
fn touches(planned: &PlannedEntry) -> bool {
    planned.existed
        && match planned.action {
            Action::Overwrite | Action::Update | Action::Delete | Action::HardLink => true,
            // A folder kept as it is still gets its times set again.
            Action::Keep => planned.entry.kind == EntryKind::Dir,
            Action::Create | Action::Skip => false,
        }
}

fn creates(planned: &PlannedEntry) -> bool {
    !planned.existed && matches!(planned.action, Action::Create | Action::HardLink | Action::Overwrite)
}

/// The entries a safety snapshot holds: every touched entry (a folder that is
/// replaced or deleted with everything in it; one whose metadata is set, alone), and
/// every existing folder in which something is created, replaced or deleted.
fn safety_selection(target: &Path, plan: &RestorePlan) -> Vec<(PathBuf, bool)> {
    let existing_dirs: HashSet<&[u8]> = plan
        .entries
        .iter()
        .filter(|p| p.existed && p.entry.kind == EntryKind::Dir && p.action != Action::Delete)
        .map(|p| p.relative.as_slice())
        .collect();
    let mut selection: BTreeMap<PathBuf, bool> = BTreeMap::new();
    // Folders kept as they are still get their metadata set again: they are held too.
    let changed = |p: &&PlannedEntry| touches(p);
    for planned in plan.entries.iter().filter(changed) {
        let shallow = planned.entry.kind == EntryKind::Dir && matches!(planned.action, Action::Update | Action::Keep);
        *selection.entry(absolute_in(target, &planned.relative)).or_default() |= !shallow;
    }
    for planned in plan.entries.iter().filter(|p| (changed(p) || creates(p)) && !p.relative.is_empty()) {
        if let Some(parent) = parent_of(&planned.relative).filter(|p| p.is_empty() || existing_dirs.contains(p)) {
            selection.entry(absolute_in(target, parent)).or_default();
        }
    }
    selection.into_iter().collect()
}

fn hex_list<'p>(entries: impl Iterator<Item = &'p PlannedEntry>) -> Vec<String> {
    entries.map(|p| hex::encode(&p.relative)).collect()
}

/// The target's absolute path, its symlinks resolved (it is the user's choice).
fn absolute_target(target: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(target).map_err(|e| Error::io("cannot resolve", target, e))?;
    Ok(absolute.canonicalize().unwrap_or(absolute))
}

/// Runs a planned restore of `snapshot` with a restore record, and with a safety
/// snapshot first if it replaces, changes or deletes anything (unless `safety` is
/// false). `started` is called once the record is stored, before anything changes.
/// A failure or an interrupt is rolled back when there is a safety snapshot.
pub fn restore(
    repository: &Repository,
    (snapshot, path): (&SnapshotId, &[u8]),
    plan: &RestorePlan,
    options: &RestoreOptions,
    safety: bool,
    started: &mut dyn FnMut(&Started),
) -> Result<SafeRestore> {
    let target = absolute_target(&options.target)?;
    let touched: Vec<&PlannedEntry> = plan.entries.iter().filter(|p| touches(p) && p.action != Action::Keep).collect();
    let id = RestoreId::random();
    // A target that takes no files fails here, before a safety snapshot is taken.
    let existing =
        TargetDir::open_existing(&target).map_err(|e| Error::io("cannot open restore target", &target, e))?;
    let (target_device, target_inode) = match &existing {
        Some(folder) => {
            folder.probe().map_err(|e| Error::io("cannot write to restore target", &target, e))?;
            folder.lookup(b"").ok().flatten().map_or((0, 0), |stat| (stat.st_dev, stat.st_ino))
        }
        None => (0, 0),
    };
    let safety_id =
        if touched.is_empty() || !safety { None } else { Some(take_safety_snapshot(repository, &id, &target, plan)?) };
    let target_bytes = target.as_os_str().as_bytes();
    let mut record = RestoreRecord {
        target_device,
        target_inode,
        created: if safety_id.is_some() { hex_list(plan.entries.iter().filter(|p| creates(p))) } else { Vec::new() },
        replaced: hex_list(touched.iter().copied().filter(|p| p.action != Action::Delete)),
        deleted: hex_list(touched.iter().copied().filter(|p| p.action == Action::Delete)),
        ..RestoreRecord::start(snapshot, path, (target.display().to_string(), target_bytes), safety_id)
    };
    repository.save_restore(&id, &record)?;
    let begun = Started { id, safety: safety_id, touched: touched.len() };
    started(&begun);
    let (report, failure, error) = match super::execute(repository, plan, options) {
        Ok(report) if report.failed.is_empty() => (Some(report), None, None),
        Ok(report) => {
            let first = report.failed[0].reason.clone();
            (Some(report), Some(first), None)
        }
        Err(error) => (None, Some(error.to_string()), Some(error)),
    };
    let mut outcome = SafeRestore { started: begun, report, error, rollback: None };
    if let Some(error_text) = failure {
        record.error = Some(error_text);
        record.outcome = RestoreOutcome::Failed;
        if safety_id.is_some() {
            // The interrupt that stopped the restore must not stop putting things back;
            // a second one does (the record then says the rollback failed).
            crate::interrupt::reset();
            let rollback = roll_back(repository, &record, false);
            outcome.rollback = Some(settle(&mut record, rollback));
        }
    } else {
        record.outcome = RestoreOutcome::Completed;
    }
    save_outcome(repository, &id, &mut record);
    Ok(outcome)
}

/// The record's outcome after a rollback, and the rollback (an error as its failure).
pub(super) fn settle(record: &mut RestoreRecord, rollback: Result<Rollback>) -> Rollback {
    record.outcome = match &rollback {
        Ok(done) if done.failures.is_empty() => RestoreOutcome::RolledBack,
        _ => RestoreOutcome::RollbackFailed,
    };
    rollback.unwrap_or_else(|error| Rollback { failures: vec![error.to_string()], ..Default::default() })
}

/// Stores a finished restore's record. The restore's own outcome matters more than a
/// record that cannot be updated: that is a note, not an error.
pub(super) fn save_outcome(repository: &Repository, id: &RestoreId, record: &mut RestoreRecord) {
    record.finished = Some(jiff::Timestamp::now().to_string());
    if let Err(error) = repository.save_restore(id, record) {
        crate::backend::note(format!("the record of restore {} could not be updated: {error}", id.short()));
    }
}

/// Takes the safety snapshot of restore `id`: `backup` tagged `safety` and
/// `restore-<id>`, every entry read anew. Interrupted, it says that the restore never
/// started and `untouched` (the target) was not changed.
pub(super) fn safety_backup(
    repository: &Repository,
    id: &RestoreId,
    backup: BackupOptions,
    untouched: &str,
) -> Result<crate::pipelines::archiver::BackupReport> {
    let backup = BackupOptions {
        tags: vec![SAFETY_TAG.to_string(), format!("restore-{}", id.short())],
        change_rules: ChangeRules { force: true, ..Default::default() },
        ..backup
    };
    archiver::backup(repository, backup).map_err(|error| match error {
        Error::Interrupted { signal, .. } => {
            Error::Interrupted { signal, outcome: format!("the restore had not started: {untouched} was not changed") }
        }
        other => other,
    })
}

/// Backs up the entries the plan touches into a snapshot tagged `safety`. A safety
/// snapshot that misses an entry (one that could not be read) is refused: the restore
/// would then replace something it cannot put back.
fn take_safety_snapshot(
    repository: &Repository,
    id: &RestoreId,
    target: &Path,
    plan: &RestorePlan,
) -> Result<SnapshotId> {
    let options = BackupOptions {
        paths: vec![target.to_path_buf()],
        selection: safety_selection(target, plan),
        ..Default::default()
    };
    let report = safety_backup(repository, id, options, "nothing in the target")?;
    if let Some(first) = report.warnings.first() {
        return Err(Error::Refused(format!(
            "the safety snapshot of what this restore would replace is incomplete ({first}); nothing was changed. Fix that, or restore with --no-safety"
        )));
    }
    Ok(report.id)
}

/// Undoes a restore from its record: checks that the target is the folder the restore
/// wrote (on this host, not replaced since), reads the safety snapshot's plan, removes
/// what the restore created (only entries that are still what it wrote), then puts
/// back every replaced, changed or deleted entry from the safety snapshot, comparing
/// content by hash, with the folders' metadata. Nothing of the safety snapshot is
/// deleted, whatever happens. `force` allows a rollback on another host.
pub fn roll_back(repository: &Repository, record: &RestoreRecord, force: bool) -> Result<Rollback> {
    let Some(safety) = record.safety_id()? else {
        return Err(Error::Refused(
            "this restore has no safety snapshot (it ran with --no-safety, or replaced nothing), so it cannot be rolled back".into(),
        ));
    };
    let host = crate::system::host_name();
    if record.host != host && !force {
        return Err(Error::Refused(format!(
            "the restore ran on host {}, this is {host}: roll it back there (or add --force if this is the same folder)",
            record.host
        )));
    }
    let target_path = record.target_path();
    let target = TargetDir::open_strict(&target_path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => Error::Refused(format!(
            "{} (or a folder above it) is now a symlink or a file; the restore wrote into a folder there. Nothing was changed",
            target_path.display()
        )),
        _ => Error::io("cannot open restore target", &target_path, e),
    })?;
    let stat = target.lookup(b"").ok().flatten();
    if record.target_inode != 0
        && stat.is_none_or(|s| (s.st_dev, s.st_ino) != (record.target_device, record.target_inode))
    {
        return Err(Error::Refused(format!(
            "{} is not the folder the restore wrote into (it was replaced since); nothing was changed",
            target_path.display()
        )));
    }
    // Everything that can fail before the target changes comes first.
    let (_, snapshot) = repository.find_snapshot(&safety.to_hex()).map_err(|error| match error {
        Error::NotFound { .. } => Error::NotFound {
            what: format!("safety snapshot {} (was it forgotten?); nothing was changed", safety.short()),
        },
        other => other,
    })?;
    let manifest = repository.load_manifest(&safety, &snapshot)?;
    let options = RestoreOptions {
        subpath: Some(target_path.as_os_str().as_bytes().to_vec()),
        target: target_path.clone(),
        // What the restore did not change, or changed only in metadata, is left or fixed
        // in place: its content need not (and, if the repository is damaged where the
        // restore failed, may not) be read from the repository. Content is compared
        // by hash: a restored file may have the size and mtime of the one it replaced.
        overwrite: Overwrite::IfChanged,
        checksum: true,
        target_metadata: true,
        strict_target: true,
        ..Default::default()
    };
    // What the restore wrote, to tell its entries from ones made since.
    let restored = match record.snapshot.parse::<SnapshotId>().and_then(|id| repository.find_snapshot(&id.to_hex())) {
        Ok((id, snapshot)) => repository.load_manifest(&id, &snapshot).ok(),
        Err(_) => None,
    };
    let mut rollback = Rollback::default();
    {
        let _lock = match target.lock().map_err(|e| Error::io("cannot lock restore target", &target_path, e))? {
            TargetLock::Busy => {
                return Err(Error::Refused(format!(
                    "a restore is still writing into {}; wait for it to finish",
                    target_path.display()
                )))
            }
            held => held,
        };
        remove_created(&target, record, restored.as_ref(), &mut rollback);
    }
    let mut plan = super::plan(repository, &manifest, &options)?;
    // A replaced entry that is neither what the restore wrote nor what the safety
    // snapshot holds was changed since: it is left, and named.
    let replaced: HashSet<Vec<u8>> = RestoreRecord::paths(&record.replaced).into_iter().collect();
    let base = record.path_bytes();
    for planned in plan.entries.iter_mut().filter(|p| p.entry.kind != EntryKind::Dir && replaced.contains(&p.relative))
    {
        if !matches!(planned.action, Action::Overwrite | Action::Update) {
            continue;
        }
        let Ok(Some(stat)) = target.lookup(&planned.relative) else { continue };
        if !as_written(&target, restored.as_ref(), &base, &planned.relative, &stat) {
            rollback.failures.push(format!(
                "{} was changed since the restore (it is neither what the restore wrote nor what it replaced); left in place, the safety snapshot {} holds what was there before",
                planned.target.display(),
                safety.short()
            ));
            planned.action = Action::Skip;
        }
    }
    let to_do = plan.entries.iter().filter(|p| !matches!(p.action, Action::Keep | Action::Skip)).count() as u64;
    let report = super::execute(repository, &plan, &options)?;
    rollback.put_back = to_do.saturating_sub(report.failed.len() as u64);
    for failure in &report.failed {
        rollback.failures.push(format!(
            "{} was not put back ({}); it is in safety snapshot {}",
            failure.path.display(),
            failure.reason,
            safety.short()
        ));
    }
    Ok(rollback)
}

/// True if the entry at `relative` is still what the restore wrote there: the kind of
/// the restored snapshot's entry, and for a file its size and mtime (a restore sets
/// them), for a symlink its target. Unknown (no manifest) counts as changed.
fn as_written(
    target: &TargetDir,
    restored: Option<&Manifest>,
    base: &[u8],
    relative: &[u8],
    stat: &nix::sys::stat::FileStat,
) -> bool {
    let Some(manifest) = restored else { return false };
    let path = if base == b"/" { [b"/", relative].concat() } else { [base, b"/", relative].concat() };
    let Ok(Some((_, entry))) = manifest.entry(&path) else { return false };
    if super::compare::kind_of(stat) != entry.kind {
        return false;
    }
    match entry.kind {
        EntryKind::File => stat.st_size as u64 == entry.size && super::compare::mtime_ns(stat) == entry.mtime_ns,
        EntryKind::Symlink => target.read_link(relative).ok().as_deref() == entry.link_target.as_deref(),
        _ => true,
    }
}

/// Removes the entries the restore created, deepest first, and temporary files of
/// the restore in the folders around them. An entry is removed only if it is still
/// what the restore wrote (the snapshot's kind, and for a file its size and mtime, for
/// a symlink its target): something made there since is left, and said so. Folders
/// the restore made are made writable first (a snapshot's read-only folder).
fn remove_created(target: &TargetDir, record: &RestoreRecord, restored: Option<&Manifest>, rollback: &mut Rollback) {
    let mut created = RestoreRecord::paths(&record.created);
    created.sort();
    let mut folders: HashSet<Vec<u8>> = HashSet::new();
    for relative in
        RestoreRecord::paths(&record.replaced).iter().chain(&created).chain(&RestoreRecord::paths(&record.deleted))
    {
        folders.insert(parent_of(relative).unwrap_or_default().to_vec());
    }
    for folder in &folders {
        let _ = target.remove_stale_temporaries(folder, "\0");
    }
    let base = record.path_bytes();
    let written =
        |relative: &[u8], stat: &nix::sys::stat::FileStat| as_written(target, restored, &base, relative, stat);
    for relative in created.iter().rev() {
        let shown = target.display(relative);
        match target.lookup(relative) {
            Ok(None) => {}
            Ok(Some(stat)) if beneath::is_dir(&stat) => {
                // A snapshot's read-only folder: made writable to clear it, its mode
                // given back if it stays.
                let _ = target.make_writable(relative);
                let _ = target.remove_stale_temporaries(relative, "\0");
                let removed = target.remove_empty_dir(relative);
                if removed.is_err() {
                    let _ = target.set_mode(relative, stat.st_mode & 0o7777);
                }
                match removed {
                    Ok(()) => rollback.removed += 1,
                    Err(error) if error.raw_os_error() == Some(libc::ENOTEMPTY) => rollback.failures.push(format!(
                        "{} was made by the restore but now holds entries it did not make; left in place",
                        shown.display()
                    )),
                    Err(error) => rollback.failures.push(format!("cannot remove {}: {error}", shown.display())),
                }
            }
            Ok(Some(stat)) if !written(relative, &stat) => rollback.failures.push(format!(
                "{} is not what the restore wrote there (it was changed or made since); left in place",
                shown.display()
            )),
            Ok(Some(_)) => match target.remove_tree(relative) {
                Ok(()) => rollback.removed += 1,
                Err(error) => rollback.failures.push(format!("cannot remove {}: {error}", shown.display())),
            },
            Err(error) => rollback.failures.push(format!("cannot look at {}: {error}", shown.display())),
        }
    }
}
