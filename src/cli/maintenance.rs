//! Maintenance commands: check, forget and prune.

use std::collections::HashSet;

use anyhow::Result;
use coffer::prune::{self, PruneOptions, PrunePlan, PruneReport};
use coffer::{
    CheckOptions, CheckReport, Decision, Exclusive, GroupBy, Locked, ReadSubset, Repository, RetentionPolicy,
    SnapshotId,
};
use serde_json::{json, Value};

use super::args::{
    CheckArgs, ForgetArgs, PruneArgs, PruneOptionsArgs, RepairCommand, RepairIndexArgs, RepairSnapshotsArgs,
};
use super::output::{self, note};
use super::{exit, fail, Cli};

/// Paths listed per affected snapshot in text output without `-v`.
const PATHS_SHOWN: usize = 20;

/// Opens the repository even if some index objects are damaged: check reports them.
fn open_damaged(cli: &Cli) -> Result<Repository> {
    let backend = super::backend(cli, false)?;
    coffer::read_config(&*backend)?;
    let password = super::password::read(cli, false)?;
    let repository = Repository::open_damaged(backend, password.as_bytes(), super::cache_root(cli).as_deref())?.0;
    super::audit::opened(repository.backend().clone(), repository.master().clone());
    Ok(repository)
}

pub fn check(cli: &Cli, args: &CheckArgs) -> Result<i32> {
    let read_data = match (&args.read_data_subset, args.read_data) {
        (Some(subset), _) => Some(subset.parse::<ReadSubset>()?),
        (None, true) => Some(ReadSubset::All),
        (None, false) => None,
    };
    let repository = open_damaged(cli)?;
    let repository = repository.lock_shared()?;
    // Reading data takes long: a progress line (packs) on a terminal, JSON lines with --json.
    let reporter = read_data.and_then(|_| super::progress::Reporter::start_counting(cli, args.no_progress, "packs"));
    let progress = reporter.as_ref().map(|reporter| reporter.progress());
    // Each job reads one piece of a pack (a few MiB) at a time: as many as the storage
    // keeps requests in flight hides its latency (four were the limit on S3 before).
    let jobs = args.jobs.map_or_else(|| repository.backend().parallel_reads(), usize::from);
    let report = coffer::check(&repository, &CheckOptions { read_data, jobs, progress })?;
    if let Some(reporter) = reporter {
        reporter.finish();
    }
    let dumps = if args.pg { check_dumps(&repository)? } else { Vec::new() };
    if cli.json {
        let mut document = check_json(&report);
        document["pg_dumps"] = json!(dumps
            .iter()
            .map(|(snapshot, database, result)| match result {
                Ok(entries) =>
                    json!({"snapshot_id": snapshot, "database": database, "ok": true, "toc_entries": entries}),
                Err(error) => json!({"snapshot_id": snapshot, "database": database, "ok": false, "error": error}),
            })
            .collect::<Vec<_>>());
        output::json(&document);
    } else {
        print_check(cli, &report);
        for (snapshot, database, result) in &dumps {
            let snapshot = &snapshot[..snapshot.len().min(8)];
            match result {
                Ok(entries) => note(cli.quiet, &format!("dump of {database} in snapshot {snapshot}: pg_restore read it whole ({entries} table-of-contents entries)")),
                Err(error) => eprintln!("error: dump of {database} in snapshot {snapshot}: {error}"),
            }
        }
    }
    let bad_dumps = dumps.iter().filter(|(_, _, result)| result.is_err()).count();
    if bad_dumps > 0 && !report.is_damaged() {
        return fail(exit::DAMAGED, format!("{bad_dumps} PostgreSQL dump(s) failed pg_restore's test"));
    }
    if args.pg && dumps.is_empty() && !report.is_damaged() {
        return fail(exit::NOT_FOUND, "check --pg found no PostgreSQL dump to test: no readable snapshot holds one");
    }
    if !report.is_damaged() && !report.unreadable.is_empty() {
        let (pack, reason) = &report.unreadable[0];
        return fail(
            exit::UNREACHABLE,
            format!(
                "{} pack(s) could not be read and were not verified, the first {pack}: {reason}; no damage found in the rest",
                report.unreadable.len()
            ),
        );
    }
    if !report.is_damaged() {
        return Ok(exit::SUCCESS);
    }
    fail(
        exit::DAMAGED,
        format!(
            "check found {} damaged or missing object(s); {} snapshot(s) cannot be restored in full",
            report.damage.len(),
            report.affected.iter().filter(|affected| !affected.marked).count()
        ),
    )
}

/// A tested dump: snapshot, database, and table-of-contents entries or the error.
type DumpResult = (String, String, std::result::Result<usize, String>);

