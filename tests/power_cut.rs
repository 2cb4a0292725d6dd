//! Power cuts (issue 13). Every durability-relevant call of a local repository (write
//! and fsync of a new file, fsync of a pack file, rename, link, unlink, folder fsync)
//! is recorded while backups, a forget and a prune run. Then, at cut points spread over
//! the recording, the state a power loss would leave is built: everything made durable
//! by an fsync, plus any subset of the folder changes that were not. In every such
//! state every snapshot reported committed before the cut restores bit-identical,
//! check finds no damage (unreferenced packs are fine), and the next backup works.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer::backend::{Backend, DurableFs, LocalBackend, RealFs};
use coffer::restorer::{self, RestoreOptions};
use coffer::{BackupOptions, CheckOptions, InitOptions, KdfParams, Repository, SnapshotId};

/// One recorded call, with the content it made durable.
#[derive(Debug, Clone)]
enum Op {
    WriteNew(PathBuf, Arc<Vec<u8>>),
    SyncFile(PathBuf, Arc<Vec<u8>>),
    Rename(PathBuf, PathBuf),
    Link(PathBuf, PathBuf),
    Unlink(PathBuf),
    SyncDir(PathBuf),
    CreateDir(PathBuf),
    /// A backup returned this snapshot: from here on it must survive.
    Committed(SnapshotId),
    /// forget removed this snapshot: from here on it may be gone.
    Forgotten(SnapshotId),
}

/// The real file system, with every call recorded.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<Op>>,
}

impl Recorder {
    fn push(&self, op: Op) {
        self.log.lock().unwrap().push(op);
    }
}

impl DurableFs for Recorder {
    fn write_new(&self, path: &Path, data: &[u8]) -> std::io::Result<std::fs::File> {
        let file = RealFs.write_new(path, data)?;
        self.push(Op::WriteNew(path.into(), Arc::new(data.to_vec())));
        Ok(file)
    }
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        RealFs.sync_file(path)?;
        self.push(Op::SyncFile(path.into(), Arc::new(std::fs::read(path)?)));
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.rename(from, to)?;
        self.push(Op::Rename(from.into(), to.into()));
        Ok(())
    }
    fn link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.link(from, to)?;
        self.push(Op::Link(from.into(), to.into()));
        Ok(())
    }
    fn unlink(&self, path: &Path) -> std::io::Result<()> {
        RealFs.unlink(path)?;
        self.push(Op::Unlink(path.into()));
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        RealFs.sync_dir(path)?;
        self.push(Op::SyncDir(path.into()));
        Ok(())
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        RealFs.create_dir(path)?;
        self.push(Op::CreateDir(path.into()));
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    File(Arc<Vec<u8>>),
    Dir,
}

/// What the disk holds: durably, and as the running process sees it, with the folder
/// changes not yet made durable by a folder fsync.
#[derive(Clone, Default)]
struct Disk {
    durable: BTreeMap<PathBuf, Node>,
    current: BTreeMap<PathBuf, Node>,
    pending: BTreeMap<PathBuf, Vec<(PathBuf, Option<Node>)>>,
}

impl Disk {
    /// The disk as it is now, all of it durable.
    fn read(root: &Path) -> Self {
        let mut durable = BTreeMap::new();
        for item in walkdir::WalkDir::new(root).into_iter().map(Result::unwrap) {
            let node = if item.file_type().is_dir() {
                Node::Dir
            } else {
                Node::File(Arc::new(std::fs::read(item.path()).unwrap()))
            };
            durable.insert(item.path().to_path_buf(), node);
        }
        Self { current: durable.clone(), durable, pending: BTreeMap::new() }
    }

