//! PostgreSQL snapshots against a real server (a private cluster started by
//! scripts/test.sh): round trips, one table, failures, migration safety, dedup.

mod common;

use std::process::Command;

use common::Fixture;

use common::{pg_server as server, psql};

fn create_database(name: &str) {
    psql("postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    psql("postgres", &format!("CREATE DATABASE {name}"));
}

/// A clinical-looking database with many types, indexes, a view, a sequence, a large
/// object and a Django migration table.
fn fill_clinic(name: &str) {
    create_database(name);
    psql(
        name,
        r#"
        CREATE TABLE patients (
            id serial PRIMARY KEY, name text NOT NULL, born date, weight numeric(6,2),
            notes text, photo bytea, tags text[], profile jsonb, admitted timestamptz, lab_values float8[]);
        CREATE INDEX patients_name ON patients (lower(name));
        CREATE TABLE visits (id bigserial PRIMARY KEY, patient int REFERENCES patients, at timestamptz, summary text);
        CREATE VIEW recent_visits AS SELECT p.name, v.at FROM visits v JOIN patients p ON p.id = v.patient WHERE v.at > '2020-01-01';
        CREATE SEQUENCE study_numbers START 1000;
        CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamptz);
        INSERT INTO django_migrations (app, name, applied) VALUES
            ('clinic', '0001_initial', '2024-01-01'), ('clinic', '0002_visits', '2024-06-01'), ('clinic', '0003_consent', '2025-01-01');
        INSERT INTO patients (name, born, weight, notes, photo, tags, profile, admitted, lab_values)
        SELECT 'Patient ' || g || E' Ünïcødé \t tab ''quote'' \\ back', date '1950-01-01' + g, g * 1.25,
               repeat('note ', g % 50) || E'\nline two', decode(md5(g::text), 'hex'), ARRAY['a' || g, 'b'],
               jsonb_build_object('allergies', ARRAY['penicillin'], 'n', g), timestamptz '2024-03-01 12:00:00+02' + g * interval '1 hour',
               ARRAY[g * 0.5, 'NaN'::float8]
        FROM generate_series(1, 3000) g;
        INSERT INTO visits (patient, at, summary) SELECT 1 + g % 3000, now() - g * interval '1 day', 'visit ' || g FROM generate_series(1, 5000) g;
        SELECT nextval('study_numbers') FROM generate_series(1, 5);
        SELECT lo_from_bytea(0, decode(repeat('deadbeef', 1000), 'hex'));
        "#,
    );
}

/// An ordered checksum of every table, the large objects and the sequence.
fn fingerprint(database: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for table in ["patients", "visits", "django_migrations"] {
        found.push((
            table.to_string(),
            psql(database, &format!("SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {table} t")),
        ));
    }
    found.push((
        "large objects".into(),
        psql(database, "SELECT md5(string_agg(md5(lo_get(oid)), ',' ORDER BY oid)) FROM pg_largeobject_metadata"),
    ));
    found.push(("sequence".into(), psql(database, "SELECT last_value FROM study_numbers")));
    found
}

