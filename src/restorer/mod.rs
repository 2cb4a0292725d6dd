//! Restore: plan which entries go where and what must be fetched, then execute the plan.
//!
//! Files are written to temporary names beside their final ones and renamed into place
//! only once complete and verified, so a failed restore never leaves a half-written
//! file under a real name.

mod fetch;
mod metadata;
mod postgres;

pub use postgres::{restore_postgres, select_source, verify_pg_dump, PgRestoreReport};

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use crate::pack::BlobType;
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
    pub target: PathBuf,
    pub action: Action,
    /// For `HardLink`: the target path of the first restored name.
    pub link_to: Option<PathBuf>,
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

/// The outcome of a restore.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes_written: u64,
    pub bytes_fetched: u64,
    pub requests: u64,
    /// Files not restored, with the reason (naming the damaged object).
    pub failed: Vec<(PathBuf, String)>,
    pub warnings: Vec<String>,
}

/// Compiles globs; a pattern without `/` matches a name at any depth.
pub(crate) fn glob_set(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let full = if pattern.contains('/') { pattern.clone() } else { format!("**/{pattern}") };
        let glob = Glob::new(&full)
            .map_err(|e| Error::InvalidInput(format!("pattern {pattern:?} is not a valid glob: {e}")))?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| Error::InvalidInput(format!("patterns cannot be compiled: {e}")))
}

/// True if the path or one of its ancestors matches.
fn matches_or_below(set: &GlobSet, path: &[u8]) -> bool {
    let path = Path::new(OsStr::from_bytes(path));
    path.ancestors().any(|ancestor| ancestor != Path::new("/") && set.is_match(ancestor))
}

/// Where an entry lands: below `target`, relative to the subpath or to `/`.
fn target_of(entry_path: &[u8], base: &[u8], base_is_file: bool, target: &Path) -> PathBuf {
    if base_is_file {
        let name = Path::new(OsStr::from_bytes(entry_path)).file_name().unwrap_or_default();
        return target.join(name);
    }
    let relative = entry_path.get(base.len()..).unwrap_or_default();
    let relative = relative.strip_prefix(b"/").unwrap_or(relative);
    if relative.is_empty() {
        target.to_path_buf()
    } else {
        target.join(OsStr::from_bytes(relative))
    }
}

/// Builds the plan: reads only the manifest rows below the subpath.
pub fn plan(repository: &Repository, manifest: &Manifest, options: &RestoreOptions) -> Result<RestorePlan> {
    let base = options.subpath.clone().unwrap_or_else(|| b"/".to_vec());
    let base = if base.len() > 1 { base.strip_suffix(b"/").unwrap_or(&base).to_vec() } else { base };
    let rows = manifest.entries_under(&base)?;
    if rows.is_empty() {
        let shown = String::from_utf8_lossy(&base);
        return Err(Error::NotFound { what: format!("path {shown} in the snapshot") });
    }
    let base_is_file = rows.len() == 1 && rows[0].1.path == base && rows[0].1.kind != EntryKind::Dir;
    let (include, exclude) = (glob_set(&options.include)?, glob_set(&options.exclude)?);
    let mut plan = RestorePlan::default();
    let mut leaders: HashMap<i64, PathBuf> = HashMap::new();
    for (entry_id, entry) in rows {
        let wanted =
            include.as_ref().is_none_or(|set| entry.kind == EntryKind::Dir || matches_or_below(set, &entry.path));
        let unwanted = exclude.as_ref().is_some_and(|set| matches_or_below(set, &entry.path));
        if !wanted || unwanted || (entry.path == b"/" && options.subpath.is_none()) {
            continue;
        }
        let target = target_of(&entry.path, &base, base_is_file, &options.target);
        let planned = plan_entry(manifest, entry_id, entry, target, &mut leaders, &mut plan)?;
        plan.entries.push(planned);
    }
    if include.is_some() {
        prune_empty_dirs(&mut plan);
    }
    count_fetches(repository, &mut plan)?;
    Ok(plan)
}

fn plan_entry(
    manifest: &Manifest,
    entry_id: i64,
    entry: Entry,
    target: PathBuf,
    leaders: &mut HashMap<i64, PathBuf>,
    plan: &mut RestorePlan,
) -> Result<PlannedEntry> {
    let exists = std::fs::symlink_metadata(&target).is_ok();
    let mut action = if exists && entry.kind != EntryKind::Dir { Action::Overwrite } else { Action::Create };
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
                        leaders.insert(group, target.clone());
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
    Ok(PlannedEntry { entry_id, entry, target, action, link_to, chunks, xattrs })
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

/// Carries out a plan. Damaged data fails only the files that need it; the report lists them.
pub fn execute(repository: &Repository, plan: &RestorePlan, options: &RestoreOptions) -> Result<RestoreReport> {
    let _lock = repository.lock(false)?;
    let target = &options.target;
    std::fs::create_dir_all(target).map_err(|e| Error::io("cannot create restore target", target, e))?;
    let probe = target.join(format!(".coffer-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::io("cannot write to restore target", target, e))?;
    let _ = std::fs::remove_file(&probe);
    let started = repository.backend().stats();
    let mut report = RestoreReport { warnings: plan.warnings.clone(), ..Default::default() };
    for planned in plan.entries.iter().filter(|p| p.entry.kind == EntryKind::Dir) {
        std::fs::create_dir_all(&planned.target)
            .map_err(|e| Error::io("cannot create directory", &planned.target, e))?;
        report.dirs += 1;
    }
    let failed = fetch::restore_contents(repository, plan, options, &mut report)?;
    let mut failed_paths: HashSet<PathBuf> = report.failed.iter().map(|(path, _)| path.clone()).collect();
    for planned in plan.entries.iter().filter(|p| p.entry.kind != EntryKind::Dir && p.action != Action::Skip) {
        if failed.contains(&planned.entry_id)
            || planned.link_to.as_ref().is_some_and(|leader| failed_paths.contains(leader))
        {
            continue;
        }
        if let Err(error) = metadata::create_special(planned) {
            failed_paths.insert(planned.target.clone());
            report.failed.push((planned.target.clone(), error.to_string()));
        }
    }
    let restored: Vec<&PlannedEntry> =
        plan.entries.iter().filter(|p| p.action != Action::Skip && !failed_paths.contains(&p.target)).collect();
    metadata::apply_all(&restored, &mut report.warnings);
    let finished = repository.backend().stats();
    report.bytes_fetched = finished.bytes_read - started.bytes_read;
    report.requests = finished.requests - started.requests;
    Ok(report)
}
