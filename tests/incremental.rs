//! Change detection against the parent snapshot, through the real binary.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{random_bytes, set_mtime, Fixture};

fn counts(summary: &serde_json::Value) -> (u64, u64, u64, u64) {
    let field = |name: &str| summary["summary"][name].as_u64().unwrap();
    (field("files_new"), field("files_changed"), field("files_unchanged"), field("bytes_read"))
}

/// A tree whose files were last modified long before the backup (outside the racy window).
fn settled_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for (index, name) in ["a.dcm", "b.dcm", "sub/c.txt"].iter().enumerate() {
        std::fs::write(root.join(name), random_bytes(100_000, index as u64)).unwrap();
        set_mtime(&root.join(name), 1_700_000_000, 5);
    }
}

/// Rewrites a file with other content of the same size and puts its mtime back.
fn rewrite_keeping_size_and_mtime(path: &Path, seed: u64) {
    let old = std::fs::metadata(path).unwrap();
    std::fs::write(path, random_bytes(old.len() as usize, seed)).unwrap();
    set_mtime(path, old.mtime(), old.mtime_nsec());
}

#[test]
fn unchanged_files_are_not_read_and_restore_from_the_new_snapshot() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    assert_eq!(counts(&fixture.backup(&source)), (3, 0, 0, 300_000));
    let second = fixture.backup(&source);
    assert_eq!(counts(&second), (0, 0, 3, 0), "{second}");
    let snapshots = fixture.snapshots();
    assert_eq!(snapshots[1]["parent"], snapshots[0]["snapshot_id"]);
    std::fs::write(source.join("new.txt"), b"new file").unwrap();
    assert_eq!(counts(&fixture.backup(&source)), (1, 0, 3, 8));
    let target = fixture.path("out");
    fixture.ok(&["restore", &format!("latest:{}", source.display()), "--target", target.to_str().unwrap(), "--verify"]);
    common::assert_same_tree(&source, &target);
}

#[test]
fn content_changed_without_size_or_mtime_is_caught_by_ctime() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    fixture.backup(&source);
    rewrite_keeping_size_and_mtime(&source.join("a.dcm"), 99);
    let ignoring = fixture.json(&["backup", source.to_str().unwrap(), "--ignore-ctime"]);
    assert_eq!(counts(&ignoring), (0, 0, 3, 0), "with --ignore-ctime the change is invisible, as documented");
    let checked = fixture.json(&[
        "backup",
        source.to_str().unwrap(),
        "--parent",
        &fixture.snapshots()[0]["snapshot_id"].as_str().unwrap()[..8],
    ]);
    assert_eq!(counts(&checked), (0, 1, 2, 100_000), "{checked}");
    let target = fixture.path("out");
    fixture.ok(&["restore", &format!("latest:{}", source.display()), "--target", target.to_str().unwrap(), "--verify"]);
    assert_eq!(std::fs::read(target.join("a.dcm")).unwrap(), std::fs::read(source.join("a.dcm")).unwrap());
}

#[test]
fn a_file_replaced_by_a_rename_is_read_again() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    fixture.backup(&source);
    let staged = fixture.path("staged");
    std::fs::write(&staged, random_bytes(100_000, 42)).unwrap();
    set_mtime(&staged, 1_700_000_000, 5);
    std::fs::rename(&staged, source.join("b.dcm")).unwrap();
    let summary = fixture.backup(&source);
    assert_eq!(counts(&summary), (0, 1, 2, 100_000), "{summary}");
    let relaxed = fixture.json(&["backup", source.to_str().unwrap(), "--ignore-inode"]);
    assert_eq!(counts(&relaxed), (0, 0, 3, 0), "{relaxed}");
}

