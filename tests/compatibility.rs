//! Repositories written by earlier coffers (issue 13). `tests/fixtures/v1` was written
//! once by the coffer that introduced it (`tests/fixtures/make_v1.sh`): every later
//! coffer must check it clean and restore it bit-identical. And a repository holding an
//! object of an unknown, future version of any kind is refused with exit code 16.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use coffer::backend::{Backend, LocalBackend};
use coffer::objects::Kind;
use coffer::{BlobType, Packer, Repository, SnapshotId};
use serde_json::Value;
use sha2::Digest;

fn fixture() -> (tempfile::TempDir, PathBuf, Value) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let expected: Value = serde_json::from_slice(&std::fs::read(source.join("expected.json")).unwrap()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    assert!(Command::new("cp").arg("-a").arg(source.join("repo")).arg(&repo).status().unwrap().success());
    (work, repo, expected)
}

fn coffer(repo: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    let binary = std::env::var_os("COFFER_TEST_BIN").filter(|b| !b.is_empty());
    Command::new(binary.unwrap_or_else(|| env!("CARGO_BIN_EXE_coffer").into()))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env("COFFER_PASSWORD", "fixture password")
        .env("COFFER_CACHE_DIR", cache)
        .env_remove("COFFER_REPOSITORY")
        .output()
        .unwrap()
}

fn ok(repo: &Path, cache: &Path, args: &[&str]) -> Vec<u8> {
    let output = coffer(repo, cache, args);
    assert!(output.status.success(), "coffer {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// Compares a restored tree with what make_v1.sh recorded when it took the snapshot.
fn assert_restored(restored: &Path, files: &serde_json::Map<String, Value>) {
    let mut found = 0;
    for item in walkdir::WalkDir::new(restored).min_depth(1) {
        let item = item.unwrap();
        let relative = item.path().strip_prefix(restored).unwrap().as_os_str().as_bytes();
        let shown = String::from_utf8_lossy(relative).into_owned();
        let expected = files.get(&hex::encode(relative)).unwrap_or_else(|| panic!("{shown} was not in the snapshot"));
        let metadata = std::fs::symlink_metadata(item.path()).unwrap();
        assert_eq!(metadata.mode() & 0o7777, expected["mode"].as_u64().unwrap() as u32, "{shown}: mode");
        match expected["kind"].as_str().unwrap() {
            "file" => {
                let digest = hex::encode(sha2::Sha256::digest(std::fs::read(item.path()).unwrap()));
                assert_eq!(digest, expected["sha256"].as_str().unwrap(), "{shown}: content");
            }
            "symlink" => {
                let target = std::fs::read_link(item.path()).unwrap();
                assert_eq!(hex::encode(target.as_os_str().as_bytes()), expected["target"].as_str().unwrap(), "{shown}");
            }
            "fifo" => assert!(metadata.file_type().is_fifo(), "{shown}"),
            "dir" => assert!(metadata.is_dir(), "{shown}"),
            other => panic!("unknown kind {other}"),
        }
        found += 1;
    }
    assert_eq!(found, files.len(), "entries missing from the restore");
}

#[test]
fn a_version_1_repository_checks_clean_and_restores_bit_identical() {
    let (work, repo, expected) = fixture();
    let cache = work.path().join("cache");
    ok(&repo, &cache, &["check", "--read-data"]);
    let listed: Value = serde_json::from_slice(&ok(&repo, &cache, &["--json", "snapshots"])).unwrap();
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 3, "first, dump and second; the forgotten one is gone");
    let root = expected["root"].as_str().unwrap();
    for tag in ["first", "second"] {
        let snapshot = &expected["snapshots"][tag];
        let target = work.path().join(tag);
        let spec = format!("{}:{root}", snapshot["id"].as_str().unwrap());
        ok(&repo, &cache, &["restore", &spec, "--target", target.to_str().unwrap(), "--verify"]);
        assert_restored(&target, snapshot["files"].as_object().unwrap());
        let report = target.join("studies/study_1/report.txt");
        let link = target.join("private/report-link.txt");
        assert_eq!(std::fs::metadata(&report).unwrap().ino(), std::fs::metadata(&link).unwrap().ino(), "hard link");
    }
    let dump_id = expected["snapshots"]["dump"]["id"].as_str().unwrap();
    let dump = ok(&repo, &cache, &["dump", dump_id, expected["dump_path"].as_str().unwrap()]);
    assert_eq!(hex::encode(sha2::Sha256::digest(&dump)), expected["dump_sha256"].as_str().unwrap());
    // The repository goes on: a new backup on top of it, checked clean.
    let source = work.path().join("new");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("note"), b"written by a newer coffer").unwrap();
    ok(&repo, &cache, &["backup", source.to_str().unwrap()]);
    ok(&repo, &cache, &["check", "--read-data"]);
}

