//! `restore` into a folder (its plan, its safety snapshot, its rollback) and `restores`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Result;
use coffer::restorer::safety::{self, Rollback, SafeRestore};
use coffer::restorer::{self, Action, FailureCause, Overwrite, RestoreOptions, RestorePlan, RestoreReport};
use coffer::{Repository, SnapshotId};
use serde_json::{json, Value};

use super::args::RestoreArgs;
use super::output::{self, note};
use super::{exit, fail, Cli};

pub fn restore(cli: &Cli, args: &RestoreArgs) -> Result<i32> {
    let repository = super::open(cli)?;
    if let Some(spec) = &args.rollback {
        return rollback(cli, &repository, spec, args);
    }
    let spec_text = args.snapshot.clone().unwrap_or_else(|| OsString::from("latest"));
    let (spec, subpath) = super::commands::split_spec(&spec_text);
    let (id, snapshot) = repository.find_snapshot_filtered(&spec, &super::commands::filter_of(&args.filter)?)?;
    let manifest = repository.load_manifest(&id, &snapshot)?;
    if let Some(path) = &subpath {
        super::commands::require_path(&spec_text, &manifest, path, &id)?;
    }
    let Some(target) = args.target.clone() else {
        return super::postgres::restore(cli, args, &repository, &manifest, (&id, &snapshot));
    };
    let options = RestoreOptions {
        subpath: subpath.clone(),
        target: target.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        verify: args.verify,
        no_sync: args.no_sync,
        overwrite: args.overwrite.parse::<Overwrite>()?,
        delete: args.delete,
        force: args.force,
        // Restoring a folder onto itself sets its own metadata too; an existing folder
        // chosen as a target elsewhere keeps its own.
        target_metadata: is_same_folder(&target, subpath.as_deref()),
        checksum: args.checksum,
        strict_target: false,
        // Without a safety snapshot a folder full of files is not swept away for a file.
        replace_folders: !args.no_safety,
        progress: None,
        only: None,
    };
    let plan = restorer::plan(&repository, &manifest, &options)?;
    if args.dry_run {
        print_plan(cli, &plan, !args.no_safety);
        return Ok(exit::SUCCESS);
    }
    let path = match subpath.as_deref() {
        Some(path) if path.len() > 1 => path.strip_suffix(b"/").unwrap_or(path).to_vec(),
        _ => b"/".to_vec(),
    };
    if args.no_safety
        && plan
            .entries
            .iter()
            .any(|p| p.existed && matches!(p.action, Action::Overwrite | Action::Update | Action::Delete))
    {
        note(
            cli.quiet,
            "no safety snapshot (--no-safety): what this restore replaces or deletes cannot be rolled back",
        );
    }
    let quiet = cli.quiet || cli.json;
    // A restore that touches nothing the target held has nothing to undo: no line.
    let mut announce = |started: &safety::Started| {
        if let Some(safety) = started.safety {
            let (id, touched) = (started.id.short(), started.touched);
            note(
                quiet,
                &format!(
                    "restore {id}: safety snapshot {} holds the {touched} entries this restore replaces or deletes; undo with `coffer restore --rollback {id}`",
                    safety.short()
                ),
            );
        }
    };
    // A progress line on a terminal, JSON lines with --json, as a backup shows them.
    let reporter = super::progress::Reporter::start(cli, args.no_progress);
    let options = RestoreOptions { progress: reporter.as_ref().map(|r| r.progress()), ..options };
    let outcome = safety::restore(&repository, (&id, &path[..]), &plan, &options, !args.no_safety, &mut announce);
    if let (Some(reporter), Ok(_)) = (reporter, &outcome) {
        reporter.finish();
    }
    let outcome = outcome?;
    list_entries(cli, &plan, &outcome);
    report_outcome(cli, args, &id, &target, outcome)
}