#[test]
fn inode_changes_alone_are_seen_unless_ignored() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    let first = fixture.backup(&source)["snapshot_id"].as_str().unwrap().to_string();
    // Copy the tree elsewhere and move it into place: same sizes and mtimes, new inodes and ctimes.
    let copy = fixture.path("copy");
    std::fs::create_dir_all(copy.join("sub")).unwrap();
    for name in ["a.dcm", "b.dcm", "sub/c.txt"] {
        std::fs::copy(source.join(name), copy.join(name)).unwrap();
        set_mtime(&copy.join(name), 1_700_000_000, 5);
    }
    std::fs::remove_dir_all(&source).unwrap();
    std::fs::rename(&copy, &source).unwrap();
    let both =
        fixture.json(&["backup", source.to_str().unwrap(), "--parent", &first, "--ignore-inode", "--ignore-ctime"]);
    assert_eq!(counts(&both), (0, 0, 3, 0), "{both}");
    let ctime_only = fixture.json(&["backup", source.to_str().unwrap(), "--parent", &first, "--ignore-inode"]);
    assert_eq!(counts(&ctime_only).1, 3, "{ctime_only}");
    let inode_only = fixture.json(&["backup", source.to_str().unwrap(), "--parent", &first, "--ignore-ctime"]);
    assert_eq!(counts(&inode_only).1, 3, "{inode_only}");
}

#[test]
fn force_reads_everything() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    fixture.backup(&source);
    let forced = fixture.json(&["backup", source.to_str().unwrap(), "--force"]);
    assert_eq!(counts(&forced), (3, 0, 0, 300_000), "{forced}");
    assert!(forced["summary"]["bytes_new"].as_u64().unwrap() < 100_000, "--force stored data again");
}

#[test]
fn a_file_modified_as_the_backup_started_is_read_again_next_time() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    std::fs::write(source.join("hot.log"), b"written just now").unwrap();
    fixture.backup(&source);
    let next = fixture.backup(&source);
    let (_, changed, unchanged, read) = counts(&next);
    assert_eq!((changed, unchanged, read), (1, 3, 16), "{next}");
}

#[test]
fn a_parent_whose_chunks_left_the_index_is_not_trusted() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    fixture.backup(&source);
    if Fixture::on_s3() {
        return;
    }
    // Remove every index object, as a damaged repository might: the parent's chunks are
    // no longer known, so their files must be read (and stored) again.
    for item in std::fs::read_dir(fixture.repo().join("index")).unwrap() {
        std::fs::remove_file(item.unwrap().path()).unwrap();
    }
    let cache = fixture.path("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let output = fixture.run(&["--json", "backup", source.to_str().unwrap()]);
    let summary: serde_json::Value =
        if output.stdout.is_empty() { Default::default() } else { common::last_json(&output.stdout) };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot use parent snapshot"), "{stderr}");
    assert_eq!(summary["summary"]["files_unchanged"], 0, "{summary} {stderr}");
}

#[test]
fn a_backup_killed_after_a_checkpoint_is_resumed_without_uploading_twice() {
    if Fixture::on_s3() {
        return;
    }
    let fixture = Fixture::empty();
    fixture.ok(&["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1", "--pack-size", "1"]);
    let source = fixture.path("data");
    std::fs::create_dir_all(&source).unwrap();
    let total = 80u64 << 20;
    for index in 0..80u64 {
        std::fs::write(source.join(format!("scan_{index:02}.dcm")), random_bytes(1 << 20, index)).unwrap();
    }
    let mut running = fixture
        .command(&["backup", source.to_str().unwrap(), "--checkpoint-packs", "4"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let index = fixture.repo().join("index");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while common::finished_objects(&index) < 2 {
        assert!(running.try_wait().unwrap().is_none(), "the backup finished before it could be killed");
        assert!(std::time::Instant::now() < deadline, "no checkpoint was written");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    running.kill().unwrap();
    let status = running.wait().unwrap();
    assert!(status.code().is_none(), "the backup was not killed: {status:?}");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 0, "a killed backup committed a snapshot");
    // What a pack file of the killed process looks like (FORMAT.md section 2), in case
    // it was between two packs when it was killed.
    let host: String = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
        .collect();
    std::fs::create_dir_all(fixture.repo().join("tmp")).unwrap();
    std::fs::write(fixture.repo().join(format!("tmp/pack-{host}-{}-planted.pack", running.id())), b"part").unwrap();
    let resumed = fixture.backup(&source);
    let left = common::staged_pack_files(&fixture.repo());
    assert!(left.is_empty(), "the killed backup's pack files were not cleaned up: {left:?}");
    let new_bytes = resumed["summary"]["bytes_new"].as_u64().unwrap();
    assert!(new_bytes + (7 << 20) < total, "the rerun stored {new_bytes} of {total} bytes again");
    let target = fixture.path("out");
    fixture.ok(&["restore", &format!("latest:{}", source.display()), "--target", target.to_str().unwrap(), "--verify"]);
    common::assert_same_tree(&source, &target);
}
