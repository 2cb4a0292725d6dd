//! Bad input and damaged repositories: one clear sentence and a documented exit code.

mod common;

use std::path::Path;

use common::Fixture;

fn expect_failure(fixture: &Fixture, args: &[&str], code: i32, words: &[&str]) -> String {
    let output = fixture.run(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "coffer {args:?}: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "coffer {args:?}: {stderr:?} does not mention {word:?}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "more than one line: {stderr}");
    stderr
}

fn backed_up_fixture() -> (Fixture, std::path::PathBuf) {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("chart.txt"), "blood pressure 120/80\n".repeat(1000)).unwrap();
    fixture.backup(&source);
    (fixture, source)
}

fn first_object(repo: &Path, folder: &str) -> std::path::PathBuf {
    walkdir::WalkDir::new(repo.join(folder))
        .into_iter()
        .map(|e| e.unwrap())
        .find(|e| e.file_type().is_file())
        .unwrap()
        .into_path()
}

#[test]
fn wrong_password_exits_12() {
    let (fixture, _) = backed_up_fixture();
    let output = fixture.command(&["snapshots"]).env("COFFER_PASSWORD", "wrong").output().unwrap();
    assert_eq!(output.status.code(), Some(12));
    assert!(String::from_utf8_lossy(&output.stderr).contains("wrong password"));
}

#[test]
fn missing_password_without_a_terminal_exits_12() {
    let (fixture, _) = backed_up_fixture();
    let output = fixture.command(&["snapshots"]).env_remove("COFFER_PASSWORD").output().unwrap();
    assert_eq!(output.status.code(), Some(12), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no password given"));
}

#[test]
fn password_file_and_command_are_read() {
    let (fixture, _) = backed_up_fixture();
    let file = fixture.path("password");
    std::fs::write(&file, "correct horse\n").unwrap();
    let by_file = fixture
        .command(&["snapshots", "--password-file", file.to_str().unwrap()])
        .env_remove("COFFER_PASSWORD")
        .output()
        .unwrap();
    assert!(by_file.status.success(), "{}", String::from_utf8_lossy(&by_file.stderr));
    let by_command = fixture
        .command(&["snapshots"])
        .env_remove("COFFER_PASSWORD")
        .env("COFFER_PASSWORD_COMMAND", "echo 'correct horse'")
        .output()
        .unwrap();
    assert!(by_command.status.success(), "{}", String::from_utf8_lossy(&by_command.stderr));
}

#[test]
fn no_repository_exits_10() {
    let fixture = Fixture::empty();
    expect_failure(&fixture, &["snapshots"], 10, &["no coffer repository", "repo"]);
    std::fs::create_dir_all(fixture.repo()).unwrap();
    expect_failure(&fixture, &["snapshots"], 10, &["no coffer repository"]);
}

#[test]
fn init_twice_is_refused() {
    let fixture = Fixture::new();
    expect_failure(&fixture, &["init", "--kdf-memory-kib", "64"], 1, &["already exists"]);
}

#[test]
fn unknown_snapshot_and_path_exit_14() {
    let (fixture, source) = backed_up_fixture();
    expect_failure(&fixture, &["ls", "ffff"], 14, &["snapshot ffff not found"]);
    expect_failure(&fixture, &["ls", "latest:/no/such/folder"], 14, &["/no/such/folder"]);
    let target = fixture.path("t");
    expect_failure(&fixture, &["restore", "latest:/no/such", "--target", target.to_str().unwrap()], 14, &["/no/such"]);
    let missing = format!("{}/nothing", source.display());
    expect_failure(&fixture, &["dump", "latest", &missing], 14, &["nothing"]);
    expect_failure(&fixture, &["backup", "/no/such/dir"], 14, &["/no/such/dir"]);
    expect_failure(&fixture, &["ls", "xyz"], 2, &["not a snapshot id"]);
}

#[test]
fn unwritable_target_exits_15() {
    let (fixture, _) = backed_up_fixture();
    let blocker = fixture.path("file");
    std::fs::write(&blocker, b"").unwrap();
    let target = blocker.join("inside");
    expect_failure(
        &fixture,
        &["restore", "latest", "--target", target.to_str().unwrap()],
        15,
        &["cannot create restore target", "inside"],
    );
}

#[test]
fn damaged_pack_fails_restore_naming_pack_and_file() {
    let (fixture, source) = backed_up_fixture();
    let pack = first_data_pack(&fixture.repo());
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[30] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    let target = fixture.path("out");
    let pack_name = pack.file_name().unwrap().to_str().unwrap().to_string();
    let stderr =
        String::from_utf8_lossy(&fixture.run(&["restore", "latest", "--target", target.to_str().unwrap()]).stderr)
            .into_owned();
    assert!(stderr.contains(&pack_name) && stderr.contains("chart.txt"), "{stderr}");
    let output = fixture.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(13));
    assert!(
        !target.join(source.strip_prefix("/").unwrap()).join("chart.txt").exists(),
        "a damaged file was put in place"
    );
    let dump_path = format!("{}/chart.txt", source.display());
    expect_failure(&fixture, &["dump", "latest", &dump_path], 13, &[&pack_name, "chart.txt"]);
}

