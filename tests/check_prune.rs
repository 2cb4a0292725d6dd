//! Check, forget and prune: faults at every write of a forget+prune lose nothing, lost
//! deletes and superseded index objects are harmless, check names what damage takes
//! away, and the CLI exit codes hold.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use coffer::backend::{Backend, FaultyBackend, MemoryBackend};
use coffer::prune::{self, PruneOptions};
use coffer::restorer::{self, RestoreOptions};
use coffer::{BackupOptions, CheckOptions, GroupBy, InitOptions, KdfParams, ReadSubset, Repository, RetentionPolicy};
use coffer::{Snapshot, SnapshotId};
use common::Fixture;

fn quick_init() -> InitOptions {
    InitOptions { kdf: KdfParams::QUICK, pack_size: 64 * 1024, ..Default::default() }
}

fn write_tree(root: &Path, seed: u64) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    // Nine single-chunk files fill three 64 KiB packs exactly, whatever the order of
    // the walk, so the pack holding file_0 (the only file that changes) always holds
    // two unchanged files too: forgetting a version leaves it part-used.
    for index in 0..9u64 {
        let content_seed = if index == 0 { seed * 100 } else { index };
        std::fs::write(root.join(format!("file_{index}")), common::random_bytes(30_000, content_seed)).unwrap();
    }
    std::fs::write(root.join("sub/notes.txt"), format!("version {seed}\n").repeat(3000)).unwrap();
}

/// A repository with three snapshots of three versions of a tree, and a copy of each version.
fn three_versions(work: &Path) -> (Arc<MemoryBackend>, Vec<(SnapshotId, PathBuf)>) {
    let memory = Arc::new(MemoryBackend::new());
    Repository::init(memory.clone(), b"pw", &quick_init(), None).unwrap();
    let source = work.join("source");
    let mut expected = Vec::new();
    for version in 1..=3 {
        write_tree(&source, version);
        let copy = work.join(format!("copy_{version}"));
        write_tree(&copy, version);
        let repository = Repository::open(memory.clone(), b"pw", None).unwrap();
        let options =
            BackupOptions { paths: vec![source.clone()], stdin: None, tags: vec![], host: None, ..Default::default() };
        expected.push((coffer::backup(&repository, options).unwrap().id, copy));
    }
    (memory, expected)
}

/// A copy of every object, so each fault starts from the same repository.
fn copy_of(memory: &MemoryBackend) -> Arc<MemoryBackend> {
    let copy = Arc::new(MemoryBackend::new());
    for info in memory.list("").unwrap() {
        copy.put(&info.key, memory.get(&info.key).unwrap()).unwrap();
    }
    copy
}

fn forget_and_prune(backend: Arc<dyn Backend>, index_object_blobs: usize) -> coffer::Result<coffer::PruneReport> {
    let repository = Repository::open(backend, b"pw", None)?;
    repository.set_index_object_blobs(index_object_blobs);
    let repository = repository.lock_exclusive()?;
    let (snapshots, _) = repository.list_snapshots()?;
    let policy = RetentionPolicy { last: Some(2), ..Default::default() };
    let decisions = coffer::apply_policy(&snapshots, &policy, GroupBy::default(), &jiff::tz::TimeZone::UTC)?;
    coffer::remove_snapshots(&repository, &decisions)?;
    let plan = prune::plan(&repository, &PruneOptions::default(), &HashSet::new())?;
    prune::execute(&repository, &plan)
}

fn prune_only(backend: Arc<dyn Backend>) -> coffer::PruneReport {
    let repository = Repository::open(backend, b"pw", None).unwrap();
    let repository = repository.lock_exclusive().unwrap();
    let plan = prune::plan(&repository, &PruneOptions::default(), &HashSet::new()).unwrap();
    prune::execute(&repository, &plan).unwrap()
}

fn check(backend: Arc<dyn Backend>, read_data: bool) -> coffer::CheckReport {
    let (repository, _) = Repository::open_damaged(backend, b"pw", None).unwrap();
    let options = CheckOptions { read_data: read_data.then_some(ReadSubset::All), jobs: 3, progress: None };
    coffer::check(&repository, &options).unwrap()
}

fn assert_clean(backend: Arc<dyn Backend>, context: &str) {
    let report = check(backend, true);
    assert!(!report.is_damaged(), "{context}: {:?} {:?}", report.damage, report.affected);
    assert!(report.packs_read > 0 && report.packs_read == report.packs - warnings_about_packs(&report));
}

fn warnings_about_packs(report: &coffer::CheckReport) -> usize {
    report.warnings.iter().filter(|warning| warning.starts_with("data/")).count()
}