    fn change(&mut self, path: &Path, node: Option<Node>) {
        match &node {
            Some(node) => self.current.insert(path.to_path_buf(), node.clone()),
            None => self.current.remove(path),
        };
        self.pending.entry(path.parent().unwrap().to_path_buf()).or_default().push((path.to_path_buf(), node));
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::WriteNew(path, data) | Op::SyncFile(path, data) => self.change(path, Some(Node::File(data.clone()))),
            Op::Rename(from, to) => {
                let node = self.current.get(from).cloned().expect("renamed file is known");
                self.change(from, None);
                self.change(to, Some(node));
            }
            Op::Link(from, to) => {
                let node = self.current.get(from).cloned().expect("linked file is known");
                self.change(to, Some(node));
            }
            Op::Unlink(path) => self.change(path, None),
            Op::SyncDir(folder) => {
                for (path, node) in self.pending.remove(folder).unwrap_or_default() {
                    match node {
                        Some(node) => self.durable.insert(path, node),
                        None => self.durable.remove(&path),
                    };
                }
            }
            Op::CreateDir(path) => {
                let missing: Vec<PathBuf> =
                    path.ancestors().take_while(|a| !self.current.contains_key(*a)).map(Path::to_path_buf).collect();
                for folder in missing.into_iter().rev() {
                    self.change(&folder, Some(Node::Dir));
                }
            }
            Op::Committed(_) | Op::Forgotten(_) => {}
        }
    }

    /// The state after a power cut: the durable entries, plus each change not yet made
    /// durable when `keep` says so.
    fn after_cut(&self, mut keep: impl FnMut() -> bool) -> BTreeMap<PathBuf, Node> {
        let mut state = self.durable.clone();
        for changes in self.pending.values() {
            for (path, node) in changes {
                if keep() {
                    match node {
                        Some(node) => state.insert(path.clone(), node.clone()),
                        None => state.remove(path),
                    };
                }
            }
        }
        state
    }
}

/// Writes a state below `target`: entries whose folders all survived.
fn materialize(state: &BTreeMap<PathBuf, Node>, root: &Path, target: &Path) {
    for (path, node) in state {
        let reachable =
            path.ancestors().skip(1).take_while(|a| a.starts_with(root)).all(|a| state.get(a) == Some(&Node::Dir));
        let Ok(relative) = path.strip_prefix(root) else { continue };
        if !reachable {
            continue;
        }
        let to = target.join(relative);
        match node {
            Node::Dir => std::fs::create_dir_all(&to).unwrap(),
            Node::File(data) => std::fs::write(&to, &**data).unwrap(),
        }
    }
}

fn write_version(source: &Path, version: u64) -> BTreeMap<PathBuf, Vec<u8>> {
    let _ = std::fs::remove_dir_all(source);
    std::fs::create_dir_all(source.join("study")).unwrap();
    let mut files = BTreeMap::new();
    for index in 0..6u64 {
        // Files 0-2 change with every version; 3-5 stay (deduplicated).
        let seed = if index < 3 { version * 100 + index } else { index };
        let content = common::random_bytes(9_000 + 7_000 * index as usize, seed);
        let path = source.join(format!("study/slice{index}.dcm"));
        std::fs::write(&path, &content).unwrap();
        files.insert(path, content);
    }
    files
}

fn options() -> InitOptions {
    InitOptions { kdf: KdfParams::QUICK, pack_size: 8 * 1024, compression_level: 0, ..Default::default() }
}

/// Restores a snapshot and compares every file with what was backed up.
fn assert_restores(repository: &Repository, id: &SnapshotId, expected: &BTreeMap<PathBuf, Vec<u8>>, work: &Path) {
    let snapshot = repository.load_snapshot(id).unwrap();
    let manifest = repository.load_manifest(id, &snapshot).unwrap();
    let target = work.join(format!("restore-{}", id.short()));
    let options = RestoreOptions { target: target.clone(), no_sync: true, ..Default::default() };
    let plan = restorer::plan(repository, &manifest, &options).unwrap();
    let report = restorer::execute(repository, &plan, &options).unwrap();
    assert!(report.failed.is_empty(), "snapshot {id:?}: {:?}", report.failed);
    for (path, content) in expected {
        let restored = std::fs::read(target.join(path.strip_prefix("/").unwrap())).unwrap();
        assert!(&restored == content, "snapshot {id:?}: {} differs", path.display());
    }
    std::fs::remove_dir_all(&target).unwrap();
}

/// Everything the issue asks of a state after a power cut.
fn verify(
    repo: &Path,
    must_survive: &BTreeSet<SnapshotId>,
    expected: &BTreeMap<SnapshotId, BTreeMap<PathBuf, Vec<u8>>>,
    work: &Path,
    label: &str,
) {
    // The crashed process's lock belongs to an earlier boot: stale at once (lock.rs).
    let _ = std::fs::remove_dir_all(repo.join("locks"));
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(repo, false).unwrap());
    let repository = Repository::open(backend, b"pw", None).unwrap_or_else(|e| panic!("{label}: open: {e}"));
    let (snapshots, damaged) = repository.list_snapshots().unwrap();
    assert!(damaged.is_empty(), "{label}: damaged snapshot records {damaged:?}");
    let present: BTreeSet<SnapshotId> = snapshots.iter().map(|(id, _)| *id).collect();
    assert!(must_survive.is_subset(&present), "{label}: a committed snapshot was lost");
    for id in &present {
        assert_restores(&repository, id, &expected[id], work);
    }
    let report = coffer::check(&repository, &CheckOptions::default()).unwrap();
    assert!(!report.is_damaged(), "{label}: check found damage: {:?} {:?}", report.damage, report.affected);
    let source = work.join("after-cut");
    let files = write_version(&source, 99);
    let options = BackupOptions { paths: vec![source.clone()], ..Default::default() };
    let next = coffer::backup(&repository, options).unwrap_or_else(|e| panic!("{label}: next backup: {e}"));
    assert_restores(&repository, &next.id, &files, work);
    let report =
        coffer::check(&repository, &CheckOptions { read_data: Some(coffer::ReadSubset::All), ..Default::default() })
            .unwrap();
    assert!(!report.is_damaged(), "{label}: check after the next backup: {:?}", report.damage);
}

