//! The audit trail through the real binary: every command that changes the repository
//! or reads data out of it leaves one record; `audit verify` names the record where
//! the chain breaks after a record is removed, edited (re-encrypted with the right
//! key), swapped, or cut off the end; concurrent backups never fork the chain.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::Fixture;

fn records(fixture: &Fixture) -> Vec<serde_json::Value> {
    fixture.json(&["audit"])["records"].as_array().unwrap().iter().map(|r| r["record"].clone()).collect()
}

fn commands(fixture: &Fixture) -> Vec<String> {
    records(fixture).iter().map(|r| r["command"].as_str().unwrap().to_string()).collect()
}

fn audit_file(repo: &Path, seq: u64) -> std::path::PathBuf {
    repo.join("audit").join(format!("{seq:020}"))
}

#[test]
fn every_command_that_changes_or_reads_data_leaves_one_record() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("chart.txt"), b"blood pressure 120/80").unwrap();
    let first = fixture.backup(&data)["snapshot_id"].as_str().unwrap().to_string();
    std::fs::write(data.join("lab.txt"), b"potassium 4.1").unwrap();
    fixture.backup(&data);
    fixture.ok(&["restore", "latest", "--target", fixture.path("out").to_str().unwrap()]);
    let chart = format!("{}/chart.txt", data.display());
    fixture.ok(&["dump", "latest", &chart]);
    fixture.ok(&["check"]);
    fixture.ok(&["forget", &first]);
    fixture.ok(&["prune"]);
    // Looking does not count.
    fixture.ok(&["snapshots"]);
    fixture.ok(&["ls", "latest"]);
    fixture.ok(&["stats"]);
    // A failed command is recorded too, with its exit code and error.
    let failed = fixture.run(&["restore", "latest:/no/such/path", "--target", fixture.path("x").to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(14));
    assert_eq!(
        commands(&fixture),
        ["init", "backup", "backup", "restore", "dump", "check", "forget", "prune", "restore"]
    );
    let all = records(&fixture);
    assert_eq!(all[1]["snapshots"][0], first);
    assert_eq!(all[6]["snapshots"][0], first, "forget names what it removed");
    assert_eq!(all[8]["exit_code"], 14);
    assert!(all[8]["error"].as_str().unwrap().contains("not found"));
    for (n, record) in all.iter().enumerate() {
        assert_eq!(record["seq"], n as u64 + 1);
        assert!(!record["user"].as_str().unwrap().is_empty() && !record["host"].as_str().unwrap().is_empty());
    }
    let csv = fixture.ok(&["audit", "--csv"]);
    assert_eq!(csv.lines().count(), 10, "a header and nine records: {csv}");
    let verify = fixture.json(&["audit", "verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["records"], 9);
}

#[test]
fn secrets_in_arguments_are_redacted() {
    let fixture = Fixture::new();
    let output = fixture
        .command(&["backup", "--stdin-from-command", "echo secret-token-123", "--stdin-name", "x"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let failed = fixture.run(&["backup", "--pg", "host=127.0.0.1 port=1 dbname=x password=hunter2-secret"]);
    assert!(!failed.status.success());
    let text = fixture.ok(&["audit", "--csv"]);
    assert!(!text.contains("secret-token-123") && !text.contains("hunter2-secret"), "{text}");
    assert!(text.contains(r#"""--stdin-from-command"",""***"""#) && text.contains("password=***"), "{text}");
}

/// Opens the fixture's repository through the library, for editing records with the key.
fn open_repository(fixture: &Fixture) -> coffer::Repository {
    let backend = Arc::new(coffer::backend::LocalBackend::open(&fixture.repo(), false).unwrap());
    coffer::Repository::open(backend, b"correct horse", Some(&fixture.path("cache"))).unwrap()
}

fn three_backups() -> Fixture {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    for n in 0..3 {
        std::fs::write(data.join(format!("f{n}")), format!("{n}")).unwrap();
        fixture.backup(&data);
    }
    fixture
}

fn verify_fails(fixture: &Fixture, args: &[&str], words: &str) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let output = fixture.run(&all);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(13), "{stderr}");
    assert!(stderr.contains(words), "{stderr:?} does not say {words:?}");
}

#[test]
fn verify_names_a_removed_record() {
    let fixture = three_backups();
    std::fs::remove_file(audit_file(&fixture.repo(), 2)).unwrap();
    verify_fails(&fixture, &[], "audit record 2 is missing");
}

#[test]
fn verify_names_a_record_edited_and_reencrypted_with_the_right_key() {
    let fixture = three_backups();
    let repository = open_repository(&fixture);
    let path = audit_file(&fixture.repo(), 2);
    let sealed = std::fs::read(&path).unwrap();
    let mut record = coffer::audit::open(repository.master(), coffer::audit::Sequence(2), &sealed).unwrap();
    record.user = "someone-else".into();
    std::fs::write(&path, coffer::audit::seal(repository.master(), &record)).unwrap();
    // The edited record itself still opens and reads well: the next one exposes it.
    verify_fails(&fixture, &[], "audit record 3 does not follow record 2");
}

#[test]
fn verify_names_swapped_records() {
    let fixture = three_backups();
    let (two, three) = (audit_file(&fixture.repo(), 2), audit_file(&fixture.repo(), 3));
    let spare = fixture.path("spare");
    std::fs::rename(&two, &spare).unwrap();
    std::fs::rename(&three, &two).unwrap();
    std::fs::rename(&spare, &three).unwrap();
    verify_fails(&fixture, &[], "audit record 2 holds the record numbered 3");
}

#[test]
fn expect_head_catches_records_cut_off_the_end() {
    let fixture = three_backups();
    let head = fixture.json(&["audit", "verify"])["head"].as_str().unwrap().to_string();
    fixture.json(&["audit", "verify", "--expect-head", &head]);
    std::fs::remove_file(audit_file(&fixture.repo(), 4)).unwrap();
    // Without the head written down elsewhere, the shorter chain looks whole.
    fixture.json(&["audit", "verify"]);
    verify_fails(&fixture, &["--expect-head", &head], "were cut off its end");
}

#[test]
fn concurrent_backups_leave_one_unbroken_chain() {
    let fixture = Fixture::new();
    let mut children = Vec::new();
    for n in 0..8 {
        let data = fixture.path(&format!("data{n}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("f"), format!("host {n}")).unwrap();
        children.push(fixture.command(&["-q", "backup", data.to_str().unwrap()]).spawn().unwrap());
    }
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let verify = fixture.json(&["audit", "verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["records"], 9);
    assert_eq!(commands(&fixture).iter().filter(|c| *c == "backup").count(), 8);
}

#[test]
fn a_planted_last_number_stops_appending_with_a_sentence_and_listing_goes_on() {
    let fixture = three_backups();
    std::fs::write(audit_file(&fixture.repo(), u64::MAX), b"junk").unwrap();
    let data = fixture.path("more");
    std::fs::create_dir_all(&data).unwrap();
    let backup = fixture.run(&["backup", data.to_str().unwrap()]);
    // The snapshot is committed; the record cannot follow the largest number.
    assert_eq!(backup.status.code(), Some(1));
    let message = String::from_utf8_lossy(&backup.stderr);
    assert!(message.contains("largest possible"), "{message}");
    assert!(!audit_file(&fixture.repo(), 0).exists(), "no record 0 is written");
    // The readable records are still listed, and the unreadable one makes it exit 13.
    let listed = fixture.run(&["--json", "audit"]);
    assert_eq!(listed.status.code(), Some(13));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let document: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(document["records"].as_array().unwrap().len(), 4);
}