#[test]
fn truncated_pack_fails_restore() {
    let (fixture, _) = backed_up_fixture();
    let pack = first_data_pack(&fixture.repo());
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &bytes[..bytes.len() / 2]).unwrap();
    let target = fixture.path("out");
    let output = fixture.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(13), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains(pack.file_name().unwrap().to_str().unwrap()));
}

fn first_data_pack(repo: &Path) -> std::path::PathBuf {
    // The data pack is the one holding the chart; metadata packs hold the manifest.
    let mut packs: Vec<_> = walkdir::WalkDir::new(repo.join("data"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    packs.into_iter().next().unwrap()
}

#[test]
fn damaged_config_index_and_snapshot_are_named() {
    let (fixture, _) = backed_up_fixture();
    let index = first_object(&fixture.repo(), "index");
    let original = std::fs::read(&index).unwrap();
    std::fs::write(&index, &original[..original.len() - 5]).unwrap();
    expect_failure(&fixture, &["snapshots", "--no-cache"], 13, &["index/", "damaged"]);
    std::fs::write(&index, &original).unwrap();
    let snapshot = first_object(&fixture.repo(), "snapshots");
    let original = std::fs::read(&snapshot).unwrap();
    let mut damaged = original.clone();
    damaged[40] ^= 4;
    std::fs::write(&snapshot, &damaged).unwrap();
    let output = fixture.run(&["snapshots"]);
    assert_eq!(output.status.code(), Some(13));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("snapshots/") && stderr.contains("damaged"), "{stderr}");
    std::fs::write(&snapshot, &original).unwrap();
    let config = fixture.repo().join("config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("\"version\": 1", "\"version\": 7", 1)).unwrap();
    expect_failure(&fixture, &["snapshots"], 16, &["version 7"]);
    std::fs::write(&config, "garbage").unwrap();
    expect_failure(&fixture, &["snapshots"], 13, &["config"]);
}

#[test]
fn a_damaged_key_file_does_not_lock_out_the_others() {
    let (fixture, _) = backed_up_fixture();
    let garbage = fixture.repo().join("keys").join("ab".repeat(32));
    std::fs::write(&garbage, b"{ not json").unwrap();
    fixture.ok(&["snapshots"]);
    let output = fixture.command(&["snapshots"]).env("COFFER_PASSWORD", "wrong").output().unwrap();
    assert_eq!(output.status.code(), Some(13), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn init_completes_after_a_crash_that_left_only_a_key() {
    let fixture = Fixture::empty();
    std::fs::create_dir_all(fixture.repo().join("keys")).unwrap();
    std::fs::write(fixture.repo().join("keys").join("cd".repeat(32)), b"{}").unwrap();
    fixture.ok(&["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
    fixture.ok(&["snapshots"]);
}

/// Runs coffer on a pseudo-terminal (util-linux `script`), typing `typed` at its prompts.
fn on_a_terminal(fixture: &Fixture, args: &str, typed: &str) -> std::process::Output {
    use std::io::Write;
    let command = format!("{} --repo {} {args}", env!("CARGO_BIN_EXE_coffer"), fixture.repo().display());
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("COFFER_CACHE_DIR", fixture.path("cache"))
        .env("COFFER_TESTONLY_WEAK_KDF", "1")
        .env_remove("COFFER_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(typed.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_password_is_asked_for_on_a_terminal() {
    let fixture = Fixture::empty();
    let init = on_a_terminal(&fixture, "init --kdf-memory-kib 64", "typed secret\ntyped secret\n");
    let shown = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(init.status.success(), "{shown}");
    assert!(shown.contains("repeat the password"), "{shown}");
    let mismatch = on_a_terminal(&Fixture::empty(), "init --kdf-memory-kib 64", "one\ntwo\n");
    assert_eq!(mismatch.status.code(), Some(2));
    let listed = on_a_terminal(&fixture, "snapshots", "typed secret\n");
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stdout));
    let wrong = on_a_terminal(&fixture, "snapshots", "not it\n");
    assert_eq!(wrong.status.code(), Some(12));
}
