//! PostgreSQL sources: pg_dump streams into a snapshot, pg_restore streams out of it,
//! and the application's schema-migration state is recorded and compared.
//!
//! coffer drives the PostgreSQL client programs; libpq gives them the usual connection
//! strings, PGPASSWORD and .pgpass handling. A password inside a connection string is
//! never put on a program's command line (where `ps` shows it to every local user): the
//! program gets the string without it, and the password in its own environment.

mod conninfo;

pub use conninfo::ConnInfo;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Tables whose latest rows say which schema migrations an application has applied,
/// with the query giving their latest entries, newest first.
const MIGRATION_TABLES: [(&str, &str); 5] = [
    ("django_migrations", "SELECT app || '.' || name FROM django_migrations ORDER BY applied DESC, id DESC LIMIT 5"),
    ("alembic_version", "SELECT version_num FROM alembic_version ORDER BY version_num DESC"),
    ("schema_migrations", "SELECT version::text FROM schema_migrations ORDER BY version DESC LIMIT 5"),
    (
        "flyway_schema_history",
        "SELECT coalesce(version, '') || ' ' || description FROM flyway_schema_history WHERE success ORDER BY installed_rank DESC LIMIT 5",
    ),
    ("knex_migrations", "SELECT name FROM knex_migrations ORDER BY id DESC LIMIT 5"),
];

/// The PostgreSQL client programs, from `COFFER_PG_DUMP`, `COFFER_PG_RESTORE`,
/// `COFFER_PSQL`, `COFFER_PG_DUMPALL`, else from `PATH`.
#[derive(Debug, Clone)]
pub struct PgTools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    pub psql: PathBuf,
    pub pg_dumpall: PathBuf,
}

impl Default for PgTools {
    fn default() -> Self {
        let tool = |variable: &str, name: &str| {
            std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(name))
        };
        Self {
            pg_dump: tool("COFFER_PG_DUMP", "pg_dump"),
            pg_restore: tool("COFFER_PG_RESTORE", "pg_restore"),
            psql: tool("COFFER_PSQL", "psql"),
            pg_dumpall: tool("COFFER_PG_DUMPALL", "pg_dumpall"),
        }
    }
}

/// One database to back up.
#[derive(Debug, Clone, Default)]
pub struct PgBackupOptions {
    /// A libpq connection string or URI.
    pub conninfo: ConnInfo,
    /// A query whose rows describe the schema state, instead of the detected tables.
    pub schema_query: Option<String>,
    /// Also store `pg_dumpall --globals-only` (roles, tablespaces).
    pub globals: bool,
}

/// The latest entries of one migration table (or of the custom query).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationState {
    /// The table, or `query` for `--pg-schema-query`.
    pub source: String,
    /// Newest first.
    pub latest: Vec<String>,
}

/// What is known about a database when it is dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInfo {
    pub database: String,
    pub server_version: String,
    pub pg_dump_version: String,
    pub migrations: Vec<MigrationState>,
}

fn failure(tool: &str, message: impl Into<String>) -> Error {
    Error::Postgres { tool: tool.to_string(), message: message.into() }
}

/// The last meaningful lines a PostgreSQL program printed on stderr.
fn tool_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(first_error) = lines.iter().position(|line| line.contains("error:") || line.contains("FATAL:")) {
        let detail = lines.get(first_error + 1).filter(|line| line.starts_with("DETAIL:") || line.starts_with("HINT:"));
        return std::iter::once(lines[first_error]).chain(detail.copied()).collect::<Vec<_>>().join(" / ");
    }
    let text = lines.iter().rev().take(3).rev().copied().collect::<Vec<_>>().join(" / ");
    if text.is_empty() {
        "it printed nothing".to_string()
    } else {
        text
    }
}

