//! Backup: walks trees (or reads stdin), chunks and stores content, writes the manifest,
//! and commits a snapshot (packs, then index, then snapshot record).

mod command;
mod digest;
mod dry_run;
mod parent;
mod walk;

pub use command::InputCommand;
use digest::FileDigest;
pub use dry_run::{dry_run, DryRunReport, FileChange, PlannedFile};
pub use parent::ChangeRules;
use parent::{Change, Parent};
pub use walk::Excludes;

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver};

use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::pipelines::pg::{self, PgBackupOptions, PgTools};
use crate::pipelines::progress::Progress;
use crate::repository::chunker::Chunker;
use crate::repository::manifest::{ChunkRef, Entry, EntryKind, ManifestWriter};
use crate::repository::pack::BlobType;
use crate::repository::packer::Packer;
use crate::repository::snapshot::{ManifestRef, PostgresSource, Snapshot, Source, Summary, SNAPSHOT_VERSION};
use crate::repository::Repository;
use crate::system::OwnerNames;

/// A function told of each file a backup stores (see [`BackupOptions::on_file`]).
pub type FileListener = Arc<dyn Fn(&Path, &str, Option<&str>) + Send + Sync>;

/// What to back up.
#[derive(Default)]
pub struct BackupOptions {
    /// Trees to back up; made absolute.
    pub paths: Vec<PathBuf>,
    /// Told of every regular file as it is stored: its path, `new`, `changed` or
    /// `unchanged`, and for a changed one why (`-v` and `-vv` list them).
    pub on_file: Option<FileListener>,
    /// Standard input (or any reader) stored as one file named `/NAME`.
    pub stdin: Option<(Box<dyn Read + Send>, String)>,
    /// A program whose output is stored as one file; its failure fails the backup.
    pub stdin_command: Option<InputCommand>,
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot; the system's by default.
    pub host: Option<String>,
    /// Databases to dump into the same snapshot.
    pub postgres: Vec<PgBackupOptions>,
    /// The PostgreSQL programs to run.
    pub pg_tools: PgTools,
    /// The parent snapshot (`latest`, an id or a prefix); by default the latest of the
    /// same host and paths.
    pub parent: Option<String>,
    /// When a file counts as unchanged against its parent.
    pub change_rules: ChangeRules,
    /// Write a checkpoint index after this many packs (default `CHECKPOINT_PACKS`).
    pub checkpoint_packs: Option<usize>,
    /// What to leave out of the walk.
    pub excludes: Excludes,
    /// Counters to update as the backup goes; when given, a scan thread also counts
    /// the files and bytes to expect.
    pub progress: Option<Arc<Progress>>,
    /// When not empty, only these entries are backed up (with everything below them
    /// if the flag says so), and `paths` is only recorded: a restore's safety snapshot.
    pub selection: Vec<(PathBuf, bool)>,
}

/// The outcome of a backup.
#[derive(Debug)]
pub struct BackupReport {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    /// Files that could not be read, or an empty standard input; the snapshot is
    /// incomplete if there are any.
    pub warnings: Vec<String>,
    /// Things worth knowing that do not make the snapshot incomplete (e.g. an unusable parent).
    pub notes: Vec<String>,
}

/// Runs a backup and commits its snapshot. If it fails or is interrupted after packs
/// were finished, they are indexed before the error is returned, so the next run
/// reuses them instead of uploading them again.
pub fn backup(repository: &Repository, options: BackupOptions) -> Result<BackupReport> {
    let _lock = repository.lock_shared()?;
    let packer = Packer::with_checkpoints(
        repository,
        options.checkpoint_packs.unwrap_or(crate::repository::packer::CHECKPOINT_PACKS),
    );
    run(repository, options, &packer).map_err(|error| keep_finished_packs(&packer, error))
}

