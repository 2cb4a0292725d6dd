//! One function per command: turn flags into library calls and print the outcome.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use anyhow::Result;
use coffer::{BackupOptions, InitOptions, Repository};
use serde_json::json;

use super::args::{BackupArgs, Command, DumpArgs, FilterArgs, InitArgs, LsArgs, SnapshotsArgs, UnlockArgs};
use super::output::{self, note};
use super::{exit, fail, Cli};

pub fn dispatch(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Init(args) => init(cli, args),
        Command::Backup(args) => backup(cli, args),
        Command::Snapshots(args) => snapshots(cli, args),
        Command::Ls(args) => ls(cli, args),
        Command::Restore(args) => super::restore::restore(cli, args),
        Command::Restores => super::restore::restores(cli),
        Command::Diff(args) => super::inspect::diff(cli, args),
        Command::Find(args) => super::inspect::find(cli, args),
        Command::Stats(args) => super::inspect::stats(cli, args),
        Command::Audit(args) => super::audit::run(cli, args),
        Command::Dump(args) => dump(cli, args),
        Command::Unlock(args) => unlock(cli, args),
        Command::Check(args) => super::maintenance::check(cli, args),
        Command::Forget(args) => super::maintenance::forget(cli, args),
        Command::Prune(args) => super::maintenance::prune(cli, args),
        Command::Repair(what) => super::maintenance::repair(cli, what),
        Command::Key(what) => super::keys::key(cli, what),
        Command::Version => version(cli),
        Command::Run(args) => super::run::run(cli, args),
        Command::Drill(args) => super::drill::drill(cli, args),
        Command::Config(super::args::ConfigCommand::Check) => super::profile::check(cli),
        Command::Schedule(what) => super::schedule::schedule(cli, what),
        Command::Cat { kind, id } => super::inspect::cat(cli, kind, id.as_deref()),
        Command::Completions { shell } => {
            let mut command = <super::Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "coffer", &mut script);
            output::raw(&script);
            Ok(exit::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            let command = <super::Cli as clap::CommandFactory>::command();
            if let Err(error) = clap_mangen::generate_to(command, dir) {
                return fail(exit::LOCAL_IO, format!("cannot write manual pages into {}: {error}", dir.display()));
            }
            note(cli.quiet, &format!("wrote the manual pages into {}", dir.display()));
            Ok(exit::SUCCESS)
        }
        Command::Man { dir: None } => {
            let command = <super::Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            output::raw(&page);
            Ok(exit::SUCCESS)
        }
    }
}

/// `coffer version`: the program and every format version it reads and writes.
fn version(cli: &Cli) -> Result<i32> {
    let formats = [
        ("repository", coffer::REPOSITORY_VERSION),
        ("key file", coffer::KEY_FILE_VERSION),
        ("index object", coffer::INDEX_VERSION as u64),
        ("snapshot record", coffer::SNAPSHOT_VERSION),
        ("manifest schema", coffer::MANIFEST_SCHEMA as u64),
        ("restore record", coffer::RESTORE_RECORD_VERSION as u64),
        ("audit record", coffer::audit::AUDIT_VERSION as u64),
    ];
    if cli.json {
        let formats: serde_json::Map<String, serde_json::Value> =
            formats.iter().map(|(name, version)| (name.replace(' ', "_"), json!(version))).collect();
        output::json(&json!({"version": env!("CARGO_PKG_VERSION"), "formats": formats}));
        return Ok(exit::SUCCESS);
    }
    output::line(&format!("coffer {}", env!("CARGO_PKG_VERSION")));
    for (name, version) in formats {
        output::line(&format!("  {name:<16} format {version} (reads and writes {version})"));
    }
    Ok(exit::SUCCESS)
}

/// `-v`: each file as the backup stores it (`new`, `changed`, `unchanged`); `-vv` adds
/// why a changed file is read again. On stdout, and not with `--json` (whose stdout
/// is JSON lines).
fn file_lister(cli: &Cli) -> Option<coffer::FileListener> {
    if cli.verbose == 0 || cli.json || cli.quiet {
        return None;
    }
    let reasons = cli.verbose > 1;
    Some(std::sync::Arc::new(move |path: &std::path::Path, change: &str, why: Option<&str>| {
        let path = output::path_text(path.as_os_str().as_bytes());
        match why.filter(|_| reasons) {
            Some(why) => output::line(&format!("{change:<9} {path} ({why})")),
            None => output::line(&format!("{change:<9} {path}")),
        }
    }))
}

