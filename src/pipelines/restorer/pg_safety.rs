//! Database restores that can be undone. Before `restore --pg-target` writes into a
//! database that holds relations, that database is dumped (the same pg_dump path as
//! `backup --pg`) into a snapshot tagged `safety`, and a restore record names it with
//! the relations the database held. If pg_restore then fails outside one transaction
//! (`--jobs`), what it created is dropped and the safety dump is restored over what it
//! changed (`pg_restore --clean --if-exists --single-transaction`); `restore
//! --rollback ID --pg-target CONNINFO` does the same after a kill.

use std::collections::HashSet;

use super::postgres::{restore_postgres, select_source, PgRestoreReport};
use super::safety::{safety_backup, save_outcome, settle, Rollback, Started};
use crate::error::{Error, Result};
use crate::id::{RestoreId, SnapshotId};
use crate::pipelines::archiver::BackupOptions;
use crate::pipelines::pg::{self, ConnInfo, PgBackupOptions, PgRestoreOptions, PgTools};
use crate::repository::manifest::Manifest;
use crate::repository::snapshot::PostgresSource;
use crate::repository::{Repository, RestoreOutcome, RestoreRecord};

/// How a database restore run through [`restore_database`] ended.
#[derive(Debug)]
pub struct SafePgRestore {
    pub started: Started,
    pub report: Option<PgRestoreReport>,
    pub error: Option<Error>,
    pub rollback: Option<Rollback>,
}

/// The relations of the database's own schemas: `kind schema name`, one per relation,
/// and `n schema` for each schema.
fn relations(tools: &PgTools, conninfo: &ConnInfo) -> Result<Vec<String>> {
    let user_schema = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
                       AND n.nspname NOT LIKE 'pg\\_temp%'";
    let sql = format!(
        "SELECT c.relkind::text, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {user_schema} \
         UNION ALL SELECT 'n', n.nspname, '' FROM pg_namespace n WHERE {user_schema}"
    );
    let rows = pg::query(tools, conninfo, &sql)?;
    Ok(rows.into_iter().filter(|row| row.len() == 3).map(|row| row.join("\u{1f}")).collect())
}

/// `"name"` with quotes doubled.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The statement dropping one relation or schema named as [`relations`] gives it.
fn drop_statement(relation: &str) -> Option<String> {
    let parts: Vec<&str> = relation.split('\u{1f}').collect();
    let [kind, schema, name] = parts[..] else { return None };
    let qualified = format!("{}.{}", identifier(schema), identifier(name));
    Some(match kind {
        "n" => format!("DROP SCHEMA IF EXISTS {} CASCADE", identifier(schema)),
        "r" | "p" => format!("DROP TABLE IF EXISTS {qualified} CASCADE"),
        "f" => format!("DROP FOREIGN TABLE IF EXISTS {qualified} CASCADE"),
        "v" => format!("DROP VIEW IF EXISTS {qualified} CASCADE"),
        "m" => format!("DROP MATERIALIZED VIEW IF EXISTS {qualified} CASCADE"),
        "S" => format!("DROP SEQUENCE IF EXISTS {qualified} CASCADE"),
        _ => return None,
    })
}

/// Restores a database dump of `snapshot` into `options.conninfo`, with a safety dump
/// first when the target holds relations (unless `safety` is false or the restore
/// creates its database). `started` is called once the record is stored.
#[allow(clippy::too_many_arguments)]
pub fn restore_database(
    repository: &Repository,
    snapshot: &SnapshotId,
    (manifest, source): (&Manifest, &PostgresSource),
    options: &PgRestoreOptions,
    tools: &PgTools,
    force: bool,
    safety: bool,
    started: &mut dyn FnMut(&Started),
) -> Result<SafePgRestore> {
    let id = RestoreId::random();
    let before = if safety && !options.create { relations(tools, &options.conninfo)? } else { Vec::new() };
    let safety_id = if before.is_empty() { None } else { Some(take_safety_dump(repository, &id, options, tools)?) };
    let mut record = RestoreRecord {
        database: Some(options.conninfo.get("dbname").unwrap_or(&source.database).to_string()),
        replaced: before.iter().map(hex::encode).collect(),
        ..RestoreRecord::start(snapshot, source.path.as_bytes(), (options.conninfo.to_string(), b""), safety_id)
    };
    repository.save_restore(&id, &record)?;
    let begun = Started { id, safety: safety_id, touched: before.len() };
    started(&begun);
    let result = restore_postgres(repository, manifest, source, options, tools, force);
    let mut outcome = SafePgRestore { started: begun, report: None, error: None, rollback: None };
    match result {
        Ok(report) => {
            record.outcome = RestoreOutcome::Completed;
            outcome.report = Some(report);
        }
        Err(error) => {
            record.error = Some(error.to_string());
            record.outcome = RestoreOutcome::Failed;
            // One transaction that failed changed nothing: there is nothing to put back.
            if safety_id.is_some() && !options.single_transaction() {
                crate::interrupt::reset();
                let rollback = roll_back_database(repository, &record, &options.conninfo, tools);
                outcome.rollback = Some(settle(&mut record, rollback));
            }
            // Once put back, "the target may hold part of the dump" is no longer true.
            let rolled_back = outcome.rollback.as_ref().is_some_and(|done| done.failures.is_empty());
            outcome.error = Some(match error {
                Error::Postgres { tool, message } if rolled_back => Error::Postgres {
                    tool,
                    message: message.replace(
                        "; the restore did not complete and the target database may hold part of the dump",
                        "",
                    ),
                },
                other => other,
            });
        }
    }
    save_outcome(repository, &id, &mut record);
    Ok(outcome)
}

