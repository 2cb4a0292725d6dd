//! Restore: plan which entries go where and what must be fetched, then execute the plan.
//!
//! Every path is resolved beneath the target without following a symlink
//! ([`beneath`]). Entries are made under unique temporary names (`O_EXCL`, mode 0600),
//! get their owner, mode, extended attributes and times through the open handle, and
//! are renamed into place only once complete and verified, so a failed restore never
//! leaves a half-written file under a real name, and nothing outside the target is
//! ever touched.

mod beneath;
mod compare;
mod fetch;
mod metadata;
pub mod pg_safety;
mod postgres;
pub mod safety;

pub use postgres::{restore_postgres, select_source, verify_pg_dump, PgRestoreReport};

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::patterns::RestorePatterns;
use beneath::{TargetDir, TargetLock};

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
    /// What to do with entries the target already holds.
    pub overwrite: Overwrite,
    /// Remove entries of the target that the snapshot (or its restored folder) does not hold.
    pub delete: bool,
    /// Allow `--delete` into `/` or into a folder other than the restored one.
    pub force: bool,
    /// Set the target folder's own metadata even if it existed (a rollback does).
    pub target_metadata: bool,
    /// Hash files of the same size and mtime too before keeping them (`--checksum`).
    pub checksum: bool,
    /// Replace a folder holding entries by the file the snapshot has there (a restore
    /// with a safety snapshot does; a rollback does not, so that it never removes what
    /// was made in such a folder since).
    pub replace_folders: bool,
    /// Open the target without following any symlink in its path (a rollback does: the
    /// path was resolved when the restore ran).
    pub strict_target: bool,
    /// Counters to update as files are written (totals: the files the plan writes).
    pub progress: Option<std::sync::Arc<crate::Progress>>,
    /// Restore only these manifest entries (by entry id), and the folders leading to
    /// them: a restore drill's sample.
    pub only: Option<std::sync::Arc<HashSet<i64>>>,
}

/// When an existing entry of the target is replaced (`--overwrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Replace every existing entry.
    Always,
    /// Replace entries whose content or kind differs, fix those whose metadata
    /// differs, and leave identical ones alone.
    #[default]
    IfChanged,
    /// As `IfChanged`, but only where the snapshot's entry is newer than the target's.
    IfNewer,
    /// Leave every existing entry alone.
    Never,
}

impl std::str::FromStr for Overwrite {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        Ok(match text {
            "always" => Overwrite::Always,
            "if-changed" => Overwrite::IfChanged,
            "if-newer" => Overwrite::IfNewer,
            "never" => Overwrite::Never,
            other => {
                return Err(Error::InvalidInput(format!(
                    "--overwrite {other:?} is not a rule: use always, if-changed, if-newer or never"
                )))
            }
        })
    }
}

/// What will happen to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing is there: made.
    Create,
    /// Something else is there: replaced (its content or kind differs, or `--overwrite always`).
    Overwrite,
    /// The same content is there: its mode, times or owner are set in place.
    Update,
    /// Left as it is (identical, or kept by the `--overwrite` rule).
    Keep,
    /// A further name of a file restored under another name.
    HardLink,
    /// Cannot be restored here (a device without root, a socket); the reason is a warning.
    Skip,
    /// In the target but not in the snapshot (`--delete`): removed, with what is in it.
    Delete,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Overwrite => "overwrite",
            Action::Update => "update",
            Action::Keep => "keep",
            Action::HardLink => "link",
            Action::Skip => "skip",
            Action::Delete => "delete",
        }
    }
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
    /// Why: "content differs", "identical", "not in the snapshot"...
    pub why: &'static str,
    /// Something was at the entry's place before the restore.
    pub existed: bool,
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
    pub updates: u64,
    pub keeps: u64,
    pub deletes: u64,
    /// Bytes of the files to write, and of the files already present (kept or updated).
    pub bytes_to_write: u64,
    pub bytes_present: u64,
    /// Bytes of target files read to compare them with the snapshot.
    pub bytes_compared: u64,
    /// Distinct blobs to fetch, and their stored size.
    pub blobs: u64,
    pub fetch_bytes: u64,
    pub packs: u64,
    pub warnings: Vec<String>,
    /// The inode (at plan time) of each hard-linked file the restore leaves as it is:
    /// further names of its group are linked to that inode, and to no other.
    pub kept_leaders: HashMap<Vec<u8>, u64>,
}