/// Restores every listed snapshot and compares it with its copy; returns how many.
fn assert_every_snapshot_restores(
    backend: Arc<dyn Backend>,
    expected: &[(SnapshotId, PathBuf)],
    scratch: &Path,
) -> usize {
    let repository = Repository::open(backend, b"pw", None).unwrap();
    let (snapshots, damaged) = repository.list_snapshots().unwrap();
    assert!(damaged.is_empty());
    for (id, snapshot) in &snapshots {
        let copy = &expected.iter().find(|(known, _)| known == id).expect("an unknown snapshot appeared").1;
        restore_and_compare(&repository, id, snapshot, copy, &scratch.join(id.short()));
    }
    snapshots.len()
}

fn restore_and_compare(repository: &Repository, id: &SnapshotId, snapshot: &Snapshot, copy: &Path, target: &Path) {
    let manifest = repository.load_manifest(id, snapshot).unwrap();
    let subpath = Some(snapshot.paths[0].as_bytes().to_vec());
    let options = RestoreOptions { subpath, target: target.to_path_buf(), verify: true, ..Default::default() };
    let plan = restorer::plan(repository, &manifest, &options).unwrap();
    let report = restorer::execute(repository, &plan, &options).unwrap();
    assert!(report.failed.is_empty(), "snapshot {id:?}: {:?}", report.failed);
    for item in walkdir::WalkDir::new(copy).into_iter().map(|e| e.unwrap()).filter(|e| e.file_type().is_file()) {
        let relative = item.path().strip_prefix(copy).unwrap();
        assert_eq!(std::fs::read(item.path()).unwrap(), std::fs::read(target.join(relative)).unwrap(), "{relative:?}");
    }
    std::fs::remove_dir_all(target).unwrap();
}

#[test]
fn forget_and_prune_survive_a_failed_write_at_every_point() {
    failed_write_at_every_point(coffer::MAX_OBJECT_BLOBS);
}

/// The same with the new index split over several objects, of which only the last
/// supersedes the old ones: a crash between them must lose nothing either.
#[test]
fn forget_and_prune_survive_a_failed_write_between_split_index_objects() {
    failed_write_at_every_point(4);
}

fn failed_write_at_every_point(index_object_blobs: usize) {
    let work = tempfile::tempdir().unwrap();
    let (memory, expected) = three_versions(work.path());
    let mut failures = 0;
    for n in 1.. {
        let repository = copy_of(&memory);
        let faulty = Arc::new(FaultyBackend::new(repository.clone()));
        faulty.fail_put_number(n);
        match forget_and_prune(faulty.clone(), index_object_blobs) {
            Err(error) => {
                failures += 1;
                assert!(error.to_string().contains("injected failure"), "write {n}: {error}");
            }
            Ok(report) => {
                assert!(faulty.puts() < n, "write {n} should have failed");
                assert!(report.packs_written >= 1 && report.packs_deleted >= 1, "nothing was repacked: {report:?}");
                if index_object_blobs < coffer::MAX_OBJECT_BLOBS {
                    assert!(repository.list("index/").unwrap().len() > 1, "the new index was not split");
                }
                assert_eq!(assert_every_snapshot_restores(repository.clone(), &expected, work.path()), 2);
                break;
            }
        }
        assert_clean(repository.clone(), &format!("after failed write {n}"));
        assert!(assert_every_snapshot_restores(repository.clone(), &expected, work.path()) >= 2);
        // The next prune finishes the job and leaves one index object and no strays.
        prune_only(repository.clone());
        if index_object_blobs == coffer::MAX_OBJECT_BLOBS {
            assert_eq!(repository.list("index/").unwrap().len(), 1, "write {n}");
        }
        let report = check(repository.clone(), true);
        assert!(!report.is_damaged() && report.warnings.is_empty(), "write {n}: {:?}", report.warnings);
        assert!(assert_every_snapshot_restores(repository.clone(), &expected, work.path()) >= 2);
        assert!(n < 100, "forget and prune never completed");
    }
    assert!(failures >= 3, "only {failures} distinct write points were exercised");
}

