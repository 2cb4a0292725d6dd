//! Where the password comes from: a file, a command, the environment or a prompt.

use std::io::IsTerminal;
use std::process::Command;

use anyhow::{Context, Result};

use super::{exit, fail, Cli};

/// Reads the password; `confirm` asks twice at a prompt (for `init`).
pub fn read(cli: &Cli, confirm: bool) -> Result<String> {
    if let Some(path) = &cli.password_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read password file {}", path.display()))?;
        return non_empty(first_line(&text), &format!("password file {}", path.display()));
    }
    if let Some(command) = &cli.password_command {
        return from_command(command);
    }
    if let Ok(password) = std::env::var("COFFER_PASSWORD") {
        return non_empty(password, "COFFER_PASSWORD");
    }
    if std::io::stdin().is_terminal() {
        return prompt(confirm);
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

fn from_command(command: &str) -> Result<String> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run password command {command:?}"))?;
    if !output.status.success() {
        return fail(exit::WRONG_PASSWORD, format!("password command {command:?} failed with {}", output.status));
    }
    non_empty(first_line(&String::from_utf8_lossy(&output.stdout)), "the password command")
}

fn prompt(confirm: bool) -> Result<String> {
    let password =
        rpassword::prompt_password("repository password: ").context("cannot read the password from the terminal")?;
    if confirm {
        let again = rpassword::prompt_password("repeat the password: ")
            .context("cannot read the password from the terminal")?;
        if again != password {
            return fail(exit::USAGE, "the passwords do not match");
        }
    }
    non_empty(password, "the prompt")
}
