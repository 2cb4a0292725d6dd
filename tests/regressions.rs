//! One test per fixed bug of the adversarial review (issue 11, finding 8), each through
//! the real binary.

mod common;

use common::Fixture;

#[test]
fn a_missing_or_unreadable_password_file_exits_12() {
    let fixture = Fixture::new();
    let missing = fixture.path("no-such-password-file");
    let output = fixture
        .command(&["snapshots", "--password-file", missing.to_str().unwrap()])
        .env_remove("COFFER_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(12), "{stderr}");
    assert!(stderr.contains("cannot read password file") && stderr.contains("no-such-password-file"), "{stderr}");
    let folder = fixture.path("a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let output = fixture.command(&["snapshots"]).env("COFFER_PASSWORD_FILE", &folder).output().unwrap();
    assert_eq!(output.status.code(), Some(12), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Runs coffer expecting `code`; returns stderr, which must be one line without a panic.
fn expect_code(fixture: &Fixture, args: &[&str], code: i32) -> String {
    let output = fixture.run(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "coffer {args:?}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "coffer {args:?}: more than one line: {stderr}");
    stderr
}

/// A fixture with a folder `data` holding `chart.txt`, backed up `count` times.
fn backed_up(count: usize) -> (Fixture, std::path::PathBuf, Vec<String>) {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut ids = Vec::new();
    for night in 0..count {
        std::fs::write(data.join("chart.txt"), format!("night {night}\n").repeat(1000)).unwrap();
        ids.push(fixture.backup(&data)["snapshot_id"].as_str().unwrap().to_string());
    }
    (fixture, data, ids)
}

#[test]
fn latest_is_not_an_older_snapshot_when_a_record_is_damaged() {
    let (fixture, data, ids) = backed_up(2);
    let record = fixture.repo().join("snapshots").join(&ids[1]);
    let mut bytes = std::fs::read(&record).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(&record, &bytes).unwrap();
    let target = fixture.path("restored");
    let file = format!("{}/chart.txt", data.display());
    for args in [
        vec!["restore", "latest", "--target", target.to_str().unwrap()],
        vec!["ls", "latest"],
        vec!["dump", "latest", file.as_str()],
        vec!["backup", "--parent", "latest", data.to_str().unwrap()],
    ] {
        let stderr = expect_code(&fixture, &args, 13);
        for words in [
            "cannot tell which snapshot is the latest",
            "1 snapshot record(s) are damaged",
            &format!("snapshots/{}", ids[1]),
            &format!("the newest readable snapshot is {}", &ids[0][..8]),
            "name it by its id",
        ] {
            assert!(stderr.contains(words), "coffer {args:?}: {stderr:?} lacks {words:?}");
        }
    }
    assert!(!target.exists(), "restore latest restored something");
    // Named by id, the readable snapshot restores; the damaged one reports its damage.
    fixture.ok(&["restore", &ids[0], "--target", target.to_str().unwrap()]);
    let restored = std::fs::read_to_string(target.join(data.strip_prefix("/").unwrap()).join("chart.txt")).unwrap();
    assert!(restored.starts_with("night 0"));
    let stderr = expect_code(&fixture, &["ls", &ids[1][..12]], 13);
    assert!(stderr.contains(&format!("snapshots/{}", ids[1])) && stderr.contains("damaged"), "{stderr}");
    // Backup's own choice of parent still uses the readable snapshots.
    fixture.backup(&data);
}

/// The data pack of a repository holding one backed-up file of several chunks.
fn data_pack(fixture: &Fixture) -> std::path::PathBuf {
    let mut packs: Vec<_> = walkdir::WalkDir::new(fixture.repo().join("data"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    packs.pop().unwrap()
}

#[test]
fn a_truncated_pack_is_damage_to_dump_and_repair_index_goes_on() {
    for length in [0, 1, 3, 600_000] {
        let fixture = Fixture::new();
        let data = fixture.path("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("scan.dcm"), common::random_bytes(3_000_000, 11)).unwrap();
        fixture.backup(&data);
        let pack = data_pack(&fixture);
        let name = pack.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(length).unwrap();
        let file = format!("{}/scan.dcm", data.display());
        let stderr = expect_code(&fixture, &["dump", "latest", &file], 13);
        assert!(stderr.contains(&name) && stderr.contains("scan.dcm"), "length {length}: {stderr}");
        let output = fixture.run(&["--json", "repair", "index"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "length {length}: {stderr}");
        assert!(stderr.contains(&format!("{name} is left out")), "length {length}: {stderr}");
        let report = common::last_json(&output.stdout);
        assert_eq!(report["pack_count"], 1, "the metadata pack is indexed: {report}");
        assert_eq!(report["unreadable"][0]["pack"], name.as_str(), "{report}");
    }
}

/// Opens the fixture's repository with the library, as any holder of the password can.
fn open_with_library(fixture: &Fixture) -> coffer::Repository {
    let backend = coffer::backend::LocalBackend::open(&fixture.repo(), false).unwrap();
    coffer::Repository::open(std::sync::Arc::new(backend), b"correct horse", None).unwrap()
}

#[test]
fn an_authenticated_record_with_a_multibyte_sha256_is_damage_not_a_panic() {
    let (fixture, _, ids) = backed_up(1);
    let repository = open_with_library(&fixture);
    let mut record = repository.load_snapshot(&ids[0].parse().unwrap()).unwrap();
    // 64 bytes, but byte 16 falls inside a two-byte character.
    let sha256 = format!("a{}b", "\u{e9}".repeat(31));
    assert_eq!(sha256.len(), 64);
    record.time = "2030-01-01T00:00:00Z".into();
    record.sources.push(coffer::Source::Postgres(coffer::PostgresSource {
        database: "clinic".into(),
        path: "/postgres/clinic.dump".into(),
        server_version: "16".into(),
        pg_dump_version: "16".into(),
        format: "custom".into(),
        size: 0,
        sha256,
        migrations: vec![],
        schema_query: None,
        globals_path: None,
        tables: None,
    }));
    let crafted = repository.save_snapshot(&record).unwrap();
    drop(repository);
    let output = fixture.run(&["snapshots"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(13), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(&format!("snapshots/{crafted} is damaged")) && stderr.contains("sha256"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(&ids[0][..8]), "the intact snapshot is still listed");
    let json = fixture.run(&["--json", "snapshots"]);
    assert_eq!(json.status.code(), Some(13));
    assert_eq!(common::last_json(&json.stdout)["snapshots"].as_array().unwrap().len(), 1);
}

/// The repository's one key file, parsed, and where it is.
fn key_file(fixture: &Fixture) -> (std::path::PathBuf, serde_json::Value) {
    let entry = std::fs::read_dir(fixture.repo().join("keys")).unwrap().next().unwrap().unwrap();
    let value = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
    (entry.path(), value)
}

#[test]
fn argon2_parameters_from_a_key_file_are_bounded_before_any_allocation() {
    let (fixture, _, _) = backed_up(1);
    let (path, original) = key_file(&fixture);
    let name = format!("keys/{}", path.file_name().unwrap().to_string_lossy());
    for (field, value, words) in [
        ("memory_kib", u32::MAX as u64, "Argon2id memory (KiB) 4294967295 is outside the bounds 8 to 1048576"),
        ("memory_kib", 2 * 1024 * 1024, "outside the bounds 8 to 1048576"),
        ("iterations", 1_000_000, "Argon2id pass count 1000000 is outside the bounds 1 to 64"),
        ("parallelism", 1 << 20, "Argon2id lane count 1048576 is outside the bounds 1 to 16"),
    ] {
        let mut tampered = original.clone();
        tampered["params"][field] = value.into();
        std::fs::write(&path, serde_json::to_vec_pretty(&tampered).unwrap()).unwrap();
        let started = std::time::Instant::now();
        let stderr = expect_code(&fixture, &["snapshots"], 13);
        assert!(stderr.contains(&format!("{name} is damaged")) && stderr.contains(words), "{field}: {stderr}");
        assert!(started.elapsed().as_secs() < 10, "{field}: the parameters were used");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&original).unwrap()).unwrap();
    fixture.ok(&["snapshots"]);
}

#[test]
fn a_corrupt_key_file_is_damage_and_a_changed_wrapped_key_is_named_as_a_possibility() {
    let (fixture, _, _) = backed_up(1);
    let (path, original) = key_file(&fixture);
    let name = format!("keys/{}", path.file_name().unwrap().to_string_lossy());
    let wrapped = original["wrapped"].as_str().unwrap().to_string();
    let salt = original["salt"].as_str().unwrap().to_string();
    for (field, value, words) in [
        ("wrapped", wrapped[..200].to_string(), "wrapped key is not 124 bytes"),
        ("wrapped", format!("{wrapped}00"), "wrapped key is not 124 bytes"),
        ("salt", salt[..16].to_string(), "salt is not 16 bytes"),
        ("kdf", "scrypt".to_string(), "key derivation \"scrypt\" is not argon2id"),
    ] {
        let mut tampered = original.clone();
        tampered[field] = value.into();
        std::fs::write(&path, serde_json::to_vec_pretty(&tampered).unwrap()).unwrap();
        let stderr = expect_code(&fixture, &["snapshots"], 13);
        assert!(stderr.contains(&format!("{name} is damaged")) && stderr.contains(words), "{field}: {stderr}");
        assert!(!stderr.contains("wrong password"), "{field}: {stderr}");
    }
    std::fs::write(&path, b"{ not json").unwrap();
    let stderr = expect_code(&fixture, &["snapshots"], 13);
    assert!(stderr.contains(&format!("{name} is damaged")) && stderr.contains("not a key file"), "{stderr}");
    // A changed byte inside the wrapped key looks exactly like a wrong password.
    let mut flipped = original.clone();
    let last = if wrapped.ends_with('0') { "1" } else { "0" };
    flipped["wrapped"] = format!("{}{last}", &wrapped[..wrapped.len() - 1]).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&flipped).unwrap()).unwrap();
    let stderr = expect_code(&fixture, &["snapshots"], 12);
    assert!(
        stderr.contains("wrong password") && stderr.contains(&format!("or its only key file, {name}, is damaged")),
        "{stderr}"
    );
}
