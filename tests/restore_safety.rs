//! Restore safety through the real binary (issue 11): files restored under their own
//! names whatever the names look like, nothing outside the target touched whatever a
//! local user plants in it, hostile manifest paths refused, temporary files private
//! and cleaned up after interrupts and kills.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Fixture;
use proptest::prelude::*;

/// The restored copy of `source` below `target` (paths are recorded absolute).
fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

/// Entries below `root` whose names mark them as restore temporaries.
fn temporaries(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|item| item.file_name().as_bytes().starts_with(b".coffer-restore-"))
        .map(|item| item.path().to_path_buf())
        .collect()
}

fn bytes_name(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Names that collided under the old temporary naming (first 64 characters, lossy
/// UTF-8), or that differ in ways a careless key would fold together.
fn colliding_names(seed: u8, long: usize) -> Vec<Vec<u8>> {
    let prefix = vec![b'a' + seed % 26; long];
    let mut names = vec![
        [&prefix[..], b"_one"].concat(),
        [&prefix[..], b"_two"].concat(),
        b"caf\xe9".to_vec(),
        b"caf\xe8".to_vec(),
        b"Case".to_vec(),
        b"case".to_vec(),
        "\u{e9}t\u{e9}".as_bytes().to_vec(),                 // NFC
        "e\u{301}te\u{301}".as_bytes().to_vec(),             // NFD
        [&vec![b'z'; 254][..], &[b'1' + seed % 8]].concat(), // exactly 255 bytes
        [&vec![b'z'; 254][..], b"0"].concat(),
        b"\xff\xfe".to_vec(),
        b"\xff\xfd".to_vec(),
    ];
    names.retain(|name| name.len() <= 255);
    names
}

fn write_tree(root: &Path, seed: u8, long: usize) {
    std::fs::create_dir_all(root).unwrap();
    for (index, name) in colliding_names(seed, long).iter().enumerate() {
        let content = format!("file {index} of seed {seed}: {}\n", String::from_utf8_lossy(name));
        std::fs::write(root.join(bytes_name(name)), content.repeat(1 + index)).unwrap();
    }
    // A deep path of about 3 KB: fifteen folders of 200-byte names.
    let mut deep = root.to_path_buf();
    for level in 0..15u8 {
        deep.push(bytes_name(&[b'd' + level % 20; 200]));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join(bytes_name(&[&[b'x'; 64][..], b"_deep_one"].concat())), b"deep one").unwrap();
    std::fs::write(deep.join(bytes_name(&[&[b'x'; 64][..], b"_deep_two"].concat())), b"deep two").unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Finding 0: every file comes back with its own content, with and without
    /// --verify, and again over the first result; no temporary file remains.
    #[test]
    fn colliding_names_restore_to_their_own_content(seed in 0u8..255, long in prop::sample::select(vec![64usize, 200, 250])) {
        let fixture = Fixture::new();
        let source = fixture.path("src");
        write_tree(&source, seed, long);
        fixture.backup(&source);
        let target = fixture.path("restore");
        for verify in [false, true, true] {
            let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
            if verify {
                args.push("--verify");
            }
            fixture.ok(&args);
            common::assert_same_tree(&source, &restored(&target, &source));
            prop_assert!(temporaries(&target).is_empty(), "{:?}", temporaries(&target));
        }
    }
}

/// Finding 1: a symlink in the target where the snapshot has a folder is replaced by
/// the folder; nothing is written into, or chmodded at, the symlink's target.
#[test]
fn a_symlink_where_the_snapshot_has_a_folder_is_replaced_not_followed() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir_all(source.join("a")).unwrap();
    std::fs::write(source.join("a/secret.txt"), b"patient record").unwrap();
    std::fs::set_permissions(source.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
    fixture.backup(&source);
    let elsewhere = fixture.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o750)).unwrap();
    let target = fixture.path("restore");
    let landing = restored(&target, &source);
    std::fs::create_dir_all(&landing).unwrap();
    std::os::unix::fs::symlink(&elsewhere, landing.join("a")).unwrap();

    fixture.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "restore wrote through the symlink");
    assert_eq!(std::fs::metadata(&elsewhere).unwrap().mode() & 0o7777, 0o750, "restore chmodded the symlink's target");
    assert!(std::fs::symlink_metadata(landing.join("a")).unwrap().is_dir());
    assert_eq!(std::fs::read(landing.join("a/secret.txt")).unwrap(), b"patient record");
}

