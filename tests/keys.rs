//! Key management through the real binary: add a key, change a password, open with
//! each, remove one; the last key and the key in use are protected; new keys have a
//! cost floor; every change is an audit record naming the key.

mod common;

use common::Fixture;

fn write_password(fixture: &Fixture, name: &str, password: &str) -> String {
    let path = fixture.path(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs coffer with the password in `file` instead of the fixture's own.
fn with_password(fixture: &Fixture, file: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--password-file", file];
    all.extend_from_slice(args);
    fixture.command(&all).env_remove("COFFER_PASSWORD").output().unwrap()
}

fn key_ids(fixture: &Fixture, file: &str) -> (Vec<String>, String) {
    let output = with_password(fixture, file, &["--json", "key", "list"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let list = common::last_json(&output.stdout);
    let keys = list["keys"].as_array().unwrap();
    let in_use = keys.iter().find(|key| key["in_use"] == true).unwrap()["key_id"].as_str().unwrap().to_string();
    (keys.iter().map(|key| key["key_id"].as_str().unwrap().to_string()).collect(), in_use)
}

#[test]
fn add_change_remove_and_refuse_the_last_key() {
    let fixture = Fixture::new();
    let first = write_password(&fixture, "first", "correct horse");
    let second = write_password(&fixture, "second", "battery staple");
    let third = write_password(&fixture, "third", "tr0ub4dor");
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("record.txt"), b"allergy: penicillin").unwrap();
    fixture.backup(&data);

    let (_, original) = key_ids(&fixture, &first);
    let added = fixture.json(&["key", "add", "--new-password-file", &second, "--kdf-memory-kib", "64"]);
    let added = added["added"].as_str().unwrap().to_string();
    let (ids, in_use) = key_ids(&fixture, &second);
    assert_eq!(ids.len(), 2);
    assert_eq!(in_use, added, "the second password opens the added key");

    // Change the first key's password: the old password stops working, the new one opens.
    let changed = with_password(&fixture, &first, &["--json", "key", "passwd", "--new-password-file", &third]);
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    let changed = common::last_json(&changed.stdout);
    assert_eq!(changed["removed"], original);
    let replacement = changed["added"].as_str().unwrap().to_string();
    assert_eq!(with_password(&fixture, &first, &["snapshots"]).status.code(), Some(12));
    for password in [&second, &third] {
        let output = with_password(&fixture, password, &["dump", "latest", &format!("{}/record.txt", data.display())]);
        assert_eq!(output.stdout, b"allergy: penicillin", "{}", String::from_utf8_lossy(&output.stderr));
    }

    // The key in use is removed only with --force; a unique prefix names a key.
    let refused = with_password(&fixture, &third, &["key", "remove", &replacement[..10]]);
    assert_eq!(refused.status.code(), Some(20));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    let removed = with_password(&fixture, &third, &["key", "remove", &added[..10]]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert_eq!(with_password(&fixture, &second, &["snapshots"]).status.code(), Some(12));

    // The last key stays, even with --force: removing the key in use needs the password
    // of another key that opens.
    let last = with_password(&fixture, &third, &["key", "remove", "--force", &replacement]);
    assert_eq!(last.status.code(), Some(20));
    assert!(String::from_utf8_lossy(&last.stderr).contains("--other-password-file"));
    let same =
        with_password(&fixture, &third, &["key", "remove", "--force", &replacement, "--other-password-file", &third]);
    assert_eq!(same.status.code(), Some(20), "{}", String::from_utf8_lossy(&same.stderr));
    let (ids, _) = key_ids(&fixture, &third);
    assert_eq!(ids, std::slice::from_ref(&replacement));

    // A key id that does not exist is one sentence and exit 14.
    let unknown = with_password(&fixture, &third, &["key", "remove", "ffffffffffff"]);
    assert_eq!(unknown.status.code(), Some(14));

    // Each change is audited, with the key ids it added or removed.
    let trail = with_password(&fixture, &third, &["--json", "audit"]);
    let trail = common::last_json(&trail.stdout);
    let records: Vec<&serde_json::Value> = trail["records"].as_array().unwrap().iter().map(|r| &r["record"]).collect();
    let key_records: Vec<(&str, i64, Vec<&str>)> = records
        .iter()
        .filter(|r| r["command"].as_str().unwrap().starts_with("key"))
        .map(|r| {
            let keys =
                r["keys"].as_array().map(|k| k.iter().map(|k| k.as_str().unwrap()).collect()).unwrap_or_default();
            (r["command"].as_str().unwrap(), r["exit_code"].as_i64().unwrap(), keys)
        })
        .collect();
    assert_eq!(
        key_records,
        [
            ("key add", 0, vec![added.as_str()]),
            ("key passwd", 0, vec![replacement.as_str(), original.as_str()]),
            ("key remove", 20, vec![]),
            ("key remove", 0, vec![added.as_str()]),
            ("key remove", 20, vec![]),
            ("key remove", 20, vec![]),
            ("key remove", 14, vec![]),
        ]
    );
    let verify = with_password(&fixture, &third, &["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

#[test]
fn new_keys_below_the_cost_floor_are_refused() {
    let fixture = Fixture::empty();
    let weak = fixture
        .command(&["init", "--kdf-memory-kib", "8192", "--kdf-iterations", "6"])
        .env_remove("COFFER_TESTONLY_WEAK_KDF")
        .output()
        .unwrap();
    assert_eq!(weak.status.code(), Some(2));
    let message = String::from_utf8_lossy(&weak.stderr);
    assert!(message.contains("below the floor") && message.contains("19456 KiB"), "{message}");
    assert!(!fixture.repo().join("config").exists(), "nothing is written");

    let fixture = Fixture::new();
    let password = write_password(&fixture, "new", "a new one");
    let weak = fixture
        .command(&["key", "add", "--new-password-file", &password, "--kdf-iterations", "1"])
        .env_remove("COFFER_TESTONLY_WEAK_KDF")
        .output()
        .unwrap();
    assert_eq!(weak.status.code(), Some(2), "{}", String::from_utf8_lossy(&weak.stderr));
    // At the floor it is accepted, and the cost is shown.
    let floor = fixture
        .command(&[
            "key",
            "add",
            "--new-password-file",
            &password,
            "--kdf-memory-kib",
            "19456",
            "--kdf-iterations",
            "2",
        ])
        .env_remove("COFFER_TESTONLY_WEAK_KDF")
        .output()
        .unwrap();
    assert!(floor.status.success(), "{}", String::from_utf8_lossy(&floor.stderr));
    let list = fixture.ok(&["key", "list"]);
    assert!(list.contains("19 MiB, 2 passes"), "{list}");
    assert!(list.contains("64 KiB, 1 passes"), "{list}");
}

#[test]
fn a_key_that_only_parses_does_not_count_as_one_that_stays() {
    let fixture = Fixture::new();
    let first = write_password(&fixture, "first", "correct horse");
    let second = write_password(&fixture, "second", "battery staple");
    let (_, original) = key_ids(&fixture, &first);
    let added = fixture.json(&["key", "add", "--new-password-file", &second, "--kdf-memory-kib", "64"]);
    let added = added["added"].as_str().unwrap().to_string();
    // A changed digit in the second key's wrapped master key: it still parses.
    let path = fixture.repo().join("keys").join(&added);
    let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let wrapped = file["wrapped"].as_str().unwrap().to_string();
    let flipped = if wrapped.ends_with('0') { "1" } else { "0" };
    file["wrapped"] = format!("{}{flipped}", &wrapped[..wrapped.len() - 1]).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let refused =
        with_password(&fixture, &first, &["key", "remove", "--force", &original, "--other-password-file", &second]);
    assert_eq!(refused.status.code(), Some(20), "{}", String::from_utf8_lossy(&refused.stderr));
    assert_eq!(with_password(&fixture, &first, &["snapshots"]).status.code(), Some(0), "the first key still opens");
    // With the password of a key that really opens, the key in use may go.
    let third = write_password(&fixture, "third", "tr0ub4dor");
    let added = fixture.json(&["key", "add", "--new-password-file", &third, "--kdf-memory-kib", "64"]);
    assert!(added["added"].is_string());
    let removed =
        with_password(&fixture, &first, &["key", "remove", "--force", &original, "--other-password-file", &third]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert_eq!(with_password(&fixture, &third, &["snapshots"]).status.code(), Some(0));
}