/// After a failed backup: indexes the packs already stored (after an interrupt, also
/// the packs in hand, which hold complete blobs). When storage cannot take the index
/// object either, it is kept in the local cache and stored by the next run. Whatever
/// happens here is said beside the first error, never instead of it.
fn keep_finished_packs(packer: &Packer<'_>, error: Error) -> Error {
    let interrupted = matches!(error, Error::Interrupted { .. });
    let repository = packer.repository();
    let saved = packer.take_finished(interrupted).and_then(|index| {
        if index.packs.is_empty() {
            return Ok(());
        }
        repository.write_index(&index).map(drop).or_else(|_| repository.keep_index_for_later(&index))
    });
    let kept = packer.stats().bytes;
    match (error, saved) {
        (Error::Interrupted { signal, .. }, Ok(())) => Error::Interrupted {
            signal,
            outcome: format!("no snapshot saved; {} MiB kept for the next run", kept.div_ceil(1 << 20)),
        },
        (Error::Interrupted { signal, .. }, Err(index_error)) => Error::Interrupted {
            signal,
            outcome: format!("no snapshot saved; the data stored so far could not be indexed ({index_error})"),
        },
        (error, _) => error,
    }
}

fn run(repository: &Repository, options: BackupOptions, packer: &Packer<'_>) -> Result<BackupReport> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    let paths = options.paths.iter().map(|path| walk::absolute(path)).collect::<Result<Vec<_>>>()?;
    let manifests = repository.cache_dir().join("manifests");
    // Manifests of backups that were killed (a live backup holds a lock on its own).
    crate::system::remove_unlocked_files(&manifests, "new-", std::time::Duration::from_secs(60));
    let manifest_path = manifests.join(format!("new-{}.sqlite", crate::id::LockId::random().short()));
    let _cleanup = RemoveOnDrop(manifest_path.clone());
    let host = options.host.clone().unwrap_or_else(crate::system::host_name);
    let mut notes = Vec::new();
    let (parent_id, parent) = open_parent(repository, &options, &host, &paths, &mut notes)?;
    let progress = options.progress.clone().unwrap_or_default();
    let mut walker = Walker {
        parent,
        manifest: ManifestWriter::create(&manifest_path)?,
        _manifest_lock: std::fs::File::open(&manifest_path).inspect(crate::system::lock_file).ok(),
        packer,
        owners: OwnerNames::default(),
        hard_links: HashMap::new(),
        summary: Summary::default(),
        warnings: Vec::new(),
        notes: Vec::new(),
        progress: &progress,
        on_file: options.on_file.clone(),
    };
    let mut sources = Vec::new();
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| -> Result<()> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        let (sender, receiver) = bounded::<(BlobId, Bytes)>(workers * 2);
        for _ in 0..workers {
            let receiver = receiver.clone();
            let failure = &failure;
            scope.spawn(move || store_blobs(packer, receiver, failure));
        }
        drop(receiver);
        let sender = BlobSender { sender, failure: &failure, digests: digest::DigestThread::start(scope) };
        if !paths.is_empty() {
            let roots = walk::outermost(&paths);
            if options.progress.is_some() && options.selection.is_empty() {
                let (roots, excludes, progress) = (roots.clone(), &options.excludes, &progress);
                scope.spawn(move || walk::scan(&roots, excludes, progress));
            }
            let walked = if options.selection.is_empty() {
                walker.walk_trees(&roots, &options.excludes, &sender)
            } else {
                walker.walk_selection(&options.selection, &options.excludes, &sender)
            };
            progress.finish_walk();
            walked?;
            sources.push(Source::Files { paths: paths.iter().map(|p| p.display().to_string()).collect() });
        } else {
            progress.finish_scan();
        }
        if let Some((reader, name)) = options.stdin {
            walker.add_stdin(reader, &name, time, &sender)?;
            sources.push(Source::Stdin { name });
        }
        if let Some(input) = &options.stdin_command {
            walker.add_command_output(input, time, &sender)?;
            sources.push(Source::Stdin { name: input.name.clone() });
        }
        for database in &options.postgres {
            let source = walker.add_postgres(&options.pg_tools, database, time, &sender)?;
            sources.push(Source::Postgres(source));
        }
        Ok(())
    })
    .map_err(|error| failure.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or(error))?;
    if let Some(error) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(error);
    }
    let Walker { manifest, mut summary, warnings, notes: walk_notes, .. } = walker;
    notes.extend(walk_notes);
    let manifest_ref = store_manifest(packer, manifest.finish()?)?;
    let index = packer.flush()?;
    if !index.packs.is_empty() {
        repository.write_index(&index)?;
    }
    let stats = packer.stats();
    summary.blobs_added = stats.blobs;
    summary.bytes_added = stats.bytes;
    summary.bytes_new = stats.raw_bytes;
    summary.warnings = warnings.len() as u64;
    summary.duration_seconds = started.elapsed().as_secs_f64();
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        time: time.to_string(),
        host,
        user: crate::system::user_name(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        tags: options.tags,
        parent: parent_id.filter(|_| !paths.is_empty()),
        complete: warnings.is_empty(),
        sources,
        summary,
        program_version: concat!("coffer ", env!("CARGO_PKG_VERSION")).to_string(),
        manifest: manifest_ref,
    };
    // The commit point. Not after an interrupt (a stream piped in may have been cut
    // short by the same Ctrl-C), and only if no prune can have run since the lock was
    // taken.
    crate::interrupt::check()?;
    repository.ensure_lock_held()?;
    let id = repository.save_snapshot(&snapshot)?;
    let _ = std::fs::rename(&manifest_path, repository.manifest_cache_path(&id));
    Ok(BackupReport { id, snapshot, warnings, notes })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The parent snapshot's id, and its manifest for change detection unless that cannot