/// A backup of a folder that holds the (local) repository stores the repository in
/// itself, growing with every run: said, not refused (an exclude may cover it).
/// A backup path that is a symlink to a folder is stored as the link alone (coffer
/// never follows symlinks): said, with the folder to give instead.
fn warn_of_linked_folders(paths: &[std::path::PathBuf]) {
    for path in paths {
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            eprintln!(
                "warning: {} is a symbolic link to the folder {}: only the link is stored, not the folder's content (give {} to back it up)",
                path.display(),
                target.display(),
                target.display()
            );
        }
    }
}

fn warn_if_repository_inside(cli: &Cli, paths: &[std::path::PathBuf], excludes: &[String]) {
    let Ok(super::Location::Local(repository)) = super::location(cli) else { return };
    let Ok(repository) = repository.canonicalize() else { return };
    let excluded = |pattern: &String| {
        let pattern = pattern.trim_end_matches("/**").trim_end_matches('/');
        !pattern.is_empty() && repository.starts_with(pattern)
    };
    if excludes.iter().any(excluded) {
        return;
    }
    for path in paths {
        if path.canonicalize().is_ok_and(|path| repository.starts_with(&path)) {
            eprintln!(
                "warning: the repository {} is inside {}, which this backup reads; exclude it (--exclude {})",
                repository.display(),
                path.display(),
                repository.display()
            );
        }
    }
}

fn init(cli: &Cli, args: &InitArgs) -> Result<i32> {
    if let Ok(super::Location::Local(path)) = super::location(cli) {
        let others = std::fs::read_dir(&path).map(|entries| entries.count()).unwrap_or(0);
        if others > 0 && !path.join("config").exists() {
            eprintln!("warning: {} already holds {others} entries; the repository is made beside them", path.display());
        }
    }
    let backend = super::backend(cli, true)?;
    let password = super::password::read(cli, true)?;
    let options = InitOptions {
        kdf: super::keys::kdf(&args.kdf)?,
        pack_size: match args.pack_size {
            Some(mebibytes) => mebibytes.clamp(1, 2048) * 1024 * 1024,
            None => super::default_pack_size(cli)?,
        },
        compression_level: args.compression,
        object_lock: args.object_lock.map(|days| coffer::ObjectLockSetting {
            mode: coffer::backend::ObjectLockMode::parse(&args.object_lock_mode)
                .unwrap_or(coffer::backend::ObjectLockMode::Governance),
            days,
        }),
        ..InitOptions::default()
    };
    let repository = Repository::init(backend, password.as_bytes(), &options, super::cache_root(cli).as_deref())?;
    super::audit::opened(repository.backend().clone(), repository.master().clone());
    let id = repository.config().id;
    if cli.json {
        output::json(&json!({"repository_id": id.to_hex(), "location": repository.backend().location(),
            "object_lock": repository.config().object_lock}));
    } else {
        note(cli.quiet, &format!("created coffer repository {} at {}", id.short(), repository.backend().location()));
        if let Some(lock) = repository.config().object_lock {
            note(
                cli.quiet,
                &format!(
                    "every object is locked for {} day(s) from its write, in {} mode (S3 Object Lock)",
                    lock.days,
                    lock.mode.as_s3().to_lowercase()
                ),
            );
        }
        note(cli.quiet, "Keep the password safe: without it the data cannot be read.");
    }
    Ok(exit::SUCCESS)
}