/// "1 entry", "2 entries".
fn count_of(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

fn is_same_folder(target: &Path, subpath: Option<&[u8]>) -> bool {
    let Some(subpath) = subpath else { return false };
    let resolved = std::path::absolute(target).ok().and_then(|path| path.canonicalize().ok());
    resolved.is_some_and(|path| path.as_os_str().as_bytes() == subpath.strip_suffix(b"/").unwrap_or(subpath))
}

fn report_outcome(cli: &Cli, args: &RestoreArgs, id: &SnapshotId, target: &Path, outcome: SafeRestore) -> Result<i32> {
    let SafeRestore { started, report, error, rollback } = outcome;
    let report = report.unwrap_or_default();
    super::audit::snapshot(id);
    super::audit::restore(&started.id);
    super::audit::bytes(report.bytes_written);
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for failure in &report.failed {
        eprintln!("error: {} not restored: {}", failure.path.display(), failure.reason);
    }
    if args.no_sync {
        note(cli.quiet, "not synced to disk (--no-sync): a power cut in the next seconds may lose restored files");
    }
    if report.stale_removed > 0 {
        note(cli.quiet, &format!("removed {} temporary file(s) left by an earlier restore", report.stale_removed));
    }
    if let Some(rollback) = &rollback {
        print_rollback(cli, rollback, started.safety);
    }
    if cli.json {
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|failure| json!({"path": failure.path.display().to_string(), "reason": failure.reason}))
            .collect();
        output::json(&json!({
            "type": "summary",
            "restore_id": started.id.to_hex(), "snapshot_id": id.to_hex(), "target": target.display().to_string(),
            "safety_snapshot_id": started.safety.map(|id| id.to_hex()),
            "files": report.files, "dirs": report.dirs, "kept": report.kept, "updated": report.updated, "deleted": report.deleted,
            "bytes_written": report.bytes_written, "bytes_downloaded": report.bytes_fetched, "bytes_reused": report.bytes_reused, "requests": report.requests,
            "failed": failed, "warnings": report.warnings,
            "error": error.as_ref().map(|e| e.to_string()),
            "rolled_back": rollback.as_ref().map(|r| r.failures.is_empty()),
        }));
    } else if error.is_none() && report.failed.is_empty() {
        note(cli.quiet, &summary(&report, id, target));
    }
    let rolled_back = match &rollback {
        Some(done) if done.failures.is_empty() => "; everything it had changed was put back from the safety snapshot",
        Some(_) => "; putting back what it had changed failed for some entries (listed above)",
        None => "",
    };
    if let Some(error) = error {
        let code = match (&error, &rollback) {
            (_, Some(done)) if !done.failures.is_empty() => exit::LOCAL_IO,
            (error, _) => exit::code_of(error),
        };
        return fail(code, format!("{error}{rolled_back}"));
    }
    let code = match report.worst_cause() {
        None => return Ok(exit::SUCCESS),
        Some(_) if rollback.as_ref().is_some_and(|done| !done.failures.is_empty()) => exit::LOCAL_IO,
        Some(FailureCause::Damage) => exit::DAMAGED,
        Some(FailureCause::Unreachable) => exit::UNREACHABLE,
        Some(FailureCause::Storage) => exit::FAILURE,
        Some(FailureCause::Denied) => exit::ACCESS_DENIED,
        Some(FailureCause::LocalIo) => exit::LOCAL_IO,
    };
    fail(
        code,
        format!(
            "{} could not be restored from snapshot {}; the first: {}{rolled_back}",
            count_of(report.failed.len(), "entry", "entries"),
            id.short(),
            report.failed[0].reason
        ),
    )
}

fn summary(report: &RestoreReport, id: &SnapshotId, target: &Path) -> String {
    let mut text = format!(
        "restored {} files and {} dirs ({}) from snapshot {} to {}; fetched {} in {} requests",
        report.files,
        report.dirs,
        output::size(report.bytes_written),
        id.short(),
        target.display(),
        output::size(report.bytes_fetched),
        report.requests
    );
    if report.bytes_reused > 0 {
        text.push_str(&format!("; {} taken from the files it replaced", output::size(report.bytes_reused)));
    }
    if report.kept + report.updated + report.deleted > 0 {
        text.push_str(&format!(
            "; {} left as they were, {} with metadata set, {} deleted",
            report.kept, report.updated, report.deleted
        ));
    }
    text
}