#[test]
fn forget_and_prune_survive_a_failed_delete_at_every_point() {
    let work = tempfile::tempdir().unwrap();
    let (memory, expected) = three_versions(work.path());
    let mut failures = 0;
    for n in 1.. {
        let repository = copy_of(&memory);
        let faulty = Arc::new(FaultyBackend::new(repository.clone()));
        faulty.fail_delete_number(n);
        match forget_and_prune(faulty.clone(), coffer::MAX_OBJECT_BLOBS) {
            Err(error) => {
                failures += 1;
                assert!(error.to_string().contains("injected failure of delete"), "delete {n}: {error}");
            }
            Ok(_) => {
                // Either no delete was left to fail, or the failed one released the lock,
                // which is not an error of the command: the stale lock stays behind.
                let lock_left = !repository.list("locks/").unwrap().is_empty();
                assert!(faulty.deletes() < n || lock_left, "delete {n} failed silently");
                for lock in repository.list("locks/").unwrap() {
                    repository.delete(&lock.key).unwrap();
                }
                assert_eq!(assert_every_snapshot_restores(repository.clone(), &expected, work.path()), 2);
                if faulty.deletes() < n {
                    break;
                }
            }
        }
        // A failed delete leaves its lock behind, as a crash would: `coffer unlock --remove-all`.
        for lock in repository.list("locks/").unwrap() {
            repository.delete(&lock.key).unwrap();
        }
        assert!(assert_every_snapshot_restores(repository.clone(), &expected, work.path()) >= 2, "delete {n}");
        prune_only(repository.clone());
        let report = check(repository.clone(), true);
        assert!(!report.is_damaged() && report.warnings.is_empty(), "delete {n}: {:?}", report.warnings);
        assert!(assert_every_snapshot_restores(repository.clone(), &expected, work.path()) >= 2);
        assert!(n < 100, "forget and prune never completed");
    }
    assert!(failures >= 3, "only {failures} distinct delete points were exercised");
}

