//! Database restores and the PostgreSQL lines of snapshot listings.

use anyhow::Result;
use coffer::pg::{ConnInfo, PgRestoreOptions, PgTools};
use coffer::{Manifest, Repository, Snapshot, SnapshotId, Source};
use serde_json::json;

use super::args::RestoreArgs;
use super::output::{self, note};
use super::{exit, Cli};

/// `restore SNAP --pg-target CONNINFO ...`: the dump goes into pg_restore.
pub fn restore(
    cli: &Cli,
    args: &RestoreArgs,
    repository: &Repository,
    manifest: &Manifest,
    (id, snapshot): (&SnapshotId, &Snapshot),
) -> Result<i32> {
    let source = coffer::restorer::select_source(snapshot, args.pg_database.as_deref())?;
    let options = PgRestoreOptions {
        conninfo: ConnInfo::parse(args.pg_target.as_deref().unwrap_or_default())?,
        tables: args.pg_tables.clone(),
        create: args.pg_create,
        clean: args.pg_clean,
        jobs: args.jobs.max(1),
        list: args.dry_run,
        to_file: None,
        no_owner: false,
    };
    let tools = PgTools::default();
    if !args.dry_run {
        return restore_safely(cli, args, repository, (id, manifest, source), &options, &tools);
    }
    // A dry run: pg_restore lists what it would restore.
    let report = coffer::restorer::restore_postgres(repository, manifest, source, &options, &tools, args.force)?;
    if cli.json {
        output::json(&json!({"dry_run": true, "database": report.database, "table_of_contents": report.output}));
    } else {
        output::line(report.output.trim_end());
    }
    Ok(exit::SUCCESS)
}

/// A database restore with a safety dump of the target first, rolled back if
/// pg_restore fails outside one transaction.
fn restore_safely(
    cli: &Cli,
    args: &RestoreArgs,
    repository: &Repository,
    (id, manifest, source): (&SnapshotId, &Manifest, &coffer::PostgresSource),
    options: &PgRestoreOptions,
    tools: &PgTools,
) -> Result<i32> {
    let quiet = cli.quiet || cli.json;
    if args.no_safety {
        note(quiet, "no safety dump (--no-safety): the target database cannot be rolled back");
    }
    let mut announce = |started: &coffer::restorer::safety::Started| {
        if let Some(safety) = started.safety {
            let id = started.id.short();
            note(
                quiet,
                &format!(
                    "restore {id}: safety snapshot {} holds a dump of {} as it is now ({} relations); undo with `coffer restore --rollback {id} --pg-target ...`",
                    safety.short(),
                    options.conninfo,
                    started.touched
                ),
            );
        }
    };
    let outcome = coffer::restorer::pg_safety::restore_database(
        repository,
        id,
        (manifest, source),
        options,
        tools,
        args.force,
        !args.no_safety,
        &mut announce,
    )?;
    super::audit::snapshot(id);
    super::audit::restore(&outcome.started.id);
    super::audit::sha256(&source.path, &source.sha256);
    if let Some(rollback) = &outcome.rollback {
        for failure in &rollback.failures {
            eprintln!("error: rollback: {failure}");
        }
        if rollback.failures.is_empty() {
            note(
                quiet,
                &format!(
                    "rolled back: {} relation(s) the restore created were dropped and the database was restored from safety snapshot {}",
                    rollback.removed,
                    outcome.started.safety.map(|id| id.short()).unwrap_or_default()
                ),
            );
        }
    }
    if let Some(error) = outcome.error {
        let suffix = match &outcome.rollback {
            Some(done) if done.failures.is_empty() => "; the database was put back as it was from the safety dump",
            Some(_) => "; putting the database back failed (see above)",
            None => "",
        };
        let code = match &outcome.rollback {
            Some(done) if !done.failures.is_empty() => exit::POSTGRES,
            _ => exit::code_of(&error),
        };
        return super::fail(code, format!("{error}{suffix}"));
    }
    let report = outcome.report.unwrap_or_default();
    if cli.json {
        output::json(
            &json!({"restore_id": outcome.started.id.to_hex(), "safety_snapshot_id": outcome.started.safety.map(|id| id.to_hex()),
            "database": report.database, "bytes_restored": report.bytes, "tables": options.tables, "single_transaction": options.single_transaction()}),
        );
    } else {
        let target =
            if args.pg_create { "a new database of that name".to_string() } else { options.conninfo.to_string() };
        note(
            cli.quiet,
            &format!(
                "restored the dump of database {} ({}) into {target} with pg_restore",
                report.database,
                output::size(report.bytes)
            ),
        );
    }
    Ok(exit::SUCCESS)
}

/// Indented lines describing a snapshot's database dumps, for `snapshots`.
pub fn describe_sources(snapshot: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    for source in &snapshot.sources {
        let Source::Postgres(postgres) = source else { continue };
        let mut line = format!(
            "          postgres {}: server {}, {} dump at {}, sha256 {}",
            postgres.database,
            postgres.server_version,
            output::size(postgres.size),
            postgres.path,
            postgres.sha256.chars().take(16).collect::<String>()
        );
        for state in &postgres.migrations {
            line.push_str(&format!(
                ", {} {}",
                state.source,
                state.latest.first().map(String::as_str).unwrap_or("(empty)")
            ));
        }
        lines.push(line);
    }
    lines
}
