//! Standard input and `--stdin-from-command` (issue 11, finding 10): an empty or failed
//! input never passes for a good backup.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::Fixture;

/// Runs `coffer --json backup ...` feeding `input` on standard input.
fn backup_feeding(fixture: &Fixture, args: &[&str], input: &[u8]) -> Output {
    let mut all = vec!["--json", "backup", "--no-progress"];
    all.extend_from_slice(args);
    let mut child =
        fixture.command(&all).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn snapshot_count(fixture: &Fixture) -> usize {
    fixture.snapshots().as_array().unwrap().len()
}

#[test]
fn empty_standard_input_warns_and_exits_3_with_an_incomplete_snapshot() {
    let fixture = Fixture::new();
    let output = backup_feeding(&fixture, &["--stdin", "--stdin-name", "db/app.dump"], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("warning: standard input was empty: /db/app.dump holds 0 bytes"), "{stderr}");
    let summary = common::last_json(&output.stdout);
    assert_eq!(summary["complete"], false, "{summary}");
    let listed = fixture.snapshots();
    assert_eq!(listed[0]["complete"], false);
    let full = backup_feeding(&fixture, &["--stdin", "--stdin-name", "db/app.dump"], b"PGDMP");
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    assert_eq!(snapshot_count(&fixture), 2);
}

#[test]
fn a_command_s_output_is_stored_and_it_inherits_no_coffer_secret() {
    let fixture = Fixture::new();
    let environment = fixture.path("command.env");
    let content = common::random_bytes(300_000, 5);
    std::fs::write(fixture.path("dump.bin"), &content).unwrap();
    let command = format!("cat '{}'; env -0 > '{}'", fixture.path("dump.bin").display(), environment.display());
    let summary =
        fixture.json(&["backup", "--no-progress", "--stdin-from-command", &command, "--stdin-name", "db/app.dump"]);
    assert_eq!(summary["complete"], true, "{summary}");
    let dumped = fixture.run(&["dump", "latest", "/db/app.dump"]);
    assert!(dumped.status.success() && dumped.stdout == content, "the stored output differs");
    let listed = fixture.snapshots();
    assert_eq!(listed[0]["sources"][0], serde_json::json!({"kind": "stdin", "name": "db/app.dump"}));
    assert!(!listed.to_string().contains("env -0"), "the command was stored: {listed}");
    let seen = String::from_utf8_lossy(&std::fs::read(&environment).unwrap()).into_owned();
    assert!(seen.contains("PATH=") && !seen.contains("COFFER_PASSWORD"), "{seen}");
}

#[test]
fn a_failing_command_fails_the_backup_naming_its_status_and_last_lines() {
    let fixture = Fixture::new();
    let command = "printf 'PGDMP partial'; echo 'pg_dump: error: connection to server failed' >&2; \
                   echo 'DETAIL: no route to host' >&2; exit 2 # token-s3cr3t";
    let output = fixture.run(&["backup", "--stdin-from-command", command, "--stdin-name", "db/app.dump"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(21), "{stderr}");
    for words in [
        "input command exited with status 2",
        "connection to server failed",
        "no route to host",
        "no snapshot was saved",
    ] {
        assert!(stderr.contains(words), "{stderr:?} lacks {words:?}");
    }
    assert!(!stderr.contains("s3cr3t"), "the command's text was shown: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(snapshot_count(&fixture), 0, "a failed command committed a snapshot");

    let killed = fixture.run(&["backup", "--stdin-from-command", "printf x; kill -9 $$"]);
    let stderr = String::from_utf8_lossy(&killed.stderr);
    assert_eq!(killed.status.code(), Some(21), "{stderr}");
    assert!(stderr.contains("killed by signal 9"), "{stderr}");
    assert_eq!(snapshot_count(&fixture), 0);
}

#[test]
fn a_command_that_prints_nothing_is_an_incomplete_snapshot() {
    let fixture = Fixture::new();
    let output = fixture.run(&["backup", "--stdin-from-command", "true", "--stdin-name", "db/app.dump"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("output was empty: /db/app.dump holds 0 bytes"), "{stderr}");
}

#[test]
fn stdin_options_are_checked() {
    let fixture = Fixture::new();
    let both = fixture.run(&["backup", "--stdin", "--stdin-from-command", "true"]);
    assert_eq!(both.status.code(), Some(2), "{}", String::from_utf8_lossy(&both.stderr));
    let name_alone = fixture.run(&["backup", "--stdin-name", "x", "/tmp"]);
    assert_eq!(name_alone.status.code(), Some(2), "{}", String::from_utf8_lossy(&name_alone.stderr));
    let dry = fixture.run(&["backup", "--dry-run", "--stdin-from-command", "true"]);
    assert_eq!(dry.status.code(), Some(2), "{}", String::from_utf8_lossy(&dry.stderr));
}
