//! Where the password comes from: a file, a command, the environment or a prompt.
//!
//! coffer's own secrets (`COFFER_PASSWORD`, and the file or command that yields it) are
//! taken out of the environment before anything else runs, so no program coffer starts
//! (the password command, pg_dump, a `--stdin-from-command` program) inherits them.

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

use super::{exit, fail, Cli};

/// Text that must not be shown: `Debug` prints stars.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub(super) OsString);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The password settings found in the environment at start.
#[derive(Debug, Default)]
pub struct EnvSecrets {
    password: Option<Secret>,
    file: Option<OsString>,
    command: Option<Secret>,
}

/// Overwrites the value of `name` where the kernel placed the environment at start:
/// removing a variable only unlinks it, and `/proc/<pid>/environ` shows that memory.
fn wipe_original(name: &str) {
    let Ok(name) = std::ffi::CString::new(name) else { return };
    // SAFETY: called before any other thread exists; getenv returns a pointer into the
    // process's environment strings (or null), and the write stays within the value's
    // own length, found by strlen.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        if !value.is_null() {
            std::ptr::write_bytes(value, b'*', libc::strlen(value));
        }
    }
}

impl EnvSecrets {
    /// Reads `COFFER_PASSWORD`, `COFFER_PASSWORD_FILE` and `COFFER_PASSWORD_COMMAND` and
    /// removes them from the process environment. Call it first thing in `main`:
    /// changing the environment is sound only while no other thread runs.
    pub fn take() -> Self {
        let take = |name: &str| {
            let value = std::env::var_os(name);
            wipe_original(name);
            std::env::remove_var(name);
            value
        };
        let non_empty = |value: Option<OsString>| value.filter(|value| !value.is_empty());
        Self {
            password: take("COFFER_PASSWORD").map(Secret),
            file: non_empty(take("COFFER_PASSWORD_FILE")),
            command: non_empty(take("COFFER_PASSWORD_COMMAND")).map(Secret),
        }
    }

    /// Fills in what the command line did not give; a flag wins over the environment.
    pub fn apply(self, mut cli: Cli) -> Cli {
        cli.password_file = cli.password_file.or(self.file.map(PathBuf::from));
        cli.password_command = cli.password_command.or(self.command.map(|command| command.0));
        cli.password_env = self.password;
        cli
    }
}

/// Reads the password; `confirm` asks twice at a prompt (for `init`).
pub fn read(cli: &Cli, confirm: bool) -> Result<String> {
    if let Some(path) = &cli.password_file {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                return fail(exit::WRONG_PASSWORD, format!("cannot read password file {}: {error}", path.display()))
            }
        };
        return non_empty(first_line(&text), &format!("password file {}", path.display()));
    }
    if let Some(command) = &cli.password_command {
        return run_secret_command(command, "the password command");
    }
    if let Some(Secret(password)) = &cli.password_env {
        let Some(password) = password.to_str() else {
            return fail(exit::WRONG_PASSWORD, "COFFER_PASSWORD is not valid UTF-8");
        };
        return non_empty(password.to_string(), "COFFER_PASSWORD");
    }
    if std::io::stdin().is_terminal() {
        return prompt("repository password", confirm);
    }
    fail(
        exit::WRONG_PASSWORD,
        "no password given: use --password-file, COFFER_PASSWORD_FILE, COFFER_PASSWORD_COMMAND or COFFER_PASSWORD",
    )
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

fn non_empty(password: String, source: &str) -> Result<String> {
    if password.is_empty() {
        return fail(exit::WRONG_PASSWORD, format!("the password from {source} is empty"));
    }
    Ok(password)
}

/// Runs a command that prints a secret (the password command, a profile's
/// `pg_password_command`, an SMTP password or webhook key command) and returns its first
/// line. Its text is never shown: it may hold a secret (a token passed to a vault
/// client, say); its own stderr reaches the user unchanged.
pub fn run_secret_command(command: &OsStr, what: &str) -> Result<String> {
    let output = match Command::new("sh").arg("-c").arg(command).stderr(Stdio::inherit()).output() {
        Ok(output) => output,
        Err(error) => return fail(exit::WRONG_PASSWORD, format!("cannot run {what} with sh: {error}")),
    };
    if !output.status.success() {
        return fail(exit::WRONG_PASSWORD, format!("{what} {}", how_it_ended(output.status)));
    }
    let Ok(text) = String::from_utf8(output.stdout) else {
        return fail(exit::WRONG_PASSWORD, format!("{what} printed text that is not UTF-8"));
    };
    non_empty(first_line(&text), what)
}

/// A secret from a file (its first line) or a command, for `what` (a notification's
/// SMTP password or webhook key).
pub fn read_secret(file: Option<&std::path::Path>, command: Option<&str>, what: &str) -> Result<Option<String>> {
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(text) => non_empty(first_line(&text), &format!("{what} file {}", path.display())).map(Some),
            Err(error) => fail(exit::USAGE, format!("cannot read {what} file {}: {error}", path.display())),
        };
    }
    command.map(|command| run_secret_command(OsStr::new(command), &format!("the {what} command"))).transpose()
}

/// "exited with status 3" or "was killed by signal 9".
fn how_it_ended(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// Reads the new password of `key add` and `key passwd`: from a file, or asked twice.
pub fn read_new(file: Option<&std::path::Path>) -> Result<String> {
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(text) => non_empty(first_line(&text), &format!("password file {}", path.display())),
            Err(error) => fail(exit::USAGE, format!("cannot read password file {}: {error}", path.display())),
        };
    }
    if std::io::stdin().is_terminal() {
        return prompt("new password", true);
    }
    fail(exit::USAGE, "no new password given: use --new-password-file, or run at a terminal to be asked")
}

fn prompt(what: &str, confirm: bool) -> Result<String> {
    let password =
        rpassword::prompt_password(format!("{what}: ")).context("cannot read the password from the terminal")?;
    if confirm {
        let again = rpassword::prompt_password("repeat the password: ")
            .context("cannot read the password from the terminal")?;
        if again != password {
            return fail(exit::USAGE, "the passwords do not match");
        }
    }
    non_empty(password, "the prompt")
}