/// Dumps the target database into a snapshot tagged `safety`.
fn take_safety_dump(
    repository: &Repository,
    id: &RestoreId,
    options: &PgRestoreOptions,
    tools: &PgTools,
) -> Result<SnapshotId> {
    let backup = BackupOptions {
        postgres: vec![PgBackupOptions { conninfo: options.conninfo.clone(), schema_query: None, globals: false }],
        pg_tools: tools.clone(),
        ..Default::default()
    };
    let report = safety_backup(repository, id, backup, "the database")?;
    Ok(report.id)
}

/// Puts a database back as its safety dump holds it: drops the relations and schemas
/// that are there now but were not before the restore (what it created), then
/// restores the safety dump with `--clean --if-exists` in one transaction, which
/// replaces every object the database held before.
pub fn roll_back_database(
    repository: &Repository,
    record: &RestoreRecord,
    conninfo: &ConnInfo,
    tools: &PgTools,
) -> Result<Rollback> {
    let Some(safety) = record.safety_id()? else {
        return Err(Error::Refused(
            "this restore has no safety dump (the database held nothing, or it ran with --no-safety)".into(),
        ));
    };
    if let (Some(wanted), Some(given)) = (&record.database, conninfo.get("dbname")) {
        if wanted != given {
            return Err(Error::Refused(format!(
                "the restore wrote into database {wanted:?}, not {given:?}; name that database in --pg-target"
            )));
        }
    }
    let (_, snapshot) = repository.find_snapshot(&safety.to_hex()).map_err(|error| match error {
        Error::NotFound { .. } => Error::NotFound {
            what: format!("safety snapshot {} (was it forgotten?); nothing was changed", safety.short()),
        },
        other => other,
    })?;
    let manifest = repository.load_manifest(&safety, &snapshot)?;
    let source = select_source(&snapshot, None)?.clone();
    let before: HashSet<String> = record
        .replaced
        .iter()
        .filter_map(|text| hex::decode(text).ok())
        .filter_map(|b| String::from_utf8(b).ok())
        .collect();
    let mut rollback = Rollback::default();
    let now = relations(tools, conninfo)?;
    let created: Vec<&String> = now.iter().filter(|relation| !before.contains(*relation)).collect();
    // Schemas last: dropping one takes what is in it.
    let statements: Vec<String> = created
        .iter()
        .filter(|r| !r.starts_with("n\u{1f}"))
        .chain(created.iter().filter(|r| r.starts_with("n\u{1f}")))
        .filter_map(|relation| drop_statement(relation))
        .collect();
    if !statements.is_empty() {
        let sql = format!("BEGIN; {}; COMMIT;", statements.join("; "));
        pg::query(tools, conninfo, &sql)?;
        rollback.removed = statements.len();
    }
    let options = PgRestoreOptions { conninfo: conninfo.clone(), clean: true, jobs: 1, ..Default::default() };
    match restore_postgres(repository, &manifest, &source, &options, tools, true) {
        Ok(_) => rollback.put_back = 1,
        Err(error) => rollback.failures.push(format!(
            "the database was not put back from safety snapshot {} ({error}); it still holds the dump",
            safety.short()
        )),
    }
    Ok(rollback)
}