/// be used (then every file is read, and `notes` says why).
fn open_parent<'r>(
    repository: &'r Repository,
    options: &BackupOptions,
    host: &str,
    paths: &[PathBuf],
    notes: &mut Vec<String>,
) -> Result<(Option<SnapshotId>, Option<Parent<'r>>)> {
    let path_texts: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let parent_snapshot = choose_parent(repository, options, host, &path_texts)?;
    let parent = match &parent_snapshot {
        Some((id, snapshot)) if !paths.is_empty() => match Parent::open(repository, id, snapshot, options.change_rules)
        {
            Ok(parent) => Some(parent),
            Err(error) => {
                notes.push(format!("cannot use parent snapshot {}, reading every file: {error}", id.short()));
                None
            }
        },
        _ => None,
    };
    Ok((parent_snapshot.map(|(id, _)| id), parent))
}

/// The parent named by `--parent`, or the latest snapshot of the same host and paths.
fn choose_parent(
    repository: &Repository,
    options: &BackupOptions,
    host: &str,
    paths: &[String],
) -> Result<Option<(SnapshotId, Snapshot)>> {
    if options.change_rules.force || paths.is_empty() {
        return Ok(None);
    }
    if let Some(spec) = &options.parent {
        return repository.find_snapshot(spec).map(Some);
    }
    let (snapshots, _) = repository.list_snapshots()?;
    Ok(parent::find_parent(&snapshots, host, paths))
}

fn store_blobs(packer: &Packer<'_>, receiver: Receiver<(BlobId, Bytes)>, failure: &Mutex<Option<Error>>) {
    for (id, data) in receiver {
        if let Err(error) = packer.store(id, BlobType::Data, &data) {
            failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(error);
            return;
        }
    }
}

/// Where the walking thread hands work: blobs to store, and large files' content to hash.
struct BlobSender<'a> {
    sender: crossbeam_channel::Sender<(BlobId, Bytes)>,
    digests: digest::DigestThread,
    failure: &'a Mutex<Option<Error>>,
}

impl BlobSender<'_> {
    fn send(&self, id: BlobId, data: Bytes) -> Result<()> {
        if self.sender.send((id, data)).is_err() || self.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Err(Error::Backend { location: "worker".into(), message: "a storage worker stopped".into() });
        }
        Ok(())
    }
}

