//! Storage faults injected through `FaultyBackend`: a failed write at any point of a
//! backup never leaves a snapshot that points at missing data, and every snapshot
//! committed before the fault still restores bit-identical.

mod common;

use std::path::Path;
use std::sync::Arc;

use coffer::backend::{Backend, FaultyBackend, MemoryBackend};
use coffer::restorer::{self, RestoreOptions};
use coffer::{BackupOptions, InitOptions, KdfParams, Repository};

fn quick_init() -> InitOptions {
    InitOptions { kdf: KdfParams::QUICK, pack_size: 64 * 1024, ..Default::default() }
}

fn backup(backend: Arc<dyn Backend>, source: &Path) -> coffer::Result<coffer::BackupReport> {
    let repository = Repository::open(backend, b"pw", None)?;
    coffer::backup(
        &repository,
        BackupOptions {
            paths: vec![source.to_path_buf()],
            stdin: None,
            tags: vec![],
            host: None,
            ..Default::default()
        },
    )
}

/// Restores every snapshot and compares it with the copy of the tree it was taken from.
fn assert_every_snapshot_restores(
    backend: Arc<dyn Backend>,
    expected: &[(coffer::SnapshotId, std::path::PathBuf)],
    scratch: &Path,
) {
    let repository = Repository::open(backend, b"pw", None).unwrap();
    let (snapshots, damaged) = repository.list_snapshots().unwrap();
    assert!(damaged.is_empty());
    for (id, snapshot) in &snapshots {
        let copy = &expected.iter().find(|(known, _)| known == id).expect("a snapshot nobody committed appeared").1;
        let manifest = repository.load_manifest(id, snapshot).unwrap();
        let target = scratch.join(id.short());
        let subpath = Some(snapshot.paths[0].as_bytes().to_vec());
        let options = RestoreOptions { subpath, target: target.clone(), verify: true, ..Default::default() };
        let plan = restorer::plan(&repository, &manifest, &options).unwrap();
        let report = restorer::execute(&repository, &plan, &options).unwrap();
        assert!(report.failed.is_empty(), "snapshot {id:?}: {:?}", report.failed);
        for item in walkdir::WalkDir::new(copy).into_iter().map(|e| e.unwrap()).filter(|e| e.file_type().is_file()) {
            let relative = item.path().strip_prefix(copy).unwrap();
            assert_eq!(
                std::fs::read(item.path()).unwrap(),
                std::fs::read(target.join(relative)).unwrap(),
                "{relative:?}"
            );
        }
        std::fs::remove_dir_all(&target).unwrap();
    }
}

fn write_tree(root: &Path, seed: u64) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for index in 0..6u64 {
        std::fs::write(root.join(format!("file_{index}")), common::random_bytes(40_000, seed * 100 + index)).unwrap();
    }
    std::fs::write(root.join("sub/notes.txt"), format!("version {seed}\n").repeat(3000)).unwrap();
}

#[test]
fn a_failed_write_at_any_point_of_a_backup_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write_tree(&source, 1);
    let memory = Arc::new(MemoryBackend::new());
    Repository::init(memory.clone(), b"pw", &quick_init(), None).unwrap();
    let first = backup(memory.clone(), &source).unwrap();
    let first_copy = work.path().join("copy_1");
    write_tree(&first_copy, 1);
    let mut expected = vec![(first.id, first_copy)];
    write_tree(&source, 2);
    let second_copy = work.path().join("copy_2");
    write_tree(&second_copy, 2);
    let mut failures = 0;
    for n in 1.. {
        let faulty = Arc::new(FaultyBackend::new(memory.clone()));
        faulty.fail_put_number(n);
        match backup(faulty.clone(), &source) {
            Err(error) => {
                failures += 1;
                assert!(error.to_string().contains("injected failure"), "write {n}: {error}");
            }
            Ok(report) => {
                assert!(faulty.puts() < n, "write {n} should have failed");
                expected.push((report.id, second_copy.clone()));
                break;
            }
        }
        assert_every_snapshot_restores(memory.clone(), &expected, work.path());
        assert!(n < 200, "the backup never completed");
    }
    assert!(failures >= 4, "only {failures} distinct write points were exercised");
    assert_every_snapshot_restores(memory.clone(), &expected, work.path());
}

#[test]
fn a_disk_that_fills_up_fails_the_backup_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write_tree(&source, 3);
    let memory = Arc::new(MemoryBackend::new());
    Repository::init(memory.clone(), b"pw", &quick_init(), None).unwrap();
    let faulty = Arc::new(FaultyBackend::new(memory.clone()));
    faulty.fail_puts_after(3);
    let error = backup(faulty, &source).unwrap_err();
    assert!(matches!(error, coffer::Error::Backend { .. }), "{error}");
    assert!(memory.list("snapshots/").unwrap().is_empty());
    let copy = work.path().join("copy");
    write_tree(&copy, 3);
    let report = backup(memory.clone(), &source).unwrap();
    assert_every_snapshot_restores(memory, &[(report.id, copy)], work.path());
}

