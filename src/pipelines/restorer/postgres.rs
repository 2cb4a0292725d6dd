//! Restoring a database from a snapshot: the dump is streamed from the repository into
//! pg_restore, after checking that it is not newer than the target's schema.

use std::io::Read;

use crate::error::{Error, Result};
use crate::pipelines::pg::{self, PgRestoreOptions, PgTools};
use crate::repository::manifest::Manifest;
use crate::repository::snapshot::{PostgresSource, Snapshot, Source};
use crate::repository::Repository;

/// The outcome of a database restore (or, with `list`, pg_restore's table of contents).
#[derive(Debug, Default)]
pub struct PgRestoreReport {
    pub database: String,
    pub bytes: u64,
    /// pg_restore's standard output: the table of contents when listing.
    pub output: String,
}

/// The snapshot's dump of database `name`, or its only dump when `name` is `None`.
pub fn select_source<'s>(snapshot: &'s Snapshot, name: Option<&str>) -> Result<&'s PostgresSource> {
    let sources: Vec<&PostgresSource> = snapshot
        .sources
        .iter()
        .filter_map(|source| match source {
            Source::Postgres(postgres) => Some(postgres),
            _ => None,
        })
        .collect();
    let names = || {
        let named = sources.iter().map(|s| format!("{} at {}", s.database, s.path));
        named.collect::<Vec<_>>().join(", ")
    };
    match name {
        Some(name) => {
            // A name, or the dump's path for two databases of one name (two servers).
            let matching: Vec<&PostgresSource> =
                sources.iter().copied().filter(|s| s.database == name || s.path == name).collect();
            match matching[..] {
                [one] => Ok(one),
                [] => Err(Error::NotFound {
                    what: format!(
                        "database {name:?} in the snapshot (it holds: {})",
                        if sources.is_empty() { "none".into() } else { names() }
                    ),
                }),
                _ => Err(Error::InvalidInput(format!(
                    "the snapshot holds {} dumps of a database named {name:?} ({}); choose one by its path with --pg-database",
                    matching.len(),
                    matching.iter().map(|s| s.path.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
        None if sources.len() == 1 => Ok(sources[0]),
        None if sources.is_empty() => Err(Error::NotFound { what: "a PostgreSQL dump in the snapshot".into() }),
        None => Err(Error::InvalidInput(format!(
            "the snapshot holds several databases ({}); choose one with --pg-database",
            names()
        ))),
    }
}

/// Feeds the dump to pg_restore. Refuses a dump newer than the target's schema unless
/// `force`; says whether a failed restore left anything behind.
pub fn restore_postgres(
    repository: &Repository,
    manifest: &Manifest,
    source: &PostgresSource,
    options: &PgRestoreOptions,
    tools: &PgTools,
    force: bool,
) -> Result<PgRestoreReport> {
    let _lock = repository.lock_shared()?;
    if !options.list && !options.create && !force {
        if let Some(reason) =
            pg::newer_than_target(tools, &options.conninfo, &source.migrations, source.schema_query.as_deref())?
        {
            return Err(Error::Refused(format!(
                "{reason}; the dump is newer than the target's schema (use --force to restore anyway)"
            )));
        }
    }
    let result = if options.jobs > 1 && !options.list {
        through_file(repository, manifest, source, options, tools)
    } else {
        through_pipe(repository, manifest, source, options, tools)
    };
    result.map_err(|error| explain_failure(error, options))
}

/// Tests a stored dump: `pg_restore --list` must read its table of contents, and a full
/// conversion to SQL (`pg_restore --file=/dev/null`) must read every byte, each blob
/// verified and the stream's SHA-256 compared with the manifest. Returns the number of
/// table-of-contents entries.
pub fn verify_pg_dump(
    repository: &Repository,
    manifest: &Manifest,
    source: &PostgresSource,
    tools: &PgTools,
) -> Result<usize> {
    let listing = PgRestoreOptions { list: true, ..Default::default() };
    let listed = through_pipe(repository, manifest, source, &listing, tools)?;
    let entries = listed.output.lines().filter(|line| !line.starts_with(';') && !line.trim().is_empty()).count();
    let full = PgRestoreOptions { to_file: Some("/dev/null".into()), ..Default::default() };
    through_pipe(repository, manifest, source, &full, tools)?;
    Ok(entries)
}

fn explain_failure(error: Error, options: &PgRestoreOptions) -> Error {
    let Error::Postgres { tool, message } = error else { return error };
    let outcome = if options.list {
        ""
    } else if options.single_transaction() {
        "; nothing was restored (the restore ran in one transaction, which was rolled back)"
    } else {
        "; the restore did not complete and the target database may hold part of the dump"
    };
    Error::Postgres { tool, message: format!("{message}{outcome}") }
}

fn through_pipe(
    repository: &Repository,
    manifest: &Manifest,
    source: &PostgresSource,
    options: &PgRestoreOptions,
    tools: &PgTools,
) -> Result<PgRestoreReport> {
    let mut running = pg::start_restore(tools, options, None)?;
    let output = collect(running.stdout());
    let mut input = running
        .stdin()
        .ok_or_else(|| Error::Postgres { tool: "pg_restore".into(), message: "no input pipe".into() })?;
    let fed = crate::dump_file(repository, manifest, source.path.as_bytes(), &mut input, "pg_restore's input");
    drop(input);
    running.finish()?;
    // pg_restore may stop reading once it has what it needs (as `--list` does); its
    // success is what counts, so a closed pipe on our side is not an error then.
    let bytes = match fed {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => 0,
        other => other?,
    };
    Ok(report(source, bytes, output))
}

/// Parallel pg_restore needs a seekable file: the dump is written first to a file in
/// the cache's private `tmp/` (0700; a dump holds the database in plain text), locked
/// while in use. Dumps left by killed restores are removed here.
fn through_file(
    repository: &Repository,
    manifest: &Manifest,
    source: &PostgresSource,
    options: &PgRestoreOptions,
    tools: &PgTools,
) -> Result<PgRestoreReport> {
    let folder = repository.cache_dir().join("tmp");
    crate::system::create_private_dir(&folder).map_err(|e| Error::io("cannot create", &folder, e))?;
    crate::system::remove_unlocked_files(&folder, "dump-", std::time::Duration::ZERO);
    let mut file = tempfile::Builder::new()
        .prefix("dump-")
        .suffix(".restore")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(&folder)
        .map_err(|e| Error::io("cannot create a temporary file in", &folder, e))?;
    crate::system::lock_file(file.as_file());
    let sink = file.path().display().to_string();
    let bytes = crate::dump_file(repository, manifest, source.path.as_bytes(), file.as_file_mut(), &sink)?;
    let mut running = pg::start_restore(tools, options, Some(file.path()))?;
    let output = collect(running.stdout());
    running.finish()?;
    Ok(report(source, bytes, output))
}

fn report(source: &PostgresSource, bytes: u64, output: std::thread::JoinHandle<String>) -> PgRestoreReport {
    PgRestoreReport { database: source.database.clone(), bytes, output: output.join().unwrap_or_default() }
}

fn collect(stdout: Option<std::process::ChildStdout>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = stdout {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}
