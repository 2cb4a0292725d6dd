//! Backup and restore through the real binary: every file kind, faithful metadata.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{assert_same_tree, random_bytes, set_mtime, Fixture};

/// Builds a tree holding every kind of entry coffer must restore faithfully.
fn build_odd_tree(root: &Path) {
    std::fs::create_dir_all(root.join("dir/empty_dir")).unwrap();
    std::fs::create_dir_all(root.join("dir/nested/deeper")).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("small.txt"), b"hello coffer\n").unwrap();
    std::fs::write(root.join("dir/nested/deeper/random.bin"), random_bytes(3_000_000, 1)).unwrap();
    std::fs::write(root.join("dir/compressible.txt"), "patient record line\n".repeat(50_000)).unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"caf\xe9-latin1")), b"not utf-8 name").unwrap();
    std::fs::write(root.join("line\nbreak"), b"newline in name").unwrap();
    std::fs::write(root.join("spaces and 'quotes'"), b"x").unwrap();
    std::os::unix::fs::symlink("small.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::fs::write(root.join("hard_a"), b"linked content").unwrap();
    std::fs::hard_link(root.join("hard_a"), root.join("dir/hard_b")).unwrap();
    std::fs::hard_link(root.join("hard_a"), root.join("hard_c")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    let sparse = std::fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"start", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (64 << 20) - 3).unwrap();
    drop(sparse);
    std::fs::set_permissions(root.join("small.txt"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::set_permissions(root.join("dir/nested"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    xattr::set(root.join("small.txt"), "user.comment", b"study 42").unwrap();
    xattr::set(root.join("dir"), "user.binary", &[0u8, 255, 10]).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::fs::write(root.join("owned"), b"other owner").unwrap();
        nix::unistd::chown(&root.join("owned"), Some(1234.into()), Some(5678.into())).unwrap();
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        nix::sys::stat::mknod(
            &root.join("null_device"),
            nix::sys::stat::SFlag::S_IFCHR,
            mode,
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
    let mut second = 1_600_000_000;
    for item in walkdir::WalkDir::new(root).contents_first(true) {
        let item = item.unwrap();
        second += 7;
        set_mtime(item.path(), second, 123_456_789);
    }
}

#[test]
fn every_kind_of_entry_round_trips() {
    let fixture = Fixture::new();
    let source = fixture.path("source");
    build_odd_tree(&source);
    let summary = fixture.backup(&source);
    assert_eq!(summary["complete"], true, "{summary}");
    let target = fixture.path("restored");
    fixture.ok(&["restore", "latest", "--target", target.to_str().unwrap(), "--verify"]);
    let restored = target.join(source.strip_prefix("/").unwrap());
    let walk = common::stat_walk(&source);
    let kinds: std::collections::BTreeSet<&str> = walk.values().map(|(stat, _, _)| stat.kind).collect();
    let expected_kinds: &[&str] = if nix::unistd::geteuid().is_root() {
        &["chardev", "dir", "fifo", "file", "symlink"]
    } else {
        &["dir", "fifo", "file", "symlink"]
    };
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), expected_kinds);
    assert!(walk.len() >= 20, "the odd tree has only {} entries", walk.len());
    assert_eq!(common::link_groups(&walk).len(), 1);
    assert_same_tree(&source, &restored);
    let source_blocks = std::fs::metadata(source.join("sparse")).unwrap().blocks();
    let restored_blocks = std::fs::metadata(restored.join("sparse")).unwrap().blocks();
    assert!(
        restored_blocks <= source_blocks + 64,
        "sparse file restored dense: {restored_blocks} blocks vs {source_blocks}"
    );
}

#[test]
fn one_folder_restores_into_the_target_and_fetches_only_its_data() {
    let fixture = Fixture::new();
    let source = fixture.path("studies");
    for study in 0..4u64 {
        let folder = source.join(format!("study_{study:03}"));
        std::fs::create_dir_all(&folder).unwrap();
        for image in 0..3u64 {
            std::fs::write(folder.join(format!("image_{image}.dcm")), random_bytes(700_000, study * 10 + image))
                .unwrap();
        }
    }
    fixture.backup(&source);
    let target = fixture.path("one");
    let spec = format!("latest:{}/study_002", source.display());
    let report = fixture.json(&["restore", &spec, "--target", target.to_str().unwrap()]);
    assert_same_tree(&source.join("study_002"), &target);
    let fetched = report["bytes_downloaded"].as_u64().unwrap();
    assert!(fetched < 2_300_000, "fetched {fetched} bytes for a 2.1 MB folder: {report}");
    assert!(fetched >= 2_100_000, "fetched {fetched}: {report}");
}

#[test]
fn a_single_file_restores_by_name() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("report.pdf"), b"%PDF-1.7 contents").unwrap();
    fixture.backup(&source);
    let target = fixture.path("out");
    let spec = format!("latest:{}/report.pdf", source.display());
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(target.join("report.pdf")).unwrap(), b"%PDF-1.7 contents");
}

