//! The library's one error type: the kinds a caller acts on, with context as fields.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the library. The CLI maps each kind to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no repository (no `config` object) at the location.
    #[error("no coffer repository at {location}")]
    NoRepository { location: String },

    /// `init` was asked to create a repository where one exists.
    #[error("a repository already exists at {location}")]
    AlreadyInitialized { location: String },

    /// No key file opens with the given password. When the repository has one key
    /// file, `only_key` names it: a changed byte in it cannot be told from a wrong
    /// password.
    #[error("wrong password{}", match only_key {
        Some(key) => format!(" for {location} (or its only key file, {key}, is damaged: a changed byte in a wrapped key cannot be told from a wrong password)"),
        None => format!(": no key in {location} opens with it"),
    })]
    WrongPassword { location: String, only_key: Option<String> },

    /// The repository or an object in it has a format version this program does not know.
    #[error("{what} has format version {found}, but this coffer reads only version {supported}; upgrade coffer")]
    UnsupportedVersion { what: String, found: u64, supported: u64 },

    /// An object failed authentication, hashing or decoding: it is damaged or truncated.
    #[error("{object} is damaged: {reason}")]
    Integrity { object: String, reason: String },

    /// An object the repository refers to is missing from storage.
    #[error("{object} is missing from the repository")]
    MissingObject { object: String },

    /// `latest` was asked for while some snapshot records are damaged: any of them may
    /// be the newest, so no other snapshot is taken in its place.
    #[error(
        "cannot tell which snapshot is the latest: {damaged} snapshot record(s) are damaged ({first}{}), and any may be the newest; {}",
        if *damaged > 1 { " and others" } else { "" },
        match newest_readable {
            Some(newest) => format!("the newest readable snapshot is {newest}: name it by its id to use it"),
            None => "no snapshot record is readable".to_string(),
        }
    )]
    LatestUnknown { damaged: usize, first: String, newest_readable: Option<String> },

    /// A snapshot, path or blob asked for by the user does not exist.
    #[error("{what} not found")]
    NotFound { what: String },

    /// The repository is locked by another process.
    #[error("repository is locked {holder}")]
    Locked { holder: String },

    /// The storage backend failed (network, permissions, disk).
    #[error("storage error on {location}: {message}")]
    Backend { location: String, message: String },

    /// The storage could not be reached (connection refused, DNS, timeouts), after retries.
    #[error("cannot reach {location}: {message}")]
    Unreachable { location: String, message: String },

    /// The storage refused the credentials or the operation.
    #[error("access denied by {location}: {message}")]
    AccessDenied { location: String, message: String },

    /// A PostgreSQL program (pg_dump, pg_restore, psql) failed; the message is its own.
    #[error("{tool} failed: {message}")]
    Postgres { tool: String, message: String },

    /// The program whose output a backup stores (`--stdin-from-command`) failed or could
    /// not run. The command's text is not part of the message: it may hold a secret.
    #[error("the input command {message}; no snapshot was saved")]
    InputCommand { message: String },

    /// A safety check refused the operation; `--force` overrides it where offered.
    #[error("refused: {0}")]
    Refused(String),

    /// A local file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The local cache (SQLite) failed.
    #[error("local cache {path}: {message}")]
    Cache { path: PathBuf, message: String },

    /// The user gave an invalid argument.
    #[error("{0}")]
    InvalidInput(String),

    /// SIGINT or SIGTERM stopped the operation; `outcome` says what was kept or undone.
    #[error("interrupted by {}{}", signal_name(*.signal), if .outcome.is_empty() { String::new() } else { format!(": {}", .outcome) })]
    Interrupted { signal: i32, outcome: String },

    /// A lock held by this process was lost (not refreshed in time, or removed), so
    /// the operation stopped before committing anything.
    #[error("lost the repository lock: {reason}; nothing was committed")]
    LockLost { reason: String },

    /// A restore finished but some files could not be restored intact.
    #[error("{failed} file(s) could not be restored: {first}")]
    RestoreIncomplete { failed: usize, first: String },
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

impl Error {
    /// Wraps an I/O error with the action and the path it concerns.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    /// An integrity failure of a named object.
    pub fn integrity(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Integrity { object: object.into(), reason: reason.into() }
    }

    /// True when the error means stored data is damaged or missing.
    pub fn is_integrity(&self) -> bool {
        matches!(self, Error::Integrity { .. } | Error::MissingObject { .. })
    }
}
