//! `coffer drill`: proof that the backups restore. A random sample of the latest
//! snapshot's files is restored into a scratch folder and every byte checked against
//! the manifest's SHA-256; each database dump is restored into a scratch database
//! (created and dropped by the drill) or, without one, read whole and listed by
//! pg_restore. The report says what was proved and, at the measured rate, how long a
//! full restore of the snapshot would take.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use coffer::pg::{ConnInfo, PgRestoreOptions, PgTools};
use coffer::restorer::{self, Overwrite, RestoreOptions};
use coffer::{EntryKind, Source};
use rand::seq::IndexedRandom;
use serde_json::json;

use super::args::{Cli, DrillArgs};
use super::output::{self, note};
use super::{exit, fail};

/// "5%" (or "5") as a share in percent, above 0 and at most 100.
pub fn parse_sample(text: &str) -> Option<f64> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim());
    let share: f64 = number.trim().parse().ok()?;
    (share > 0.0 && share <= 100.0).then_some(share)
}

/// One database of the snapshot, as the drill found it.
struct DatabaseResult {
    database: String,
    bytes: u64,
    seconds: f64,
    /// What was proved, or why not (with the exit code that says what kind of failure).
    outcome: std::result::Result<String, (i32, String)>,
}

/// The exit code of a restore failure's cause.
fn code_of_cause(cause: coffer::restorer::FailureCause) -> i32 {
    use coffer::restorer::FailureCause;
    match cause {
        FailureCause::Damage => exit::DAMAGED,
        FailureCause::Unreachable => exit::UNREACHABLE,
        FailureCause::Storage => exit::FAILURE,
        FailureCause::Denied => exit::ACCESS_DENIED,
        FailureCause::LocalIo => exit::LOCAL_IO,
    }
}

/// The most serious of the drill's failures: damage first (what a drill is for), then
/// the storage, the database, the local disk.
fn worst(codes: &[i32]) -> Option<i32> {
    const ORDER: [i32; 6] =
        [exit::DAMAGED, exit::UNREACHABLE, exit::ACCESS_DENIED, exit::POSTGRES, exit::LOCAL_IO, exit::FAILURE];
    ORDER.iter().copied().find(|code| codes.contains(code)).or_else(|| codes.first().copied())
}