/// Tests the newest dump of each database (of each host): the newest snapshot need not
/// hold one, when files-only snapshots are taken more often than database ones.
fn check_dumps(repository: &coffer::Repository) -> Result<Vec<DumpResult>> {
    let (snapshots, _) = repository.list_snapshots()?;
    let mut newest = std::collections::BTreeMap::new();
    for (index, (_, snapshot)) in snapshots.iter().enumerate() {
        for source in &snapshot.sources {
            if let coffer::Source::Postgres(postgres) = source {
                newest.insert((snapshot.host.as_str(), postgres.database.as_str()), index);
            }
        }
    }
    let chosen: std::collections::BTreeSet<usize> = newest.values().copied().collect();
    let tools = coffer::pg::PgTools::default();
    let mut results = Vec::new();
    for index in chosen {
        let (id, snapshot) = &snapshots[index];
        let manifest = match repository.load_manifest(id, snapshot) {
            Ok(manifest) => manifest,
            Err(error) => {
                results.push((id.to_hex(), "(manifest)".into(), Err(error.to_string())));
                continue;
            }
        };
        for source in &snapshot.sources {
            let coffer::Source::Postgres(postgres) = source else { continue };
            if newest.get(&(snapshot.host.as_str(), postgres.database.as_str())) != Some(&index) {
                continue;
            }
            let tested =
                coffer::restorer::verify_pg_dump(repository, &manifest, postgres, &tools).map_err(|e| e.to_string());
            results.push((id.to_hex(), postgres.database.clone(), tested));
        }
    }
    Ok(results)
}

fn check_json(report: &CheckReport) -> Value {
    let damage: Vec<Value> = report
        .damage
        .iter()
        .map(|d| {
            let blobs: Vec<String> = d.lost_blobs.iter().map(|b| b.to_hex()).collect();
            json!({"object": d.object, "reason": d.reason, "lost_blobs": blobs})
        })
        .collect();
    let affected: Vec<Value> = report
        .affected
        .iter()
        .map(|a| {
            let paths: Vec<String> = a.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            json!({"snapshot_id": a.id.to_hex(), "time": a.time, "host": a.host, "manifest_lost": a.manifest_lost,
                "lost_blobs": a.lost_blobs, "files": a.files, "paths": paths, "marked_damaged": a.marked})
        })
        .collect();
    let unreadable: Vec<Value> =
        report.unreadable.iter().map(|(pack, reason)| json!({"object": pack, "reason": reason})).collect();
    json!({"type": "summary", "ok": !report.is_damaged() && report.unreadable.is_empty(), "index_object_count": report.index_objects, "pack_count": report.packs,
        "snapshot_count": report.snapshots, "packs_read": report.packs_read, "bytes_downloaded": report.bytes_read,
        "blobs_read": report.blobs_read, "damage": damage, "affected": affected, "warnings": report.warnings,
        "unreadable": unreadable})
}

fn print_check(cli: &Cli, report: &CheckReport) {
    note(
        cli.quiet,
        &format!(
            "checked {} index object(s), {} pack(s), {} snapshot(s); read {} pack(s) ({}, {} blobs)",
            report.index_objects,
            report.packs,
            report.snapshots,
            report.packs_read,
            output::size(report.bytes_read),
            report.blobs_read
        ),
    );
    for warning in &report.warnings {
        note(cli.quiet, &format!("warning: {warning}"));
    }
    for damage in &report.damage {
        output::line(&format!(
            "damaged: {}: {} ({} blob(s) lost)",
            damage.object,
            damage.reason,
            damage.lost_blobs.len()
        ));
    }
    for affected in &report.affected {
        let name = format!("snapshot {} ({}, {})", affected.id.short(), affected.time, affected.host);
        if let Some(reason) = &affected.manifest_lost {
            let marked = if affected.marked { " (marked damaged by repair snapshots)" } else { "" };
            output::line(&format!("{name}{marked}: nothing can be restored: {reason}"));
            continue;
        }
        let marked = if affected.marked { " (marked damaged by repair snapshots)" } else { "" };
        output::line(&format!("{name}{marked}: {} file(s) lose data:", affected.files));
        let shown = if cli.verbose > 0 { affected.paths.len() } else { PATHS_SHOWN };
        for path in affected.paths.iter().take(shown) {
            output::line(&format!("  {}", output::path_text(path)));
        }
        if affected.files > shown as u64 {
            let hint = if shown < affected.paths.len() { " (-v lists more)" } else { "" };
            output::line(&format!("  ... and {} more{hint}", affected.files - shown as u64));
        }
    }
    for (pack, reason) in &report.unreadable {
        eprintln!("error: {pack} could not be read, so it was not verified: {reason}");
    }
    if !report.is_damaged() {
        note(cli.quiet, "no damage found");
    }
}