impl RestorePlan {
    /// True if the plan replaces, changes or deletes something the target holds.
    pub fn touches_target(&self) -> bool {
        self.entries.iter().any(|p| {
            p.existed && matches!(p.action, Action::Overwrite | Action::Update | Action::Delete | Action::HardLink)
        })
    }
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
    /// Bytes of chunks taken from the files being replaced instead of fetched.
    pub bytes_reused: u64,
    pub requests: u64,
    /// Entries not restored, with the reason (naming the damaged object).
    pub failed: Vec<Failure>,
    pub warnings: Vec<String>,
    /// Entries left alone, whose metadata was set in place, and removed (`--delete`).
    pub kept: u64,
    pub updated: u64,
    pub deleted: u64,
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

/// Builds the plan: reads only the manifest rows below the subpath, and compares each
/// with what the target holds (without following symlinks) to choose its action.
pub fn plan(repository: &Repository, manifest: &Manifest, options: &RestoreOptions) -> Result<RestorePlan> {
    let base = options.subpath.clone().unwrap_or_else(|| b"/".to_vec());
    let base = if base.len() > 1 { base.strip_suffix(b"/").unwrap_or(&base).to_vec() } else { base };
    let rows = manifest.entries_under(&base)?;
    if rows.is_empty() {
        let shown = String::from_utf8_lossy(&base);
        return Err(Error::NotFound { what: format!("path {shown} in the snapshot") });
    }
    let base_is_file = rows.len() == 1 && rows[0].1.path == base && rows[0].1.kind != EntryKind::Dir;
    if options.delete {
        check_delete(options, &base, base_is_file)?;
    }
    let include = RestorePatterns::new(&options.include)?;
    let exclude = RestorePatterns::new(&options.exclude)?;
    let existing = if options.strict_target {
        Some(
            TargetDir::open_strict(&options.target)
                .map_err(|e| Error::io("cannot open restore target", &options.target, e))?,
        )
    } else {
        TargetDir::open_existing(&options.target)
            .map_err(|e| Error::io("cannot open restore target", &options.target, e))?
    };
    let mut plan = RestorePlan::default();
    let mut leaders: HashMap<i64, Vec<u8>> = HashMap::new();
    let mut blocked: Vec<Vec<u8>> = Vec::new();
    for (entry_id, entry) in rows {
        let relative = relative_of(&entry.path, &base, base_is_file);
        let wanted =
            include.as_ref().is_none_or(|set| entry.kind == EntryKind::Dir || set.matches(&entry.path, &relative))
                && options.only.as_ref().is_none_or(|only| entry.kind == EntryKind::Dir || only.contains(&entry_id));
        let unwanted = exclude.as_ref().is_some_and(|set| set.matches(&entry.path, &relative));
        if !wanted || unwanted || (entry.path == b"/" && options.subpath.is_none()) {
            continue;
        }
        let found = match &existing {
            Some(target) => Some(
                target
                    .lookup(&relative)
                    .map_err(|e| Error::io("cannot look at", display_path(&options.target, &relative), e))?,
            ),
            None => None,
        };
        // Below a folder kept as something else (`--overwrite never`), nothing can be made.
        if blocked.iter().any(|b| relative.starts_with(b) && relative.get(b.len()) == Some(&b'/')) {
            let why = "a file the rule keeps stands where its folder should be (--overwrite never)";
            plan.warnings.push(format!("not restoring {}: {why}", display_path(&options.target, &relative).display()));
            continue;
        }
        let stat = found.flatten();
        let planned = plan_entry(
            manifest,
            (entry_id, entry),
            relative,
            (existing.as_ref(), stat),
            options,
            &mut leaders,
            &mut plan,
        )?;
        if planned.entry.kind == EntryKind::Dir
            && planned.action == Action::Keep
            && stat.is_some_and(|stat| !beneath::is_dir(&stat))
        {
            blocked.push(planned.relative.clone());
        }
        plan.entries.push(planned);
    }
    if include.is_some() || options.only.is_some() {
        prune_empty_dirs(&mut plan);
    }
    for (option, set) in [("--include", &include), ("--exclude", &exclude)] {
        for pattern in set.iter().flat_map(|set| set.unmatched()) {
            plan.warnings.push(format!(
                "{option} {pattern:?} matched nothing (patterns without a leading / are relative to the restored folder)"
            ));
        }
    }
    if let (true, Some(target)) = (options.delete, &existing) {
        plan_deletions(target, &base, exclude.as_ref(), &mut plan)?;
    }
    count_fetches(repository, &mut plan)?;
    Ok(plan)
}

/// `--delete` removes what the restored folder does not hold, so it is refused where a
/// mistyped target would wipe something else: `/`, a target that is not the restored
/// folder's own path, a single file; `--force` overrides the first two.
fn check_delete(options: &RestoreOptions, base: &[u8], base_is_file: bool) -> Result<()> {
    if !options.include.is_empty() {
        return Err(Error::InvalidInput(
            "--delete cannot be combined with --include: it would remove everything not included".into(),
        ));
    }
    if base_is_file {
        return Err(Error::InvalidInput("--delete needs a folder of the snapshot, not a single file".into()));
    }
    let target = std::path::absolute(&options.target)
        .ok()
        .and_then(|path| path.canonicalize().ok().or(Some(path)))
        .unwrap_or_else(|| options.target.clone());
    if options.force {
        return Ok(());
    }
    if target == Path::new("/") {
        return Err(Error::Refused(
            "--delete into / would remove everything the snapshot does not hold; add --force if that is really meant"
                .into(),
        ));
    }
    if target.as_os_str().as_bytes() != base {
        return Err(Error::Refused(format!(
            "--delete removes what the restored folder {} does not hold, and the target {} is another folder; add --force if that is really meant",
            String::from_utf8_lossy(base),
            target.display()
        )));
    }
    Ok(())
}

/// Plans the removal of every entry of the target that the plan does not hold (a
/// folder once, with what is in it), except those `--exclude` matches and temporary
/// files of restores.
fn plan_deletions(
    target: &TargetDir,
    base: &[u8],
    exclude: Option<&RestorePatterns>,
    plan: &mut RestorePlan,
) -> Result<()> {
    // Planned entries, and whether each is a folder: a folder of the target where the
    // snapshot has a file goes with everything in it when the file replaces it.
    let kept: HashMap<Vec<u8>, bool> =
        plan.entries.iter().map(|p| (p.relative.clone(), p.entry.kind == EntryKind::Dir)).collect();
    let mut walk = walkdir::WalkDir::new(target.path())
        .follow_links(false)
        // The target path is the user's choice: a symlink naming it is followed.
        .follow_root_links(true)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    while let Some(item) = walk.next() {
        let item = item.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| target.path().to_path_buf());
            Error::io("cannot list", path, e.into_io_error().unwrap_or_else(|| std::io::Error::other("a loop")))
        })?;
        let relative = item.path().strip_prefix(target.path()).unwrap_or(item.path()).as_os_str().as_bytes().to_vec();
        let is_dir = item.file_type().is_dir();
        if let Some(planned_dir) = kept.get(&relative) {
            if is_dir && !planned_dir {
                walk.skip_current_dir();
            }
            continue;
        }
        let name = item.file_name().as_bytes();
        let snapshot_path =
            if base == b"/" { [b"/", &relative[..]].concat() } else { [base, b"/", &relative].concat() };
        if beneath::is_temporary_name(name) || exclude.is_some_and(|set| set.matches(&snapshot_path, &relative)) {
            if is_dir {
                walk.skip_current_dir();
            }
            continue;
        }
        if is_dir {
            walk.skip_current_dir();
        }
        let metadata = item.metadata().ok();
        let entry = Entry {
            path: snapshot_path,
            kind: EntryKind::of(item.file_type()),
            size: metadata.as_ref().map_or(0, |m| if m.is_file() { m.len() } else { 0 }),
            ..Entry::default()
        };
        plan.deletes += 1;
        plan.entries.push(PlannedEntry {
            entry_id: 0,
            entry,
            target: item.path().to_path_buf(),
            relative,
            action: Action::Delete,
            why: "not in the snapshot",
            existed: true,
            link_to: None,
            chunks: Vec::new(),
            xattrs: Vec::new(),
        });
    }
    Ok(())
}