fn schema(database: &str) -> String {
    let output = Command::new("pg_dump").args(["--schema-only", "-d", database]).output().unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with("--") && !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn conninfo(database: &str) -> String {
    format!("dbname={database}")
}

#[test]
fn a_database_and_a_folder_restore_together() {
    if !server() {
        return;
    }
    let fixture = Fixture::new();
    fill_clinic("pg_round_trip");
    let (before, schema_before) = (fingerprint("pg_round_trip"), schema("pg_round_trip"));
    let uploads = fixture.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(uploads.join("consent.pdf"), b"%PDF consent").unwrap();
    let report = fixture.json(&["backup", uploads.to_str().unwrap(), "--pg", &conninfo("pg_round_trip")]);
    assert_eq!(report["complete"], true);
    let snapshots = fixture.snapshots();
    let source = snapshots[0]["sources"].as_array().unwrap().iter().find(|s| s["kind"] == "postgres").unwrap().clone();
    assert_eq!(source["database"], "pg_round_trip");
    assert_eq!(source["migrations"][0]["source"], "django_migrations");
    assert_eq!(source["migrations"][0]["latest"][0], "clinic.0003_consent");
    assert!(source["server_version"].as_str().unwrap().starts_with(char::is_numeric));
    psql("postgres", "DROP DATABASE pg_round_trip WITH (FORCE)");
    fixture.ok(&["restore", "latest", "--pg-target", &conninfo("postgres"), "--pg-create"]);
    assert_eq!(fingerprint("pg_round_trip"), before);
    assert_eq!(schema("pg_round_trip"), schema_before);
    let target = fixture.path("files");
    fixture.ok(&["restore", &format!("latest:{}", uploads.display()), "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(target.join("consent.pdf")).unwrap(), b"%PDF consent");
    let checked = fixture.json(&["check", "--pg"]);
    assert_eq!(checked["pg_dumps"][0]["ok"], true, "{checked}");
    assert!(checked["pg_dumps"][0]["toc_entries"].as_u64().unwrap() > 10, "{checked}");
    let dumped = fixture.run(&["dump", "latest", "--pg", "pg_round_trip"]);
    assert!(dumped.status.success());
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&dumped.stdout));
    assert_eq!(
        hex::encode(digest),
        source["sha256"].as_str().unwrap(),
        "dump --pg does not give back the recorded stream"
    );
}

#[test]
fn one_table_restores_into_a_fresh_database() {
    if !server() {
        return;
    }
    let fixture = Fixture::new();
    fill_clinic("pg_one_table");
    fixture.json(&["backup", "--pg", &conninfo("pg_one_table")]);
    create_database("pg_one_table_fresh");
    let listing = fixture.ok(&["restore", "latest", "--pg-target", &conninfo("pg_one_table_fresh"), "--dry-run"]);
    assert!(listing.contains("TABLE DATA public patients"), "{listing}");
    fixture.ok(&["restore", "latest", "--pg-target", &conninfo("pg_one_table_fresh"), "--pg-table", "patients"]);
    let table = |db: &str| psql(db, "SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM patients t");
    assert_eq!(table("pg_one_table_fresh"), table("pg_one_table"));
    assert_eq!(psql("pg_one_table_fresh", "SELECT count(*) FROM pg_tables WHERE tablename = 'visits'"), "0");
}

fn expect_failure(fixture: &Fixture, args: &[&str], code: i32, words: &[&str]) {
    let output = fixture.run(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "coffer {args:?}: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "coffer {args:?}: {stderr:?} lacks {word:?}");
    }
}

#[test]
fn failed_dumps_commit_nothing_and_say_why() {
    if !server() {
        return;
    }
    let fixture = Fixture::new();
    fill_clinic("pg_failures");
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let bad_port = "host=127.0.0.1 port=1 dbname=pg_failures connect_timeout=3";
    expect_failure(&fixture, &["backup", data.to_str().unwrap(), "--pg", bad_port], 19, &["psql failed", "127.0.0.1"]);
    expect_failure(
        &fixture,
        &["backup", "--pg", &conninfo("no_such_database")],
        19,
        &["no_such_database", "does not exist"],
    );
    let wrapper = fixture.path("pg_dump_killed");
    std::fs::write(&wrapper, "#!/bin/sh\npg_dump \"$@\" | head -c 100000\nkill -9 $$\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&wrapper).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = fixture
        .command(&["backup", "--pg", &conninfo("pg_failures")])
        .env("COFFER_PG_DUMP", &wrapper)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(19), "{stderr}");
    assert!(stderr.contains("pg_dump") && stderr.contains("killed by a signal"), "{stderr}");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 0, "a failed dump committed a snapshot");
    // A dump whose bytes were stored intact but that is not a valid archive fails check --pg.
    let not_a_dump = fixture.path("not_a_dump");
    std::fs::write(&not_a_dump, "#!/bin/sh\nhead -c 5000 /dev/urandom\n").unwrap();
    std::fs::set_permissions(&not_a_dump, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let stored = fixture
        .command(&["backup", "--pg", &conninfo("pg_failures")])
        .env("COFFER_PG_DUMP", &not_a_dump)
        .output()
        .unwrap();
    assert!(stored.status.success(), "{}", String::from_utf8_lossy(&stored.stderr));
    let checked = fixture.run(&["--json", "check", "--pg"]);
    assert_eq!(checked.status.code(), Some(13), "{}", String::from_utf8_lossy(&checked.stderr));
    let report: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(report["pg_dumps"][0]["ok"], false, "{report}");
}

#[test]
fn restoring_over_existing_tables_fails_whole_and_migrations_are_guarded() {
    if !server() {
        return;
    }
    let fixture = Fixture::new();
    fill_clinic("pg_guarded");
    fixture.json(&["backup", "--pg", &conninfo("pg_guarded")]);
    let before = fingerprint("pg_guarded");
    psql("pg_guarded", "INSERT INTO visits (patient, at, summary) VALUES (1, now(), 'after the backup')");
    let changed = fingerprint("pg_guarded");
    expect_failure(
        &fixture,
        &["restore", "latest", "--pg-target", &conninfo("pg_guarded")],
        19,
        &["already exists", "nothing was restored"],
    );
    assert_eq!(fingerprint("pg_guarded"), changed, "a failed restore changed the database");
    psql("pg_guarded", "DELETE FROM django_migrations WHERE name = '0003_consent'");
    expect_failure(
        &fixture,
        &["restore", "latest", "--pg-target", &conninfo("pg_guarded"), "--pg-clean"],
        20,
        &["clinic.0003_consent", "--force"],
    );
    fixture.ok(&["restore", "latest", "--pg-target", &conninfo("pg_guarded"), "--pg-clean", "--force"]);
    assert_eq!(fingerprint("pg_guarded"), before);
}

#[test]
fn globals_and_a_custom_schema_query_are_recorded() {
    if !server() {
        return;
    }
    let fixture = Fixture::new();
    fill_clinic("pg_globals");
    psql("postgres", "DO $$ BEGIN CREATE ROLE clinic_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
    let query = "SELECT max(id)::text, 'schema v7' FROM patients";
    fixture.json(&["backup", "--pg", &conninfo("pg_globals"), "--pg-globals", "--pg-schema-query", query]);
    let source = fixture.snapshots()[0]["sources"][0].clone();
    assert_eq!(source["migrations"][0]["source"], "query");
    assert_eq!(source["migrations"][0]["latest"][0], "3000 | schema v7");
    let globals = fixture.ok(&["dump", "latest", source["globals_path"].as_str().unwrap()]);
    assert!(globals.contains("CREATE ROLE clinic_reader"), "{globals}");
}

#[test]
fn a_night_of_sparse_changes_adds_a_small_fraction_of_the_dump() {
    if !server() {
        return;
    }
    let fixture = Fixture::new();
    create_database("pg_nightly");
    let run = |args: &[&str]| {
        assert!(Command::new("pgbench").args(args).output().unwrap().status.success(), "pgbench {args:?}")
    };
    run(&["-q", "-i", "-s", "2", "pg_nightly"]);
    let first = fixture.json(&["backup", "--pg", &conninfo("pg_nightly")]);
    run(&["-c", "1", "-t", "40", "pg_nightly"]);
    let second = fixture.json(&["backup", "--pg", &conninfo("pg_nightly")]);
    let dump_size = first["summary"]["bytes_read"].as_u64().unwrap();
    let new_bytes = second["summary"]["bytes_new"].as_u64().unwrap();
    let stored = second["summary"]["bytes_added"].as_u64().unwrap();
    eprintln!(
        "night-to-night: dump {dump_size} bytes; after 40 pgbench transactions the second snapshot added {new_bytes} new bytes ({:.1}% of the dump), {stored} bytes stored",
        100.0 * new_bytes as f64 / dump_size as f64
    );
    assert!(new_bytes * 5 < dump_size, "the second night added {new_bytes} of {dump_size} bytes");
}

/// A wrapper that records its command line (as `ps` shows it) and runs the real program.
fn recording_wrapper(fixture: &Fixture, program: &str) -> std::path::PathBuf {
    let wrapper = fixture.path(&format!("{program}_recorded"));
    let log = fixture.path(&format!("{program}.cmdlines"));
    let script = format!(
        "#!/bin/sh\ncat /proc/$$/cmdline >> '{}'\necho >> '{}'\nexec {program} \"$@\"\n",
        log.display(),
        log.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    wrapper
}

#[test]
fn a_password_in_the_connection_string_never_reaches_a_command_line() {
    if !server() {
        return;
    }
    let fixture = Fixture::new();
    fill_clinic("pg_secret");
    let password = std::env::var("PGPASSWORD").expect("scripts/pg_server.sh sets PGPASSWORD");
    let (host, port) = (std::env::var("PGHOST").unwrap(), std::env::var("PGPORT").unwrap());
    let uri = format!("postgresql://postgres:{password}@{host}:{port}/pg_secret");
    let (pg_dump, pg_restore, psql) = (
        recording_wrapper(&fixture, "pg_dump"),
        recording_wrapper(&fixture, "pg_restore"),
        recording_wrapper(&fixture, "psql"),
    );
    let run = |args: &[&str]| {
        let output = fixture
            .command(args)
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent")
            .env("COFFER_PG_DUMP", &pg_dump)
            .env("COFFER_PG_RESTORE", &pg_restore)
            .env("COFFER_PSQL", &psql)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "coffer {args:?}: {text}");
        assert!(!text.contains(&password), "coffer {args:?} showed the password: {text}");
        text
    };
    run(&["backup", "--pg", &uri]);
    create_database("pg_secret_restored");
    let target = format!("host={host} port={port} user=postgres dbname=pg_secret_restored password='{password}'");
    let text = run(&["restore", "latest", "--pg-target", &target]);
    assert!(text.contains("password=***"), "{text}");
    assert_eq!(fingerprint("pg_secret_restored"), fingerprint("pg_secret"));
    for program in ["pg_dump", "pg_restore", "psql"] {
        let cmdlines = std::fs::read_to_string(fixture.path(&format!("{program}.cmdlines"))).unwrap();
        assert!(cmdlines.contains("--dbname"), "{program} did not run: {cmdlines}");
        assert!(!cmdlines.contains(&password), "{program} got the password on its command line: {cmdlines:?}");
    }
}

#[test]
fn check_pg_without_a_dump_says_so_and_fails() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("consent.pdf"), b"%PDF").unwrap();
    expect_failure(&fixture, &["check", "--pg"], 14, &["no PostgreSQL dump to test"]);
    fixture.backup(&data);
    let output = fixture.run(&["--json", "check", "--pg"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(14), "{stderr}");
    assert!(stderr.contains("no PostgreSQL dump to test") && !stderr.contains("no damage found"), "{stderr}");
    assert_eq!(common::last_json(&output.stdout)["pg_dumps"], serde_json::json!([]));
    if !server() {
        return;
    }
    // A files-only snapshot newer than the database's: the database's dump is tested.
    fill_clinic("pg_checked");
    fixture.json(&["backup", data.to_str().unwrap(), "--pg", &conninfo("pg_checked")]);
    fixture.backup(&data);
    let checked = fixture.json(&["check", "--pg"]);
    assert_eq!(checked["pg_dumps"].as_array().unwrap().len(), 1, "{checked}");
    assert_eq!(checked["pg_dumps"][0]["database"], "pg_checked");
    assert_eq!(checked["pg_dumps"][0]["ok"], true, "{checked}");
}

/// Every table of the public schema with an ordered checksum of its rows, and the schema.
fn table_sums(database: &str) -> (Vec<(String, String)>, String) {
    let tables = psql(
        database,
        "SELECT string_agg(relname, ' ' ORDER BY relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r'",
    );
    let sums = tables
        .split_whitespace()
        .map(|table| {
            let sum =
                psql(database, &format!("SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {table} t"));
            (table.to_string(), sum)
        })
        .collect();
    (sums, schema(database))
}

#[test]
fn a_parallel_restore_that_fails_half_way_is_rolled_back_from_the_safety_dump() {
    if !server() {
        return;
    }
    let fixture = Fixture::new();
    fill_clinic("pg_safety");
    fixture.json(&["backup", "--pg", &conninfo("pg_safety")]);
    // The live database has moved on: two tables are gone, one has another definition
    // (pg_restore fails on it after creating the others), one is new.
    psql(
        "pg_safety",
        "DROP VIEW recent_visits; DROP TABLE visits; DROP TABLE django_migrations;
         CREATE TABLE visits (id int, incompatible text); INSERT INTO visits VALUES (1, 'kept');
         CREATE TABLE local_only (x int); INSERT INTO local_only VALUES (42);
         UPDATE patients SET notes = 'edited since' WHERE id < 100;",
    );
    psql("pg_safety", "ALTER TABLE patients RENAME TO patients_renamed");
    let before = table_sums("pg_safety");
    let output = fixture.run(&["restore", "latest", "--pg-target", &conninfo("pg_safety"), "--jobs", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(19), "{stderr}");
    assert!(stderr.contains("put back as it was from the safety dump"), "{stderr}");
    assert_eq!(table_sums("pg_safety"), before, "the database is as it was before the restore");
    let restores = fixture.json(&["restores"]);
    assert_eq!(restores["restores"][0]["outcome"], "rolled-back", "{restores}");

    // A restore that completes can be undone too.
    psql("pg_safety", "DROP TABLE patients_renamed CASCADE; DROP TABLE visits; UPDATE local_only SET x = 43");
    let before = table_sums("pg_safety");
    fixture.ok(&["restore", "latest", "--pg-target", &conninfo("pg_safety"), "--pg-clean", "--force"]);
    assert_ne!(table_sums("pg_safety"), before);
    let restores = fixture.json(&["restores"]);
    let id = restores["restores"].as_array().unwrap().last().unwrap()["restore_id"].as_str().unwrap().to_string();
    let without_target = fixture.run(&["restore", "--rollback", &id, "--force"]);
    assert_eq!(without_target.status.code(), Some(2), "{}", String::from_utf8_lossy(&without_target.stderr));
    let wrong = fixture.run(&["restore", "--rollback", &id, "--force", "--pg-target", &conninfo("postgres")]);
    assert_eq!(wrong.status.code(), Some(20), "{}", String::from_utf8_lossy(&wrong.stderr));
    fixture.ok(&["restore", "--rollback", &id, "--force", "--pg-target", &conninfo("pg_safety")]);
    assert_eq!(table_sums("pg_safety"), before, "rolled back after it completed");
    psql("postgres", "DROP DATABASE pg_safety WITH (FORCE)");
}