pub fn drill(cli: &Cli, args: &DrillArgs) -> Result<i32> {
    let profile = cli.loaded_profile.as_ref();
    let sample_text = args.sample.clone();
    let sample = match &sample_text {
        Some(text) => match parse_sample(text) {
            Some(share) => share,
            None => return fail(exit::USAGE, format!("--sample {text:?} is not a share of files such as 5%")),
        },
        None => profile.and_then(|p| p.drill_sample).unwrap_or(5.0),
    };
    let scratch_parent = args
        .scratch_dir
        .clone()
        .or_else(|| profile.and_then(|p| p.drill_scratch_dir.clone()))
        .unwrap_or_else(std::env::temp_dir);
    let pg_scratch = args.pg_scratch.clone().or_else(|| profile.and_then(|p| p.drill_pg_scratch.clone()));
    // The profile's PostgreSQL password source serves the scratch database too.
    let passfile = match (&pg_scratch, profile) {
        (Some(_), Some(profile)) => profile.passfile()?,
        _ => None,
    };
    let pg_scratch = match (&pg_scratch, &passfile) {
        (Some(text), Some(path)) => Some(super::profile::with_passfile(text, path)),
        _ => pg_scratch,
    };
    let pg_scratch = pg_scratch.as_deref().map(ConnInfo::parse).transpose()?;

    let repository = super::open(cli)?;
    let _lock = repository.lock_shared()?;
    let spec = args.snapshot.clone().unwrap_or_else(|| "latest".into());
    let filter = coffer::SnapshotFilter {
        hosts: profile.and_then(|p| p.host.clone()).into_iter().collect(),
        ..Default::default()
    };
    let (id, snapshot) = repository.find_snapshot_filtered(&spec, &filter)?;
    super::audit::snapshot(&id);
    let manifest = repository.load_manifest(&id, &snapshot)?;
    let (_, _, total_bytes) = manifest.totals()?;
    let files: Vec<(i64, u64)> = manifest
        .entries_under(b"/")?
        .into_iter()
        .filter(|(_, entry)| entry.kind == EntryKind::File)
        .map(|(entry_id, entry)| (entry_id, entry.size))
        .collect();
    let wanted = ((files.len() as f64 * sample / 100.0).ceil() as usize).min(files.len());
    let chosen: HashSet<i64> = files.choose_multiple(&mut rand::rng(), wanted).map(|(entry_id, _)| *entry_id).collect();
    let sampled_bytes: u64 = files.iter().filter(|(entry_id, _)| chosen.contains(entry_id)).map(|(_, size)| size).sum();

    std::fs::create_dir_all(&scratch_parent)
        .map_err(|e| coffer::Error::io("cannot make the drill's scratch folder in", &scratch_parent, e))?;
    let scratch = tempfile::Builder::new()
        .prefix("coffer-drill-")
        .tempdir_in(&scratch_parent)
        .map_err(|e| coffer::Error::io("cannot make the drill's scratch folder in", &scratch_parent, e))?;
    let begun = Instant::now();
    let mut failed: Vec<String> = Vec::new();
    let mut codes: Vec<i32> = Vec::new();
    let mut restored_files = 0;
    if !chosen.is_empty() {
        let options = RestoreOptions {
            target: scratch.path().to_path_buf(),
            verify: true,
            // The scratch copy is thrown away: waiting for the disk proves nothing.
            no_sync: true,
            overwrite: Overwrite::Always,
            only: Some(Arc::new(chosen)),
            ..Default::default()
        };
        let plan = restorer::plan(&repository, &manifest, &options)?;
        match restorer::execute(&repository, &plan, &options) {
            Ok(report) => {
                restored_files = report.files;
                let shown = scratch.path().display().to_string();
                failed.extend(
                    report.failed.iter().map(|f| {
                        format!("{}: {}", original_path(&f.path, scratch.path()), f.reason.replace(&shown, ""))
                    }),
                );
                codes.extend(report.failed.iter().map(|f| code_of_cause(f.cause)));
            }
            // Stopped by a signal: the drill proved nothing, and says so by the signal.
            Err(error @ coffer::Error::Interrupted { .. }) => return Err(error.into()),
            Err(error) => {
                codes.push(exit::code_of(&error));
                failed.push(error.to_string());
            }
        }
    }
    let file_seconds = begun.elapsed().as_secs_f64();

    let tools = PgTools::default();
    let mut databases = Vec::new();
    for source in &snapshot.sources {
        let Source::Postgres(postgres) = source else { continue };
        let begun = Instant::now();
        let outcome = match &pg_scratch {
            Some(maintenance) => restore_into_scratch(&repository, &manifest, postgres, maintenance, &tools),
            None => restorer::verify_pg_dump(&repository, &manifest, postgres, &tools)
                .map(|entries| {
                    format!("dump read whole, SHA-256 matches, pg_restore lists {entries} entries (no scratch database: not restored)")
                })
                .map_err(|e| (exit::code_of(&e), e.to_string())),
        };
        if let Some(signal) = coffer::interrupt::requested() {
            return Err(coffer::Error::Interrupted { signal, outcome: "the drill stopped".into() }.into());
        }
        if let Err((code, _)) = &outcome {
            codes.push(*code);
        }
        databases.push(DatabaseResult {
            database: postgres.database.clone(),
            bytes: postgres.size,
            seconds: begun.elapsed().as_secs_f64(),
            outcome,
        });
    }
    let kept = args.keep.then(|| scratch.keep());

    // The rate of this drill, applied to the whole snapshot: files at the files' rate,
    // each dump at its own.
    let file_rate = (sampled_bytes as f64 / file_seconds.max(0.001)).max(1.0);
    let database_seconds: f64 = databases.iter().filter(|d| d.outcome.is_ok()).map(|d| d.seconds).sum();
    let rto_seconds = if sampled_bytes > 0 { total_bytes as f64 / file_rate } else { 0.0 } + database_seconds;
    let failures = failed.len() + databases.iter().filter(|d| d.outcome.is_err()).count();
    let proved = format!(
        "{restored_files} of {} file(s) ({} of {}) of snapshot {} restored and verified byte for byte against the manifest's SHA-256",
        files.len(),
        output::size(sampled_bytes),
        output::size(total_bytes),
        id.short()
    );
    let rto = format!(
        "a full restore of this snapshot would take about {} at the measured {}/s{}",
        human_duration(rto_seconds),
        output::size(file_rate as u64),
        if databases.is_empty() { String::new() } else { " (databases at their own measured time)".into() }
    );
    super::notify::detail(&proved);
    for database in &databases {
        match &database.outcome {
            Ok(text) => super::notify::detail(&format!("database {}: {text}", database.database)),
            Err((_, error)) => super::notify::detail(&format!("database {}: FAILED: {error}", database.database)),
        }
    }
    for failure in &failed {
        super::notify::detail(&format!("FAILED: {failure}"));
    }
    super::notify::detail(&rto);
    super::audit::bytes(sampled_bytes);
    if cli.json {
        output::json(&json!({
            "snapshot_id": id.to_hex(),
            "sample_percent": sample,
            "files_total": files.len(),
            "files_sampled": wanted,
            "files_verified": restored_files,
            "bytes_sampled": sampled_bytes,
            "bytes_total": total_bytes,
            "duration_seconds": file_seconds,
            "bytes_per_second": file_rate,
            "databases": databases.iter().map(|d| json!({
                "database": d.database, "bytes": d.bytes, "duration_seconds": d.seconds,
                "ok": d.outcome.is_ok(), "result": match &d.outcome { Ok(text) => text, Err((_, text)) => text },
            })).collect::<Vec<_>>(),
            "failures": failed,
            "rto_seconds": rto_seconds,
            "scratch_dir": kept,
            "ok": failures == 0,
        }));
    } else {
        output::line(&format!(
            "drill of snapshot {} ({} on {}):",
            id.short(),
            output::short_time(&snapshot),
            snapshot.host
        ));
        output::line(&format!("  {proved}"));
        for database in &databases {
            match &database.outcome {
                Ok(text) => output::line(&format!("  database {}: {text}", database.database)),
                Err((_, error)) => output::line(&format!("  database {}: FAILED: {error}", database.database)),
            }
        }
        for failure in &failed {
            output::line(&format!("  FAILED: {failure}"));
        }
        output::line(&format!("  {rto}"));
        if let Some(path) = &kept {
            note(cli.quiet, &format!("the scratch folder stays at {}", path.display()));
        }
    }
    if let Some(code) = worst(&codes) {
        let what = if code == exit::DAMAGED {
            format!("{failures} file(s) or database(s) did not restore intact")
        } else {
            format!("{failures} file(s) or database(s) could not be restored, which proves nothing about the repository (see above)")
        };
        return fail(code, format!("the drill of snapshot {} failed: {what}", id.short()));
    }
    Ok(exit::SUCCESS)
}