/// Finding 1, second form: a snapshot holding `a -> elsewhere`, then one holding a
/// folder `a/`, restored into the same target.
#[test]
fn a_symlink_restored_earlier_is_not_followed_by_a_later_restore() {
    let fixture = Fixture::new();
    let elsewhere = fixture.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    std::os::unix::fs::symlink(&elsewhere, source.join("a")).unwrap();
    let first = fixture.backup(&source)["snapshot_id"].as_str().unwrap().to_string();
    std::fs::remove_file(source.join("a")).unwrap();
    std::fs::create_dir(source.join("a")).unwrap();
    std::fs::write(source.join("a/secret.txt"), b"patient record").unwrap();
    let second = fixture.backup(&source)["snapshot_id"].as_str().unwrap().to_string();
    let target = fixture.path("restore");
    fixture.ok(&["restore", &first, "--target", target.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(restored(&target, &source).join("a")).unwrap().is_symlink());
    fixture.ok(&["restore", &second, "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "restore wrote through the symlink");
    assert_eq!(std::fs::read(restored(&target, &source).join("a/secret.txt")).unwrap(), b"patient record");
}

/// Finding 2: symlinks planted at a file's final name, and under names shaped like
/// restore temporaries, make restore neither write nor truncate their targets.
#[test]
fn planted_symlinks_change_nothing_outside_the_target() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("report.txt"), b"restored content").unwrap();
    fixture.backup(&source);
    let victim = fixture.path("victim");
    std::fs::write(&victim, b"must stay").unwrap();
    let target = fixture.path("restore");
    let landing = restored(&target, &source);
    std::fs::create_dir_all(&landing).unwrap();
    std::os::unix::fs::symlink(&victim, landing.join("report.txt")).unwrap();
    for planted in [".coffer-restore-000000000000-0", ".coffer-restore-ffffffffffff-1", ".coffer-probe-1"] {
        std::os::unix::fs::symlink(&victim, landing.join(planted)).unwrap();
        std::os::unix::fs::symlink(&victim, target.join(planted)).unwrap();
    }
    let output = fixture.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"must stay", "{output}");
    let placed = std::fs::symlink_metadata(landing.join("report.txt")).unwrap();
    assert!(placed.is_file(), "the symlink in the way was replaced by the file");
    assert_eq!(std::fs::read(landing.join("report.txt")).unwrap(), b"restored content");
    assert!(temporaries(&target).is_empty(), "stale temporaries are removed: {:?}", temporaries(&target));
}

/// Commits, with the password (as a compromised host sharing the repository could), a
/// snapshot whose manifest holds the given paths, each a file of 7 bytes.
fn commit_snapshot_with_paths(fixture: &Fixture, paths: &[&[u8]]) -> String {
    use coffer::backend::LocalBackend;
    use coffer::{BlobType, ChunkRef, Entry, EntryKind, ManifestRef, ManifestWriter, Packer, Repository};
    use sha2::Digest;
    let backend = std::sync::Arc::new(LocalBackend::open(&fixture.repo(), false).unwrap());
    let repository = Repository::open(backend, b"correct horse", None).unwrap();
    let repository = repository.lock_shared().unwrap();
    let (_, mut snapshot) = repository.find_snapshot("latest").unwrap();
    let work = tempfile::tempdir().unwrap();
    let manifest_path = work.path().join("m.sqlite");
    let mut writer = ManifestWriter::create(&manifest_path).unwrap();
    let packer = Packer::new(&repository);
    let content = b"hostile";
    let blob = packer.store_if_new(BlobType::Data, content).unwrap();
    for (row, path) in paths.iter().enumerate() {
        let entry = Entry {
            path: path.to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: row as u64,
            device: 0,
            nlink: 1,
            size: 7,
            rdev: 0,
            sha256: Some(sha2::Sha256::digest(content).into()),
            link_target: None,
            hardlink_group: None,
        };
        writer.add(&entry, &[], &[ChunkRef { blob, offset: 0, length: 7 }]).unwrap();
    }
    let bytes = std::fs::read(writer.finish().unwrap()).unwrap();
    let mut blobs = Vec::new();
    for chunk in repository.metadata_chunker().chunks(&bytes[..]) {
        blobs.push(packer.store_if_new(BlobType::Metadata, &chunk.unwrap()).unwrap());
    }
    repository.write_index(&packer.flush().unwrap()).unwrap();
    snapshot.manifest =
        ManifestRef { blobs, size: bytes.len() as u64, blake3: blake3::hash(&bytes).to_hex().to_string() };
    snapshot.time = "2030-01-01T00:00:00Z".into();
    repository.save_snapshot(&snapshot).unwrap().to_hex()
}

