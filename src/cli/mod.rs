//! The command-line interface: the only part of coffer that prints.

pub mod args;
mod audit;
mod commands;
mod drill;
mod dry_run;
pub mod exit;
mod inspect;
mod keys;
mod maintenance;
pub mod notify;
mod output;
pub mod password;
mod postgres;
pub mod profile;
mod progress;
mod restore;
mod run;
mod schedule;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use coffer::backend::{Backend, LocalBackend};
use coffer::Repository;

pub use args::Cli;

/// True once the command wrote its JSON document (see `output::json`).
pub fn output_document_written() -> bool {
    output::document_written()
}

/// An error that carries its own exit code (for failures the library does not know of).
#[derive(Debug)]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for ExitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

/// Fails with a message and an exit code.
pub fn fail<T>(code: i32, message: impl Into<String>) -> Result<T> {
    Err(ExitError { code, message: message.into() }.into())
}

/// Runs the parsed command; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let (begun, started) = (std::time::Instant::now(), jiff::Timestamp::now());
    let outcome = commands::dispatch(&cli);
    // What the command did, read before its audit record takes the facts.
    let step = notify::command_name(&cli.command).map(|_| {
        let (code, error) = match &outcome {
            Ok(code) => (*code, None),
            Err(error) => (crate::exit_code(error), Some(crate::message(error))),
        };
        notify::step_of(&cli, code, error, begun.elapsed())
    });
    let outcome = match (audit::record(&cli, &outcome), outcome) {
        (Some(code), Ok(_)) => Ok(code),
        (_, outcome) => outcome,
    };
    if let Some(step) = step {
        tell(&cli, step, started);
    }
    outcome
}

/// Hands a command's report to the `coffer run` that started it, or sends the
/// profile's notification (`run` sends its own, for all its steps).
fn tell(cli: &Cli, step: notify::Step, started: jiff::Timestamp) {
    if let Some(path) = std::env::var_os(run::REPORT_FILE) {
        if let Err(error) = std::fs::write(&path, serde_json::to_vec(&step).unwrap_or_default()) {
            eprintln!(
                "warning: cannot hand this step's report to coffer run ({}): {error}",
                PathBuf::from(path).display()
            );
        }
        return;
    }
    if matches!(cli.command, args::Command::Run(_)) {
        return;
    }
    if let Some(profile) = &cli.loaded_profile {
        notify::send(profile, &notify::report(&step.command.clone(), profile, started, vec![step]));
    }
}

/// Where the repository is.
enum Location {
    Local(PathBuf),
    S3(Box<coffer::backend::S3Options>),
}

/// Parses `--repo` or `COFFER_REPOSITORY`.
fn location(cli: &Cli) -> Result<Location> {
    let Some(spec) = cli.repo.as_deref() else {
        return fail(exit::USAGE, "no repository given: use --repo or set COFFER_REPOSITORY");
    };
    if spec.starts_with("s3:") {
        let mut options = coffer::backend::S3Options::from_url(spec)?;
        options.connections = cli.connections.unwrap_or(coffer::backend::DEFAULT_CONNECTIONS);
        if let Some(endpoint) = &cli.s3_endpoint {
            options.endpoint = Some(endpoint.clone());
        }
        return Ok(Location::S3(Box::new(options)));
    }
    let path = spec.strip_prefix("file://").unwrap_or(spec);
    if path.is_empty() || spec.contains("://") && !spec.starts_with("file://") {
        return fail(
            exit::USAGE,
            format!("{spec:?} is not a repository location (a path, file:///path or s3://bucket/prefix)"),
        );
    }
    Ok(Location::Local(PathBuf::from(path)))
}

fn backend(cli: &Cli, create: bool) -> Result<Arc<dyn Backend>> {
    match location(cli)? {
        Location::Local(path) => Ok(Arc::new(LocalBackend::open(&path, create)?)),
        Location::S3(options) => Ok(Arc::new(coffer::backend::open_s3(&options)?)),
    }
}

/// The default pack size for the repository's kind of storage.
fn default_pack_size(cli: &Cli) -> Result<u64> {
    Ok(match location(cli)? {
        Location::Local(_) => coffer::DEFAULT_PACK_SIZE,
        Location::S3(_) => coffer::backend::DEFAULT_S3_PACK_SIZE,
    })
}

/// The cache root, or `None` for a temporary cache.
fn cache_root(cli: &Cli) -> Option<PathBuf> {
    if cli.no_cache {
        return None;
    }
    if let Some(dir) = &cli.cache_dir {
        return Some(dir.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("coffer"))
}

/// Opens the repository with the user's password.
fn open(cli: &Cli) -> Result<Repository> {
    let backend = backend(cli, false)?;
    // Read before the password is asked for: a wrong location fails without a prompt.
    let config = coffer::read_config(&*backend)?;
    let password = password::read(cli, false)?;
    let repository = Repository::open_with_config(backend, config, password.as_bytes(), cache_root(cli).as_deref())?;
    audit::opened(repository.backend().clone(), repository.master().clone());
    Ok(repository)
}