/// A path in the scratch folder as it was in the snapshot.
fn original_path(path: &std::path::Path, scratch: &std::path::Path) -> String {
    match path.strip_prefix(scratch) {
        Ok(relative) => format!("/{}", relative.display()),
        Err(_) => path.display().to_string(),
    }
}

/// Restores a dump into a new scratch database, counts its tables and rows, drops it.
fn restore_into_scratch(
    repository: &coffer::Repository,
    manifest: &coffer::Manifest,
    source: &coffer::PostgresSource,
    maintenance: &ConnInfo,
    tools: &PgTools,
) -> std::result::Result<String, (i32, String)> {
    let name = format!("coffer_drill_{}", hex::encode(rand::random::<[u8; 4]>()));
    let postgres = |e: coffer::Error| (exit::code_of(&e), e.to_string());
    coffer::pg::query(tools, maintenance, &format!("CREATE DATABASE {name}"))
        .map_err(|e| (exit::POSTGRES, format!("cannot create the scratch database {name}: {e}")))?;
    let result = (|| {
        let target = maintenance.with_dbname(&name);
        // The scratch role need not own what the dump's roles owned.
        let options = PgRestoreOptions { conninfo: target.clone(), jobs: 1, no_owner: true, ..Default::default() };
        let report =
            restorer::restore_postgres(repository, manifest, source, &options, tools, true).map_err(postgres)?;
        let restored = coffer::pg::table_checksums(tools, &target).map_err(postgres)?;
        let rows: u64 = restored.iter().map(|t| t.rows).sum();
        let Some(recorded) = &source.tables else {
            return Ok(format!(
                "dump ({}) restored into scratch database {name} by pg_restore without error: {} table(s), {rows} row(s) (no table checksums were recorded at backup); dropped again",
                output::size(report.bytes),
                restored.len()
            ));
        };
        let mut differing = Vec::new();
        for table in recorded {
            match restored.iter().find(|t| t.table == table.table) {
                Some(found) if found == table => {}
                Some(found) => differing.push(format!(
                    "{}: {} row(s) at backup, {} after the restore{}",
                    table.table,
                    table.rows,
                    found.rows,
                    if found.rows == table.rows { " (same count, different content)" } else { "" }
                )),
                None => differing.push(format!("{}: missing after the restore", table.table)),
            }
        }
        for table in restored.iter().filter(|t| !recorded.iter().any(|r| r.table == t.table)) {
            differing.push(format!("{}: not in the database at backup time", table.table));
        }
        if !differing.is_empty() {
            return Err((
                exit::DAMAGED,
                format!("the restored tables differ from the backup: {}", differing.join("; ")),
            ));
        }
        Ok(format!(
            "dump ({}) restored into scratch database {name}: all {} table(s), {rows} row(s), match the row counts and checksums recorded at backup; dropped again",
            output::size(report.bytes),
            restored.len()
        ))
    })();
    let dropped = coffer::pg::query(tools, maintenance, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    match (result, dropped) {
        (Ok(text), Ok(_)) => Ok(text),
        (Ok(_), Err(error)) => {
            Err((exit::POSTGRES, format!("the scratch database {name} could not be dropped: {error}")))
        }
        (Err(error), _) => Err(error),
    }
}

/// 3725 s -> "1 h 2 min".
fn human_duration(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    match seconds {
        0..=59 => format!("{seconds} s"),
        60..=3599 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_shares_of_at_most_all() {
        assert_eq!(parse_sample("5%"), Some(5.0));
        assert_eq!(parse_sample("100"), Some(100.0));
        assert_eq!(parse_sample("0%"), None);
        assert_eq!(parse_sample("150%"), None);
        assert_eq!(parse_sample("five"), None);
    }

    #[test]
    fn the_scratch_database_keeps_the_password_and_replaces_the_name() {
        let given = ConnInfo::parse("postgresql://app:s3cret@db:5433/postgres?sslmode=require").unwrap();
        let scratch = given.with_dbname("coffer_drill_1");
        assert_eq!(scratch.get("dbname"), Some("coffer_drill_1"));
        assert_eq!(scratch.get("port"), Some("5433"));
        assert_eq!(scratch.password(), Some("s3cret"));
        assert!(!scratch.argument().to_string_lossy().contains("s3cret"));
    }

    #[test]
    fn damage_outranks_other_failures() {
        assert_eq!(worst(&[exit::LOCAL_IO, exit::DAMAGED, exit::POSTGRES]), Some(exit::DAMAGED));
        assert_eq!(worst(&[exit::LOCAL_IO, exit::POSTGRES]), Some(exit::POSTGRES));
        assert_eq!(worst(&[]), None);
    }
}