struct Walker<'a, 'r> {
    parent: Option<Parent<'r>>,
    manifest: ManifestWriter,
    /// Held while the manifest is written, so that other runs leave it alone.
    _manifest_lock: Option<std::fs::File>,
    packer: &'a Packer<'r>,
    owners: OwnerNames,
    hard_links: HashMap<(u64, u64), i64>,
    summary: Summary,
    warnings: Vec<String>,
    notes: Vec<String>,
    progress: &'a Progress,
    on_file: Option<FileListener>,
}

impl Walker<'_, '_> {
    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    /// Records the directories above each backed-up path, so a full restore recreates them.
    fn add_ancestors(&mut self, paths: &[&PathBuf]) -> Result<()> {
        for path in paths {
            for ancestor in path.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
                let bytes = ancestor.as_os_str().as_bytes();
                if self.manifest.contains(bytes)? {
                    continue;
                }
                let metadata =
                    std::fs::symlink_metadata(ancestor).map_err(|e| Error::io("cannot read", ancestor, e))?;
                let entry = self.entry(ancestor, &metadata, EntryKind::Dir);
                self.manifest.add(&entry, &[], &[])?;
            }
        }
        Ok(())
    }

    /// Walks every backup root, after recording the directories above them.
    fn walk_trees(&mut self, roots: &[&PathBuf], excludes: &Excludes, sender: &BlobSender<'_>) -> Result<()> {
        self.add_ancestors(roots)?;
        let patterns = excludes.glob_set()?;
        for root in roots {
            self.walk_tree(root, excludes, &patterns, sender)?;
        }
        Ok(())
    }

    /// Backs up only the selected entries, sorted so that a folder comes before what
    /// is in it, each after the folders above it; a flag set walks the whole tree below.
    fn walk_selection(
        &mut self,
        selection: &[(PathBuf, bool)],
        excludes: &Excludes,
        sender: &BlobSender<'_>,
    ) -> Result<()> {
        let patterns = excludes.glob_set()?;
        let mut sorted: Vec<&(PathBuf, bool)> = selection.iter().collect();
        sorted.sort();
        for (path, recursive) in sorted {
            crate::interrupt::check()?;
            self.add_ancestors(&[path])?;
            if self.manifest.contains(path.as_os_str().as_bytes())? {
                continue;
            }
            if !*recursive {
                self.add_path(path, sender)?;
                continue;
            }
            self.walk_tree(path, excludes, &patterns, sender)?;
        }
        Ok(())
    }

    /// Adds every entry of one tree, in walk order.
    fn walk_tree(
        &mut self,
        root: &Path,
        excludes: &Excludes,
        patterns: &Option<globset::GlobSet>,
        sender: &BlobSender<'_>,
    ) -> Result<()> {
        for item in walk::tree(root, excludes, patterns) {
            crate::interrupt::check()?;
            match item {
                Ok(item) => self.add_path(item.path(), sender)?,
                Err(error) => self.warn(walk::walk_warning(&error)),
            }
        }
        Ok(())
    }

    fn add_path(&mut self, path: &Path, sender: &BlobSender<'_>) -> Result<()> {
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) => {
                self.warn(format!("cannot read {}: {error}", path.display()));
                return Ok(());
            }
        };
        let kind = EntryKind::of(metadata.file_type());
        let mut entry = self.entry(path, &metadata, kind);
        let xattrs = self.xattrs(path);
        let mut chunks = Vec::new();
        match kind {
            EntryKind::File => {
                let hard_link = (metadata.nlink() > 1).then(|| (metadata.dev(), metadata.ino()));
                if let Some(first) = hard_link.and_then(|key| self.hard_links.get(&key)) {
                    entry.hardlink_group = Some(*first);
                }
                self.progress.start_file(path);
                match self.file_content(path, &mut entry, sender) {
                    Ok(read) => chunks = read,
                    Err(Error::Io { source, .. }) => {
                        self.warn(format!("cannot read {}: {source}", path.display()));
                        return Ok(());
                    }
                    Err(other) => return Err(other),
                }
                self.summary.files += 1;
                self.summary.total_bytes += entry.size;
                self.progress.file_done();
                let id = self.manifest.add(&entry, &xattrs, &chunks)?;
                if let (Some(key), None) = (hard_link, entry.hardlink_group) {
                    self.hard_links.insert(key, id);
                    self.manifest.set_hardlink_group(id, id)?;
                }
                return Ok(());
            }
            EntryKind::Dir => self.summary.dirs += 1,
            EntryKind::Symlink => match std::fs::read_link(path) {
                Ok(target) => entry.link_target = Some(target.as_os_str().as_bytes().to_vec()),
                Err(error) => {
                    self.warn(format!("cannot read link {}: {error}", path.display()));
                    return Ok(());
                }
            },
            _ => self.summary.other_entries += 1,
        }
        self.manifest.add(&entry, &xattrs, &chunks)?;
        Ok(())
    }

    fn entry(&mut self, path: &Path, metadata: &Metadata, kind: EntryKind) -> Entry {
        walk::new_entry(path, metadata, kind, &mut self.owners)
    }

    fn xattrs(&mut self, path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let names = match xattr::list(path) {
            Ok(names) => names,
            Err(error) if is_unsupported(&error) => return Vec::new(),
            Err(error) => {
                self.warn(format!("cannot list extended attributes of {}: {error}", path.display()));
                return Vec::new();
            }
        };
        let mut xattrs = Vec::new();
        for name in names {
            match xattr::get(path, &name) {
                Ok(Some(value)) => xattrs.push((name.as_bytes().to_vec(), value)),
                Ok(None) => {}
                Err(error) => {
                    self.warn(format!("cannot read extended attribute {:?} of {}: {error}", name, path.display()))
                }
            }
        }
        xattrs
    }

    /// The file's chunks: the parent's when it is unchanged, else read now.
    fn file_content(&mut self, path: &Path, entry: &mut Entry, sender: &BlobSender<'_>) -> Result<Vec<ChunkRef>> {
        let change = match &self.parent {
            Some(parent) => parent.compare(entry)?,
            None => Change::New,
        };
        if let Some(listener) = &self.on_file {
            let (name, why) = match &change {
                Change::New => ("new", None),
                Change::Changed(why) => ("changed", Some(*why)),
                Change::Unchanged(..) => ("unchanged", None),
            };
            listener(path, name, why);
        }
        match change {
            Change::Unchanged(chunks, sha256) => {
                self.summary.files_unchanged += 1;
                self.progress.add_skipped(entry.size);
                entry.sha256 = Some(sha256);
                Ok(chunks)
            }
            Change::Changed(_) => {
                let chunks = self.read_file(path, entry, sender)?;
                self.summary.files_changed += 1;
                Ok(chunks)
            }
            Change::New => {
                let chunks = self.read_file(path, entry, sender)?;
                self.summary.files_new += 1;
                Ok(chunks)
            }
        }
    }

    fn read_file(&mut self, path: &Path, entry: &mut Entry, sender: &BlobSender<'_>) -> Result<Vec<ChunkRef>> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let chunker = self.packer.repository().file_chunker();
        let (chunks, size, sha256) =
            self.store_stream(file, Some(entry.size), &chunker, sender).map_err(|e| match e {
                StreamError::Read(source) => Error::io("cannot read", path, source),
                StreamError::Store(error) => error,
            })?;
        entry.size = size;
        entry.sha256 = Some(sha256);
        Ok(chunks)
    }

    /// Chunks and stores a stream; `expected_size` (a file's size when it was walked)
    /// decides where its SHA-256 is computed.
    fn store_stream(
        &mut self,
        reader: impl Read,
        expected_size: Option<u64>,
        chunker: &Chunker,
        sender: &BlobSender<'_>,
    ) -> std::result::Result<(Vec<ChunkRef>, u64, [u8; 32]), StreamError> {
        let repository = self.packer.repository();
        let mut digest = FileDigest::new(&sender.digests, expected_size);
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        for chunk in chunker.chunks(reader) {
            crate::interrupt::check().map_err(StreamError::Store)?;
            let chunk = chunk.map_err(StreamError::Read)?;
            digest.update(&chunk);
            let id = repository.master().blob_id(&chunk);
            chunks.push(ChunkRef { blob: id, offset, length: chunk.len() as u32 });
            offset += chunk.len() as u64;
            self.progress.add_read(chunk.len() as u64);
            if self.packer.claim(id, BlobType::Data).map_err(StreamError::Store)? {
                sender.send(id, chunk).map_err(StreamError::Store)?;
            }
        }
        self.summary.bytes_read += offset;
        Ok((chunks, offset, digest.finish().map_err(StreamError::Store)?))
    }

    fn add_stdin(
        &mut self,
        reader: Box<dyn Read + Send>,
        name: &str,
        time: jiff::Timestamp,
        sender: &BlobSender<'_>,
    ) -> Result<()> {
        let path = self.stdin_path(name)?;
        let chunker = self.packer.repository().file_chunker();
        let (size, _) = self.add_stream(reader, &path, "standard input", &chunker, time, sender)?;
        self.warn_if_empty(size, "standard input", &path);
        Ok(())
    }

    /// The manifest path of the file named by `--stdin-name`.
    fn stdin_path(&self, name: &str) -> Result<String> {
        let clean = name.trim_start_matches('/');
        if clean.is_empty() || clean.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(Error::InvalidInput(format!("--stdin-name {name:?} is not a usable file name")));
        }
        let path = format!("/{clean}");
        if self.manifest.contains(path.as_bytes())? {
            return Err(Error::InvalidInput(format!("--stdin-name {name:?} collides with a backed-up path")));
        }
        Ok(path)
    }

    /// Nothing to read is what a failed `pg_dump ... | coffer backup --stdin` looks
    /// like from here: the snapshot is kept, but marked incomplete, and the user told.
    fn warn_if_empty(&mut self, size: u64, what: &str, path: &str) {
        if size == 0 {
            self.warn(format!("{what} was empty: {path} holds 0 bytes (did the program feeding it fail?)"));
        }
    }

    /// Stores a stream as one regular file of the manifest; returns its size and SHA-256.
    fn add_stream(
        &mut self,
        reader: impl Read,
        path: &str,
        what: &str,
        chunker: &Chunker,
        time: jiff::Timestamp,
        sender: &BlobSender<'_>,
    ) -> Result<(u64, [u8; 32])> {
        self.progress.start_file(Path::new(path));
        let (chunks, size, sha256) = self.store_stream(reader, None, chunker, sender).map_err(|e| match e {
            StreamError::Read(source) => Error::io("cannot read", what, source),
            StreamError::Store(error) => error,
        })?;
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let entry = Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o600,
            uid,
            gid,
            user: self.owners.user(uid),
            group: self.owners.group(gid),
            mtime_ns: time.as_nanosecond() as i64,
            ctime_ns: time.as_nanosecond() as i64,
            inode: 0,
            device: 0,
            nlink: 1,
            size,
            rdev: 0,
            sha256: Some(sha256),
            link_target: None,
            hardlink_group: None,
        };
        self.summary.files += 1;
        // A stream is always read in full: changed if the parent had it, else new, so
        // new + changed + unchanged = files.
        match &self.parent {
            Some(parent) if parent.has(&entry.path)? => self.summary.files_changed += 1,
            _ => self.summary.files_new += 1,
        }
        self.summary.total_bytes += size;
        self.progress.file_done();
        self.manifest.add(&entry, &[], &chunks)?;
        Ok((size, sha256))
    }

    /// Stores what a PostgreSQL program writes as one file; its failure (or a stop short)
    /// is the error, with the program's own message.
    fn add_program_output(
        &mut self,
        mut program: pg::Running,
        path: &str,
        chunker: &Chunker,
        time: jiff::Timestamp,
        sender: &BlobSender<'_>,
    ) -> Result<(u64, [u8; 32])> {
        let tool = program.tool();
        let output =
            program.stdout().ok_or_else(|| Error::Postgres { tool: tool.into(), message: "no output pipe".into() })?;
        let stored = self.add_stream(output, path, &format!("{tool} output"), chunker, time, sender);
        program.finish()?;
        stored
    }

    /// A path under `/postgres/` not yet used in this manifest.
    fn free_pg_path(&self, database: &str, extension: &str) -> Result<String> {
        let safe: String = database.chars().map(|c| if c == '/' || c.is_control() { '_' } else { c }).collect();
        for attempt in 1.. {
            let suffix = if attempt == 1 { String::new() } else { format!("-{attempt}") };
            let path = format!("/postgres/{safe}{suffix}.{extension}");
            if !self.manifest.contains(path.as_bytes())? {
                return Ok(path);
            }
        }
        unreachable!("an unbounded range always yields a free name")
    }

    /// Dumps one database with pg_dump, streaming it through the dump chunker. If
    /// pg_dump fails or stops short, the error (with pg_dump's message) aborts the backup.
    fn add_postgres(
        &mut self,
        tools: &PgTools,
        options: &PgBackupOptions,
        time: jiff::Timestamp,
        sender: &BlobSender<'_>,
    ) -> Result<PostgresSource> {
        let info = pg::inspect(tools, options)?;
        let path = self.free_pg_path(&info.database, "dump")?;
        let chunker = self.packer.repository().dump_chunker();
        // One exported snapshot for pg_dump and the table checksums, so that the
        // checksums describe exactly the rows in the dump.
        let mut session = match pg::Session::open(tools, &options.conninfo) {
            Ok(session) => Some(session),
            Err(error) => {
                self.notes.push(format!(
                    "database {}: no table checksums recorded (a restore drill can then only check that the dump restores): {error}",
                    info.database
                ));
                None
            }
        };
        let dump = pg::start_dump(tools, &options.conninfo, session.as_ref().map(|s| s.snapshot.as_str()))?;
        let (size, sha256) = self.add_program_output(dump, &path, &chunker, time, sender)?;
        let tables = match session.as_mut().map(pg::Session::table_checksums) {
            Some(Ok(tables)) => Some(tables),
            Some(Err(error)) => {
                self.notes.push(format!("database {}: no table checksums recorded: {error}", info.database));
                None
            }
            None => None,
        };
        if let Some(session) = session {
            session.close();
        }
        let globals_path = match options.globals {
            true => Some(self.add_globals(tools, options, &info.database, time, sender)?),
            false => None,
        };
        Ok(PostgresSource {
            database: info.database,
            path,
            server_version: info.server_version,
            pg_dump_version: info.pg_dump_version,
            format: "custom".into(),
            size,
            sha256: hex::encode(sha256),
            migrations: info.migrations,
            schema_query: options.schema_query.clone(),
            globals_path,
            tables,
        })
    }

    fn add_globals(
        &mut self,
        tools: &PgTools,
        options: &PgBackupOptions,
        database: &str,
        time: jiff::Timestamp,
        sender: &BlobSender<'_>,
    ) -> Result<String> {
        let path = self.free_pg_path(database, "globals.sql")?;
        let chunker = self.packer.repository().file_chunker();
        let globals = pg::start_globals(tools, &options.conninfo)?;
        self.add_program_output(globals, &path, &chunker, time, sender)?;
        Ok(path)
    }
}

enum StreamError {
    Read(std::io::Error),
    Store(Error),
}

fn is_unsupported(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(code) if code == libc::ENOTSUP || code == libc::EOPNOTSUPP)
}

/// Chunks the finished manifest file into metadata blobs.
fn store_manifest(packer: &Packer<'_>, path: PathBuf) -> Result<ManifestRef> {
    let file = std::fs::File::open(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    let chunker = packer.repository().metadata_chunker();
    let mut hasher = blake3::Hasher::new();
    let mut blobs = Vec::new();
    let mut size = 0u64;
    for chunk in chunker.chunks(file) {
        let chunk = chunk.map_err(|e| Error::io("cannot read", &path, e))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        blobs.push(packer.store_if_new(BlobType::Metadata, &chunk)?);
    }
    Ok(ManifestRef { blobs, size, blake3: hasher.finalize().to_hex().to_string() })
}
