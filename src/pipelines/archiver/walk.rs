//! The walk of the backed-up trees, shared by the backup, its dry run and the scan that
//! counts files for progress, so the three see the same entries.

use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::GlobSet;

use crate::error::{Error, Result};
use crate::pipelines::progress::Progress;
use crate::repository::manifest::{Entry, EntryKind};
use crate::system::OwnerNames;

/// Paths left out of a backup.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    /// Globs; a pattern without `/` matches a name at any depth. A matching directory
    /// is skipped with everything below it.
    pub patterns: Vec<String>,
    /// A directory holding a file of one of these names is skipped (e.g. `.nobackup`).
    pub if_present: Vec<String>,
    /// Do not descend into other file systems mounted below a backup path.
    pub one_file_system: bool,
}

impl Excludes {
    /// The compiled glob patterns, or `None` when there are none.
    pub(super) fn glob_set(&self) -> Result<Option<GlobSet>> {
        crate::pipelines::patterns::glob_set(&self.patterns)
    }
}

/// The entries under `root` (itself first), sorted by name, without what `excludes`
/// leaves out; symlinks are not followed.
pub(super) fn tree<'a>(
    root: &Path,
    excludes: &'a Excludes,
    patterns: &'a Option<GlobSet>,
) -> impl Iterator<Item = walkdir::Result<walkdir::DirEntry>> + 'a {
    let keep = move |item: &walkdir::DirEntry| {
        let matched = patterns.as_ref().is_some_and(|set| set.is_match(item.path()));
        let marked =
            item.file_type().is_dir() && excludes.if_present.iter().any(|name| item.path().join(name).exists());
        item.depth() == 0 || !(matched || marked)
    };
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(false)
        .same_file_system(excludes.one_file_system)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(keep)
}

/// The warning for an entry the walk could not read.
pub(super) fn walk_warning(error: &walkdir::Error) -> String {
    let path = error.path().map(|p| p.display().to_string()).unwrap_or_default();
    format!("cannot read {path}: {}", error.io_error().map_or(error.to_string(), |e| e.to_string()))
}

/// Counts the regular files under `roots` and their sizes, as the walk will meet them,
/// from metadata only. Stops early, leaving the totals unfinished, once the walk is over.
pub(super) fn scan(roots: &[&PathBuf], excludes: &Excludes, progress: &Progress) {
    let Ok(patterns) = excludes.glob_set() else { return };
    for root in roots {
        for item in tree(root, excludes, &patterns) {
            if progress.walk_finished() {
                return;
            }
            let Ok(item) = item else { continue };
            if !item.file_type().is_file() {
                continue;
            }
            if let Ok(metadata) = item.metadata() {
                progress.add_scanned(metadata.len());
            }
        }
    }
    progress.finish_scan();
}

/// Makes a path absolute and clean without following a final symlink.
pub(super) fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::symlink_metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { what: format!("backup path {}", path.display()) },
        _ => Error::io("cannot read", path, e),
    })?;
    let absolute = std::path::absolute(path).map_err(|e| Error::io("cannot resolve", path, e))?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = parent.canonicalize().map_err(|e| Error::io("cannot resolve", parent, e))?;
            Ok(parent.join(name))
        }
        _ => absolute.canonicalize().map_err(|e| Error::io("cannot resolve", &absolute, e)),
    }
}

/// The backup paths that no other backup path contains: walking those once covers
/// everything, so no entry is met twice and the walk need not look entries up.
pub(super) fn outermost(paths: &[PathBuf]) -> Vec<&PathBuf> {
    let mut sorted: Vec<&PathBuf> = paths.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut kept: Vec<&PathBuf> = Vec::new();
    for path in sorted {
        if !kept.iter().any(|outer| path.starts_with(outer)) {
            kept.push(path);
        }
    }
    kept
}

/// The manifest entry for a path just stat'ed, without content.
pub(super) fn new_entry(path: &Path, metadata: &Metadata, kind: EntryKind, owners: &mut OwnerNames) -> Entry {
    Entry {
        path: path.as_os_str().as_bytes().to_vec(),
        kind,
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        user: owners.user(metadata.uid()),
        group: owners.group(metadata.gid()),
        mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
        inode: metadata.ino(),
        device: metadata.dev(),
        nlink: metadata.nlink(),
        size: if kind == EntryKind::File { metadata.size() } else { 0 },
        rdev: metadata.rdev(),
        sha256: None,
        link_target: None,
        hardlink_group: None,
    }
}
