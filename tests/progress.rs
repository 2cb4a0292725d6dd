//! `backup --dry-run`, progress reporting and incomplete snapshots, through the real binary.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use common::{random_bytes, set_mtime, Fixture};
use serde_json::Value;

/// A tree whose files were last modified long before the backup (outside the racy window).
fn settled_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for (index, name) in ["a.dcm", "b.dcm", "sub/c.txt"].iter().enumerate() {
        std::fs::write(root.join(name), random_bytes(100_000, index as u64)).unwrap();
        set_mtime(&root.join(name), 1_700_000_000, 5);
    }
}

/// Every file of a local repository with its content.
fn repository_objects(repo: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(repo)
        .into_iter()
        .map(|item| item.unwrap())
        .filter(|item| item.file_type().is_file())
        .map(|item| (item.path().strip_prefix(repo).unwrap().to_path_buf(), std::fs::read(item.path()).unwrap()))
        .collect()
}

/// The `entries` of a dry run as (path relative to `root`, change) pairs.
fn listed(dry_run: &Value, root: &Path) -> Vec<(String, String)> {
    let prefix = format!("{}/", root.display());
    let mut entries: Vec<(String, String)> = dry_run["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let path = entry["path"].as_str().unwrap().strip_prefix(&prefix).unwrap().to_string();
            (path, entry["change"].as_str().unwrap().to_string())
        })
        .collect();
    entries.sort();
    entries
}

fn pair(path: &str, change: &str) -> (String, String) {
    (path.to_string(), change.to_string())
}

#[test]
fn dry_run_lists_new_and_changed_files_and_leaves_the_repository_untouched() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    let first = fixture.json(&["backup", source.to_str().unwrap(), "--exclude", "*.tmp"]);
    std::fs::write(source.join("b.dcm"), random_bytes(120_000, 7)).unwrap();
    std::fs::write(source.join("new.txt"), b"new file").unwrap();
    std::fs::write(source.join("scratch.tmp"), b"excluded").unwrap();
    let before = (!Fixture::on_s3()).then(|| repository_objects(&fixture.repo()));
    let args = ["backup", "--dry-run", source.to_str().unwrap(), "--exclude", "*.tmp"];

    let plan = fixture.json(&args);
    assert_eq!(listed(&plan, &source), vec![pair("b.dcm", "changed"), pair("new.txt", "new")], "{plan}");
    assert_eq!(plan["parent"], first["snapshot_id"], "{plan}");
    let counts = ["files_new", "files_changed", "files_unchanged", "files_to_read", "bytes_to_read"];
    let counts: Vec<u64> = counts.iter().map(|name| plan[name].as_u64().unwrap()).collect();
    assert_eq!(counts, vec![1, 1, 2, 2, 120_008], "{plan}");
    let verbose = fixture.json(&["-v", "backup", "--dry-run", source.to_str().unwrap(), "--exclude", "*.tmp"]);
    let everything = listed(&verbose, &source);
    assert!(everything.contains(&pair("sub/c.txt", "unchanged")), "{verbose}");
    assert_eq!(everything.len(), 4, "{verbose}");
    let text = fixture.ok(&args);
    let new_line = format!("new       {}/new.txt (8 B)", source.display());
    assert!(text.lines().any(|line| line == new_line), "{text}");
    assert!(!text.contains("a.dcm") && !text.contains("scratch.tmp"), "{text}");
    assert!(text.contains("would read 2 files (117.2 KiB): 1 new, 1 changed; 2 unchanged files"), "{text}");

    if let Some(before) = before {
        assert!(before == repository_objects(&fixture.repo()), "a dry run changed the repository");
    }
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 1);
    let real = fixture.json(&["backup", source.to_str().unwrap(), "--exclude", "*.tmp"]);
    let summary = &real["summary"];
    let done = [&summary["files_new"], &summary["files_changed"], &summary["files_unchanged"], &summary["bytes_read"]];
    assert_eq!(done, [1, 1, 2, 120_008], "the backup did not do what its dry run said: {real}");
}

#[test]
fn dry_run_without_a_parent_counts_every_file_as_new() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    let plan = fixture.json(&["backup", "--dry-run", source.to_str().unwrap()]);
    assert_eq!(plan["parent"], Value::Null);
    assert_eq!((plan["files_new"].as_u64(), plan["bytes_to_read"].as_u64()), (Some(3), Some(300_000)), "{plan}");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 0);
    let refused = fixture.run(&["backup", "--dry-run", "--stdin"]);
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
}

/// The progress lines a `--json` backup wrote to stdout before its summary (the last line).
fn progress_lines(stdout: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines[..lines.len().saturating_sub(1)]
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}")))
        .inspect(|value| assert_eq!(value["type"], "progress", "{value}"))
        .collect()
}

