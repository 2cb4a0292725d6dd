//! `backup --dry-run`: lists the files a backup would read and the totals.

use std::os::unix::ffi::OsStrExt;

use anyhow::Result;
use coffer::{BackupOptions, DryRunReport, FileChange, PlannedFile, Repository};
use serde_json::{json, Value};

use super::output::{self, note};
use super::{exit, Cli};

/// Prints the files to read (new or changed; with `-v` the unchanged too, with `-q`
/// none) and the totals, as text or one JSON document.
pub fn run(cli: &Cli, repository: &Repository, options: &BackupOptions) -> Result<i32> {
    let listed = |change: FileChange| change != FileChange::Unchanged || cli.verbose > 0;
    let mut entries = Vec::new();
    let report = coffer::dry_run(repository, options, &mut |file: &PlannedFile<'_>| {
        if !listed(file.change) {
            return;
        }
        if cli.json {
            entries.push(file_json(file));
        } else if !cli.quiet {
            let path = output::path_text(file.path.as_os_str().as_bytes());
            output::line(&format!("{:<9} {path} ({})", file.change.name(), output::size(file.size)));
        }
    })?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for line in &report.notes {
        note(cli.quiet, &format!("note: {line}"));
    }
    if cli.json {
        output::json(&report_json(&report, entries));
    } else {
        output::line(&totals(&report));
    }
    Ok(exit::SUCCESS)
}

fn file_json(file: &PlannedFile<'_>) -> Value {
    let bytes = file.path.as_os_str().as_bytes();
    let mut value = json!({"path": String::from_utf8_lossy(bytes), "change": file.change.name(), "size": file.size});
    if std::str::from_utf8(bytes).is_err() {
        value["path_hex"] = json!(hex::encode(bytes));
    }
    value
}

fn report_json(report: &DryRunReport, entries: Vec<Value>) -> Value {
    json!({
        "dry_run": true,
        "parent": report.parent.map(|id| id.to_hex()),
        "files": report.files_new + report.files_changed + report.files_unchanged,
        "files_new": report.files_new,
        "files_changed": report.files_changed,
        "files_unchanged": report.files_unchanged,
        "files_to_read": report.files_to_read(),
        "bytes_to_read": report.bytes_to_read,
        "total_bytes": report.total_bytes,
        "dirs": report.dirs,
        "entries": entries,
        "warnings": report.warnings,
        "notes": report.notes,
    })
}

fn totals(report: &DryRunReport) -> String {
    let parent = match report.parent {
        Some(id) => format!("compared with snapshot {}", id.short()),
        None => "no parent snapshot".to_string(),
    };
    format!(
        "would read {} files ({}): {} new, {} changed; {} unchanged files ({}) would not be read; {} dirs; {parent}",
        report.files_to_read(),
        output::size(report.bytes_to_read),
        report.files_new,
        report.files_changed,
        report.files_unchanged,
        output::size(report.total_bytes.saturating_sub(report.bytes_to_read)),
        report.dirs,
    )
}