#[test]
fn two_hosts_backing_up_at_once_both_commit() {
    let fixture = Fixture::new();
    let sources: Vec<PathBuf> = (0..2u64)
        .map(|host| {
            let source = fixture.path(&format!("host{host}"));
            write_tree(&source, 40 + host);
            source
        })
        .collect();
    let running: Vec<std::process::Child> = sources
        .iter()
        .enumerate()
        .map(|(host, source)| {
            fixture.command(&["backup", source.to_str().unwrap(), "--host", &format!("host-{host}")]).spawn().unwrap()
        })
        .collect();
    for mut child in running {
        assert!(child.wait().unwrap().success());
    }
    let snapshots = fixture.snapshots();
    let mut hosts: Vec<&str> = snapshots.as_array().unwrap().iter().map(|s| s["host"].as_str().unwrap()).collect();
    hosts.sort();
    assert_eq!(hosts, vec!["host-0", "host-1"]);
    fixture.ok(&["check", "--read-data"]);
    for (host, source) in sources.iter().enumerate() {
        let id = snapshots.as_array().unwrap().iter().find(|s| s["host"] == format!("host-{host}")).unwrap()
            ["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string();
        let target = fixture.path(&format!("restored{host}"));
        fixture.ok(&[
            "restore",
            &format!("{id}:{}", source.display()),
            "--target",
            target.to_str().unwrap(),
            "--verify",
        ]);
        common::assert_same_tree(source, &target);
    }
}

#[test]
fn lost_deletes_are_harmless_and_finished_later() {
    let work = tempfile::tempdir().unwrap();
    let (memory, expected) = three_versions(work.path());
    let faulty = Arc::new(FaultyBackend::new(memory.clone()));
    faulty.lose_deletes(true);
    forget_and_prune(faulty, coffer::MAX_OBJECT_BLOBS).unwrap();
    assert_eq!(memory.list("snapshots/").unwrap().len(), 3, "the deletes were lost");
    // So was the release of the lock, as after a crash: `coffer unlock --remove-all`.
    for lock in memory.list("locks/").unwrap() {
        memory.delete(&lock.key).unwrap();
    }
    assert_clean(memory.clone(), "after lost deletes");
    assert_eq!(assert_every_snapshot_restores(memory.clone(), &expected, work.path()), 3);
    forget_and_prune(memory.clone(), coffer::MAX_OBJECT_BLOBS).unwrap();
    assert_eq!(memory.list("index/").unwrap().len(), 1);
    assert_clean(memory.clone(), "after the second prune");
    assert_eq!(assert_every_snapshot_restores(memory.clone(), &expected, work.path()), 2);
}

#[test]
fn a_superseded_index_object_that_survives_its_packs_is_ignored() {
    let work = tempfile::tempdir().unwrap();
    let (memory, expected) = three_versions(work.path());
    let cache = work.path().join("cache");
    // A cache that has loaded the old index objects, as a nightly job's would have.
    drop(Repository::open(memory.clone(), b"pw", Some(&cache)).unwrap());
    let old: Vec<(String, Bytes)> = memory
        .list("index/")
        .unwrap()
        .into_iter()
        .map(|info| (info.key.clone(), memory.get(&info.key).unwrap()))
        .collect();
    let report = forget_and_prune(memory.clone(), coffer::MAX_OBJECT_BLOBS).unwrap();
    assert!(report.packs_deleted > 0 && report.index_objects_deleted == old.len() as u64);
    // The deletes of the old index objects were lost; the packs they name are gone.
    for (key, bytes) in &old {
        memory.put(key, bytes.clone()).unwrap();
    }
    assert_clean(memory.clone(), "with superseded index objects");
    let repository = Repository::open(memory.clone(), b"pw", Some(&cache)).unwrap();
    let (snapshots, _) = repository.list_snapshots().unwrap();
    assert_eq!(snapshots.len(), 2);
    for (id, snapshot) in &snapshots {
        let copy = &expected.iter().find(|(known, _)| known == id).unwrap().1;
        restore_and_compare(&repository, id, snapshot, copy, &work.path().join("out"));
    }
    prune_only(memory.clone());
    assert_eq!(memory.list("index/").unwrap().len(), 1, "the next prune deletes superseded objects");
}

/// Names of the data packs holding file content of the latest snapshot's `file_0`.
fn packs_of_latest(memory: &Arc<MemoryBackend>) -> Vec<String> {
    let repository = Repository::open(memory.clone(), b"pw", None).unwrap();
    let (id, snapshot) = repository.find_snapshot("latest").unwrap();
    let manifest = repository.load_manifest(&id, &snapshot).unwrap();
    let path = format!("{}/file_0", snapshot.paths[0]);
    let (entry_id, _) = manifest.entry(path.as_bytes()).unwrap().unwrap();
    let chunks = manifest.chunks(entry_id).unwrap();
    let location = repository.lookup(&chunks[0].blob, coffer::BlobType::Data).unwrap().unwrap();
    vec![coffer::pack_key(&location.pack)]
}

#[test]
fn check_names_a_flipped_byte_a_missing_pack_and_a_truncated_index() {
    let work = tempfile::tempdir().unwrap();
    let (memory, _) = three_versions(work.path());
    let pack = packs_of_latest(&memory).remove(0);
    let original = memory.get(&pack).unwrap();

    let mut flipped = original.to_vec();
    flipped[40] ^= 0x01;
    memory.tamper(&pack, Bytes::from(flipped));
    assert!(!check(memory.clone(), false).is_damaged(), "a flipped byte needs --read-data to be seen");
    let report = check(memory.clone(), true);
    assert_names_pack_and_file(&report, &pack);

    memory.delete(&pack).unwrap();
    let report = check(memory.clone(), false);
    assert_names_pack_and_file(&report, &pack);
    assert!(report.damage[0].reason.contains("missing"), "{:?}", report.damage);
    memory.tamper(&pack, original);
    assert!(!check(memory.clone(), true).is_damaged());

    let index = memory.list("index/").unwrap().remove(0).key;
    let bytes = memory.get(&index).unwrap();
    memory.tamper(&index, bytes.slice(..bytes.len() / 2));
    let report = check(memory.clone(), false);
    assert!(report.damage.iter().any(|d| d.object == index), "{:?}", report.damage);
    assert!(!report.affected.is_empty(), "the snapshots whose blobs it listed are affected");
    assert!(report.warnings.iter().any(|w| w.contains("in no index object")), "{:?}", report.warnings);
    let (repository, _) = Repository::open_damaged(memory.clone(), b"pw", None).unwrap();
    let repository = repository.lock_exclusive().unwrap();
    let refused = prune::plan(&repository, &PruneOptions::default(), &HashSet::new()).unwrap_err();
    assert!(refused.to_string().contains("prune stopped before changing anything"), "{refused}");
}

/// Packs larger than a read piece (4 MiB) are read in pieces: a flipped byte anywhere
/// in one, including its header, is found and blamed on the one blob that holds it.
#[test]
fn check_reads_large_packs_in_pieces_and_names_the_damaged_blob() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    for index in 0..14u64 {
        std::fs::write(source.join(format!("file_{index:02}")), common::random_bytes(700_000, index + 1)).unwrap();
    }
    let memory = Arc::new(MemoryBackend::new());
    let init = InitOptions { pack_size: 32 << 20, ..quick_init() };
    let repository = Repository::init(memory.clone(), b"pw", &init, None).unwrap();
    let options = BackupOptions { paths: vec![source.clone()], ..Default::default() };
    coffer::backup(&repository, options).unwrap();
    let data_pack = memory.list("data/").unwrap().into_iter().max_by_key(|info| info.size).expect("a data pack");
    assert!(data_pack.size > 9 << 20, "the pack spans three pieces: {}", data_pack.size);
    assert_clean(memory.clone(), "before any damage");
    let original = memory.get(&data_pack.key).unwrap();
    for position in [10, original.len() / 2, original.len() - 9 * 700_000 / 2, original.len() - 20] {
        let mut flipped = original.to_vec();
        flipped[position] ^= 0x40;
        memory.tamper(&data_pack.key, Bytes::from(flipped));
        let report = check(memory.clone(), true);
        let damage = report.damage.iter().find(|d| d.object == data_pack.key).expect("the pack is named");
        assert!(damage.reason.contains("hash mismatch"), "{damage:?}");
        let in_header = position == original.len() - 20;
        match in_header {
            true => assert!(damage.reason.contains("header"), "byte {position}: {damage:?}"),
            false => assert_eq!(damage.lost_blobs.len(), 1, "byte {position}: only the blob holding it: {damage:?}"),
        }
        if !in_header {
            assert_eq!(report.affected[0].paths.len(), 1, "byte {position}: one file: {:?}", report.affected);
        }
    }
    memory.tamper(&data_pack.key, original);
    assert_clean(memory.clone(), "after the damage is undone");
}

