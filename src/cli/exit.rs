//! Exit codes: the documented contract with scripts (see README).

use coffer::Error;

pub const SUCCESS: i32 = 0;
pub const FAILURE: i32 = 1;
pub const USAGE: i32 = 2;
pub const INCOMPLETE: i32 = 3;
pub const NO_REPOSITORY: i32 = 10;
pub const LOCKED: i32 = 11;
pub const WRONG_PASSWORD: i32 = 12;
pub const DAMAGED: i32 = 13;
pub const NOT_FOUND: i32 = 14;
pub const LOCAL_IO: i32 = 15;
pub const UNSUPPORTED_VERSION: i32 = 16;
pub const UNREACHABLE: i32 = 17;
pub const ACCESS_DENIED: i32 = 18;
pub const POSTGRES: i32 = 19;
pub const REFUSED: i32 = 20;
pub const INPUT_COMMAND: i32 = 21;

/// The name of an exit code, for `{"error": {"kind": ...}}` with `--json`.
pub fn kind(code: i32) -> &'static str {
    match code {
        SUCCESS => "success",
        USAGE => "usage",
        INCOMPLETE => "incomplete",
        NO_REPOSITORY => "no_repository",
        LOCKED => "locked",
        WRONG_PASSWORD => "wrong_password",
        DAMAGED => "damaged",
        NOT_FOUND => "not_found",
        LOCAL_IO => "local_io",
        UNSUPPORTED_VERSION => "unsupported_version",
        UNREACHABLE => "unreachable",
        ACCESS_DENIED => "access_denied",
        POSTGRES => "postgres",
        REFUSED => "refused",
        INPUT_COMMAND => "input_command",
        129..=192 => "interrupted",
        _ => "failure",
    }
}

/// The exit code for a library error.
pub fn code_of(error: &Error) -> i32 {
    match error {
        Error::NoRepository { .. } => NO_REPOSITORY,
        Error::AlreadyInitialized { .. } => FAILURE,
        Error::WrongPassword { .. } => WRONG_PASSWORD,
        Error::UnsupportedVersion { .. } => UNSUPPORTED_VERSION,
        Error::Integrity { .. }
        | Error::MissingObject { .. }
        | Error::RestoreIncomplete { .. }
        | Error::LatestUnknown { .. } => DAMAGED,
        Error::NotFound { .. } => NOT_FOUND,
        Error::Locked { .. } => LOCKED,
        Error::Io { .. } | Error::Cache { .. } => LOCAL_IO,
        Error::InvalidInput(_) => USAGE,
        Error::Backend { .. } => FAILURE,
        Error::Unreachable { .. } => UNREACHABLE,
        Error::AccessDenied { .. } => ACCESS_DENIED,
        Error::Postgres { .. } => POSTGRES,
        Error::Refused(_) => REFUSED,
        Error::Interrupted { signal, .. } => 128 + signal,
        Error::LockLost { .. } => LOCKED,
        Error::InputCommand { .. } => INPUT_COMMAND,
    }
}