/// Names the database on a program's command line; the password, if the connection
/// string holds one, goes into the environment of that program alone. The storage
/// credentials (`AWS_*`) are not passed on: a PostgreSQL program has no use for them.
fn connect<'c>(command: &'c mut Command, conninfo: &ConnInfo) -> &'c mut Command {
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"AWS_") {
            command.env_remove(name);
        }
    }
    command.arg("--dbname").arg(conninfo.argument());
    if let Some(password) = conninfo.password() {
        command.env("PGPASSWORD", password);
    }
    command
}

/// Runs one query with psql; rows come back split into fields.
pub fn query(tools: &PgTools, conninfo: &ConnInfo, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut command = Command::new(&tools.psql);
    command.args(["-X", "-w", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "\u{1f}", "-0"]);
    let output = connect(&mut command, conninfo)
        .arg("--command")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failure("psql", format!("cannot run {}: {e}", tools.psql.display())))?;
    if !output.status.success() {
        return Err(failure("psql", tool_message(&String::from_utf8_lossy(&output.stderr))));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let rows = text.split('\0').map(|row| row.trim_matches('\n')).filter(|row| !row.is_empty());
    Ok(rows.map(|row| row.split('\u{1f}').map(str::to_string).collect()).collect())
}

fn single_value(rows: &[Vec<String>]) -> String {
    rows.first().and_then(|row| row.first()).cloned().unwrap_or_default()
}

/// The migration state of a database: detected tables, or the custom query.
pub fn migration_state(tools: &PgTools, conninfo: &ConnInfo, custom: Option<&str>) -> Result<Vec<MigrationState>> {
    if let Some(sql) = custom {
        let rows = query(tools, conninfo, sql)?;
        return Ok(vec![MigrationState {
            source: "query".into(),
            latest: rows.into_iter().map(|row| row.join(" | ")).collect(),
        }]);
    }
    let names: Vec<&str> = MIGRATION_TABLES.iter().map(|(name, _)| *name).collect();
    let detect = format!(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false)) AND c.relname IN ('{}') ORDER BY 1",
        names.join("', '")
    );
    let present: Vec<String> = query(tools, conninfo, &detect)?.into_iter().map(|row| single_value(&[row])).collect();
    let mut states = Vec::new();
    for (table, sql) in MIGRATION_TABLES.iter().filter(|(table, _)| present.iter().any(|p| p == table)) {
        let latest = query(tools, conninfo, sql)?.into_iter().map(|row| row.join(" | ")).collect();
        states.push(MigrationState { source: table.to_string(), latest });
    }
    Ok(states)
}

/// Connects once to learn the database name, server version and migration state.
pub fn inspect(tools: &PgTools, options: &PgBackupOptions) -> Result<PgInfo> {
    let rows = query(tools, &options.conninfo, "SELECT current_database(), current_setting('server_version')")?;
    let row = rows.into_iter().next().unwrap_or_default();
    let (database, server_version) =
        (row.first().cloned().unwrap_or_default(), row.get(1).cloned().unwrap_or_default());
    let version = Command::new(&tools.pg_dump)
        .arg("--version")
        .output()
        .map_err(|e| failure("pg_dump", format!("cannot run {}: {e}", tools.pg_dump.display())))?;
    let pg_dump_version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let migrations = migration_state(tools, &options.conninfo, options.schema_query.as_deref())?;
    Ok(PgInfo { database, server_version, pg_dump_version, migrations })
}