fn assert_names_pack_and_file(report: &coffer::CheckReport, pack: &str) {
    assert!(report.is_damaged());
    let damage = report.damage.iter().find(|d| d.object == pack).expect("the damaged pack is named");
    assert!(!damage.lost_blobs.is_empty(), "{damage:?}");
    assert_eq!(report.affected.len(), 1, "only the latest snapshot has this version of its files");
    let paths: Vec<String> = report.affected[0].paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    assert!(!paths.is_empty());
    let changed = |p: &String| p.ends_with("/file_0") || p.ends_with("/sub/notes.txt");
    assert!(paths.iter().all(changed), "unchanged files are not affected: {paths:?}");
}

#[test]
fn cli_check_forget_prune_exit_codes() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    for version in 1..=3 {
        write_tree(&source, version);
        fixture.backup(&source);
    }
    let clean = fixture.json(&["check", "--read-data-subset", "1/2"]);
    assert_eq!(clean["ok"], true);
    assert_eq!(fixture.run(&["forget"]).status.code(), Some(2), "no policy is refused");
    assert_eq!(fixture.run(&["check", "--read-data-subset", "3/2"]).status.code(), Some(2));
    let plan = fixture.json(&["forget", "--keep-last", "1", "--dry-run", "--prune"]);
    assert_eq!(plan["snapshots"].as_array().unwrap().iter().filter(|s| s["keep"] == false).count(), 2);
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 3, "a dry run changes nothing");

    let backend = Arc::new(coffer::backend::LocalBackend::open(&fixture.repo(), false).unwrap());
    let repository = Repository::open(backend, b"correct horse", None).unwrap();
    let lock = repository.lock_exclusive().unwrap();
    for command in [&["prune"][..], &["forget", "--keep-last", "1"], &["check"]] {
        let output = fixture.run(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(11), "{command:?}: {stderr}");
        assert!(stderr.contains("exclusive") && stderr.contains(&format!("pid {}", std::process::id())), "{stderr}");
    }
    drop(lock);

    let quiet = fixture.run(&["-q", "forget", "--keep-last", "1", "--prune"]);
    assert!(quiet.status.success() && quiet.stdout.is_empty() && quiet.stderr.is_empty(), "-q prints nothing");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 1);
    let pack = walkdir::WalkDir::new(fixture.repo().join("data"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap();
    std::fs::remove_file(pack.path()).unwrap();
    let output = fixture.run(&["--json", "check"]);
    assert_eq!(output.status.code(), Some(13));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let name = pack.file_name().to_string_lossy().into_owned();
    assert!(report["damage"][0]["object"].as_str().unwrap().ends_with(&name), "{report}");
    assert!(!report["affected"][0]["paths"].as_array().unwrap().is_empty(), "{report}");
}

fn repair(backend: Arc<dyn Backend>) -> coffer::Result<coffer::RepairIndexReport> {
    let (repository, _) = Repository::open_damaged(backend, b"pw", None)?;
    let repository = repository.lock_exclusive()?;
    coffer::repair_index(&repository, 4, false)
}

#[test]
fn repair_index_brings_back_a_truncated_or_lost_index() {
    let work = tempfile::tempdir().unwrap();
    let (memory, expected) = three_versions(work.path());
    let index = memory.list("index/").unwrap().remove(0).key;
    let bytes = memory.get(&index).unwrap();
    memory.tamper(&index, bytes.slice(..bytes.len() - 7));
    assert!(check(memory.clone(), false).is_damaged());
    let report = repair(memory.clone()).unwrap();
    assert_eq!((report.packs, report.replaced.len()), (memory.list("data/").unwrap().len(), 3));
    assert!(report.unreadable.is_empty());
    assert_eq!(memory.list("index/").unwrap().len(), 1);
    assert_clean(memory.clone(), "after repairing a truncated index object");
    assert_eq!(assert_every_snapshot_restores(memory.clone(), &expected, work.path()), 3);
    for object in memory.list("index/").unwrap() {
        memory.delete(&object.key).unwrap();
    }
    assert!(check(memory.clone(), false).affected.len() == 3, "without an index nothing restores");
    repair(memory.clone()).unwrap();
    assert_clean(memory.clone(), "after rebuilding a lost index");
    assert_eq!(assert_every_snapshot_restores(memory.clone(), &expected, work.path()), 3);
}

#[test]
fn repair_index_survives_a_failed_write_and_lost_deletes() {
    let work = tempfile::tempdir().unwrap();
    let (memory, expected) = three_versions(work.path());
    let mut failures = 0;
    for n in 1.. {
        let repository = copy_of(&memory);
        let faulty = Arc::new(FaultyBackend::new(repository.clone()));
        faulty.fail_put_number(n);
        match repair(faulty.clone()) {
            Err(error) => {
                failures += 1;
                assert!(error.to_string().contains("injected failure"), "write {n}: {error}");
            }
            Ok(_) => break,
        }
        assert_clean(repository.clone(), &format!("after failed write {n}"));
        assert_eq!(assert_every_snapshot_restores(repository.clone(), &expected, work.path()), 3);
        assert!(n < 10, "repair never completed");
    }
    assert_eq!(failures, 2, "the lock and the index are the only writes");
    let faulty = Arc::new(FaultyBackend::new(memory.clone()));
    faulty.lose_deletes(true);
    repair(faulty).unwrap();
    assert_eq!(memory.list("index/").unwrap().len(), 4, "the old index objects were not deleted");
    for lock in memory.list("locks/").unwrap() {
        memory.delete(&lock.key).unwrap();
    }
    assert_clean(memory.clone(), "with superseded index objects left by repair");
    assert_eq!(assert_every_snapshot_restores(memory.clone(), &expected, work.path()), 3);
}

#[test]
fn cli_repair_index_after_a_truncated_index_object() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    write_tree(&source, 1);
    fixture.backup(&source);
    let index = walkdir::WalkDir::new(fixture.repo().join("index"))
        .into_iter()
        .map(|e| e.unwrap())
        .find(|e| e.file_type().is_file())
        .unwrap()
        .into_path();
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() / 3]).unwrap();
    let output = fixture.run(&["--no-cache", "check"]);
    assert_eq!(output.status.code(), Some(13), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&index.file_name().unwrap().to_string_lossy().into_owned())
    );
    let repaired = fixture.json(&["repair", "index"]);
    assert_eq!(repaired["replaced"].as_array().unwrap().len(), 1);
    fixture.ok(&["--no-cache", "check", "--read-data"]);
    let target = fixture.path("out");
    fixture.ok(&["--no-cache", "restore", "latest", "--target", target.to_str().unwrap(), "--verify"]);
}

