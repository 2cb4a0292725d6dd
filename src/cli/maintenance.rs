//! Maintenance commands: check, forget and prune.

use anyhow::Result;
use coffer::{CheckOptions, CheckReport, ReadSubset, Repository};
use serde_json::{json, Value};

use super::args::{CheckArgs, ForgetArgs, PruneArgs};
use super::output::{self, note};
use super::{exit, fail, Cli};

/// Paths listed per affected snapshot in text output without `-v`.
const PATHS_SHOWN: usize = 20;

/// Opens the repository even if some index objects are damaged: check reports them.
fn open_damaged(cli: &Cli) -> Result<Repository> {
    let backend = super::backend(cli, false)?;
    coffer::read_config(&*backend)?;
    let password = super::password::read(cli, false)?;
    Ok(Repository::open_damaged(backend, password.as_bytes(), super::cache_root(cli).as_deref())?.0)
}

pub fn check(cli: &Cli, args: &CheckArgs) -> Result<i32> {
    let read_data = match (&args.read_data_subset, args.read_data) {
        (Some(subset), _) => Some(subset.parse::<ReadSubset>()?),
        (None, true) => Some(ReadSubset::All),
        (None, false) => None,
    };
    let repository = open_damaged(cli)?;
    let _lock = repository.lock(false)?;
    let report = coffer::check(&repository, &CheckOptions { read_data, jobs: args.jobs as usize })?;
    if cli.json {
        output::json(&check_json(&report));
    } else {
        print_check(cli, &report);
    }
    if !report.is_damaged() {
        return Ok(exit::SUCCESS);
    }
    fail(
        exit::DAMAGED,
        format!(
            "check found {} damaged or missing object(s); {} snapshot(s) cannot be restored in full",
            report.damage.len(),
            report.affected.len()
        ),
    )
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
            json!({"snapshot": a.id.to_hex(), "time": a.time, "host": a.host, "manifest_lost": a.manifest_lost,
                "lost_blobs": a.lost_blobs, "paths": paths})
        })
        .collect();
    json!({"ok": !report.is_damaged(), "index_objects": report.index_objects, "packs": report.packs,
        "snapshots": report.snapshots, "packs_read": report.packs_read, "bytes_read": report.bytes_read,
        "blobs_read": report.blobs_read, "damage": damage, "affected": affected, "warnings": report.warnings})
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
            output::line(&format!("{name}: nothing can be restored: {reason}"));
            continue;
        }
        output::line(&format!("{name}: {} file(s) lose data:", affected.paths.len()));
        let shown = if cli.verbose > 0 { affected.paths.len() } else { PATHS_SHOWN };
        for path in affected.paths.iter().take(shown) {
            output::line(&format!("  {}", output::path_text(path)));
        }
        if affected.paths.len() > shown {
            output::line(&format!("  ... and {} more (-v lists all)", affected.paths.len() - shown));
        }
    }
    if !report.is_damaged() {
        note(cli.quiet, "no damage found");
    }
}

pub fn forget(_cli: &Cli, _args: &ForgetArgs) -> Result<i32> {
    fail(exit::FAILURE, "forget is not implemented yet")
}

pub fn prune(_cli: &Cli, _args: &PruneArgs) -> Result<i32> {
    fail(exit::FAILURE, "prune is not implemented yet")
}