fn display_path(target: &Path, relative: &[u8]) -> PathBuf {
    if relative.is_empty() {
        target.to_path_buf()
    } else {
        target.join(OsStr::from_bytes(relative))
    }
}

/// The action for one entry, by the `--overwrite` rule and what the target holds.
fn choose(
    target: Option<&TargetDir>,
    relative: &[u8],
    stat: Option<&nix::sys::stat::FileStat>,
    (entry, xattrs): (&Entry, &compare::Xattrs),
    options: &RestoreOptions,
    hashed: &mut u64,
) -> (Action, &'static str) {
    let overwrite = options.overwrite;
    let (Some(target), Some(stat)) = (target, stat) else { return (Action::Create, "") };
    if relative.is_empty() && !options.target_metadata {
        return (Action::Keep, "the target folder keeps its own metadata");
    }
    let same_kind = compare::kind_of(stat) == entry.kind;
    match overwrite {
        Overwrite::Never => return (Action::Keep, "exists (--overwrite never)"),
        Overwrite::Always if same_kind && entry.kind == EntryKind::Dir => {
            return (Action::Update, "--overwrite always")
        }
        Overwrite::Always => return (Action::Overwrite, "--overwrite always"),
        Overwrite::IfNewer if compare::mtime_ns(stat) >= entry.mtime_ns && entry.kind != EntryKind::Dir => {
            return (Action::Keep, "as new or newer in the target (--overwrite if-newer)")
        }
        _ => {}
    }
    match compare::compare(target, relative, stat, (entry, xattrs), options.checksum, hashed) {
        compare::Difference::None => (Action::Keep, "identical"),
        // Setting metadata in place on a file with other names would change those too,
        // wherever they are: such a file is replaced by a new one instead.
        compare::Difference::Metadata if entry.kind == EntryKind::File && stat.st_nlink > 1 => {
            (Action::Overwrite, "metadata differs (a file with other hard links is replaced)")
        }
        compare::Difference::Metadata if matches!(entry.kind, EntryKind::File | EntryKind::Dir) => {
            (Action::Update, "metadata differs")
        }
        compare::Difference::Metadata => (Action::Overwrite, "metadata differs"),
        compare::Difference::Content => (Action::Overwrite, "content differs"),
        compare::Difference::Kind => (Action::Overwrite, "another kind of entry is there"),
    }
}