/// Copies a directory tree (a local repository).
fn copy_dir(from: &Path, to: &Path) {
    for item in walkdir::WalkDir::new(from).into_iter().map(|e| e.unwrap()) {
        let target = to.join(item.path().strip_prefix(from).unwrap());
        if item.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(item.path(), &target).unwrap();
        }
    }
}

fn write_big_tree(root: &Path, seed: u64) {
    std::fs::create_dir_all(root).unwrap();
    for index in 0..40u64 {
        let content_seed = if index % 3 == 0 { seed * 1000 + index } else { index };
        std::fs::write(root.join(format!("scan_{index}")), common::random_bytes(150_000, content_seed)).unwrap();
    }
}

/// Every snapshot in the fixture's repository restores identical to the version it was
/// taken of; snapshots not in `versions` must match `newest`, if given.
fn assert_cli_snapshots_restore(fixture: &Fixture, versions: &[(String, PathBuf)], source: &Path) -> usize {
    assert_cli_restores_with(fixture, versions, None, source)
}

fn assert_cli_restores_with(
    fixture: &Fixture,
    versions: &[(String, PathBuf)],
    newest: Option<&Path>,
    source: &Path,
) -> usize {
    let listed = fixture.snapshots();
    for snapshot in listed.as_array().unwrap() {
        let id = snapshot["snapshot_id"].as_str().unwrap();
        let known = versions.iter().find(|(known, _)| known == id).map(|(_, copy)| copy.as_path());
        let copy = known.or(newest).expect("an unknown snapshot appeared");
        let target = fixture.path(&format!("restored_{}", &id[..8]));
        fixture.ok(&[
            "restore",
            &format!("{id}:{}", source.display()),
            "--target",
            target.to_str().unwrap(),
            "--verify",
        ]);
        for item in std::fs::read_dir(copy).unwrap().map(|e| e.unwrap()) {
            let restored = std::fs::read(target.join(item.file_name())).unwrap();
            assert!(restored == std::fs::read(item.path()).unwrap(), "{:?} differs", item.file_name());
        }
        std::fs::remove_dir_all(&target).unwrap();
    }
    listed.as_array().unwrap().len()
}