fn print_rollback(cli: &Cli, rollback: &Rollback, safety: Option<SnapshotId>) {
    for failure in &rollback.failures {
        eprintln!("error: rollback: {failure}");
    }
    let safety = safety.map_or(String::new(), |id| format!(" from safety snapshot {}", id.short()));
    note(
        cli.quiet || cli.json,
        &format!(
            "rolled back: {} the restore made removed, {} put back{safety}",
            count_of(rollback.removed, "entry", "entries"),
            count_of(rollback.put_back as usize, "entry", "entries")
        ),
    );
}

/// `restore --rollback ID`.
fn rollback(cli: &Cli, repository: &Repository, spec: &str, args: &RestoreArgs) -> Result<i32> {
    let force = args.force;
    let (id, mut record) = repository.find_restore(spec)?;
    super::audit::restore(&id);
    if record.outcome == coffer::RestoreOutcome::Completed && !force {
        return fail(
            exit::REFUSED,
            format!(
                "restore {} completed on {}; rolling it back puts back the target as it was before it, undoing any change made since. Add --force if that is meant",
                id.short(),
                record.time
            ),
        );
    }
    if record.outcome == coffer::RestoreOutcome::RolledBack && !force {
        return fail(
            exit::REFUSED,
            format!("restore {} was rolled back already; add --force to do it again", id.short()),
        );
    }
    let done = match (&record.database, &args.pg_target) {
        (Some(_), Some(conninfo)) => coffer::restorer::pg_safety::roll_back_database(
            repository,
            &record,
            &coffer::pg::ConnInfo::parse(conninfo)?,
            &coffer::pg::PgTools::default(),
        )?,
        (Some(database), None) => {
            return fail(
                exit::USAGE,
                format!(
                    "restore {} wrote into database {database:?}: give its connection string with --pg-target",
                    id.short()
                ),
            )
        }
        (None, Some(_)) => {
            return fail(exit::USAGE, format!("restore {} was into a folder, not a database", id.short()))
        }
        (None, None) => safety::roll_back(repository, &record, force)?,
    };
    record.outcome = if done.failures.is_empty() {
        coffer::RestoreOutcome::RolledBack
    } else {
        coffer::RestoreOutcome::RollbackFailed
    };
    record.finished = Some(jiff::Timestamp::now().to_string());
    repository.save_restore(&id, &record)?;
    let safety = record.safety_id()?;
    if cli.json {
        output::json(&json!({"restore_id": id.to_hex(), "target": record.target, "safety_snapshot_id": record.safety,
            "removed": done.removed, "put_back": done.put_back, "failures": done.failures, "outcome": record.outcome.name()}));
    }
    print_rollback(cli, &done, safety);
    if !done.failures.is_empty() {
        return fail(
            exit::LOCAL_IO,
            format!(
                "{} of {} could not be rolled back (listed above); nothing else was changed, and the safety snapshot {} is kept",
                count_of(done.failures.len(), "entry", "entries"),
                record.target,
                safety.map(|id| id.short()).unwrap_or_default()
            ),
        );
    }
    Ok(exit::SUCCESS)
}

/// `restores`: every restore into a folder, oldest first.
pub fn restores(cli: &Cli) -> Result<i32> {
    let repository = super::open(cli)?;
    let (records, damaged) = repository.list_restores()?;
    for error in &damaged {
        eprintln!("warning: {error}");
    }
    if cli.json {
        let list: Vec<Value> = records
            .iter()
            .map(|(id, record)| {
                json!({"restore_id": id.to_hex(), "time": record.time, "host": record.host, "user": record.user,
                "snapshot_id": record.snapshot, "path": record.path, "target": record.target, "safety_snapshot_id": record.safety,
                "created": record.created.len(), "replaced": record.replaced.len(), "deleted": record.deleted.len(),
                "outcome": record.outcome.name(), "finished": record.finished, "error": record.error})
            })
            .collect();
        output::json(&json!({"restores": list}));
        return Ok(exit::SUCCESS);
    }
    output::line(&format!(
        "{:<8}  {:<19}  {:<12}  {:<8}  {:<8}  {:<15}  {:>7} {:>8} {:>7}  target",
        "id", "time", "host", "snapshot", "safety", "outcome", "created", "replaced", "deleted"
    ));
    for (id, record) in &records {
        let time: String = record.time.replace('T', " ").chars().take(19).collect();
        output::line(&format!(
            "{:<8}  {:<19}  {:<12}  {:<8}  {:<8}  {:<15}  {:>7} {:>8} {:>7}  {}{}",
            id.short(),
            time,
            record.host,
            &record.snapshot[..8.min(record.snapshot.len())],
            record.safety.as_deref().map_or("-", |s| &s[..8.min(s.len())]),
            record.outcome.name(),
            record.created.len(),
            record.replaced.len(),
            record.deleted.len(),
            record.target,
            if record.path == "/" { String::new() } else { format!(" (from {})", record.path) },
        ));
    }
    Ok(exit::SUCCESS)
}

