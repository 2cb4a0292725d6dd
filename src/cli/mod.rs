//! The command-line interface: the only part of coffer that prints.

pub mod args;
mod commands;
pub mod exit;
mod output;
mod password;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use coffer::backend::{Backend, ObjectStoreBackend};
use coffer::Repository;

pub use args::Cli;

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
    commands::dispatch(&cli)
}

/// Where the repository is, from `--repo` or `COFFER_REPOSITORY`.
fn repository_path(cli: &Cli) -> Result<PathBuf> {
    let Some(spec) = cli.repo.as_deref() else {
        return fail(exit::USAGE, "no repository given: use --repo or set COFFER_REPOSITORY");
    };
    if spec.starts_with("s3://") || spec.starts_with("s3:") {
        return fail(
            exit::FAILURE,
            format!("S3 repositories ({spec}) are not supported by this version yet; use a local path"),
        );
    }
    let path = spec.strip_prefix("file://").unwrap_or(spec);
    if path.is_empty() || spec.contains("://") && !spec.starts_with("file://") {
        return fail(
            exit::USAGE,
            format!("{spec:?} is not a repository location (a path, file:///path or s3://bucket/prefix)"),
        );
    }
    Ok(PathBuf::from(path))
}

fn backend(cli: &Cli, create: bool) -> Result<Arc<dyn Backend>> {
    let path = repository_path(cli)?;
    Ok(Arc::new(ObjectStoreBackend::local(&path, create)?))
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
    coffer::read_config(&*backend)?;
    let password = password::read(cli, false)?;
    Ok(Repository::open(backend, password.as_bytes(), cache_root(cli).as_deref())?)
}