#[test]
fn lost_deletes_leave_locks_that_unlock_removes() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write_tree(&source, 4);
    let memory = Arc::new(MemoryBackend::new());
    Repository::init(memory.clone(), b"pw", &quick_init(), None).unwrap();
    let faulty = Arc::new(FaultyBackend::new(memory.clone()));
    faulty.lose_deletes(true);
    backup(faulty.clone(), &source).unwrap();
    backup(faulty.clone(), &source).unwrap();
    assert_eq!(memory.list("locks/").unwrap().len(), 2);
    let repository = Repository::open(memory.clone(), b"pw", None).unwrap();
    assert_eq!(coffer::remove_locks(&*memory, repository.master(), false).unwrap(), 0, "live locks are not stale");
    assert_eq!(coffer::remove_locks(&*memory, repository.master(), true).unwrap(), 2);
}

#[test]
fn damaged_and_truncated_reads_are_reported() {
    use coffer::backend::ReadDamage;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write_tree(&source, 5);
    let memory = Arc::new(MemoryBackend::new());
    Repository::init(memory.clone(), b"pw", &quick_init(), None).unwrap();
    backup(memory.clone(), &source).unwrap();
    for damage in [
        ReadDamage::FlipByte { key_prefix: "data/".into(), offset: 100 },
        ReadDamage::Truncate { key_prefix: "data/".into(), keep: 50 },
    ] {
        let faulty = Arc::new(FaultyBackend::new(memory.clone()));
        faulty.damage_reads(Some(damage.clone()));
        let outcome = (|| -> coffer::Result<Vec<restorer::Failure>> {
            let repository = Repository::open(faulty.clone(), b"pw", None)?;
            let (id, snapshot) = repository.find_snapshot("latest")?;
            let manifest = repository.load_manifest(&id, &snapshot)?;
            let options = RestoreOptions { target: work.path().join("out"), ..Default::default() };
            let plan = restorer::plan(&repository, &manifest, &options)?;
            Ok(restorer::execute(&repository, &plan, &options)?.failed)
        })();
        match outcome {
            Err(error) => assert!(error.is_integrity(), "{damage:?}: {error}"),
            Ok(failed) => {
                assert!(!failed.is_empty(), "{damage:?} went unnoticed");
                assert!(failed.iter().all(|f| f.cause == restorer::FailureCause::Damage), "{damage:?}: {failed:?}");
            }
        }
        let _ = std::fs::remove_dir_all(work.path().join("out"));
        assert_check_sees_damage(faulty, &format!("{damage:?}"));
    }
}

fn assert_check_sees_damage(backend: Arc<dyn Backend>, what: &str) {
    let (repository, _) = Repository::open_damaged(backend, b"pw", None).unwrap();
    let options = coffer::CheckOptions { read_data: Some(coffer::ReadSubset::All), jobs: 2, progress: None };
    match coffer::check(&repository, &options) {
        Err(error) => assert!(error.is_integrity(), "{what}: {error}"),
        Ok(report) => assert!(report.is_damaged(), "{what} went unnoticed by check"),
    }
}

/// A backend that answers every range read of a pack with only the last four bytes of
/// the range: the pack trailer is right, the rest is missing.
struct LastFourBytesOfPacks(Arc<MemoryBackend>);

impl Backend for LastFourBytesOfPacks {
    fn location(&self) -> String {
        self.0.location()
    }
    fn get(&self, key: &str) -> coffer::Result<bytes::Bytes> {
        self.0.get(key)
    }
    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> coffer::Result<bytes::Bytes> {
        let data = self.0.get_range(key, range)?;
        match key.starts_with("data/") {
            true => Ok(data.slice(data.len().saturating_sub(4)..)),
            false => Ok(data),
        }
    }
    fn put(&self, key: &str, data: bytes::Bytes) -> coffer::Result<()> {
        self.0.put(key, data)
    }
    fn put_new(&self, key: &str, data: bytes::Bytes) -> coffer::Result<bool> {
        self.0.put_new(key, data)
    }
    fn list(&self, prefix: &str) -> coffer::Result<Vec<coffer::backend::ObjectInfo>> {
        self.0.list(prefix)
    }
    fn delete(&self, key: &str) -> coffer::Result<()> {
        self.0.delete(key)
    }
}

/// Regression: check took a pack's header from a last piece shorter than it asked for,
/// trusting the length in its last four bytes, and sliced past the piece's end (a panic).
#[test]
fn check_reports_a_backend_that_returns_short_ranges() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write_tree(&source, 6);
    let memory = Arc::new(MemoryBackend::new());
    Repository::init(memory.clone(), b"pw", &quick_init(), None).unwrap();
    backup(memory.clone(), &source).unwrap();
    assert_check_sees_damage(Arc::new(LastFourBytesOfPacks(memory)), "ranges cut to their last four bytes");
}