fn plan_entry(
    manifest: &Manifest,
    (entry_id, entry): (i64, Entry),
    relative: Vec<u8>,
    (target, stat): (Option<&TargetDir>, Option<nix::sys::stat::FileStat>),
    options: &RestoreOptions,
    leaders: &mut HashMap<i64, Vec<u8>>,
    plan: &mut RestorePlan,
) -> Result<PlannedEntry> {
    let target_shown = display_path(&options.target, &relative);
    let existed = stat.is_some();
    let xattrs = manifest.xattrs(entry_id)?;
    let (mut action, mut why) =
        choose(target, &relative, stat.as_ref(), (&entry, &xattrs), options, &mut plan.bytes_compared);
    let mut link_to = None;
    let mut chunks = Vec::new();
    match entry.kind {
        EntryKind::File => {
            plan.files += 1;
            match entry.hardlink_group.and_then(|group| leaders.get(&group)) {
                // The group's first name was left as it was: a further name that is
                // already that very file stays too; any other is linked to it.
                Some(leader) if plan.kept_leaders.contains_key(leader) => {
                    let leader_inode = plan.kept_leaders[leader];
                    let same_file = stat.as_ref().is_some_and(|s| s.st_ino == leader_inode);
                    if action == Action::Keep && same_file {
                        why = "identical, and the same file as its first name";
                    } else {
                        action = Action::HardLink;
                        why = "";
                        link_to = Some(leader.clone());
                    }
                }
                // The first name is written anew: every further name is linked to it.
                Some(leader) => {
                    action = Action::HardLink;
                    why = "";
                    link_to = Some(leader.clone());
                }
                None => {
                    if let Some(group) = entry.hardlink_group {
                        match (action, stat.as_ref()) {
                            (Action::Create | Action::Overwrite, _) => {
                                leaders.insert(group, relative.clone());
                            }
                            (Action::Keep, Some(stat)) if compare::kind_of(stat) == EntryKind::File => {
                                leaders.insert(group, relative.clone());
                                plan.kept_leaders.insert(relative.clone(), stat.st_ino);
                            }
                            // Set in place (metadata), or skipped: its further names are
                            // restored on their own.
                            _ => {}
                        }
                    }
                    if matches!(action, Action::Create | Action::Overwrite) {
                        chunks = manifest.chunks(entry_id)?;
                        plan.bytes_to_write += entry.size;
                    } else {
                        plan.bytes_present += entry.size;
                    }
                    plan.file_bytes += entry.size;
                }
            }
        }
        EntryKind::Dir => plan.dirs += 1,
        EntryKind::CharDevice | EntryKind::BlockDevice if !crate::system::is_root() => {
            action = Action::Skip;
            plan.warnings.push(format!("skipping device {}: creating devices needs root", target_shown.display()));
        }
        EntryKind::Socket => {
            action = Action::Skip;
            plan.warnings.push(format!(
                "skipping socket {}: sockets are recreated by the programs that own them",
                target_shown.display()
            ));
        }
        _ => plan.others += 1,
    }
    match action {
        Action::Create if entry.kind != EntryKind::Dir => plan.creates += 1,
        Action::Overwrite => plan.overwrites += 1,
        Action::Update => plan.updates += 1,
        Action::Keep if entry.kind != EntryKind::Dir => plan.keeps += 1,
        _ => {}
    }
    Ok(PlannedEntry { entry_id, entry, target: target_shown, relative, action, why, existed, link_to, chunks, xattrs })
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
    /// Bytes written and files finished, for whoever shows progress.
    progress: Option<std::sync::Arc<crate::Progress>>,
    /// A folder with content may be replaced by a file where the plan says so.
    replace_folders: bool,
    /// `.coffer-restore-<random>-`: this run's temporary names start with it.
    prefix: String,
    counter: AtomicU64,
}

