//! The command line's own surface: `--help` of every command against a stored copy
//! (tests/help/, regenerated with COFFER_UPDATE_HELP=1 after a deliberate change),
//! completions that bash loads, manual pages that `man` renders without a warning,
//! `version`, and errors as one JSON document on stdout with `--json`.

mod common;

use std::process::Command;

use common::Fixture;

fn coffer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .env_remove("COFFER_REPOSITORY")
        .env_remove("COFFER_CACHE_DIR")
        .output()
        .unwrap()
}

/// Every command and subcommand path, as `coffer help` lists them.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["init"],
    &["backup"],
    &["snapshots"],
    &["restores"],
    &["diff"],
    &["find"],
    &["stats"],
    &["audit"],
    &["audit", "verify"],
    &["ls"],
    &["restore"],
    &["dump"],
    &["unlock"],
    &["check"],
    &["forget"],
    &["prune"],
    &["repair", "index"],
    &["repair", "snapshots"],
    &["key", "list"],
    &["key", "add"],
    &["key", "remove"],
    &["key", "passwd"],
    &["cat"],
    &["version"],
    &["completions"],
    &["man"],
    &["run"],
    &["drill"],
    &["config", "check"],
    &["schedule", "install"],
    &["schedule", "list"],
    &["schedule", "remove"],
];