pub fn forget(cli: &Cli, args: &ForgetArgs) -> Result<i32> {
    let policy = retention_policy(args)?;
    let group_by: GroupBy = args.group_by.parse()?;
    let named = !args.snapshots.is_empty();
    if named && !(policy.is_empty() && policy.safety.is_none()) {
        return fail(exit::USAGE, "give either snapshots to remove or a retention policy, not both");
    }
    if policy.is_empty() && !named {
        return fail(
            exit::USAGE,
            "no retention policy given: add at least one --keep-* option, or name the snapshots to remove",
        );
    }
    let repository = super::open(cli)?;
    let repository = repository.lock_exclusive()?;
    let (snapshots, damaged) = repository.list_snapshots()?;
    for error in &damaged {
        eprintln!("warning: {error} (not considered)");
    }
    let decisions = if named {
        named_decisions(&repository, &args.snapshots)?
    } else {
        coffer::apply_policy(&snapshots, &policy, group_by, &jiff::tz::TimeZone::system())?
    };
    if !args.allow_empty_groups && !named {
        refuse_emptied_groups(cli, &decisions, args.dry_run)?;
    }
    let removal =
        if args.dry_run { coffer::Removal::default() } else { coffer::remove_snapshots(&repository, &decisions)? };
    removal.removed.iter().for_each(super::audit::snapshot);
    let mut forgotten_json = print_decisions(cli, &decisions, args.dry_run, removal.removed.len());
    if !removal.locked.is_empty() {
        let latest = removal.locked.iter().map(|(_, until)| *until).max();
        if let Some(value) = &mut forgotten_json {
            value["locked"] = json!(removal
                .locked
                .iter()
                .map(|(id, until)| json!({"snapshot_id": id.to_hex(), "locked_until": until.to_string()}))
                .collect::<Vec<_>>());
        } else {
            note(
                cli.quiet,
                &format!(
                    "kept {} snapshot(s) under S3 Object Lock until {} at the latest; a forget after that removes them",
                    removal.locked.len(),
                    latest.map(|t| t.to_string()).unwrap_or_default()
                ),
            );
        }
    }
    if !args.prune {
        if let Some(value) = forgotten_json {
            output::json(&value);
        }
        return Ok(exit::SUCCESS);
    }
    let forgotten = if args.dry_run {
        decisions.iter().filter(|decision| !decision.keep).map(|decision| decision.id).collect()
    } else {
        HashSet::new()
    };
    let pruned = plan_and_prune(cli, &repository, &args.prune_options, args.dry_run, &forgotten)?;
    if let (Some(mut value), Some(pruned)) = (forgotten_json, pruned) {
        value["prune"] = pruned;
        output::json(&value);
    }
    Ok(exit::SUCCESS)
}

/// The decisions of `forget SNAP...`: each named snapshot removed.
fn named_decisions(repository: &Repository, specs: &[String]) -> Result<Vec<Decision>> {
    let mut decisions: Vec<Decision> = Vec::new();
    for spec in specs {
        let (id, snapshot) = repository.find_snapshot(spec)?;
        if decisions.iter().all(|decision| decision.id != id) {
            decisions.push(Decision {
                id,
                group: "named on the command line".into(),
                time: snapshot.time.clone(),
                keep: false,
                reasons: Vec::new(),
            });
        }
    }
    Ok(decisions)
}

/// Fails, removing nothing, if the decisions keep no snapshot of some group: that is
/// rarely meant (`--keep-last 0`), so it takes `--allow-empty-groups`. A dry run still
/// shows its plan first.
fn refuse_emptied_groups(cli: &Cli, decisions: &[Decision], dry_run: bool) -> Result<()> {
    let emptied = coffer::emptied_groups(decisions);
    let Some((group, count)) = emptied.first() else { return Ok(()) };
    if dry_run {
        if let Some(value) = print_decisions(cli, decisions, true, 0) {
            output::json(&value);
        }
    }
    let others = match emptied.len() {
        1 => String::new(),
        n => format!(" and {} other group(s)", n - 1),
    };
    fail(
        exit::USAGE,
        format!(
            "refused: the policy keeps none of the {count} snapshot(s) of group \"{group}\"{others}; nothing was removed (check the --keep-* values, or add --allow-empty-groups to remove them)"
        ),
    )
}