/// Finding 3: `..` components and extra slashes in manifest paths are refused by
/// restore (exit 13, nothing written anywhere) and reported by check.
#[test]
fn hostile_manifest_paths_are_refused_by_restore_and_reported_by_check() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("ok.txt"), b"fine").unwrap();
    let honest = fixture.backup(&source)["snapshot_id"].as_str().unwrap().to_string();
    let escape = fixture.path("escaped");
    let depth = "../".repeat(fixture.path("restore").components().count() + 2);
    let dotted = format!("/{depth}{}", escape.display());
    let doubled = format!("/{}", fixture.path("doubled").display());
    let hostile = commit_snapshot_with_paths(&fixture, &[b"/fine", dotted.as_bytes(), doubled.as_bytes()]);

    let target = fixture.path("restore");
    let output = fixture.run(&["restore", &hostile, "--target", target.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(13), "{stderr}");
    assert!(stderr.contains("unsafe path"), "{stderr}");
    assert!(!escape.exists() && !fixture.path("doubled").exists());
    assert!(!target.join("fine").exists(), "nothing of a refused snapshot is restored");

    let output = fixture.run(&["check", "--read-data"]);
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(13), "check called it clean: {said}");
    assert!(said.contains(&hostile[..8]) && said.contains("unsafe path"), "{said}");
    // The honest snapshot still restores.
    fixture.ok(&["restore", &honest, "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(restored(&target, &source).join("ok.txt")).unwrap(), b"fine");
}

/// Finding 6: repository, cache and temporary files are private under umask 022; a
/// restore killed with SIGKILL leaves only 0600 temporary files, which the next
/// restore removes.
#[test]
fn repository_cache_and_temporary_files_are_private() {
    let fixture = Fixture::empty();
    let mut init = fixture.command(&["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
    // SAFETY: umask in the child before exec, as a login shell would set it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut init, || {
            libc::umask(0o022);
            Ok(())
        });
    }
    assert!(init.status().unwrap().success());
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    for index in 0..48u64 {
        std::fs::write(source.join(format!("scan{index}.dcm")), common::random_bytes(4 << 20, index)).unwrap();
    }
    std::fs::set_permissions(source.join("scan0.dcm"), std::fs::Permissions::from_mode(0o600)).unwrap();
    fixture.backup(&source);
    for root in [fixture.repo(), fixture.path("cache")] {
        for item in walkdir::WalkDir::new(&root).into_iter().filter_map(Result::ok) {
            let mode = item.metadata().unwrap().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", item.path().display());
        }
    }
    let target = fixture.path("restore");
    let mut restore = fixture.command(&["restore", "latest", "--target", target.to_str().unwrap()]).spawn().unwrap();
    let landing = restored(&target, &source);
    let deadline = Instant::now() + Duration::from_secs(60);
    while temporaries(&target).is_empty() && Instant::now() < deadline && restore.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = restore.kill();
    restore.wait().unwrap();
    let left = temporaries(&target);
    for path in &left {
        let mode = std::fs::symlink_metadata(path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is readable by others", path.display());
    }
    fixture.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(temporaries(&target).is_empty(), "left behind: {:?}", temporaries(&target));
    assert_eq!(std::fs::metadata(landing.join("scan0.dcm")).unwrap().mode() & 0o777, 0o600);
    common::assert_same_tree(&source, &landing);
}

/// Finding 9: SIGTERM (what systemd sends) during a restore removes its temporary
/// files and exits 143.
#[test]
fn an_interrupted_restore_removes_its_temporary_files() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    for index in 0..64u64 {
        std::fs::write(source.join(format!("scan{index}.dcm")), common::random_bytes(4 << 20, index)).unwrap();
    }
    fixture.backup(&source);
    for attempt in 0..5 {
        let target = fixture.path(&format!("restore{attempt}"));
        let mut restore = fixture
            .command(&["restore", "latest", "--target", target.to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while temporaries(&target).is_empty() && restore.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(restore.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let output = restore.wait_with_output().unwrap();
        if output.status.code() == Some(0) {
            continue; // finished before the signal arrived; try again
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(143), "{stderr}");
        assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
        assert!(temporaries(&target).is_empty(), "left behind: {:?}", temporaries(&target));
        assert!(std::fs::read_dir(fixture.repo().join("locks")).unwrap().next().is_none(), "the lock stayed");
        return;
    }
    panic!("every restore finished before SIGTERM reached it");
}

/// Review finding: a local user who swaps a hard-link group's first file for a file
/// of their own while the restore runs must not get the other names linked to it.
#[test]
fn further_hard_link_names_are_linked_to_the_restored_file_only() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir_all(source.join("a-shared")).unwrap();
    std::fs::create_dir_all(source.join("z-private")).unwrap();
    for index in 0..40 {
        std::fs::write(source.join(format!("a-shared/filler{index}")), common::random_bytes(200_000, index)).unwrap();
    }
    std::fs::write(source.join("a-shared/0leader"), b"the real record").unwrap();
    std::fs::hard_link(source.join("a-shared/0leader"), source.join("z-private/b")).unwrap();
    fixture.backup(&source);
    for round in 0..6 {
        let target = fixture.path(&format!("restore{round}"));
        let leader = restored(&target, &source).join("a-shared/0leader");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attacker = {
            let (leader, stop) = (leader.clone(), stop.clone());
            std::thread::spawn(move || {
                let planted = leader.with_file_name(".planted");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if std::fs::read(&leader).is_ok_and(|content| content == b"the real record") {
                        let _ = std::fs::write(&planted, b"attacker content");
                        let _ = std::fs::rename(&planted, &leader);
                    }
                }
            })
        };
        let output = fixture.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        attacker.join().unwrap();
        let private = restored(&target, &source).join("z-private/b");
        let content = std::fs::read(&private).unwrap_or_default();
        assert_ne!(content, b"attacker content", "round {round}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

/// Review finding: restoring a folder of a snapshot into an existing target leaves the
/// target's own mode and owner alone (a new target gets the folder's).
#[test]
fn an_existing_target_keeps_its_own_mode() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("plain"), b"x").unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o777)).unwrap();
    fixture.backup(&source);
    let existing = fixture.path("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o700)).unwrap();
    let spec = format!("latest:{}", source.display());
    fixture.ok(&["restore", &spec, "--target", existing.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&existing).unwrap().mode() & 0o777, 0o700);
    let fresh = fixture.path("fresh");
    fixture.ok(&["restore", &spec, "--target", fresh.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o777);
}

/// Review finding: on a folder restore, patterns are relative to that folder, `*` stays
/// within one name, and a pattern that matches nothing is reported.
#[test]
fn patterns_are_relative_to_the_restored_folder() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir_all(source.join("d1/d2")).unwrap();
    for name in ["top", "d1/sparse", "d1/keep", "d1/d2/deep"] {
        std::fs::write(source.join(name), name).unwrap();
    }
    fixture.backup(&source);
    let target = fixture.path("restore");
    let spec = format!("latest:{}", source.display());
    let output = fixture.run(&[
        "restore",
        &spec,
        "--target",
        target.to_str().unwrap(),
        "--exclude",
        "d1/sparse",
        "--exclude",
        "d1/*",
        "--exclude",
        "nothing/here",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(target.join("top").exists());
    assert!(!target.join("d1/sparse").exists() && !target.join("d1/keep").exists());
    assert!(stderr.contains("\"nothing/here\" matched nothing"), "{stderr}");
}