/// A local repository with three snapshots of three versions of a 6 MB tree, and a
/// copy of each version keyed by snapshot id.
fn cli_three_versions() -> (Fixture, PathBuf, Vec<(String, PathBuf)>) {
    let origin = Fixture::empty();
    origin.ok(&["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1", "--pack-size", "1"]);
    let source = origin.path("source");
    let mut versions = Vec::new();
    for version in 1..=3 {
        write_big_tree(&source, version);
        let copy = origin.path(&format!("copy_{version}"));
        write_big_tree(&copy, version);
        versions.push((origin.backup(&source)["snapshot_id"].as_str().unwrap().to_string(), copy));
    }
    (origin, source, versions)
}

/// Runs `command` on copies of `origin`'s repository, killing it with SIGKILL at eight
/// moments spread over an uninterrupted run; `after` checks each copy. Returns how many
/// runs were killed before they finished.
fn kill_at_eight_moments(origin: &Fixture, command: &[&str], after: impl Fn(&Fixture, u32)) -> usize {
    // The shortest of two uninterrupted runs: a run slowed by other tests' load would
    // put every kill moment after the end.
    let mut full = std::time::Duration::MAX;
    for _ in 0..2 {
        let timing = Fixture::empty();
        copy_dir(&origin.repo(), &timing.repo());
        let started = std::time::Instant::now();
        timing.ok(command);
        full = full.min(started.elapsed());
    }
    let mut interrupted = 0;
    for round in 0..8u32 {
        let mut delay = full * round / 7;
        // A run that finished before its kill is tried again sooner, up to three times.
        for _attempt in 0..3 {
            let fixture = Fixture::empty();
            copy_dir(&origin.repo(), &fixture.repo());
            let quiet = || std::process::Stdio::null();
            let mut child = fixture.command(command).stdout(quiet()).stderr(quiet()).spawn().unwrap();
            std::thread::sleep(delay);
            let _ = child.kill();
            let status = child.wait().unwrap();
            let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
            interrupted += usize::from(killed);
            // The killed process's lock is stale at once: its pid is gone on this host.
            let output = fixture.run(&["check", "--read-data"]);
            assert_eq!(output.status.code(), Some(0), "round {round}: {}", String::from_utf8_lossy(&output.stdout));
            after(&fixture, round);
            if killed || round == 7 {
                break;
            }
            delay /= 2;
        }
    }
    interrupted
}

#[test]
fn killing_forget_and_prune_at_any_moment_loses_nothing() {
    let (origin, source, versions) = cli_three_versions();
    let command = ["forget", "--keep-last", "1", "--prune", "--max-unused", "0"];
    let interrupted = kill_at_eight_moments(&origin, &command, |fixture, round| {
        assert!(assert_cli_snapshots_restore(fixture, &versions, &source) >= 1, "round {round}");
        fixture.ok(&command);
        fixture.ok(&["check", "--read-data"]);
        assert_eq!(assert_cli_snapshots_restore(fixture, &versions, &source), 1, "round {round}");
    });
    assert!(interrupted >= 4, "only {interrupted} of 8 runs were killed before they finished");
}

#[test]
fn killing_a_backup_at_any_moment_loses_nothing() {
    let (origin, source, versions) = cli_three_versions();
    write_big_tree(&source, 4);
    let copy = origin.path("copy_4");
    write_big_tree(&copy, 4);
    let command = ["backup", source.to_str().unwrap()];
    let interrupted = kill_at_eight_moments(&origin, &command, |fixture, round| {
        // A backup killed after its commit point may have left its snapshot: then it is whole.
        let listed = assert_cli_restores_with(fixture, &versions, Some(&copy), &source);
        assert!(listed == 3 || listed == 4, "round {round}: {listed} snapshots");
        fixture.backup(&source);
        let left = common::staged_pack_files(&fixture.repo());
        assert!(left.is_empty(), "round {round}: pack files of the killed backup were left: {left:?}");
        fixture.ok(&["check", "--read-data"]);
        assert_eq!(assert_cli_restores_with(fixture, &versions, Some(&copy), &source), listed + 1, "round {round}");
    });
    assert!(interrupted >= 4, "only {interrupted} of 8 runs were killed before they finished");
}