fn assert_last_progress_matches(lines: &[Value], summary: &Value) {
    let last = lines.last().expect("no progress line");
    assert_eq!(last["files_done"], summary["files"], "{last} vs {summary}");
    assert_eq!(last["bytes_done"], summary["total_bytes"], "{last} vs {summary}");
    assert_eq!(last["bytes_read"], summary["bytes_read"], "{last} vs {summary}");
    if last["scan_finished"] == true {
        assert_eq!(last["files_total"], summary["files"], "{last}");
        assert_eq!(last["bytes_total"], summary["total_bytes"], "{last}");
        assert_eq!(last["eta_seconds"], 0, "{last}");
    }
}

#[test]
fn json_progress_lines_go_to_stdout_before_the_summary_and_end_at_its_counts() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    for index in 0..40u64 {
        std::fs::write(source.join(format!("scan_{index:02}.dcm")), random_bytes(300_000, 100 + index)).unwrap();
    }
    for run in ["first", "incremental"] {
        let output = fixture.run(&["--json", "backup", source.to_str().unwrap(), "--exclude", "b.dcm"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary = common::last_json(&output.stdout);
        assert_eq!(summary["type"], "summary", "{summary}");
        let lines = progress_lines(&output.stdout);
        assert_last_progress_matches(&lines, &summary["summary"]);
        assert_eq!(summary["summary"]["files"], 42, "{run}: {summary}");
        let done: Vec<u64> = lines.iter().map(|line| line["bytes_done"].as_u64().unwrap()).collect();
        assert!(done.windows(2).all(|pair| pair[0] <= pair[1]), "{run}: progress went backwards: {done:?}");
    }
}

#[test]
fn without_a_terminal_or_json_no_progress_is_printed() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    let output = fixture.run(&["backup", source.to_str().unwrap()]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("snapshot ") && !stderr.contains('\r'), "{stderr:?}");
    for off in [["--json", "backup", "--no-progress"], ["--json", "-q", "backup"]] {
        let mut args = off.to_vec();
        args.push(source.to_str().unwrap());
        let output = fixture.run(&args);
        assert!(output.status.success());
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{args:?}");
        serde_json::from_slice::<Value>(&output.stdout).unwrap();
    }
}

#[test]
fn on_a_terminal_a_progress_bar_is_drawn_and_cleared() {
    if Fixture::on_s3() {
        return;
    }
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    let command =
        format!("{} --repo {} backup {}", env!("CARGO_BIN_EXE_coffer"), fixture.repo().display(), source.display());
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("COFFER_CACHE_DIR", fixture.path("cache"))
        .env("COFFER_PASSWORD", "correct horse")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"").unwrap();
    let output = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    let bar = shown.find("\r[0:00] ").unwrap_or_else(|| panic!("no progress bar: {shown:?}"));
    let cleared = shown.rfind("\r\x1b[K").expect("the bar was not cleared");
    let summary = shown.find("snapshot ").expect("no summary");
    assert!(bar < cleared && cleared < summary, "{shown:?}");
    assert!(shown[bar..cleared].contains(" files, "), "{shown:?}");
}

/// Creates directories nested so deep below `root` that their paths exceed PATH_MAX,
/// with a file at the bottom: entries the walk cannot stat, even as root. Each level is
/// created through /proc/self/fd, so no path handed to the kernel is long.
fn too_deep_to_read(root: &Path) {
    let name = "d".repeat(200);
    let mut dir = std::fs::File::open(root).unwrap();
    for _ in 0..25 {
        let child = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
        std::fs::create_dir(&child).unwrap();
        dir = std::fs::File::open(&child).unwrap();
    }
    std::fs::write(format!("/proc/self/fd/{}/lost.txt", dir.as_raw_fd()), b"out of reach").unwrap();
}

#[test]
fn unreadable_entries_are_warnings_and_the_snapshot_is_incomplete_with_exit_3() {
    let fixture = Fixture::new();
    let source = fixture.path("data");
    settled_tree(&source);
    too_deep_to_read(&source);
    let output = fixture.run(&["--json", "backup", source.to_str().unwrap(), "--no-progress"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("warning: cannot read") && stderr.contains("File name too long"), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["complete"], false, "{report}");
    assert!(!report["warnings"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(report["summary"]["files"], 3, "the readable files are backed up: {report}");
    let listed = fixture.snapshots();
    assert_eq!(listed[0]["complete"], false);
    let text = fixture.run(&["backup", source.to_str().unwrap()]);
    let text_stderr = String::from_utf8_lossy(&text.stderr);
    assert_eq!(text.status.code(), Some(3), "{text_stderr}");
    assert!(text_stderr.contains("is incomplete"), "{text_stderr}");
    let plan = fixture.json(&["backup", "--dry-run", source.to_str().unwrap()]);
    assert!(!plan["warnings"].as_array().unwrap().is_empty(), "the dry run does not warn: {plan}");
    let target = fixture.path("out");
    fixture.ok(&["restore", &format!("latest:{}/sub", source.display()), "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(target.join("c.txt")).unwrap(), std::fs::read(source.join("sub/c.txt")).unwrap());
}