/// Reads a child's stderr to its end on a thread of its own (so a chatty program never
/// blocks on a full pipe); the text comes back when it is joined.
fn collect_stderr(child: &mut Child) -> JoinHandle<String> {
    let mut pipe = child.stderr.take();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(pipe) = pipe.as_mut() {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// A running PostgreSQL program whose stdout is being consumed and stderr collected.
pub struct Running {
    tool: &'static str,
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    fn spawn(tool: &'static str, mut command: Command, stdin: Stdio) -> Result<Self> {
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failure(tool, format!("cannot run {tool}: {e}")))?;
        let stderr = collect_stderr(&mut child);
        Ok(Self { tool, child, stderr: Some(stderr) })
    }

    /// The program's name, for messages.
    pub fn tool(&self) -> &'static str {
        self.tool
    }

    /// The program's standard output.
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The program's standard input, when it was started with one.
    pub fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits for the program; a non-zero exit or a signal is an error with its message.
    pub fn finish(mut self) -> Result<String> {
        let status = self.child.wait().map_err(|e| failure(self.tool, e.to_string()))?;
        let stderr = self.stderr.take().and_then(|handle| handle.join().ok()).unwrap_or_default();
        if status.success() {
            return Ok(stderr);
        }
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        Err(failure(self.tool, format!("{} {how}: {}", self.tool, tool_message(&stderr))))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `pg_dump` in custom format without compression, so nightly dumps deduplicate;
/// with `snapshot`, it dumps what that exported snapshot sees (see [`Session`]).
pub fn start_dump(tools: &PgTools, conninfo: &ConnInfo, snapshot: Option<&str>) -> Result<Running> {
    let mut command = Command::new(&tools.pg_dump);
    command.args(["--format=custom", "--compress=0", "--no-password"]);
    if let Some(snapshot) = snapshot {
        command.arg(format!("--snapshot={snapshot}"));
    }
    connect(&mut command, conninfo);
    Running::spawn("pg_dump", command, Stdio::null())
}

/// The row count and an order-independent checksum of one table's rows, as the dump
/// holds them: recorded at backup time, compared by a restore drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChecksum {
    /// `schema.table`, quoted where SQL needs it.
    pub table: String,
    pub rows: u64,
    /// Sum over the rows of the first 60 bits of md5(row as text), as a decimal number.
    pub checksum: String,
}

/// Session settings that fix how rows print as text, so that a checksum taken at
/// backup time and one taken after a restore compare equal.
const TEXT_SETTINGS: &str = "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; \
    SET extra_float_digits = 3; SET bytea_output = 'hex'; SET search_path = pg_catalog;";

/// The ordinary tables (partitions included, their parents not) of a database.
const TABLES: &str = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' \
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1";

fn checksum_query(table: &str) -> String {
    format!("SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0) FROM {table} t")
}

/// A psql session holding one REPEATABLE READ transaction whose snapshot it exported:
/// pg_dump dumps that snapshot, and the session's table checksums see the same rows.
pub struct Session {
    child: Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    /// The snapshot's name, for `pg_dump --snapshot`.
    pub snapshot: String,
}

/// Marks the end of one command's output in the session.
const END: &str = "__coffer_end_of_answer__";

impl Session {
    /// Starts the transaction and exports its snapshot.
    pub fn open(tools: &PgTools, conninfo: &ConnInfo) -> Result<Self> {
        let mut command = Command::new(&tools.psql);
        command.args(["-X", "-w", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "\u{1f}"]);
        connect(&mut command, conninfo);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failure("psql", format!("cannot run {}: {e}", tools.psql.display())))?;
        let stderr = collect_stderr(&mut child);
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(failure("psql", "psql started without its pipes"));
        };
        let mut session = Self {
            child,
            input,
            output: std::io::BufReader::new(output),
            stderr: Some(stderr),
            snapshot: String::new(),
        };
        let answer = session.ask(&format!(
            "{TEXT_SETTINGS} BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_export_snapshot();"
        ))?;
        session.snapshot = answer.last().cloned().unwrap_or_default();
        if session.snapshot.is_empty() {
            return Err(failure("psql", "pg_export_snapshot() returned nothing"));
        }
        Ok(session)
    }

    /// Sends SQL and returns the lines printed before the end marker.
    fn ask(&mut self, sql: &str) -> Result<Vec<String>> {
        use std::io::{BufRead, Write};
        let sent = writeln!(self.input, "{sql}\n\\echo {END}").and_then(|()| self.input.flush());
        let mut lines = Vec::new();
        if sent.is_ok() {
            let mut line = String::new();
            loop {
                line.clear();
                match self.output.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.trim_end() == END => return Ok(lines),
                    Ok(_) => lines.push(line.trim_end_matches('\n').to_string()),
                }
            }
        }
        // psql stopped (ON_ERROR_STOP): its message says why.
        let _ = self.child.wait();
        let stderr = self.stderr.take().and_then(|handle| handle.join().ok()).unwrap_or_default();
        Err(failure("psql", tool_message(&stderr)))
    }

    /// Each table's row count and checksum, as the exported snapshot sees them.
    pub fn table_checksums(&mut self) -> Result<Vec<TableChecksum>> {
        let tables = self.ask(&format!("{TABLES};"))?;
        let mut found = Vec::new();
        for table in tables.into_iter().filter(|t| !t.is_empty()) {
            let answer = self.ask(&format!("{};", checksum_query(&table)))?;
            found.push(parse_checksum(table, answer.first().map(String::as_str).unwrap_or_default())?);
        }
        Ok(found)
    }

    /// Ends the transaction and the session.
    pub fn close(mut self) {
        let _ = self.ask("COMMIT;");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn parse_checksum(table: String, line: &str) -> Result<TableChecksum> {
    let mut fields = line.split('\u{1f}');
    let rows = fields.next().and_then(|n| n.parse().ok());
    let checksum = fields.next().filter(|c| !c.is_empty());
    match (rows, checksum) {
        (Some(rows), Some(checksum)) => Ok(TableChecksum { table, rows, checksum: checksum.to_string() }),
        _ => Err(failure("psql", format!("unexpected answer for the checksum of {table}: {line:?}"))),
    }
}

/// Each table's row count and checksum in a database (a restored one), with the same
/// text settings as at backup time.
pub fn table_checksums(tools: &PgTools, conninfo: &ConnInfo) -> Result<Vec<TableChecksum>> {
    let tables = query(tools, conninfo, &format!("{TEXT_SETTINGS} {TABLES}"))?;
    let mut found = Vec::new();
    for table in tables.into_iter().filter_map(|row| row.into_iter().next()) {
        let rows = query(tools, conninfo, &format!("{TEXT_SETTINGS} {}", checksum_query(&table)))?;
        let line = rows.first().map(|row| row.join("\u{1f}")).unwrap_or_default();
        found.push(parse_checksum(table, &line)?);
    }
    Ok(found)
}

/// Starts `pg_dumpall --globals-only` (roles, tablespaces) as SQL text.
pub fn start_globals(tools: &PgTools, conninfo: &ConnInfo) -> Result<Running> {
    let mut command = Command::new(&tools.pg_dumpall);
    command.args(["--globals-only", "--no-password"]);
    connect(&mut command, conninfo);
    Running::spawn("pg_dumpall", command, Stdio::null())
}

/// How to feed a dump to pg_restore.
#[derive(Debug, Clone, Default)]
pub struct PgRestoreOptions {
    pub conninfo: ConnInfo,
    pub tables: Vec<String>,
    /// Create the database named in the dump (conninfo names a maintenance database).
    pub create: bool,
    /// Drop existing objects before recreating them.
    pub clean: bool,
    pub jobs: u32,
    /// Only list what would be restored.
    pub list: bool,
    /// Convert the whole dump to SQL into this file instead of restoring it (a full
    /// read of the archive, used by `check --pg` with `/dev/null`).
    pub to_file: Option<PathBuf>,
    /// Leave out ownership and privileges (`--no-owner --no-privileges`): a restore
    /// drill's scratch role need not be a member of the dump's owners.
    pub no_owner: bool,
}

impl PgRestoreOptions {
    /// One transaction is possible unless parallel jobs or `--create` are used.
    pub fn single_transaction(&self) -> bool {
        !self.list && self.to_file.is_none() && self.jobs <= 1 && !self.create
    }
}

/// Starts pg_restore reading the dump from `input` (`-` for stdin, or a file for `--jobs`).
pub fn start_restore(tools: &PgTools, options: &PgRestoreOptions, input: Option<&std::path::Path>) -> Result<Running> {
    let mut command = Command::new(&tools.pg_restore);
    if options.list {
        command.arg("--list");
    } else if let Some(file) = &options.to_file {
        command.arg("--file").arg(file);
    } else {
        command.args(["--exit-on-error", "--no-password"]);
        connect(&mut command, &options.conninfo);
        if options.single_transaction() {
            command.arg("--single-transaction");
        }
        if options.create {
            command.arg("--create");
        }
        if options.clean {
            command.args(["--clean", "--if-exists"]);
        }
        if options.jobs > 1 {
            command.arg(format!("--jobs={}", options.jobs));
        }
        if options.no_owner {
            command.args(["--no-owner", "--no-privileges"]);
        }
    }
    for table in &options.tables {
        command.arg(format!("--table={table}"));
    }
    if let Some(path) = input {
        command.arg(path);
    }
    let stdin = if input.is_some() { Stdio::null() } else { Stdio::piped() };
    Running::spawn("pg_restore", command, stdin)
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The query counting the target's rows equal to one recorded entry of `source`.
fn entry_exists_sql(source: &str, entry: &str) -> Option<String> {
    let condition = match source {
        "django_migrations" => "app || '.' || name",
        "alembic_version" => "version_num",
        "schema_migrations" => "version::text",
        "flyway_schema_history" => "coalesce(version, '') || ' ' || description",
        "knex_migrations" => "name",
        _ => return None,
    };
    Some(format!("SELECT count(*) FROM {source} WHERE {condition} = {}", quoted(entry)))
}

/// Checks the target database before a restore: `Some(reason)` when the snapshot holds
/// a migration the target has never applied, so the dump is newer than the code that
/// runs against the target (or has diverged from it).
pub fn newer_than_target(
    tools: &PgTools,
    conninfo: &ConnInfo,
    dump: &[MigrationState],
    custom: Option<&str>,
) -> Result<Option<String>> {
    let target = migration_state(tools, conninfo, custom)?;
    for state in dump {
        let (Some(newest), Some(theirs)) = (state.latest.first(), target.iter().find(|t| t.source == state.source))
        else {
            continue;
        };
        let known = match entry_exists_sql(&state.source, newest) {
            Some(sql) => single_value(&query(tools, conninfo, &sql)?) != "0",
            None => theirs.latest.contains(newest),
        };
        if !known {
            let theirs_newest = theirs.latest.first().cloned().unwrap_or_default();
            return Ok(Some(format!(
                "the snapshot's {} has {newest:?}, which the target has not applied (its latest is {theirs_newest:?})",
                state.source
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_lookups_quote_their_values() {
        let sql = entry_exists_sql("django_migrations", "clinic.0042_o'brien").unwrap();
        assert_eq!(sql, "SELECT count(*) FROM django_migrations WHERE app || '.' || name = 'clinic.0042_o''brien'");
        assert!(entry_exists_sql("query", "x").is_none());
    }

    #[test]
    fn tool_messages_keep_the_last_lines() {
        assert_eq!(tool_message("pg_dump: error: x\n\nDETAIL: y\n"), "pg_dump: error: x / DETAIL: y");
        let restore = "pg_restore: error: could not execute query: ERROR:  relation \"t\" already exists\nCommand was: CREATE TABLE t (\n    a int\n);\n";
        assert_eq!(
            tool_message(restore),
            "pg_restore: error: could not execute query: ERROR:  relation \"t\" already exists"
        );
        assert_eq!(tool_message("something\nwent\nwrong\nbadly"), "went / wrong / badly");
        assert_eq!(tool_message(""), "it printed nothing");
    }
}
