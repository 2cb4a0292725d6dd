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
    fixture.json(&["snapshots"]).as_array().unwrap().len()
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
    let listed = fixture.json(&["snapshots"]);
    assert_eq!(listed[0]["complete"], false);
    let full = backup_feeding(&fixture, &["--stdin", "--stdin-name", "db/app.dump"], b"PGDMP");
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    assert_eq!(snapshot_count(&fixture), 2);
}
