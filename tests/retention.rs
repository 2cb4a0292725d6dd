//! Retention must not drop the data that matters (issue 11, findings 8 and 10): groups
//! tell a database snapshot from a files-only one, and no policy empties a group
//! without being told to.

mod common;

use std::io::Write;

use common::Fixture;

/// Backs up `paths` plus `input` read from standard input as `/NAME`; returns the id.
fn backup_with_stdin(fixture: &Fixture, paths: &[&str], name: &str, input: &[u8]) -> String {
    let mut args = vec!["--json", "backup", "--no-progress", "--stdin", "--stdin-name", name];
    args.extend_from_slice(paths);
    let mut child = fixture
        .command(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    common::last_json(&output.stdout)["snapshot_id"].as_str().unwrap().to_string()
}

#[test]
fn a_database_snapshot_is_not_in_the_group_of_files_only_snapshots() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("consent.pdf"), b"%PDF").unwrap();
    let data = data.to_str().unwrap();
    let with_dump = backup_with_stdin(&fixture, &[data], "db/app.dump", b"PGDMP a dump");
    let files_only = fixture.backup(std::path::Path::new(data))["snapshot_id"].as_str().unwrap().to_string();
    // The README's nightly policy, on a day with both snapshots.
    let plan = fixture.json(&["forget", "--keep-daily", "7", "--dry-run"]);
    let decision =
        |id: &str| plan["snapshots"].as_array().unwrap().iter().find(|d| d["snapshot_id"] == id).unwrap().clone();
    assert_eq!(decision(&with_dump)["keep"], true, "{plan}");
    assert_eq!(decision(&files_only)["keep"], true, "{plan}");
    assert!(decision(&with_dump)["group"].as_str().unwrap().ends_with("sources stdin:db/app.dump"), "{plan}");
    assert!(decision(&files_only)["group"].as_str().unwrap().ends_with("sources (files only)"), "{plan}");
    let text = fixture.ok(&["forget", "--keep-daily", "7", "--dry-run"]);
    assert!(text.contains("sources stdin:db/app.dump"), "{text}");
    fixture.ok(&["forget", "--keep-daily", "7"]);
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 2);
    // Grouping by host and paths alone puts them together again.
    let merged = fixture.json(&["forget", "--keep-daily", "7", "--dry-run", "--group-by", "host,paths"]);
    let kept: Vec<_> = merged["snapshots"].as_array().unwrap().iter().filter(|d| d["keep"] == true).collect();
    assert_eq!(kept.len(), 1, "{merged}");
    assert_eq!(kept[0]["snapshot_id"], files_only.as_str());
}

#[test]
fn a_policy_that_keeps_nothing_of_a_group_is_refused_unless_allowed() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    for night in 0..3 {
        std::fs::write(data.join("chart.txt"), format!("night {night}")).unwrap();
        fixture.backup(&data);
    }
    for policy in [&["--keep-last", "0"][..], &["--keep-daily", "0"], &["--keep-tag", "audit"]] {
        for dry_run in [false, true] {
            let mut args = vec!["forget"];
            args.extend_from_slice(policy);
            if dry_run {
                args.push("--dry-run");
            }
            let output = fixture.run(&args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "coffer {args:?}: {stderr}");
            for words in ["refused: the policy keeps none of the 3 snapshot(s) of group", "--allow-empty-groups"] {
                assert!(stderr.contains(words), "coffer {args:?}: {stderr:?} lacks {words:?}");
            }
            if dry_run {
                assert!(String::from_utf8_lossy(&output.stdout).contains("remove"), "the dry run shows its plan");
            }
            assert_eq!(fixture.snapshots().as_array().unwrap().len(), 3, "coffer {args:?} removed snapshots");
        }
    }
    let removed = fixture.json(&["forget", "--keep-last", "0", "--allow-empty-groups"]);
    assert_eq!(removed["removed"], 3, "{removed}");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 0);
}