fn backup(cli: &Cli, args: &BackupArgs) -> Result<i32> {
    if args.paths.is_empty() && args.pg.is_empty() && !args.stdin && args.stdin_from_command.is_none() {
        return fail(
            exit::USAGE,
            "nothing to back up: give paths, --pg, --stdin or --stdin-from-command (or a --profile that names them)",
        );
    }
    let postgres: Vec<_> = args
        .pg
        .iter()
        .map(|conninfo| {
            Ok(coffer::pg::PgBackupOptions {
                conninfo: coffer::pg::ConnInfo::parse(conninfo)?,
                schema_query: args.pg_schema_query.clone(),
                globals: args.pg_globals,
            })
        })
        .collect::<coffer::Result<_>>()?;
    let repository = super::open(cli)?;
    warn_if_repository_inside(cli, &args.paths, &args.excludes);
    warn_of_linked_folders(&args.paths);
    let stdin: Option<(Box<dyn std::io::Read + Send>, String)> =
        args.stdin.then(|| (Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>, args.stdin_name.clone()));
    let mut options = BackupOptions {
        paths: args.paths.clone(),
        stdin,
        stdin_command: args
            .stdin_from_command
            .as_ref()
            .map(|command| coffer::InputCommand { command: command.clone(), name: args.stdin_name.clone() }),
        tags: args.tags.clone(),
        host: args.host.clone(),
        postgres,
        pg_tools: coffer::pg::PgTools::default(),
        parent: args.parent.clone(),
        change_rules: coffer::ChangeRules {
            force: args.force,
            ignore_inode: args.ignore_inode,
            ignore_ctime: args.ignore_ctime,
        },
        checkpoint_packs: args.checkpoint_packs,
        selection: Vec::new(),
        excludes: coffer::Excludes {
            patterns: exclude_patterns(args)?,
            if_present: args.exclude_if_present.clone(),
            one_file_system: args.one_file_system,
        },
        progress: None,
        on_file: file_lister(cli),
    };
    if args.dry_run {
        return super::dry_run::run(cli, &repository, &options);
    }
    let reporter = super::progress::Reporter::start(cli, args.no_progress);
    options.progress = reporter.as_ref().map(|reporter| reporter.progress());
    let report = coffer::backup(&repository, options)?;
    super::audit::snapshot(&report.id);
    super::audit::bytes(report.snapshot.summary.bytes_added);
    for source in &report.snapshot.sources {
        if let coffer::Source::Postgres(dump) = source {
            super::audit::sha256(&dump.path, &dump.sha256);
        }
    }
    if let Some(reporter) = reporter {
        reporter.finish();
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for line in &report.notes {
        note(cli.quiet, &format!("note: {line}"));
    }
    let summary = &report.snapshot.summary;
    let storage = repository.backend().stats();
    if cli.json {
        output::json(
            &json!({"type": "summary", "snapshot_id": report.id.to_hex(), "complete": report.snapshot.complete, "warnings": report.warnings,
                "summary": output::summary_json(summary),
                "storage": {"requests": storage.requests, "bytes_downloaded": storage.bytes_read, "bytes_uploaded": storage.bytes_written}}),
        );
    } else {
        note(
            cli.quiet,
            &format!(
                "snapshot {} saved: {} files ({} new, {} changed, {} unchanged), {} dirs, {} read, {} added to the repository ({} new blobs) in {:.1}s",
            report.id.short(),
            summary.files,
            summary.files_new,
            summary.files_changed,
            summary.files_unchanged,
            summary.dirs,
            output::size(summary.bytes_read),
            output::size(summary.bytes_added),
            summary.blobs_added,
            summary.duration_seconds
        ));
    }
    if report.snapshot.complete {
        return Ok(exit::SUCCESS);
    }
    note(
        cli.quiet,
        &format!("snapshot {} is incomplete: see the {} warning(s) above", report.id.short(), report.warnings.len()),
    );
    Ok(exit::INCOMPLETE)
}

/// `--exclude` globs and the lines of every `--exclude-file`.
fn exclude_patterns(args: &BackupArgs) -> Result<Vec<String>> {
    let mut patterns = args.excludes.clone();
    for file in &args.exclude_file {
        let text = std::fs::read_to_string(file).map_err(|e| coffer::Error::io("cannot read exclude file", file, e))?;
        let lines = text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
        patterns.extend(lines.map(str::to_string));
    }
    Ok(patterns)
}

/// The library's snapshot filter from the flags.
pub(super) fn filter_of(args: &FilterArgs) -> Result<coffer::SnapshotFilter> {
    Ok(coffer::SnapshotFilter {
        hosts: args.hosts.clone(),
        tags: args.tags.clone(),
        paths: args.paths.clone(),
        at: args.at.as_deref().map(coffer::parse_instant).transpose()?,
    })
}

fn snapshots(cli: &Cli, args: &SnapshotsArgs) -> Result<i32> {
    let filter = filter_of(&args.filter)?;
    let repository = super::open(cli)?;
    let (mut snapshots, damaged) = repository.list_snapshots()?;
    if !filter.is_empty() {
        snapshots.retain(|(_, snapshot)| {
            filter.matches(snapshot) && filter.at.is_none_or(|at| snapshot.timestamp().is_some_and(|time| time <= at))
        });
        note(cli.quiet || cli.json, &format!("only snapshots with {}", filter.describe()));
    }
    for error in &damaged {
        eprintln!("error: {error}");
    }
    let code = if damaged.is_empty() { exit::SUCCESS } else { exit::DAMAGED };
    if cli.json {
        let list: Vec<serde_json::Value> = snapshots.iter().map(|(id, s)| output::snapshot_json(id, s)).collect();
        output::json(&json!({"snapshots": list}));
        return Ok(code);
    }
    output::line(&format!(
        "{:<8}  {:<19}  {:<16}  {:<10}  {:>10}  {}",
        "ID", "Time (UTC)", "Host", "Tags", "Size", "Paths"
    ));
    for (id, snapshot) in &snapshots {
        let flag = if snapshot.complete { "" } else { " (incomplete)" };
        output::line(&format!(
            "{:<8}  {:<19}  {:<16}  {:<10}  {:>10}  {}{flag}",
            id.short(),
            output::short_time(snapshot),
            snapshot.host,
            snapshot.tags.join(","),
            output::size(snapshot.summary.total_bytes),
            shown_paths(snapshot)
        ));
        for line in super::postgres::describe_sources(snapshot) {
            output::line(&line);
        }
    }
    note(cli.quiet, &format!("{} snapshot(s)", snapshots.len()));
    if !damaged.is_empty() {
        return fail(exit::DAMAGED, format!("{} snapshot record(s) are damaged and were not listed", damaged.len()));
    }
    Ok(code)
}

/// The Paths column: the backed-up folders, then a stream's name and each database
/// (`stdin:NAME`, `pg:DATABASE`), so no snapshot shows an empty column.
fn shown_paths(snapshot: &coffer::Snapshot) -> String {
    let mut shown = snapshot.paths.clone();
    for source in &snapshot.sources {
        match source {
            coffer::Source::Files { .. } => {}
            coffer::Source::Stdin { name } => shown.push(format!("stdin:{name}")),
            coffer::Source::Postgres(database) => shown.push(format!("pg:{}", database.database)),
        }
    }
    shown.join(" ")
}

/// A `SNAP:PATH` whose path is not in the snapshot fails naming the snapshot the spec
/// resolved to (`latest` is a different one each night) and, for a path written
/// relative, with the hint that paths in a snapshot are absolute, as backed up.
pub(super) fn require_path(
    spec: &OsStr,
    manifest: &coffer::Manifest,
    path: &[u8],
    id: &coffer::SnapshotId,
) -> Result<()> {
    if !manifest.entries_under(path)?.is_empty() {
        return Ok(());
    }
    let bytes = spec.as_bytes();
    let colon = bytes.iter().position(|&b| b == b':');
    let relative = colon.is_some_and(|at| !bytes[at + 1..].starts_with(b"/"));
    let named = String::from_utf8_lossy(&bytes[..colon.unwrap_or(bytes.len())]).into_owned();
    let resolved = if named.is_empty() || named == "latest" { " (latest)" } else { "" };
    let hint = if relative {
        format!(": paths in a snapshot are absolute, as they were backed up (coffer ls {} shows them)", id.short())
    } else {
        String::new()
    };
    fail(
        exit::NOT_FOUND,
        format!("path {} not found in snapshot {}{resolved}{hint}", output::path_text(path), id.short()),
    )
}

/// Splits `SNAP[:PATH]`; the path is made absolute.
pub(super) fn split_spec(spec: &OsStr) -> (String, Option<Vec<u8>>) {
    let bytes = spec.as_bytes();
    match bytes.iter().position(|&b| b == b':') {
        None => (String::from_utf8_lossy(bytes).into_owned(), None),
        Some(at) => {
            let path = &bytes[at + 1..];
            let path = if path.starts_with(b"/") { path.to_vec() } else { [b"/", path].concat() };
            (String::from_utf8_lossy(&bytes[..at]).into_owned(), Some(path))
        }
    }
}

fn ls(cli: &Cli, args: &LsArgs) -> Result<i32> {
    let repository = super::open(cli)?;
    let (spec, path) = split_spec(&args.snapshot);
    let (id, snapshot) = repository.find_snapshot_filtered(&spec, &filter_of(&args.filter)?)?;
    let manifest = repository.load_manifest(&id, &snapshot)?;
    let base = path.unwrap_or_else(|| b"/".to_vec());
    require_path(&args.snapshot, &manifest, &base, &id)?;
    let entries = manifest.entries_under(&base)?;
    if entries.is_empty() {
        return fail(
            exit::NOT_FOUND,
            format!("path {} not found in snapshot {}", output::path_text(&base), id.short()),
        );
    }
    if cli.json {
        let list: Vec<serde_json::Value> = entries.iter().map(|(_, e)| output::entry_json(e)).collect();
        output::json(&json!({"snapshot_id": id.to_hex(), "entries": list}));
        return Ok(exit::SUCCESS);
    }
    for (_, entry) in &entries {
        output::line(&if args.long { output::entry_long(entry) } else { output::path_text(&entry.path) });
    }
    Ok(exit::SUCCESS)
}

fn dump(cli: &Cli, args: &DumpArgs) -> Result<i32> {
    let (spec, spec_path) = split_spec(&args.snapshot);
    if spec_path.is_some() && (args.path.is_some() || args.pg.is_some()) {
        return fail(exit::USAGE, "give the path either as SNAP:PATH or as PATH, not both");
    }
    if args.archive.is_some() && args.pg.is_some() {
        return fail(exit::USAGE, "--archive writes files and folders; a database dump is written as it is");
    }
    let repository = super::open(cli)?;
    let (id, snapshot) = repository.find_snapshot_filtered(&spec, &filter_of(&args.filter)?)?;
    let manifest = repository.load_manifest(&id, &snapshot)?;
    let path = match (&args.pg, &args.path, spec_path) {
        (Some(database), _, _) => coffer::restorer::select_source(&snapshot, Some(database))?.path.as_bytes().to_vec(),
        (None, Some(path), _) => path.as_bytes().to_vec(),
        (None, None, Some(path)) => path,
        (None, None, None) => return fail(exit::USAGE, "dump needs a PATH (SNAP:PATH) or --pg DATABASE"),
    };
    let path = if path.starts_with(b"/") { path } else { [b"/", &path[..]].concat() };
    require_path(&args.snapshot, &manifest, &path, &id)?;
    super::audit::snapshot(&id);
    output::binary_started();
    if args.archive.as_deref() == Some("zip") {
        let report = coffer::ziparchive::dump_zip(&repository, &manifest, &path, &mut std::io::stdout())?;
        super::audit::bytes(report.bytes);
        if report.left_out > 0 {
            eprintln!(
                "warning: {} FIFO(s), device(s) or socket(s) left out: a zip archive cannot hold them",
                report.left_out
            );
        }
        for path in &report.backslash_names {
            eprintln!(
                "warning: left out {}: its name holds a backslash, which zip readers on Windows take for a folder separator (--archive tar keeps it)",
                output::path_text(path)
            );
        }
        return Ok(exit::SUCCESS);
    }
    if args.archive.is_some() {
        let bytes = coffer::tarball::dump_tar(&repository, &manifest, &path, &mut std::io::stdout())?;
        super::audit::bytes(bytes);
        return Ok(exit::SUCCESS);
    }
    if let Some((_, entry)) = manifest.entries_under(&path)?.first().filter(|(_, e)| e.kind == coffer::EntryKind::Dir) {
        return fail(
            exit::USAGE,
            format!("{} is a folder; add --archive tar to write it as a tar stream", output::path_text(&entry.path)),
        );
    }
    let mut stdout = std::io::stdout().lock();
    let bytes = coffer::dump_file(&repository, &manifest, &path, &mut stdout, "standard output")?;
    super::audit::bytes(bytes);
    Ok(exit::SUCCESS)
}

fn unlock(cli: &Cli, args: &UnlockArgs) -> Result<i32> {
    let repository = super::open(cli)?;
    let removed = coffer::remove_locks(&**repository.backend(), repository.master(), args.remove_all)?;
    if cli.json {
        output::json(&json!({"removed": removed}));
    } else {
        note(cli.quiet, &format!("removed {removed} lock(s)"));
    }
    Ok(exit::SUCCESS)
}
