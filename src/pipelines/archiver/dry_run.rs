//! `backup --dry-run`: the walk, parent selection and change detection of a real backup,
//! reading no file content and writing nothing to the repository.

use std::path::Path;

use super::parent::{Change, Parent};
use super::walk;
use super::BackupOptions;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::repository::manifest::EntryKind;
use crate::repository::Repository;
use crate::system::OwnerNames;

/// What a backup would do with one regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// Not in the parent snapshot: it would be read.
    New,
    /// In the parent but changed (or not to be trusted): it would be read.
    Changed,
    /// Unchanged since the parent: it would not be read.
    Unchanged,
}

impl FileChange {
    pub fn name(self) -> &'static str {
        match self {
            FileChange::New => "new",
            FileChange::Changed => "changed",
            FileChange::Unchanged => "unchanged",
        }
    }
}

/// One regular file met by a dry run.
#[derive(Debug)]
pub struct PlannedFile<'a> {
    pub path: &'a Path,
    pub change: FileChange,
    pub size: u64,
}

/// The totals of a dry run.
#[derive(Debug, Default)]
pub struct DryRunReport {
    /// The snapshot the backup would compare with.
    pub parent: Option<SnapshotId>,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    /// Size of the new and changed files: what the backup would read.
    pub bytes_to_read: u64,
    /// Size of every regular file.
    pub total_bytes: u64,
    pub dirs: u64,
    /// What the backup would warn about (entries it could not read, so far as a dry run
    /// finds out: a file that cannot be opened, not one that fails halfway).
    pub warnings: Vec<String>,
    /// Things worth knowing (e.g. an unusable parent).
    pub notes: Vec<String>,
}

impl DryRunReport {
    /// Files the backup would read.
    pub fn files_to_read(&self) -> u64 {
        self.files_new + self.files_changed
    }
}

/// Walks the backup's trees as `backup` would and calls `on_file` for every regular
/// file with what the backup would do with it. Opens files it would read, to find those
/// it could not, but reads no content; takes no lock and writes nothing to the
/// repository (the local cache may gain the parent's manifest).
pub fn dry_run(
    repository: &Repository,
    options: &BackupOptions,
    on_file: &mut dyn FnMut(&PlannedFile<'_>),
) -> Result<DryRunReport> {
    if options.stdin.is_some() || options.stdin_command.is_some() || !options.postgres.is_empty() {
        return Err(Error::InvalidInput("a dry run covers files and directories only, not --stdin or --pg".into()));
    }
    let paths = options.paths.iter().map(|path| walk::absolute(path)).collect::<Result<Vec<_>>>()?;
    let host = options.host.clone().unwrap_or_else(crate::system::host_name);
    let mut report = DryRunReport::default();
    let (parent_id, parent) = super::open_parent(repository, options, &host, &paths, &mut report.notes)?;
    report.parent = parent_id.filter(|_| !paths.is_empty());
    let patterns = options.excludes.glob_set()?;
    let mut owners = OwnerNames::default();
    for root in walk::outermost(&paths) {
        for item in walk::tree(root, &options.excludes, &patterns) {
            match item {
                Ok(item) => plan_path(item.path(), parent.as_ref(), &mut owners, &mut report, on_file)?,
                Err(error) => report.warnings.push(walk::walk_warning(&error)),
            }
        }
    }
    Ok(report)
}

fn plan_path(
    path: &Path,
    parent: Option<&Parent<'_>>,
    owners: &mut OwnerNames,
    report: &mut DryRunReport,
    on_file: &mut dyn FnMut(&PlannedFile<'_>),
) -> Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) => {
            report.warnings.push(format!("cannot read {}: {error}", path.display()));
            return Ok(());
        }
    };
    match EntryKind::of(metadata.file_type()) {
        EntryKind::File => {}
        EntryKind::Dir => {
            report.dirs += 1;
            return Ok(());
        }
        _ => return Ok(()),
    }
    let entry = walk::new_entry(path, &metadata, EntryKind::File, owners);
    let change = match parent.map(|parent| parent.compare(&entry)).transpose()? {
        None | Some(Change::New) => FileChange::New,
        Some(Change::Changed(_)) => FileChange::Changed,
        Some(Change::Unchanged(..)) => FileChange::Unchanged,
    };
    if change != FileChange::Unchanged {
        if let Err(error) = std::fs::File::open(path) {
            report.warnings.push(format!("cannot read {}: {error}", path.display()));
            return Ok(());
        }
        report.bytes_to_read += entry.size;
    }
    match change {
        FileChange::New => report.files_new += 1,
        FileChange::Changed => report.files_changed += 1,
        FileChange::Unchanged => report.files_unchanged += 1,
    }
    report.total_bytes += entry.size;
    on_file(&PlannedFile { path, change, size: entry.size });
    Ok(())
}
