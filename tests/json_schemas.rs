//! Every command's `--json` document (and a progress line, and an error) from the real
//! binary, validated against its JSON Schema in docs/schemas/ by Python's jsonschema
//! (scripts/json_schema.py). A renamed or added field fails here until docs/JSON.md and
//! the schema say so; COFFER_UPDATE_SCHEMAS=1 rewrites the schemas after a deliberate
//! change.

mod common;

use std::path::Path;
use std::process::Command;

use common::Fixture;

/// Runs coffer with --json, keeps its last line as the sample NAME.
fn sample(fixture: &Fixture, samples: &Path, name: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = fixture.run(&all);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() || name == "error",
        "coffer {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = text.lines().last().unwrap_or_else(|| panic!("coffer {args:?} printed nothing"));
    std::fs::write(samples.join(format!("{name}.json")), line).unwrap();
    serde_json::from_str(line).unwrap()
}

#[test]
fn every_json_document_matches_its_schema() {
    let present = Command::new("python3").args(["-c", "import jsonschema"]).output().is_ok_and(|o| o.status.success());
    let update = std::env::var_os("COFFER_UPDATE_SCHEMAS").is_some();
    if !present && !update {
        assert!(
            std::env::var("COFFER_REQUIRE_JSONSCHEMA").is_err(),
            "COFFER_REQUIRE_JSONSCHEMA is set but python3 with jsonschema is missing"
        );
        eprintln!("python3 with jsonschema is missing (scripts/test.sh installs it); skipping");
        return;
    }
    let fixture = Fixture::empty();
    let samples = fixture.path("samples");
    std::fs::create_dir_all(&samples).unwrap();
    let s = |name: &str, args: &[&str]| sample(&fixture, &samples, name, args);
    s("init", &["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
    let data = fixture.path("data");
    std::fs::create_dir_all(data.join("study")).unwrap();
    std::fs::write(data.join("study/scan.dcm"), common::random_bytes(200_000, 3)).unwrap();
    std::fs::write(data.join("notes.txt"), "ward 3\n").unwrap();
    let data_arg = data.to_str().unwrap();
    let first = s("backup", &["backup", data_arg, "--no-progress"]);
    let first = first["snapshot_id"].as_str().unwrap().to_string();
    // A progress line: the first line of a backup with progress.
    let output = fixture.run(&["--json", "backup", data_arg]);
    let progress = String::from_utf8_lossy(&output.stdout).lines().next().unwrap().to_string();
    assert!(progress.contains("\"progress\""), "{progress}");
    std::fs::write(samples.join("progress.json"), progress).unwrap();
    std::fs::write(data.join("notes.txt"), "ward 4\n").unwrap();
    s("backup_dry_run", &["backup", "--dry-run", data_arg]);
    let second = s("backup", &["backup", data_arg, "--no-progress"]);
    let second = second["snapshot_id"].as_str().unwrap().to_string();
    s("snapshots", &["snapshots"]);
    s("ls", &["ls", "latest"]);
    s("find", &["find", "*.txt"]);
    s("diff", &["diff", &first, &second]);
    s("stats", &["stats"]);
    s("stats.2", &["stats", "latest"]);
    let target = fixture.path("out");
    let target_arg = target.to_str().unwrap();
    let spec = format!("latest:{data_arg}");
    s("restore", &["restore", &spec, "--target", target_arg, "--no-progress"]);
    std::fs::write(target.join("notes.txt"), "changed here\n").unwrap();
    s("restore_dry_run", &["restore", &spec, "--target", target_arg, "--dry-run"]);
    let fresh = fixture.path("fresh");
    s("restore_dry_run.2", &["restore", &spec, "--target", fresh.to_str().unwrap(), "--dry-run"]);
    let replaced = s("restore", &["restore", &spec, "--target", target_arg, "--no-progress"]);
    s("restores", &["restores"]);
    s("rollback", &["restore", "--rollback", replaced["restore_id"].as_str().unwrap(), "--force"]);
    s("check", &["check", "--read-data", "--no-progress"]);
    // A progress line of check, counting packs.
    let output = fixture.run(&["--json", "check", "--read-data"]);
    let counting = String::from_utf8_lossy(&output.stdout).lines().next().unwrap().to_string();
    assert!(counting.contains("\"unit\":\"packs\""), "{counting}");
    std::fs::write(samples.join("progress.2.json"), counting).unwrap();
    s("forget", &["forget", "--keep-last", "1", "--dry-run"]);
    s("prune", &["prune", "--dry-run"]);
    s("forget.2", &["forget", "--keep-last", "1", "--prune"]);
    s("prune.2", &["prune"]);
    s("repair_index", &["repair", "index", "--dry-run"]);
    s("repair_snapshots", &["repair", "snapshots"]);
    s("key_list", &["key", "list"]);
    let new_password = fixture.path("new-password");
    std::fs::write(&new_password, "another horse\n").unwrap();
    s(
        "key_add",
        &[
            "key",
            "add",
            "--new-password-file",
            new_password.to_str().unwrap(),
            "--kdf-memory-kib",
            "64",
            "--kdf-iterations",
            "1",
        ],
    );
    s("unlock", &["unlock"]);
    s("audit", &["audit"]);
    s("audit_verify", &["audit", "verify"]);
    s("version", &["version"]);
    s("error", &["ls", "latest:/no/such/path"]);
    let config = fixture.path("coffer.toml");
    std::fs::write(
        &config,
        format!(
            "[profile.nightly]\nrepository = \"{}\"\n[profile.nightly.backup]\npaths = [\"{data_arg}\"]\n[profile.nightly.retention]\nkeep_last = 3\n",
            fixture.repo_spec()
        ),
    )
    .unwrap();
    // coffer refuses a configuration file other users may change, whatever the umask.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config_arg = config.to_str().unwrap();
    s("config_check", &["--config", config_arg, "config", "check"]);
    s("schedule_install", &["--config", config_arg, "schedule", "install", "nightly", "--dry-run"]);
    s("drill", &["drill", "--sample", "100%", "--scratch-dir", fixture.path("scratch").to_str().unwrap()]);
    s("run", &["--config", config_arg, "run", "nightly"]);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let action = if update { "infer" } else { "validate" };
    let output = Command::new("python3")
        .arg(root.join("scripts/json_schema.py"))
        .arg(action)
        .arg(root.join("docs/schemas"))
        .arg(&samples)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    // Every schema has its sample: none is left for a document that no longer exists.
    let schemas = std::fs::read_dir(root.join("docs/schemas")).unwrap().count();
    let made = std::fs::read_dir(&samples)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().matches('.').count() == 1)
        .count();
    assert_eq!(schemas, made, "docs/schemas holds {schemas} schemas for {made} documents");
    // The vocabulary: no document uses the old names.
    for entry in std::fs::read_dir(&samples).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for old in ["\"elapsed_secs\"", "\"eta_secs\"", "\"fetch_bytes\"", "\"bytes_fetched\"", "\"snapshot\":\""] {
            assert!(!text.contains(old), "{old} in {text}");
        }
        assert!(text.contains("\"schema_version\":1"), "no schema_version: {text}");
    }
}
