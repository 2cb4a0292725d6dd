//! Safe restores through the real binary: the plan (`--dry-run`) is what the restore
//! then does, entry by entry; `--overwrite` rules and `--delete`; a restore that fails
//! or is interrupted puts the target back exactly as it was (content, mode, owner,
//! times, xattrs, link targets), and `restore --rollback` does so after a SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{assert_same_tree, random_bytes, set_mtime, stat_walk, Fixture};

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A study folder: text files, a large binary, a subfolder, a symlink, an xattr.
fn make_study(root: &Path) {
    write(&root.join("notes.txt"), b"patient 17: stable\n");
    write(&root.join("same-content.txt"), b"unchanged content\n");
    write(&root.join("chmod.txt"), b"mode will change\n");
    write(&root.join("scan.bin"), &random_bytes(3 << 20, 5));
    write(&root.join("series/img1.dcm"), &random_bytes(200_000, 6));
    write(&root.join("series/img2.dcm"), &random_bytes(150_000, 7));
    write(&root.join("was-a-file"), b"a file in the snapshot\n");
    std::fs::create_dir_all(root.join("was-a-dir")).unwrap();
    write(&root.join("was-a-dir/inner.txt"), b"inner\n");
    symlink("notes.txt", root.join("link")).unwrap();
    let _ = xattr::set(root.join("notes.txt"), "user.study", b"17");
    set_mtime(&root.join("same-content.txt"), 1_700_000_000, 0);
}