fn retention_policy(args: &ForgetArgs) -> Result<RetentionPolicy> {
    Ok(RetentionPolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within: args.keep_within.as_deref().map(coffer::parse_duration).transpose()?,
        tags: args.keep_tags.clone(),
        safety: args.keep_safety.as_deref().map(coffer::parse_duration).transpose()?,
    })
}

/// Prints the decisions as text, or returns them as JSON for the caller to print.
fn print_decisions(cli: &Cli, decisions: &[Decision], dry_run: bool, removed: usize) -> Option<Value> {
    let removing = decisions.iter().filter(|decision| !decision.keep).count();
    if cli.json {
        let list: Vec<Value> = decisions
            .iter()
            .map(|d| json!({"snapshot_id": d.id.to_hex(), "time": d.time, "group": d.group, "keep": d.keep, "reasons": d.reasons}))
            .collect();
        return Some(json!({"dry_run": dry_run, "snapshots": list, "removed": removed}));
    }
    let mut group = None;
    for decision in decisions.iter().filter(|_| !cli.quiet) {
        if group != Some(&decision.group) {
            output::line(&format!("group: {}", decision.group));
            group = Some(&decision.group);
        }
        let action = if decision.keep { "keep" } else { "remove" };
        output::line(&format!(
            "  {}  {:<24}  {action:<6}  {}",
            decision.id.short(),
            decision.time,
            decision.reasons.join(", ")
        ));
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    let count = if dry_run { removing } else { removed };
    note(cli.quiet, &format!("{verb} {count} of {} snapshot(s)", decisions.len()));
    None
}

pub fn prune(cli: &Cli, args: &PruneArgs) -> Result<i32> {
    let repository = super::open(cli)?;
    let repository = repository.lock_exclusive()?;
    if let Some(value) = plan_and_prune(cli, &repository, &args.options, args.dry_run, &HashSet::new())? {
        output::json(&value);
    }
    Ok(exit::SUCCESS)
}

/// Plans a prune, prints the plan (or returns it as JSON), and executes it unless this
/// is a dry run.
fn plan_and_prune(
    cli: &Cli,
    repository: &Locked<'_, Exclusive>,
    args: &PruneOptionsArgs,
    dry_run: bool,
    forgotten: &HashSet<SnapshotId>,
) -> Result<Option<Value>> {
    if !(0.0..=100.0).contains(&args.max_unused) {
        return fail(exit::USAGE, format!("--max-unused {} must be a percentage from 0 to 100", args.max_unused));
    }
    let options = PruneOptions {
        max_unused: args.max_unused / 100.0,
        max_repack_size: args.max_repack_size.map(|mebibytes| mebibytes.saturating_mul(1024 * 1024)),
        unindexed_age: std::time::Duration::from_secs(args.unindexed_age.saturating_mul(60)),
    };
    let plan = prune::plan(repository, &options, forgotten)?;
    let report = if dry_run { None } else { Some(prune::execute(repository, &plan)?) };
    Ok(print_prune(cli, &plan, report.as_ref()))
}

/// Prints a prune's plan and outcome as text, or returns them as JSON.
fn print_prune(cli: &Cli, plan: &PrunePlan, report: Option<&PruneReport>) -> Option<Value> {
    let deleted = plan.delete.len() + plan.unindexed.len();
    if cli.json {
        let mut value = json!({"dry_run": report.is_none(), "snapshot_count": plan.snapshots, "used_blobs": plan.used_blobs,
            "packs_kept": plan.keep.len(), "packs_deleted": deleted, "packs_unindexed": plan.unindexed.len(),
            "packs_unindexed_kept": plan.recent_unindexed,
            "packs_repacked": plan.repack.len(), "bytes_deleted": plan.bytes_deleted(), "bytes_repacked": plan.bytes_repacked(),
            "bytes_freed": plan.bytes_freed(), "index_objects_replaced": if plan.rewrite_index { plan.old_indexes.len() } else { 0 },
            "packs_locked": plan.locked.len(), "bytes_locked": plan.bytes_locked(),
            "index_objects_locked": plan.locked_indexes.len(),
            "locked_until": plan.locked_until.map(|t| t.to_string())});
        if let Some(report) = report {
            value["packs_written"] = json!(report.packs_written);
            value["bytes_written"] = json!(report.bytes_written);
            value["uploads_aborted"] = json!(report.uploads_aborted);
        }
        return Some(value);
    }
    if cli.quiet {
        return None;
    }
    let verb = if report.is_some() { "" } else { "would " };
    output::line(&format!(
        "{verb}delete {deleted} pack(s) ({}; {} in no index), {verb}repack {} pack(s) ({}), keep {}; frees about {}",
        output::size(plan.bytes_deleted()),
        plan.unindexed.len(),
        plan.repack.len(),
        output::size(plan.bytes_repacked()),
        plan.keep.len(),
        output::size(plan.bytes_freed())
    ));
    if plan.rewrite_index {
        output::line(&format!("{verb}replace {} index object(s) with new ones", plan.old_indexes.len()));
    }
    if plan.recent_unindexed > 0 {
        output::line(&format!(
            "kept {} pack(s) in no index younger than --unindexed-age (a backup may be writing them)",
            plan.recent_unindexed
        ));
    }
    if let Some(until) = plan.locked_until {
        output::line(&format!(
            "kept {} pack(s) ({}) and {} index object(s) under S3 Object Lock until {until} at the latest; a prune after that removes them",
            plan.locked.len(),
            output::size(plan.bytes_locked()),
            plan.locked_indexes.len()
        ));
    }
    if let Some(report) = report {
        note(
            cli.quiet,
            &format!("wrote {} new pack(s) ({})", report.packs_written, output::size(report.bytes_written)),
        );
        if report.uploads_aborted > 0 {
            note(cli.quiet, &format!("aborted {} unfinished upload(s) older than a day", report.uploads_aborted));
        }
    }
    None
}

pub fn repair(cli: &Cli, what: &RepairCommand) -> Result<i32> {
    match what {
        RepairCommand::Index(args) => repair_index(cli, args),
        RepairCommand::Snapshots(args) => repair_snapshots(cli, args),
    }
}

fn repair_snapshots(cli: &Cli, args: &RepairSnapshotsArgs) -> Result<i32> {
    let repository = open_damaged(cli)?;
    // Exclusive even for a dry run: the report must not change under it.
    let repository = repository.lock_exclusive()?;
    let read_data = args.read_data.then_some(ReadSubset::All);
    let report = coffer::check(&repository, &CheckOptions { read_data, jobs: args.jobs as usize, progress: None })?;
    let repairs = coffer::repair_snapshots(&repository, &report, args.forget, args.apply)?;
    let action = match (args.apply, args.forget) {
        (true, true) => "dropped",
        (true, false) => "marked damaged",
        (false, true) => "would drop",
        (false, false) => "would mark damaged",
    };
    if cli.json {
        let items: Vec<Value> = repairs
            .iter()
            .map(|r| json!({"snapshot_id": r.old.to_hex(), "replaced_by_snapshot_id": r.new.map(|id| id.to_hex()), "lost_files": r.lost_files, "manifest_lost": r.manifest_lost}))
            .collect();
        output::json(&json!({"apply": args.apply, "forget": args.forget, "action": action, "snapshots": items}));
    } else {
        for repair in &repairs {
            let loss = if repair.manifest_lost {
                "its manifest is lost".to_string()
            } else {
                format!("{} file(s) lose data", repair.lost_files)
            };
            output::line(&format!("{action} snapshot {}: {loss}", repair.old.short()));
        }
        note(cli.quiet, &format!("{} snapshot(s) {action}", repairs.len()));
        if !args.apply && !repairs.is_empty() {
            note(cli.quiet, "nothing was changed; run again with --apply to do it");
        }
    }
    Ok(exit::SUCCESS)
}

fn repair_index(cli: &Cli, args: &RepairIndexArgs) -> Result<i32> {
    let repository = open_damaged(cli)?;
    let repository = repository.lock_exclusive()?;
    if !args.dry_run {
        repository.ensure_may_delete(coffer::objects::Kind::Index, "repair index")?;
    }
    let report = coffer::repair_index(&repository, args.jobs as usize, args.dry_run)?;
    for (pack, reason) in &report.unreadable {
        eprintln!("warning: {} is left out: {reason}", coffer::pack_key(pack));
    }
    if cli.json {
        let unreadable: Vec<Value> =
            report.unreadable.iter().map(|(pack, reason)| json!({"pack": pack.to_hex(), "reason": reason})).collect();
        let replaced: Vec<String> = report.replaced.iter().map(|id| id.to_hex()).collect();
        output::json(&json!({"dry_run": args.dry_run, "pack_count": report.packs, "blob_count": report.blobs,
            "unreadable": unreadable, "written": report.written.iter().map(|id| id.to_hex()).collect::<Vec<_>>(), "replaced": replaced}));
    } else {
        let verb = if args.dry_run { "would replace" } else { "replaced" };
        note(
            cli.quiet,
            &format!(
                "read the headers of {} pack(s) ({} blobs); {verb} {} index object(s) with one",
                report.packs,
                report.blobs,
                report.replaced.len()
            ),
        );
    }
    Ok(exit::SUCCESS)
}
