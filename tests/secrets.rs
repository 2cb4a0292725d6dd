//! Secrets stay private (issue 11, finding 7): coffer's password never reaches a child
//! process, a PostgreSQL password is never on a command line, and connection strings
//! are shown with the password replaced by `***`.

mod common;

use common::Fixture;

/// The variables of a process environment dumped by `env -0` (or /proc/PID/environ).
fn variables(dump: &[u8]) -> Vec<String> {
    dump.split(|&b| b == 0 || b == b'\n').map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

fn names(dump: &[u8]) -> Vec<String> {
    variables(dump).iter().filter_map(|v| v.split_once('=').map(|(name, _)| name.to_string())).collect()
}

#[test]
fn the_password_command_does_not_inherit_coffers_secrets() {
    let fixture = Fixture::new();
    let dump = fixture.path("password-command.env");
    let command = format!("env -0 > '{}'; echo 'correct horse'", dump.display());
    let output = fixture
        .command(&["snapshots"])
        .env("COFFER_PASSWORD_COMMAND", &command)
        .env("COFFER_PASSWORD_FILE", "")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen = names(&std::fs::read(&dump).unwrap());
    assert!(seen.iter().any(|name| name == "PATH"), "{seen:?}");
    for secret in ["COFFER_PASSWORD", "COFFER_PASSWORD_COMMAND", "COFFER_PASSWORD_FILE"] {
        assert!(!seen.iter().any(|name| name == secret), "the password command inherited {secret}: {seen:?}");
    }
}

#[test]
fn a_failing_password_command_is_reported_without_its_text() {
    let fixture = Fixture::new();
    let output = fixture
        .command(&["snapshots"])
        .env_remove("COFFER_PASSWORD")
        .env("COFFER_PASSWORD_COMMAND", "exit 7 # vault-token-s3cr3t")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(12), "{stderr}");
    assert!(stderr.contains("password command exited with status 7"), "{stderr}");
    assert!(!stderr.contains("s3cr3t"), "the command's text was shown: {stderr}");
}

#[test]
fn the_password_flags_win_over_the_environment() {
    let fixture = Fixture::new();
    let file = fixture.path("password");
    std::fs::write(&file, "correct horse\n").unwrap();
    let output = fixture
        .command(&["snapshots", "--password-file", file.to_str().unwrap()])
        .env("COFFER_PASSWORD_FILE", fixture.path("no-such-file"))
        .env("COFFER_PASSWORD_COMMAND", "exit 1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let help = fixture.command(&["--help"]).env("COFFER_PASSWORD_COMMAND", "echo s3cr3t").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("COFFER_PASSWORD_COMMAND") && !help.contains("s3cr3t"), "{help}");
}