fn open(repo: &Path) -> Repository {
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(repo, false).unwrap());
    Repository::open(backend, b"fixture password", None).unwrap()
}

fn assert_refused(repo: &Path, work: &Path, args: &[&str], what: &str) {
    let output = coffer(repo, &work.join("fresh-cache"), args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(16), "{what}: {stderr}");
    assert!(stderr.contains("format version") && stderr.contains("upgrade coffer"), "{what}: {stderr}");
}

fn set_json_version(path: &Path, version: u64) {
    let mut value: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    value["version"] = version.into();
    std::fs::write(path, serde_json::to_vec(&value).unwrap()).unwrap();
}

#[test]
fn config_and_key_files_of_a_future_version_are_refused() {
    let (work, repo, _) = fixture();
    set_json_version(&repo.join("config"), 2);
    assert_refused(&repo, work.path(), &["snapshots"], "config");
    let (work, repo, _) = fixture();
    let key = std::fs::read_dir(repo.join("keys")).unwrap().next().unwrap().unwrap().path();
    set_json_version(&key, 2);
    assert_refused(&repo, work.path(), &["snapshots"], "key file");
}

#[test]
fn index_objects_of_a_future_version_are_refused() {
    let (work, repo, _) = fixture();
    let repository = open(&repo);
    let backend = repository.backend().clone();
    let id = Kind::Index.list::<coffer::IndexId>(&*backend).unwrap()[0];
    let mut plain = Kind::Index.read(&*backend, repository.master(), &id).unwrap();
    plain[0] = 2;
    Kind::Index.write_sealed(&*backend, repository.master(), &plain).unwrap();
    Kind::Index.delete(&*backend, &id).unwrap();
    drop(repository);
    assert_refused(&repo, work.path(), &["snapshots"], "index object");
}

#[test]
fn snapshot_records_of_a_future_version_are_refused() {
    let (work, repo, expected) = fixture();
    let repository = open(&repo);
    let backend = repository.backend().clone();
    let id: SnapshotId = expected["snapshots"]["first"]["id"].as_str().unwrap().parse().unwrap();
    let plain = Kind::Snapshot.read(&*backend, repository.master(), &id).unwrap();
    let mut record: Value = serde_json::from_slice(&plain).unwrap();
    record["version"] = 2.into();
    let newer = Kind::Snapshot.write_sealed(&*backend, repository.master(), &serde_json::to_vec(&record).unwrap());
    let newer = hex::encode(newer.unwrap());
    drop(repository);
    assert_refused(&repo, work.path(), &["restore", &newer, "--target", "/nonexistent/never"], "snapshot record");
}

#[test]
fn manifests_of_a_future_schema_are_refused() {
    let (work, repo, expected) = fixture();
    let repository = open(&repo);
    let id: SnapshotId = expected["snapshots"]["first"]["id"].as_str().unwrap().parse().unwrap();
    let mut snapshot = repository.load_snapshot(&id).unwrap();
    let manifest = repository.load_manifest(&id, &snapshot).unwrap();
    let copy = work.path().join("newer.sqlite");
    std::fs::copy(manifest.path(), &copy).unwrap();
    drop(manifest);
    let connection = rusqlite::Connection::open(&copy).unwrap();
    connection.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'", []).unwrap();
    drop(connection);
    let bytes = std::fs::read(&copy).unwrap();
    let locked = repository.lock_shared().unwrap();
    let packer = Packer::new(&locked);
    let mut blobs = Vec::new();
    for chunk in locked.metadata_chunker().chunks(&bytes[..]) {
        blobs.push(packer.store_if_new(BlobType::Metadata, &chunk.unwrap()).unwrap());
    }
    locked.write_index(&packer.flush().unwrap()).unwrap();
    snapshot.manifest =
        coffer::ManifestRef { blobs, size: bytes.len() as u64, blake3: blake3::hash(&bytes).to_hex().to_string() };
    let newer = locked.save_snapshot(&snapshot).unwrap().to_hex();
    drop(locked);
    drop(repository);
    let target = work.path().join("restore");
    assert_refused(&repo, work.path(), &["restore", &newer, "--target", target.to_str().unwrap()], "manifest");
}