#[test]
fn every_power_cut_during_backups_and_a_prune_loses_nothing_committed() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let source = work.path().join("source");
    drop(Repository::init(Arc::new(LocalBackend::open(&repo, true).unwrap()), b"pw", &options(), None).unwrap());
    let start = Disk::read(&repo);

    let recorder = Arc::new(Recorder::default());
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::with_fs(&repo, false, recorder.clone()).unwrap());
    let repository = Repository::open(backend, b"pw", Some(&work.path().join("cache"))).unwrap();
    let mut expected = BTreeMap::new();
    let backup = |version: u64, expected: &mut BTreeMap<SnapshotId, BTreeMap<PathBuf, Vec<u8>>>| {
        let files = write_version(&source, version);
        let report =
            coffer::backup(&repository, BackupOptions { paths: vec![source.clone()], ..Default::default() }).unwrap();
        recorder.push(Op::Committed(report.id));
        expected.insert(report.id, files);
        report.id
    };
    let first = backup(1, &mut expected);
    backup(2, &mut expected);
    {
        let repository = repository.lock_exclusive().unwrap();
        let forget = coffer::RetentionPolicy { last: Some(1), ..Default::default() };
        let (snapshots, _) = repository.list_snapshots().unwrap();
        let decisions =
            coffer::apply_policy(&snapshots, &forget, coffer::GroupBy::STANDARD, &jiff::tz::TimeZone::UTC).unwrap();
        // From the moment forget starts, the forgotten snapshot may be gone.
        recorder.push(Op::Forgotten(first));
        coffer::remove_snapshots(&repository, &decisions).unwrap();
        let options = coffer::PruneOptions { max_unused: 0.0, ..Default::default() };
        let plan = coffer::prune::plan(&repository, &options, &Default::default()).unwrap();
        let pruned = coffer::prune::execute(&repository, &plan).unwrap();
        assert!(pruned.packs_deleted > 0, "the prune deleted nothing: no cut point would test it");
    }
    backup(3, &mut expected);
    drop(repository);
    let log = recorder.log.lock().unwrap().clone();

    // Cut points spread over the recording, and at every folder fsync and commit marker.
    let mut cuts: BTreeSet<usize> = (0..=40).map(|i| i * log.len() / 40).collect();
    cuts.extend(
        log.iter().enumerate().filter(|(_, op)| matches!(op, Op::SyncDir(_) | Op::Committed(_))).map(|(i, _)| i + 1),
    );
    let mut disk = start;
    let mut must_survive = BTreeSet::new();
    let mut applied = 0;
    let mut random = 0x2545_F491_4F6C_DD1Du64;
    let (mut states, mut cut_points) = (0, 0);
    for cut in cuts.into_iter().filter(|&cut| cut <= log.len()) {
        while applied < cut {
            match &log[applied] {
                Op::Committed(id) => {
                    must_survive.insert(*id);
                }
                Op::Forgotten(id) => {
                    must_survive.remove(id);
                }
                op => disk.apply(op),
            }
            applied += 1;
        }
        cut_points += 1;
        // Nothing pending survives, everything does, and two random subsets.
        for variant in 0..4 {
            let mut keep = || match variant {
                0 => false,
                1 => true,
                _ => {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    random % 2 == 0
                }
            };
            let state = disk.after_cut(&mut keep);
            let crashed = work.path().join(format!("cut-{cut}-{variant}"));
            materialize(&state, &repo, &crashed);
            verify(
                &crashed,
                &must_survive,
                &expected,
                work.path(),
                &format!("cut {cut} of {}, variant {variant}", log.len()),
            );
            std::fs::remove_dir_all(&crashed).unwrap();
            states += 1;
        }
    }
    eprintln!(
        "power cut: {} recorded calls, {cut_points} cut points, {states} states; every one restored and checked clean",
        log.len()
    );
    assert!(cut_points >= 40);
}