#[test]
fn every_help_text_matches_its_stored_copy() {
    let update = std::env::var_os("COFFER_UPDATE_HELP").is_some();
    let mut differing = Vec::new();
    for path in COMMANDS {
        let mut args = path.to_vec();
        args.push("--help");
        let output = coffer(&args);
        assert!(output.status.success(), "{args:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        let name = if path.is_empty() { "coffer".to_string() } else { path.join("-") };
        let stored = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/help/{name}.txt"));
        if update {
            std::fs::write(&stored, &text).unwrap();
        } else if std::fs::read_to_string(&stored).ok().as_deref() != Some(text.as_str()) {
            differing.push(name.clone());
        }
        // The command's own options come first; the global ones under their heading.
        if !path.is_empty() && path != &["completions"] {
            let global = text.find("Global options:").expect("a Global options section");
            assert!(text[global..].contains("--repo"), "{name}");
            assert!(!text[..global].contains("--repo <REPO>"), "{name}: --repo among the command's own options");
        }
    }
    assert!(differing.is_empty(), "help changed for {differing:?}; rerun with COFFER_UPDATE_HELP=1 if intended");
    let top = String::from_utf8(coffer(&["--help"]).stdout).unwrap();
    for variable in ["COFFER_PASSWORD ", "COFFER_PASSWORD_FILE", "COFFER_PASSWORD_COMMAND", "COFFER_REPOSITORY"] {
        assert!(top.contains(variable), "{variable} is not listed");
    }
    for command in ["backup", "restore", "forget", "check"] {
        let text = String::from_utf8(coffer(&[command, "--help"]).stdout).unwrap();
        assert!(text.contains("Examples:\n  coffer "), "{command} has no examples");
    }
}

#[test]
fn bash_loads_the_completions() {
    let script = coffer(&["completions", "bash"]);
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coffer.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    // Loaded, registered for `coffer`, and completing a subcommand and an option.
    let probe = format!(
        "source {}; complete -p coffer; COMP_WORDS=(coffer res); COMP_CWORD=1; _coffer coffer res coffer; \
         echo \"words: ${{COMPREPLY[*]}}\"; COMP_WORDS=(coffer restore --ov); COMP_CWORD=2; \
         _coffer coffer --ov restore; echo \"options: ${{COMPREPLY[*]}}\"",
        file.display()
    );
    let output = Command::new("bash").args(["--norc", "-c", &probe]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("-F _coffer coffer"), "{text}");
    assert!(text.contains("words: restores restore") || text.contains("words: restore restores"), "{text}");
    assert!(text.contains("options: --overwrite"), "{text}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let output = coffer(&["completions", shell]);
        assert!(output.status.success() && output.stdout.len() > 1000, "{shell}");
    }
    assert_eq!(coffer(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn the_manual_pages_render_without_warnings() {
    if Command::new("man").arg("--version").output().is_err() {
        assert!(std::env::var("COFFER_REQUIRE_S3").is_err(), "scripts/test.sh installs man-db");
        eprintln!("skipped: no man");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(coffer(&["man", dir.path().to_str().unwrap()]).status.success());
    let mut pages: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    assert!(pages.len() >= 25, "{pages:?}");
    for page in &pages {
        let output = Command::new("man").args(["--warnings", "-l"]).arg(page).env("MANWIDTH", "80").output().unwrap();
        assert!(output.status.success(), "{}", page.display());
        assert!(output.stderr.is_empty(), "{}: {}", page.display(), String::from_utf8_lossy(&output.stderr));
        assert!(!output.stdout.is_empty());
    }
    let restore = std::fs::read_to_string(dir.path().join("coffer-restore.1")).unwrap();
    assert!(restore.contains("rollback"));
    // Printed to stdout, the page is the main one.
    let main = coffer(&["man"]);
    assert!(String::from_utf8_lossy(&main.stdout).contains(".TH coffer 1"));
}

#[test]
fn version_names_every_format() {
    let output = coffer(&["--json", "version"]);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["version"], env!("CARGO_PKG_VERSION"));
    for format in ["repository", "key_file", "index_object", "snapshot_record", "manifest_schema", "audit_record"] {
        assert_eq!(value["formats"][format], 1, "{format}");
    }
    assert!(String::from_utf8_lossy(&coffer(&["version"]).stdout).starts_with("coffer "));
}

#[test]
fn errors_are_json_on_stdout_with_json() {
    let fixture = Fixture::new();
    let missing = fixture.run(&["--json", "restore", "latest:/no/such", "--target", "/tmp/x"]);
    assert_eq!(missing.status.code(), Some(14));
    let error = common::last_json(&missing.stdout);
    assert_eq!(error["error"]["kind"], "not_found", "{error}");
    assert_eq!(error["error"]["exit_code"], 14);
    assert!(error["error"]["message"].as_str().unwrap().contains("not found"));
    // The person reading stderr still gets the sentence.
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("coffer: "));

    let usage = fixture.run(&["--json", "snapshots", "--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2));
    let error = common::last_json(&usage.stdout);
    assert_eq!(error["error"]["kind"], "usage");
    assert!(error["error"]["message"].as_str().unwrap().contains("--no-such-flag"));
    // A missing argument is named in the message, not only in the usage text.
    let missing_argument = fixture.run(&["--json", "ls"]);
    let error = common::last_json(&missing_argument.stdout);
    assert!(error["error"]["message"].as_str().unwrap().contains("<SNAPSHOT>"), "{error}");
    let nothing = fixture.run(&["--json", "backup"]);
    assert_eq!(nothing.status.code(), Some(2));
    let error = common::last_json(&nothing.stdout);
    assert!(error["error"]["message"].as_str().unwrap().contains("nothing to back up"), "{error}");

    let wrong = fixture.command(&["--json", "snapshots"]).env("COFFER_PASSWORD", "wrong").output().unwrap();
    assert_eq!(common::last_json(&wrong.stdout)["error"]["kind"], "wrong_password");
    // Without --json, stdout stays empty on failure.
    assert!(fixture.run(&["restore", "latest:/no/such", "--target", "/tmp/x"]).stdout.is_empty());
}

#[test]
fn a_symlinked_folder_given_to_backup_is_warned_about() {
    let fixture = Fixture::new();
    let folder = fixture.path("studies");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("scan.dcm"), b"x").unwrap();
    let link = fixture.path("current");
    std::os::unix::fs::symlink(&folder, &link).unwrap();
    let output = fixture.run(&["backup", link.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let expected = format!(
        "warning: {} is a symbolic link to the folder {}",
        link.display(),
        folder.canonicalize().unwrap().display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    // The folder itself: no warning.
    let output = fixture.run(&["backup", folder.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&output.stderr).contains("symbolic link"));
}

#[test]
fn a_repository_in_the_way_is_warned_about() {
    // init into a folder that holds other things.
    let fixture = Fixture::empty();
    std::fs::create_dir_all(fixture.repo()).unwrap();
    std::fs::write(fixture.repo().join("notes.txt"), b"x").unwrap();
    let init = fixture.run(&["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
    assert!(init.status.success());
    assert!(String::from_utf8_lossy(&init.stderr).contains("already holds 1 entries"));
    // A backup of the folder that holds the repository.
    let backup = fixture.run(&["backup", fixture.root.path().to_str().unwrap(), "--exclude", "cache"]);
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    let warning = String::from_utf8_lossy(&backup.stderr);
    assert!(warning.contains("is inside") && warning.contains("exclude it"), "{warning}");
    let repo = fixture.repo().canonicalize().unwrap();
    let excluded = fixture.run(&["backup", fixture.root.path().to_str().unwrap(), "--exclude", repo.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&excluded.stderr).contains("is inside"));
}

#[test]
fn cat_prints_each_kind_of_object_as_json() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("chart.txt"), b"pulse 72").unwrap();
    let snapshot = fixture.backup(&data)["snapshot_id"].as_str().unwrap().to_string();
    let cat = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["cat"];
        all.extend_from_slice(args);
        serde_json::from_str(&fixture.ok(&all)).unwrap()
    };
    assert_eq!(cat(&["config"])["version"], 1);
    assert_eq!(cat(&["snapshot", "latest"])["snapshot_id"], snapshot);
    assert_eq!(cat(&["snapshot", &snapshot[..8]])["snapshot"]["paths"][0], data.to_str().unwrap());
    let index = std::fs::read_dir(fixture.repo().join("index")).unwrap().next().unwrap().unwrap();
    let index = index.file_name().to_string_lossy().into_owned();
    let decoded = cat(&["index", &index[..8]]);
    assert!(!decoded["packs"][0]["blobs"].as_array().unwrap().is_empty(), "{decoded}");
    let key = std::fs::read_dir(fixture.repo().join("keys")).unwrap().next().unwrap().unwrap();
    assert_eq!(cat(&["key", &key.file_name().to_string_lossy()[..6]])["kdf"], "argon2id");
    assert_eq!(cat(&["audit", "2"])["record"]["command"], "backup");
    // Bad input: one sentence each, with its exit code.
    assert_eq!(fixture.run(&["cat", "index", "ffffffff"]).status.code(), Some(14));
    assert_eq!(fixture.run(&["cat", "audit", "two"]).status.code(), Some(2));
    assert_eq!(fixture.run(&["cat", "snapshot"]).status.code(), Some(2));
    assert_eq!(fixture.run(&["cat", "pack", "x"]).status.code(), Some(2));
    assert_eq!(fixture.run(&["cat", "audit", "99"]).status.code(), Some(14));
    assert_eq!(fixture.run(&["cat", "config", "extra"]).status.code(), Some(2));
}

#[test]
fn a_relative_snapshot_path_gets_the_hint_that_paths_are_absolute() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("chart.txt"), b"pulse 72").unwrap();
    fixture.backup(&data);
    let target = fixture.path("out");
    for args in [
        vec!["ls", "latest:data"],
        vec!["dump", "latest:data/chart.txt"],
        vec!["restore", "latest:data", "--target", target.to_str().unwrap()],
    ] {
        let output = fixture.run(&args);
        assert_eq!(output.status.code(), Some(14), "{args:?}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains("paths in a snapshot are absolute"), "{args:?}: {message}");
    }
    // An absolute path that is missing names the snapshot `latest` resolved to.
    let missing = fixture.run(&["dump", "latest:/no/such"]);
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(message.contains("not found in snapshot") && message.contains("(latest)"), "{message}");
    // Written relative but present (the leading / left out), it is found.
    let relative = format!("latest:{}", data.join("chart.txt").to_str().unwrap().trim_start_matches('/'));
    assert_eq!(fixture.ok(&["dump", &relative]), "pulse 72");
}

#[test]
fn counts_add_up_and_stream_snapshots_show_what_they_hold() {
    let fixture = Fixture::new();
    let stdin = |text: &'static str| {
        let mut child = fixture
            .command(&["--json", "backup", "--stdin", "--stdin-name", "all.sql"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        drop(child.stdin.take());
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        common::last_json(&output.stdout)
    };
    let summary = stdin("select 1;");
    let counts =
        |s: &serde_json::Value, key: &str| s["summary"][key].as_u64().unwrap_or_else(|| s[key].as_u64().unwrap());
    assert_eq!(counts(&summary, "files"), 1, "{summary}");
    assert_eq!(
        counts(&summary, "files_new") + counts(&summary, "files_changed") + counts(&summary, "files_unchanged"),
        1
    );
    let table = fixture.ok(&["snapshots"]);
    assert!(table.contains("stdin:all.sql"), "{table}");
}

#[test]
fn a_restore_reports_progress_as_json_lines_before_its_document() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    for n in 0..3 {
        std::fs::write(data.join(format!("f{n}")), common::random_bytes(200_000, n)).unwrap();
    }
    fixture.backup(&data);
    let output = fixture.run(&["--json", "restore", "latest", "--target", fixture.path("out").to_str().unwrap()]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let last_progress = lines.iter().rev().find(|line| line["type"] == "progress").expect("a progress line");
    assert_eq!(last_progress["files_done"], 3, "{text}");
    assert_eq!(last_progress["files_total"], 3);
    assert_eq!(last_progress["bytes_done"], 600_000);
    assert!(lines.last().unwrap()["restore_id"].is_string(), "the document comes last");
    assert_eq!(lines.last().unwrap()["type"], "summary", "the document says it is the summary, as a backup's does");
    let quiet = fixture.run(&[
        "--json",
        "restore",
        "latest",
        "--target",
        fixture.path("out2").to_str().unwrap(),
        "--no-progress",
    ]);
    assert_eq!(String::from_utf8_lossy(&quiet.stdout).lines().count(), 1);
}

#[test]
fn verbose_lists_each_file_and_very_verbose_says_why() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("same.txt"), b"same").unwrap();
    std::fs::write(data.join("grows.txt"), b"a").unwrap();
    for name in ["same.txt", "grows.txt"] {
        common::set_mtime(&data.join(name), 1_600_000_000, 0);
    }
    let first = fixture.ok(&["-v", "backup", data.to_str().unwrap()]);
    assert!(first.contains(&format!("new       {}/same.txt", data.display())), "{first}");
    std::fs::write(data.join("grows.txt"), b"ab").unwrap();
    common::set_mtime(&data.join("grows.txt"), 1_600_000_000, 0);
    let second = fixture.ok(&["-vv", "backup", data.to_str().unwrap()]);
    assert!(second.contains(&format!("unchanged {}/same.txt", data.display())), "{second}");
    assert!(second.contains(&format!("changed   {}/grows.txt (size)", data.display())), "{second}");
    // Without -v, nothing per file; with --json, stdout stays JSON.
    assert!(!fixture.ok(&["backup", data.to_str().unwrap()]).contains("same.txt"));
    let target = fixture.path("out");
    let restored = fixture.ok(&["-v", "restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(restored.lines().any(|line| line.starts_with("create") && line.ends_with("grows.txt")), "{restored}");
    std::fs::write(target.join(data.strip_prefix("/").unwrap()).join("grows.txt"), b"zz").unwrap();
    let again = fixture.ok(&["-vv", "restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(again.lines().any(|line| line.starts_with("overwrite") && line.contains("grows.txt (")), "{again}");
}

#[test]
fn check_reading_data_reports_progress_in_packs() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("scan.dcm"), common::random_bytes(300_000, 3)).unwrap();
    fixture.backup(&data);
    let output = fixture.run(&["--json", "check", "--read-data"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let progress = lines.iter().rev().find(|line| line["type"] == "progress").expect("a progress line");
    assert_eq!(progress["unit"], "packs");
    assert_eq!(progress["files_done"], progress["files_total"]);
    assert_eq!(lines.last().unwrap()["ok"], true, "the report comes last: {text}");
    // Structure only: one document, no progress.
    assert_eq!(String::from_utf8_lossy(&fixture.run(&["--json", "check"]).stdout).lines().count(), 1);
}

#[test]
fn names_that_are_not_utf8_keep_their_bytes_in_json() {
    use std::os::unix::ffi::OsStrExt;
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), b"x").unwrap();
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"tar\xffget"), data.join("link")).unwrap();
    fixture.backup(&data);
    let listed = fixture.json(&["ls", &format!("latest:{}", data.display())])["entries"].clone();
    let entries = listed.as_array().unwrap();
    let name = entries.iter().find(|e| e["path_hex"].is_string()).expect("a path_hex");
    assert!(name["path_hex"].as_str().unwrap().ends_with("636166e9"), "{name}");
    let link = entries.iter().find(|e| e["kind"] == "symlink").unwrap();
    assert_eq!(link["link_target_hex"], "746172ff676574");
}