#[test]
fn include_and_exclude_select_entries() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(source.join("a/b")).unwrap();
    std::fs::create_dir_all(source.join("c")).unwrap();
    for name in ["a/one.dcm", "a/b/two.dcm", "a/b/notes.txt", "c/three.txt"] {
        std::fs::write(source.join(name), name).unwrap();
    }
    fixture.backup(&source);
    let spec = format!("latest:{}", source.display());
    let included = fixture.path("included");
    fixture.ok(&["restore", &spec, "--target", included.to_str().unwrap(), "--include", "*.dcm"]);
    assert!(included.join("a/one.dcm").exists() && included.join("a/b/two.dcm").exists());
    assert!(!included.join("a/b/notes.txt").exists() && !included.join("c").exists());
    let excluded = fixture.path("excluded");
    fixture.ok(&["restore", &spec, "--target", excluded.to_str().unwrap(), "--exclude", "b"]);
    assert!(excluded.join("a/one.dcm").exists() && excluded.join("c/three.txt").exists());
    assert!(!excluded.join("a/b").exists());
}

#[test]
fn restore_over_existing_files_replaces_them_and_dry_run_changes_nothing() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("record"), b"original").unwrap();
    fixture.backup(&source);
    let target = fixture.path("live");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("record"), b"damaged by a mistake").unwrap();
    let spec = format!("latest:{}", source.display());
    let plan = fixture.json(&["restore", &spec, "--target", target.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan["overwrites"], 1, "{plan}");
    assert_eq!(std::fs::read(target.join("record")).unwrap(), b"damaged by a mistake");
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(target.join("record")).unwrap(), b"original");
    let leftovers: Vec<_> = std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind: {leftovers:?}");
}

#[test]
fn stdin_backup_dumps_back_identically() {
    let fixture = Fixture::new();
    let content = random_bytes(2_500_000, 77);
    let mut child = fixture
        .command(&["--json", "backup", "--stdin", "--stdin-name", "db/app.dump"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &content).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let dumped = fixture.run(&["dump", "latest", "/db/app.dump"]);
    assert!(dumped.status.success(), "{}", String::from_utf8_lossy(&dumped.stderr));
    assert!(dumped.stdout == content, "dumped content differs");
}

#[test]
fn listings_are_json_documents_and_ids_resolve_by_prefix() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    std::fs::write(source.join("sub/file"), b"x").unwrap();
    let first = fixture.backup(&source)["snapshot_id"].as_str().unwrap().to_string();
    std::fs::write(source.join("sub/second"), b"y").unwrap();
    fixture.backup(&source);
    let snapshots = fixture.snapshots();
    let list = snapshots.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["snapshot_id"], first.as_str());
    assert_eq!(list[0]["paths"][0], source.to_str().unwrap());
    let spec = format!("{}:{}/sub", &first[..8], source.display());
    let entries = fixture.json(&["ls", &spec])["entries"].clone();
    let paths: Vec<&str> = entries.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, vec![format!("{}/sub", source.display()), format!("{}/sub/file", source.display())]);
    let latest = fixture.json(&["ls", &format!("latest:{}/sub", source.display())])["entries"].clone();
    assert_eq!(latest.as_array().unwrap().len(), 3);
}

#[test]
fn the_same_data_twice_is_stored_once_and_an_insertion_costs_a_chunk_or_two() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(&source).unwrap();
    let content = random_bytes(24 << 20, 5);
    std::fs::write(source.join("big"), &content).unwrap();
    let first = fixture.backup(&source);
    assert!(first["summary"]["bytes_added"].as_u64().unwrap() > 24 << 20);
    let copy = fixture.path("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::write(copy.join("big"), &content).unwrap();
    let again = fixture.backup(&copy);
    let data_added = again["summary"]["bytes_added"].as_u64().unwrap();
    assert!(data_added < 64 * 1024, "same content stored again: {data_added} bytes added");
    let mut edited = b"inserted at the front".to_vec();
    edited.extend_from_slice(&content);
    std::fs::write(source.join("big"), &edited).unwrap();
    let after = fixture.backup(&source);
    let added = after["summary"]["bytes_added"].as_u64().unwrap();
    assert!(added < 9 << 20, "an insertion at the front added {added} bytes of 24 MiB");
    if !Fixture::on_s3() {
        let repo_size: u64 =
            walkdir::WalkDir::new(fixture.repo()).into_iter().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(repo_size < 35 << 20, "repository is {repo_size} bytes for ~24 MiB of unique data");
    }
}