impl<'t> Run<'t> {
    fn new(target: &'t TargetDir, replace_folders: bool, progress: Option<std::sync::Arc<crate::Progress>>) -> Self {
        let token = hex::encode(rand::random::<[u8; 6]>());
        let prefix = format!("{}{token}-", beneath::TEMPORARY_PREFIX);
        Self { target, progress, replace_folders, prefix, counter: AtomicU64::new(0) }
    }

    fn wrote(&self, bytes: u64) {
        if let Some(progress) = &self.progress {
            progress.add_read(bytes);
        }
    }

    fn file_finished(&self, path: &std::path::Path) {
        if let Some(progress) = &self.progress {
            progress.start_file(path);
            progress.file_done();
        }
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
    let target = if options.strict_target {
        TargetDir::open_strict(&options.target)
            .map_err(|e| Error::io("cannot open restore target", &options.target, e))?
    } else {
        TargetDir::create(&options.target).map_err(|e| Error::io("cannot create restore target", &options.target, e))?
    };
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
    if let Some(progress) = &options.progress {
        let writes = plan
            .entries
            .iter()
            .filter(|p| p.entry.kind == EntryKind::File && matches!(p.action, Action::Create | Action::Overwrite));
        for planned in writes {
            progress.add_scanned(planned.entry.size);
        }
        progress.finish_scan();
    }
    let run = Run::new(&target, options.replace_folders, options.progress.clone());
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
    for planned in plan.entries.iter().filter(|p| p.action == Action::Update && p.entry.kind != EntryKind::Dir) {
        crate::interrupt::check()?;
        match metadata::update_in_place(&run, planned, owners.as_mut(), &mut report.warnings) {
            Ok(()) => report.updated += 1,
            Err(error) => {
                failed.insert(planned.relative.clone());
                report.failed.push(local_failure(planned, error));
            }
        }
    }
    report.kept =
        plan.entries.iter().filter(|p| p.action == Action::Keep && p.entry.kind != EntryKind::Dir).count() as u64;
    for planned in plan.entries.iter().filter(|p| p.action == Action::Delete) {
        crate::interrupt::check()?;
        match run.target.remove_tree(&planned.relative) {
            Ok(()) => report.deleted += 1,
            Err(error) => {
                failed.insert(planned.relative.clone());
                report.failed.push(local_failure(planned, error));
            }
        }
    }
    for planned in plan.entries.iter().rev().filter(|p| p.entry.kind == EntryKind::Dir) {
        // The target folder itself keeps its own metadata if it was there before; an
        // entry kept by `--overwrite never` keeps its own.
        let kept = (planned.relative.is_empty() && target_existed && !options.target_metadata)
            || (planned.action == Action::Keep && options.overwrite == Overwrite::Never);
        if !failed.contains(&planned.relative) && !kept && planned.action != Action::Delete {
            let inode = inodes.get(&planned.relative).copied();
            metadata::apply_dir(&run, planned, inode, owners.as_mut(), &mut report.warnings);
            if planned.action == Action::Update {
                report.updated += 1;
            }
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
    !matches!(planned.entry.kind, EntryKind::File | EntryKind::Dir)
        && matches!(planned.action, Action::Create | Action::Overwrite)
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
    let made = |p: &&PlannedEntry| {
        p.entry.kind == EntryKind::Dir
            && !matches!(p.action, Action::Delete | Action::Skip)
            && (p.action != Action::Keep
                || !p.existed
                || run.target.find(&p.relative).ok() == Some(beneath::Found::Dir))
    };
    for planned in plan.entries.iter().filter(made) {
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