/// `-v`: each entry as the restore handled it (created, overwritten, updated, kept,
/// deleted), those that failed left out (they are errors below); `-vv` adds why.
/// Nothing of it after a rollback (the target is as it was) or with `--json`.
fn list_entries(cli: &Cli, plan: &RestorePlan, outcome: &SafeRestore) {
    if cli.verbose == 0 || cli.json || cli.quiet || outcome.rollback.is_some() {
        return;
    }
    let failed: std::collections::HashSet<&Path> =
        outcome.report.iter().flat_map(|report| report.failed.iter().map(|f| f.path.as_path())).collect();
    for planned in plan.entries.iter().filter(|p| !failed.contains(p.target.as_path())) {
        let shown = output::path_text(planned.target.as_os_str().as_bytes());
        match (cli.verbose > 1 && !planned.why.is_empty(), planned.action.name()) {
            (true, action) => output::line(&format!("{action:<9} {shown} ({})", planned.why)),
            (false, action) => output::line(&format!("{action:<9} {shown}")),
        }
    }
}

fn print_plan(cli: &Cli, plan: &RestorePlan, safety: bool) {
    let listed = |action: Action| cli.verbose > 0 || !matches!(action, Action::Keep);
    if cli.json {
        let entries: Vec<_> = plan
            .entries
            .iter()
            .map(|p| {
                let mut value = json!({"path": p.target.display().to_string(), "kind": p.entry.kind.name(),
                    "action": p.action.name(), "size": p.entry.size});
                if !p.why.is_empty() {
                    value["why"] = json!(p.why);
                }
                if std::str::from_utf8(p.target.as_os_str().as_bytes()).is_err() {
                    value["path_hex"] = json!(hex::encode(p.target.as_os_str().as_bytes()));
                }
                value
            })
            .collect();
        output::json(&json!({"dry_run": true, "files": plan.files, "dirs": plan.dirs, "bytes_total": plan.file_bytes,
            "creates": plan.creates, "overwrites": plan.overwrites, "updates": plan.updates, "keeps": plan.keeps, "deletes": plan.deletes,
            "bytes_to_write": plan.bytes_to_write, "bytes_present": plan.bytes_present, "bytes_compared": plan.bytes_compared,
            "blob_count": plan.blobs, "bytes_downloaded": plan.fetch_bytes, "pack_count": plan.packs,
            "safety_snapshot_needed": safety && plan.touches_target(), "entries": entries, "warnings": plan.warnings}));
        return;
    }
    if !cli.quiet {
        for planned in plan.entries.iter().filter(|p| listed(p.action)) {
            let why = if planned.why.is_empty() { String::new() } else { format!(" ({})", planned.why) };
            let shown = output::path_text(planned.target.as_os_str().as_bytes());
            output::line(&format!("{:<9} {shown}{why}", planned.action.name()));
        }
    }
    output::line(&format!(
        "would restore {} files ({}) and {} dirs: {} created, {} overwritten, {} with metadata set, {} left as they are ({} already present), {} deleted; write {}, fetch {} in {} blobs from {} packs",
        plan.files,
        output::size(plan.file_bytes),
        plan.dirs,
        plan.creates,
        plan.overwrites,
        plan.updates,
        plan.keeps,
        output::size(plan.bytes_present),
        plan.deletes,
        output::size(plan.bytes_to_write),
        output::size(plan.fetch_bytes),
        plan.blobs,
        plan.packs
    ));
    if plan.touches_target() {
        let what = if safety {
            "a safety snapshot of what it replaces or deletes would be taken first"
        } else {
            "no safety snapshot would be taken (--no-safety)"
        };
        output::line(&format!("the restore changes entries the target holds: {what}"));
    }
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
}