#[test]
fn files_beyond_four_gib_keep_their_offsets() {
    let fixture = Fixture::new();
    let source = fixture.path("large");
    std::fs::create_dir_all(&source).unwrap();
    let size: u64 = (4 << 30) + (3 << 20);
    let file = std::fs::File::create(source.join("volume.img")).unwrap();
    file.set_len(size).unwrap();
    let marks: [(u64, Vec<u8>); 3] = [
        (0, random_bytes(100_000, 1)),
        ((1 << 32) - 50_000, random_bytes(100_000, 2)),
        (size - 100_000, random_bytes(100_000, 3)),
    ];
    for (offset, bytes) in &marks {
        std::os::unix::fs::FileExt::write_all_at(&file, bytes, *offset).unwrap();
    }
    drop(file);
    fixture.backup(&source);
    let target = fixture.path("out");
    let spec = format!("latest:{}", source.display());
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap(), "--verify"]);
    let restored = std::fs::File::open(target.join("volume.img")).unwrap();
    assert_eq!(restored.metadata().unwrap().len(), size);
    for (offset, bytes) in &marks {
        let mut back = vec![0u8; bytes.len()];
        std::os::unix::fs::FileExt::read_exact_at(&restored, &mut back, *offset).unwrap();
        assert!(&back == bytes, "data at offset {offset} differs");
    }
    assert!(restored.metadata().unwrap().blocks() * 512 < 64 << 20, "the 4 GiB hole was written out");
}

#[test]
fn a_backup_path_that_is_a_symlink_is_stored_as_the_link() {
    let fixture = Fixture::new();
    let real = fixture.path("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("inside"), b"x").unwrap();
    let link = fixture.path("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    fixture.backup(&link);
    let entries = fixture.json(&["ls", &format!("latest:{}", link.display())])["entries"].clone();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["kind"], "symlink");
}

#[test]
fn excluded_paths_are_left_out() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    for dir in ["keep", "cache/deep", "marked/inner", "logs"] {
        std::fs::create_dir_all(source.join(dir)).unwrap();
    }
    for file in ["keep/a.dcm", "keep/scratch.tmp", "cache/deep/x", "marked/inner/y", "marked/.nobackup", "logs/app.log"]
    {
        std::fs::write(source.join(file), file).unwrap();
    }
    let exclude_file = fixture.path("excludes.txt");
    std::fs::write(&exclude_file, format!("# comments and blank lines are ignored\n\n{}/logs\n", source.display()))
        .unwrap();
    let args = [
        "backup",
        source.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude",
        "cache",
        "--exclude-if-present",
        ".nobackup",
    ];
    let mut all = args.to_vec();
    all.extend(["--exclude-file", exclude_file.to_str().unwrap()]);
    fixture.json(&all);
    let listed = fixture.json(&["ls", &format!("latest:{}", source.display())])["entries"].clone();
    let mut paths: Vec<String> =
        listed.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    paths.sort();
    let root = source.display().to_string();
    assert_eq!(paths, vec![root.clone(), format!("{root}/keep"), format!("{root}/keep/a.dcm")]);
}

#[test]
fn overlapping_paths_tags_and_long_listings() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(source.join("inner")).unwrap();
    std::fs::write(source.join("inner/x.txt"), b"once").unwrap();
    let inner = source.join("inner");
    fixture.json(&["backup", source.to_str().unwrap(), inner.to_str().unwrap(), "--tag", "nightly", "--tag", "site-a"]);
    let snapshot = &fixture.snapshots()[0];
    assert_eq!(snapshot["tags"], serde_json::json!(["nightly", "site-a"]));
    let listed = fixture.json(&["ls", &format!("latest:{}", source.display())])["entries"].clone();
    let files: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "file")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        vec![format!("{}/x.txt", inner.display())],
        "an entry inside both paths was recorded twice or not at all"
    );
    let long = fixture.ok(&["ls", "--long", &format!("latest:{}", inner.display())]);
    let line = long.lines().find(|line| line.ends_with("/x.txt")).unwrap_or_else(|| panic!("{long}"));
    assert!(line.starts_with("-rw") && line.contains(" 4 "), "{line}");
}

#[test]
fn unlock_removes_the_lock_of_a_killed_backup() {
    if Fixture::on_s3() {
        return;
    }
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(&source).unwrap();
    for index in 0..40u64 {
        std::fs::write(source.join(format!("f{index}")), random_bytes(1 << 20, index)).unwrap();
    }
    let mut running =
        fixture.command(&["backup", source.to_str().unwrap()]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let locks = fixture.repo().join("locks");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while common::finished_objects(&locks) == 0 {
        assert!(running.try_wait().unwrap().is_none(), "the backup finished before it could be killed");
        assert!(std::time::Instant::now() < deadline, "the backup took no lock");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    running.kill().unwrap();
    running.wait().unwrap();
    assert_eq!(common::finished_objects(&locks), 1);
    let removed = fixture.json(&["unlock"]);
    assert_eq!(removed["removed"], 1, "the dead process's lock is stale: {removed}");
    assert_eq!(common::finished_objects(&locks), 0);
}