/// Regression: `init` over an existing local repository wrote a stray key file before
/// refusing, because a local store lists `config` as the folder `config/`.
#[test]
fn init_over_an_existing_repository_writes_nothing() {
    let fixture = Fixture::new();
    let keys = || std::fs::read_dir(fixture.repo().join("keys")).unwrap().count();
    assert_eq!(keys(), 1);
    let output = fixture.run(&["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(keys(), 1, "a refused init left a key file");
}

#[test]
fn rotating_subsets_read_the_least_recently_verified_packs_first() {
    let work = tempfile::tempdir().unwrap();
    let (memory, _) = three_versions(work.path());
    let cache = work.path().join("cache");
    let packs = memory.list("data/").unwrap().len();
    assert!(packs >= 6, "{packs} packs");
    let mut covered = Vec::new();
    for _ in 0..3 {
        let (repository, _) = Repository::open_damaged(memory.clone(), b"pw", Some(&cache)).unwrap();
        let options = CheckOptions { read_data: Some(ReadSubset::Percent(34.0)), jobs: 2, progress: None };
        let report = coffer::check(&repository, &options).unwrap();
        assert_eq!(report.packs_read, (packs as f64 * 0.34).ceil() as usize);
        covered.push(repository.pack_verification_times().unwrap().len());
    }
    let first = covered[0];
    assert_eq!(covered, vec![first, (2 * first).min(packs), packs], "each run reads packs not read before");
}

/// Two snapshots; the pack holding data only the second one has is deleted.
fn second_snapshot_loses_a_pack() -> (Fixture, PathBuf, String, String) {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a.dcm"), common::random_bytes(100_000, 1)).unwrap();
    let first = fixture.backup(&source)["snapshot_id"].as_str().unwrap().to_string();
    let packs = |fixture: &Fixture| -> HashSet<PathBuf> {
        walkdir::WalkDir::new(fixture.repo().join("data"))
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect()
    };
    let before = packs(&fixture);
    std::fs::write(source.join("b.dcm"), common::random_bytes(300_000, 2)).unwrap();
    let second = fixture.backup(&source)["snapshot_id"].as_str().unwrap().to_string();
    let added: Vec<PathBuf> = packs(&fixture).difference(&before).cloned().collect();
    let biggest = added.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    std::fs::remove_file(biggest).unwrap();
    (fixture, source, first, second)
}

#[test]
fn repair_snapshots_marks_or_drops_only_when_asked() {
    let (fixture, source, first, second) = second_snapshot_loses_a_pack();
    let plan = fixture.json(&["repair", "snapshots"]);
    assert_eq!(plan["snapshots"].as_array().unwrap().len(), 1, "{plan}");
    assert_eq!(plan["snapshots"][0]["snapshot_id"], second.as_str());
    assert_eq!(plan["snapshots"][0]["lost_files"], 1);
    let ids: Vec<String> = fixture
        .snapshots()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![first.clone(), second.clone()], "the dry run changed something");
    fixture.json(&["repair", "snapshots", "--apply"]);
    let snapshots = fixture.snapshots();
    let marked = snapshots.as_array().unwrap().iter().find(|s| s["snapshot_id"] != first.as_str()).unwrap().clone();
    assert_ne!(marked["snapshot_id"], second.as_str());
    assert_eq!(marked["complete"], false);
    assert!(marked["tags"].as_array().unwrap().iter().any(|t| t == "damaged"), "{marked}");
    let target = fixture.path("out");
    let id = marked["snapshot_id"].as_str().unwrap();
    let restore =
        fixture.run(&["restore", &format!("{id}:{}", source.display()), "--target", target.to_str().unwrap()]);
    assert_eq!(restore.status.code(), Some(13));
    assert_eq!(
        std::fs::read(target.join("a.dcm")).unwrap(),
        common::random_bytes(100_000, 1),
        "the intact file was not restored"
    );
    assert!(!target.join("b.dcm").exists());
    // The missing pack is still indexed: damage, exit 13. Once the index is rebuilt the
    // marked snapshot's loss is known and accepted: check reports it and passes.
    assert_eq!(fixture.run(&["check"]).status.code(), Some(13));
    fixture.ok(&["repair", "index"]);
    let report = fixture.json(&["check"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["affected"][0]["marked_damaged"], true, "{report}");
    assert_eq!(report["affected"][0]["files"], 1, "{report}");
    let again = fixture.json(&["repair", "snapshots", "--apply"]);
    assert!(again["snapshots"].as_array().unwrap().is_empty(), "a marked snapshot was marked again: {again}");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 2);
}

#[test]
fn repair_snapshots_forget_then_repair_index_leaves_a_clean_repository() {
    let (fixture, source, first, _) = second_snapshot_loses_a_pack();
    fixture.json(&["repair", "snapshots", "--apply", "--forget"]);
    let ids: Vec<String> = fixture
        .snapshots()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![first.clone()]);
    fixture.ok(&["repair", "index"]);
    fixture.ok(&["check", "--read-data"]);
    let target = fixture.path("out");
    fixture.ok(&[
        "restore",
        &format!("{first}:{}", source.display()),
        "--target",
        target.to_str().unwrap(),
        "--verify",
    ]);
}