/// Changes the live folder the way a day of work (or a mistake) would.
fn change_study(root: &Path) {
    write(&root.join("notes.txt"), b"patient 17: worse, see scan\n");
    let _ = xattr::set(root.join("notes.txt"), "user.study", b"17b");
    set_mtime(&root.join("same-content.txt"), 1_800_000_000, 5);
    std::fs::set_permissions(root.join("chmod.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(root.join("series/img2.dcm")).unwrap();
    write(&root.join("series/img3.dcm"), &random_bytes(90_000, 8));
    write(&root.join("new-folder/draft.txt"), b"draft\n");
    std::fs::remove_file(root.join("was-a-file")).unwrap();
    std::fs::create_dir(root.join("was-a-file")).unwrap();
    write(&root.join("was-a-file/x"), b"x\n");
    std::fs::remove_dir_all(root.join("was-a-dir")).unwrap();
    write(&root.join("was-a-dir"), b"now a file\n");
    std::fs::remove_file(root.join("link")).unwrap();
    symlink("elsewhere", root.join("link")).unwrap();
}

fn study_fixture() -> (Fixture, std::path::PathBuf, String) {
    let fixture = Fixture::new();
    let study = fixture.path("data/study");
    make_study(&study);
    fixture.backup(&study);
    let spec = format!("latest:{}", study.display());
    (fixture, study, spec)
}

/// The plan's action per relative path.
fn plan_of(fixture: &Fixture, args: &[&str]) -> BTreeMap<String, String> {
    let mut all = vec!["restore", "--dry-run"];
    all.extend_from_slice(args);
    let plan = fixture.json(&all);
    let target = args[args.iter().position(|a| *a == "--target").unwrap() + 1];
    plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let path = e["path"].as_str().unwrap();
            let relative = path.strip_prefix(target).unwrap().trim_start_matches('/').to_string();
            (relative, e["action"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn the_plan_is_what_the_restore_then_does() {
    let (fixture, study, spec) = study_fixture();
    change_study(&study);
    let target = study.to_str().unwrap();
    let plan = plan_of(&fixture, &[&spec, "--target", target, "--delete"]);
    let expect =
        |path: &str, action: &str| assert_eq!(plan.get(path).map(String::as_str), Some(action), "{path}: {plan:?}");
    expect("notes.txt", "overwrite");
    expect("same-content.txt", "update");
    expect("chmod.txt", "update");
    expect("scan.bin", "keep");
    expect("series/img1.dcm", "keep");
    expect("series/img2.dcm", "create");
    expect("series/img3.dcm", "delete");
    expect("new-folder", "delete");
    expect("was-a-file", "overwrite");
    expect("was-a-dir", "overwrite");
    expect("was-a-dir/inner.txt", "create");
    expect("link", "overwrite");
    assert!(!plan.contains_key("new-folder/draft.txt"), "a deleted folder is one entry: {plan:?}");

    let before = stat_walk(&study);
    let result = fixture.json(&["restore", &spec, "--target", target, "--delete"]);
    assert!(result["safety_snapshot_id"].is_string(), "{result}");
    let after = stat_walk(&study);
    for (relative, action) in &plan {
        let key = relative.as_bytes().to_vec();
        let (old, new) = (before.get(&key), after.get(&key));
        match action.as_str() {
            "keep" if old.unwrap().0.kind != "dir" => {
                assert_eq!(old.unwrap().1, new.unwrap().1, "{relative}: a kept file keeps its inode");
                assert_eq!(old.unwrap().0, new.unwrap().0, "{relative}: a kept file is unchanged");
            }
            "update" => {
                assert_eq!(old.unwrap().1, new.unwrap().1, "{relative}: an updated file keeps its inode");
                assert_eq!(old.unwrap().0.sha256, new.unwrap().0.sha256, "{relative}: and its content");
            }
            "overwrite" => assert!(old.is_some() && new.is_some(), "{relative}: replaced"),
            "create" => assert!(old.is_none() && new.is_some(), "{relative}: created"),
            "delete" => assert!(new.is_none(), "{relative}: deleted"),
            _ => {}
        }
    }
    // And the folder is now exactly the snapshot.
    let restored = fixture.path("fresh");
    fixture.ok(&["restore", &spec, "--target", restored.to_str().unwrap()]);
    assert_same_tree(&restored, &study);
    // Restoring again changes nothing, and needs no safety snapshot.
    let again = plan_of(&fixture, &[&spec, "--target", target, "--delete"]);
    assert!(again.values().all(|action| action == "keep"), "{again:?}");
}

#[test]
fn a_failed_restore_puts_the_target_back_exactly() {
    let (fixture, study, spec) = study_fixture();
    change_study(&study);
    // The scan's pack disappears: the restore fails on it after other files were written.
    let scan_pack = largest_pack(&fixture.repo());
    std::fs::remove_file(&scan_pack).unwrap();
    std::fs::write(study.join("scan.bin"), b"local edit of the scan").unwrap();
    let before = fixture.path("before");
    copy_tree(&study, &before);
    let output = fixture.run(&["restore", &spec, "--target", study.to_str().unwrap(), "--delete"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(13), "{stderr}");
    assert!(stderr.contains("put back from the safety snapshot"), "{stderr}");
    assert_same_tree(&before, &study);
    let restores = fixture.json(&["restores"]);
    assert_eq!(restores["restores"][0]["outcome"], "rolled-back", "{restores}");
}

#[test]
fn sigterm_rolls_back_and_sigkill_is_rolled_back_by_rollback() {
    let fixture = Fixture::new();
    let study = fixture.path("data/many");
    for n in 0..2000 {
        write(&study.join(format!("d{:02}/f{n:04}.txt", n % 30)), &random_bytes(2000 + n * 13, n as u64));
    }
    fixture.backup(&study);
    let spec = format!("latest:{}", study.display());
    for n in (0..2000).step_by(2) {
        write(&study.join(format!("d{:02}/f{n:04}.txt", n % 30)), format!("edited {n}").as_bytes());
    }
    write(&study.join("d00/extra.txt"), b"made after the backup");
    let before = fixture.path("before");
    copy_tree(&study, &before);
    let target = study.to_str().unwrap();
    // How long one restore takes here: the signals land at fractions of it.
    let started = std::time::Instant::now();
    fixture.ok(&["restore", &spec, "--target", target, "--delete"]);
    let took = started.elapsed().as_millis() as u64;
    let restores = fixture.json(&["restores"]);
    let id = restores["restores"][0]["restore_id"].as_str().unwrap().to_string();
    fixture.ok(&["restore", "--rollback", &id, "--force"]);
    assert_same_tree(&before, &study);
    let mut rolled_back_by_signal = 0;
    let mut rolled_back_by_command = 0;
    let rounds = [(15, 30), (15, 60), (15, 85), (9, 20), (9, 40), (9, 55), (9, 70), (9, 90)];
    for (signal, percent) in rounds {
        let delay_ms = took * percent / 100;
        let mut child = fixture
            .command(&["restore", &spec, "--target", target, "--delete"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let restores = fixture.json(&["restores"]);
        let last = restores["restores"].as_array().unwrap().last().cloned();
        let outcome = last.as_ref().map(|r| r["outcome"].as_str().unwrap().to_string());
        match (status.code(), outcome.as_deref()) {
            // Done before the signal: undo it, to start the next round from the same tree.
            (Some(0), Some("completed")) => {
                let id = last.unwrap()["restore_id"].as_str().unwrap().to_string();
                fixture.ok(&["restore", "--rollback", &id, "--force"]);
            }
            (Some(143), Some("rolled-back")) => rolled_back_by_signal += 1,
            (None, Some("running")) => {
                let id = last.unwrap()["restore_id"].as_str().unwrap().to_string();
                fixture.ok(&["restore", "--rollback", &id]);
                rolled_back_by_command += 1;
            }
            // Killed before its record was stored: nothing was changed yet.
            (None, _) | (Some(143), _) => {}
            other => panic!("unexpected end {other:?} after signal {signal} at {delay_ms} ms of {took}"),
        }
        assert_same_tree(&before, &study);
        assert!(
            !walkdir::WalkDir::new(&study).into_iter().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".coffer-restore-")),
            "temporary files left"
        );
    }
    eprintln!("a restore takes {took} ms; rolled back by the signal handler: {rolled_back_by_signal}, by restore --rollback: {rolled_back_by_command}");
    assert!(rolled_back_by_signal + rolled_back_by_command > 0, "no signal arrived during a restore");
}

#[test]
fn overwrite_rules() {
    let (fixture, study, spec) = study_fixture();
    let target = study.to_str().unwrap();
    write(&study.join("notes.txt"), b"edited today\n");
    set_mtime(&study.join("notes.txt"), 2_000_000_000, 0);
    let never = plan_of(&fixture, &[&spec, "--target", target, "--overwrite", "never"]);
    assert_eq!(never["notes.txt"], "keep");
    let newer = plan_of(&fixture, &[&spec, "--target", target, "--overwrite", "if-newer"]);
    assert_eq!(newer["notes.txt"], "keep", "the target's file is newer");
    let always = plan_of(&fixture, &[&spec, "--target", target, "--overwrite", "always"]);
    assert_eq!(always["notes.txt"], "overwrite");
    assert_eq!(always["series/img1.dcm"], "overwrite");
    let changed = plan_of(&fixture, &[&spec, "--target", target]);
    assert_eq!(changed["notes.txt"], "overwrite");
    assert_eq!(changed["series/img1.dcm"], "keep");
    fixture.ok(&["restore", &spec, "--target", target, "--overwrite", "never"]);
    assert_eq!(std::fs::read(study.join("notes.txt")).unwrap(), b"edited today\n");
    let bad = fixture.run(&["restore", &spec, "--target", target, "--overwrite", "sometimes"]);
    assert_eq!(bad.status.code(), Some(2));
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(message.contains("'sometimes'") && message.contains("if-changed"), "{message}");
}

#[test]
fn delete_is_refused_where_a_mistake_would_wipe_something_else() {
    let (fixture, study, spec) = study_fixture();
    let elsewhere = fixture.path("elsewhere");
    write(&elsewhere.join("precious.txt"), b"not part of any snapshot");
    let other = fixture.run(&["restore", &spec, "--target", elsewhere.to_str().unwrap(), "--delete"]);
    assert_eq!(other.status.code(), Some(20), "{}", String::from_utf8_lossy(&other.stderr));
    assert!(elsewhere.join("precious.txt").exists());
    let root = fixture.run(&["restore", "latest", "--target", "/", "--delete", "--dry-run"]);
    assert_eq!(root.status.code(), Some(20), "{}", String::from_utf8_lossy(&root.stderr));
    let include =
        fixture.run(&["restore", &spec, "--target", study.to_str().unwrap(), "--delete", "--include", "*.txt"]);
    assert_eq!(include.status.code(), Some(2));
    // With --force, into another folder: only that folder's extra entries go.
    fixture.ok(&["restore", &spec, "--target", elsewhere.to_str().unwrap(), "--delete", "--force"]);
    assert!(!elsewhere.join("precious.txt").exists());
    let names = |root: &Path| stat_walk(root).into_keys().collect::<Vec<_>>();
    assert_eq!(names(&study), names(&elsewhere));
    // ... and can be undone.
    let restores = fixture.json(&["restores"]);
    let id = restores["restores"].as_array().unwrap().last().unwrap()["restore_id"].as_str().unwrap().to_string();
    fixture.ok(&["restore", "--rollback", &id, "--force"]);
    assert_eq!(std::fs::read(elsewhere.join("precious.txt")).unwrap(), b"not part of any snapshot");
}

#[test]
fn safety_snapshots_are_not_latest_and_are_kept_by_forget_for_30_days() {
    let (fixture, study, spec) = study_fixture();
    write(&study.join("notes.txt"), b"edited\n");
    fixture.ok(&["restore", &spec, "--target", study.to_str().unwrap()]);
    let listed = fixture.snapshots();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let safety = listed.iter().find(|s| s["tags"].as_array().unwrap().iter().any(|t| t == "safety")).unwrap();
    // `latest` still names the backup, not the safety snapshot taken after it.
    let ls = fixture.ok(&["ls", "latest"]);
    assert!(ls.contains("scan.bin"), "latest is the safety snapshot, which holds only what was replaced: {ls}");
    let forget = fixture.json(&["forget", "--keep-last", "1"]);
    assert_eq!(forget["removed"], 0, "{forget}");
    let kept = forget["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["snapshot_id"] == safety["snapshot_id"])
        .unwrap()
        .clone();
    assert_eq!(kept["keep"], true, "{kept}");
    // Any --keep-safety keeps a safety snapshot just taken, and the backups' own group
    // is not emptied by it (the expiry itself is a unit test of apply_policy).
    let forget = fixture.json(&["forget", "--keep-last", "1", "--keep-safety", "1h", "--dry-run"]);
    assert_eq!(forget["snapshots"].as_array().unwrap().iter().filter(|d| d["keep"] == false).count(), 0);
}

#[test]
fn no_safety_says_what_it_turned_off() {
    let (fixture, study, spec) = study_fixture();
    write(&study.join("notes.txt"), b"edited\n");
    let output = fixture.run(&["restore", &spec, "--target", study.to_str().unwrap(), "--no-safety"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no safety snapshot (--no-safety)"), "{stderr}");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 1);
    let restores = fixture.json(&["restores"]);
    assert!(restores["restores"][0]["safety_snapshot_id"].is_null());
    let rollback =
        fixture.run(&["restore", "--rollback", restores["restores"][0]["restore_id"].as_str().unwrap(), "--force"]);
    assert_eq!(rollback.status.code(), Some(20), "{}", String::from_utf8_lossy(&rollback.stderr));
}

/// The largest finished pack of a local repository.
fn largest_pack(repo: &Path) -> std::path::PathBuf {
    walkdir::WalkDir::new(repo.join("data"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path()
        .to_path_buf()
}

/// Copies a tree with its metadata (cp -a).
fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

/// A tmpfs of `kib` KiB mounted at `path`, unmounted when dropped; `None` where this
/// process may not mount (not root, or no mount namespace rights).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, kib: u64) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk(path.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_restore_and_the_target_is_put_back() {
    let fixture = Fixture::new();
    let source = fixture.path("source");
    write(&source.join("small.txt"), b"small, fits\n");
    write(&source.join("big1.bin"), &random_bytes(1 << 20, 1));
    write(&source.join("big2.bin"), &random_bytes(1 << 20, 2));
    fixture.backup(&source);
    let Some(disk) = SmallDisk::mount(&fixture.path("disk"), 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let live = disk.0.join("live");
    write(&live.join("small.txt"), b"the live version\n");
    write(&live.join("big1.bin"), &random_bytes(300_000, 9));
    write(&live.join("notes.txt"), b"only in the live folder\n");
    let before = fixture.path("before");
    copy_tree(&live, &before);
    let spec = format!("latest:{}", source.display());
    let output = fixture.run(&["restore", &spec, "--target", live.to_str().unwrap(), "--delete", "--force"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(15), "a full disk is a local error: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains("put back from the safety snapshot"), "{stderr}");
    assert_same_tree(&before, &live);
    drop(disk);
}

#[test]
fn chunks_already_in_a_replaced_file_are_not_fetched() {
    let fixture = Fixture::new();
    let folder = fixture.path("db");
    // Chunks are at most 8 MiB: a change touches at most a few of them, whatever the
    // repository's chunker secret puts the boundaries.
    let original = random_bytes(64 << 20, 21);
    write(&folder.join("table.dat"), &original);
    fixture.backup(&folder);
    // A few bytes in the middle change, as a database file's page would.
    let mut changed = original.clone();
    changed[30 << 20..(30 << 20) + 100].copy_from_slice(&[7u8; 100]);
    write(&folder.join("table.dat"), &changed);
    let spec = format!("latest:{}", folder.display());
    let result = fixture.json(&["restore", &spec, "--target", folder.to_str().unwrap(), "--no-safety"]);
    assert_eq!(std::fs::read(folder.join("table.dat")).unwrap(), original);
    let reused = result["bytes_reused"].as_u64().unwrap();
    let fetched = result["bytes_downloaded"].as_u64().unwrap();
    assert!(reused > 40 << 20, "most of the file comes from the target: {result}");
    assert!(fetched < 24 << 20, "only the changed chunks are fetched: {result}");
    assert_eq!(result["bytes_written"], 64u64 << 20);
}

/// The id of the newest restore.
fn last_restore(fixture: &Fixture) -> String {
    let restores = fixture.json(&["restores"]);
    restores["restores"].as_array().unwrap().last().unwrap()["restore_id"].as_str().unwrap().to_string()
}

#[test]
fn rollback_of_a_target_whose_name_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let (fixture, _study, spec) = study_fixture();
    let target = fixture.path("t").join(std::ffi::OsStr::from_bytes(b"t_\xff"));
    let lookalike = fixture.path("t").join("t_\u{fffd}");
    write(&target.join("notes.txt"), b"live notes\n");
    write(&lookalike.join("scan.bin"), b"a bystander");
    let before = fixture.path("before");
    copy_tree(&target, &before);
    let target_text = target.as_os_str().to_str().map(String::from);
    assert!(target_text.is_none());
    let mut command = fixture.command(&["restore", &spec, "--target"]);
    command.arg(&target);
    assert!(command.output().unwrap().status.success());
    fixture.ok(&["restore", "--rollback", &last_restore(&fixture), "--force"]);
    assert_same_tree(&before, &target);
    assert_eq!(std::fs::read(lookalike.join("scan.bin")).unwrap(), b"a bystander");
}

#[test]
fn rollback_refuses_a_target_replaced_by_a_symlink() {
    let (fixture, _study, spec) = study_fixture();
    let target = fixture.path("t7");
    write(&target.join("notes.txt"), b"live\n");
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    let victim = fixture.path("victim");
    write(&victim.join("notes.txt"), b"not to be touched\n");
    write(&victim.join("scan.bin"), b"not to be touched either\n");
    std::fs::rename(&target, fixture.path("t7.real")).unwrap();
    symlink(&victim, &target).unwrap();
    let output = fixture.run(&["restore", "--rollback", &last_restore(&fixture), "--force"]);
    assert_eq!(output.status.code(), Some(20), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(victim.join("notes.txt")).unwrap(), b"not to be touched\n");
    assert_eq!(std::fs::read(victim.join("scan.bin")).unwrap(), b"not to be touched either\n");
}

#[test]
fn rollback_leaves_what_was_made_since_and_needs_the_safety_snapshot_first() {
    let (fixture, study, spec) = study_fixture();
    write(&study.join("notes.txt"), b"live\n");
    std::fs::remove_file(study.join("scan.bin")).unwrap();
    fixture.ok(&["restore", &spec, "--target", study.to_str().unwrap()]);
    let id = last_restore(&fixture);
    // The user works on a file the restore created.
    write(&study.join("scan.bin"), b"edited after the restore");
    // Without its safety snapshot, a rollback changes nothing.
    let restores = fixture.json(&["restores"]);
    let safety = restores["restores"][0]["safety_snapshot_id"].as_str().unwrap().to_string();
    fixture.ok(&["forget", &safety]);
    let output = fixture.run(&["restore", "--rollback", &id, "--force"]);
    assert_eq!(output.status.code(), Some(14), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(study.join("scan.bin")).unwrap(), b"edited after the restore");
}

#[test]
fn rollback_keeps_a_file_made_since_under_a_created_name() {
    let (fixture, study, spec) = study_fixture();
    write(&study.join("notes.txt"), b"live\n");
    std::fs::remove_file(study.join("scan.bin")).unwrap();
    fixture.ok(&["restore", &spec, "--target", study.to_str().unwrap()]);
    write(&study.join("scan.bin"), b"made by the user after the restore");
    let output = fixture.run(&["restore", "--rollback", &last_restore(&fixture), "--force"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(15), "{stderr}");
    assert!(stderr.contains("is not what the restore wrote there"), "{stderr}");
    assert_eq!(std::fs::read(study.join("scan.bin")).unwrap(), b"made by the user after the restore");
    assert_eq!(std::fs::read(study.join("notes.txt")).unwrap(), b"live\n", "the rest is rolled back");
}

#[test]
fn same_size_and_mtime_with_other_content() {
    let fixture = Fixture::new();
    let source = fixture.path("s");
    write(&source.join("conf"), b"version-B\n");
    set_mtime(&source.join("conf"), 1_767_225_600, 0);
    fixture.backup(&source);
    let target = fixture.path("t");
    write(&target.join("conf"), b"version-A\n");
    set_mtime(&target.join("conf"), 1_767_225_600, 0);
    let spec = format!("latest:{}", source.display());
    let quick = plan_of(&fixture, &[&spec, "--target", target.to_str().unwrap()]);
    assert_eq!(quick["conf"], "keep", "size and mtime agree: the quick check keeps it, as rsync does");
    let hashed = plan_of(&fixture, &[&spec, "--target", target.to_str().unwrap(), "--checksum"]);
    assert_eq!(hashed["conf"], "overwrite");
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap(), "--overwrite", "always"]);
    assert_eq!(std::fs::read(target.join("conf")).unwrap(), b"version-B\n");
    fixture.ok(&["restore", "--rollback", &last_restore(&fixture), "--force"]);
    assert_eq!(std::fs::read(target.join("conf")).unwrap(), b"version-A\n", "the rollback compares by hash");
}

#[test]
fn metadata_of_a_hard_linked_file_is_never_set_in_place() {
    let fixture = Fixture::new();
    let source = fixture.path("s");
    write(&source.join("m"), b"shared\n");
    fixture.backup(&source);
    let target = fixture.path("t");
    let outside = fixture.path("outside");
    write(&outside.join("m"), b"shared\n");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::hard_link(outside.join("m"), target.join("m")).unwrap();
    std::fs::set_permissions(outside.join("m"), std::fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&outside.join("m"), 1_000_000_000, 0);
    let spec = format!("latest:{}", source.display());
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    let outside_meta = std::fs::metadata(outside.join("m")).unwrap();
    assert_eq!(outside_meta.mode() & 0o777, 0o640, "a file outside the target keeps its mode");
    assert_eq!(outside_meta.mtime(), 1_000_000_000);
}

#[test]
fn never_does_not_plan_what_it_cannot_make() {
    let (fixture, _study, spec) = study_fixture();
    let target = fixture.path("t20");
    write(&target.join("series"), b"a file where the snapshot has a folder");
    let plan = plan_of(&fixture, &[&spec, "--target", target.to_str().unwrap(), "--overwrite", "never"]);
    assert_eq!(plan["series"], "keep");
    assert!(!plan.keys().any(|path| path.starts_with("series/")), "{plan:?}");
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap(), "--overwrite", "never"]);
    assert_eq!(std::fs::read(target.join("series")).unwrap(), b"a file where the snapshot has a folder");
}

#[test]
fn delete_through_a_symlink_naming_the_target() {
    let (fixture, study, spec) = study_fixture();
    let real = fixture.path("real");
    copy_tree(&study, &real);
    write(&real.join("extra.txt"), b"not in the snapshot");
    let link = fixture.path("link");
    symlink(&real, &link).unwrap();
    fixture.ok(&["restore", &spec, "--target", link.to_str().unwrap(), "--delete", "--force"]);
    assert!(!real.join("extra.txt").exists());
}

#[test]
fn rollback_never_sweeps_away_what_was_made_since_in_a_folder_that_replaced_a_file() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    write(&source.join("d/x"), b"x\n");
    write(&source.join("f"), b"from the snapshot\n");
    fixture.backup(&source);
    let target = fixture.path("t");
    write(&target.join("d"), b"was a file\n");
    write(&target.join("f"), b"mine\n");
    // The trailing slash must not matter to what the rollback recognises.
    fixture.ok(&["restore", &format!("latest:{}/", source.display()), "--target", target.to_str().unwrap()]);
    assert!(target.join("d/x").is_file());
    write(&target.join("d/userfile"), b"made after the restore\n");
    write(&target.join("f"), b"edited after the restore\n");
    let output = fixture.run(&["restore", "--rollback", &last_restore(&fixture), "--force"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(15), "{stderr}");
    assert_eq!(std::fs::read(target.join("d/userfile")).unwrap(), b"made after the restore\n");
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"edited after the restore\n", "{stderr}");
    assert!(stderr.contains("was changed since the restore"), "{stderr}");
    // The restore's own file in that folder is removed; the folder stays for the user's.
    assert!(!target.join("d/x").exists(), "{stderr}");
}

#[test]
fn diff_works_with_a_cache_path_holding_percent_signs() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    write(&source.join("a"), b"1");
    let first = fixture.backup(&source)["snapshot_id"].as_str().unwrap().to_string();
    write(&source.join("b"), b"2");
    fixture.backup(&source);
    let cache = fixture.path("ca%63he 50%?#x");
    let output =
        fixture.command(&["--json", "diff", &first, "latest"]).env("COFFER_CACHE_DIR", &cache).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let diff = common::last_json(&output.stdout);
    assert_eq!(diff["added"], 1, "{diff}");
}

#[test]
fn identical_hard_linked_files_are_left_alone_and_a_split_name_is_linked_again() {
    let fixture = Fixture::new();
    let source = fixture.path("linked");
    write(&source.join("a/scan.dcm"), &random_bytes(500_000, 21));
    std::fs::hard_link(source.join("a/scan.dcm"), source.join("b.dcm")).unwrap();
    std::fs::hard_link(source.join("a/scan.dcm"), source.join("c.dcm")).unwrap();
    fixture.backup(&source);
    let target = fixture.path("out");
    let spec = format!("latest:{}", source.display());
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    let inode = |name: &str| std::fs::metadata(target.join(name)).unwrap().ino();
    let first = inode("a/scan.dcm");
    assert_eq!((inode("b.dcm"), inode("c.dcm")), (first, first));
    // Restored again onto itself: nothing is rewritten, the inode stays.
    let plan = plan_of(&fixture, &[&spec, "--target", target.to_str().unwrap()]);
    for name in ["a/scan.dcm", "b.dcm", "c.dcm"] {
        assert_eq!(plan.get(name).map(String::as_str), Some("keep"), "{name}: {plan:?}");
    }
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    assert_eq!((inode("a/scan.dcm"), inode("b.dcm"), inode("c.dcm")), (first, first, first));
    // One name split off as a copy of its own: linked to the first name again.
    std::fs::remove_file(target.join("c.dcm")).unwrap();
    std::fs::copy(target.join("a/scan.dcm"), target.join("c.dcm")).unwrap();
    assert_ne!(inode("c.dcm"), first);
    let plan = plan_of(&fixture, &[&spec, "--target", target.to_str().unwrap()]);
    assert_eq!(plan.get("c.dcm").map(String::as_str), Some("link"), "{plan:?}");
    fixture.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    assert_eq!((inode("a/scan.dcm"), inode("b.dcm"), inode("c.dcm")), (first, first, first));
    // The folders below the target match (the target folder keeps its own times).
    common::assert_same_tree(&source.join("a"), &target.join("a"));
    assert_eq!(std::fs::read(target.join("c.dcm")).unwrap(), std::fs::read(source.join("b.dcm")).unwrap());
}
