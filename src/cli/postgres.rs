//! Database restores and the PostgreSQL lines of snapshot listings.

use anyhow::Result;
use coffer::pg::{ConnInfo, PgRestoreOptions, PgTools};
use coffer::{Manifest, Repository, Snapshot, Source};
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
    snapshot: &Snapshot,
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
    };
    let report =
        coffer::restorer::restore_postgres(repository, manifest, source, &options, &PgTools::default(), args.force)?;
    if args.dry_run {
        if cli.json {
            output::json(&json!({"dry_run": true, "database": report.database, "table_of_contents": report.output}));
        } else {
            output::line(report.output.trim_end());
        }
        return Ok(exit::SUCCESS);
    }
    if cli.json {
        output::json(
            &json!({"database": report.database, "bytes": report.bytes, "tables": options.tables, "single_transaction": options.single_transaction()}),
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
