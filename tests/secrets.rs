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

/// Fake PostgreSQL programs (`COFFER_PSQL` etc. point at them) that record their own
/// command line and environment, as `ps` and /proc show them, in `log/`.
struct FakeTools {
    log: std::path::PathBuf,
    bin: std::path::PathBuf,
}

const FAKE_TOOL: &str = r#"#!/bin/sh
log="$(dirname "$0")/../log"
name="$(basename "$0")"
cat /proc/$$/cmdline > "$log/$name.$$.cmdline"
cat /proc/$$/environ > "$log/$name.$$.environ"
case "$name" in
psql)
    for argument in "$@"; do
        case "$argument" in *current_database*) printf 'clinic\037%s\000' 16.4 ;; esac
    done ;;
pg_dump)
    if [ "$1" = --version ]; then echo "pg_dump (PostgreSQL) 16.4"; else printf 'PGDMP fake dump'; fi ;;
pg_dumpall) printf -- '-- roles\n' ;;
pg_restore) cat > /dev/null ;;
esac
"#;

impl FakeTools {
    fn new(fixture: &Fixture) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let (bin, log) = (fixture.path("fake-pg/bin"), fixture.path("fake-pg/log"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&log).unwrap();
        for name in ["psql", "pg_dump", "pg_dumpall", "pg_restore"] {
            std::fs::write(bin.join(name), FAKE_TOOL).unwrap();
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { log, bin }
    }

    /// Runs coffer with the fake programs; returns stdout and stderr together.
    fn run(&self, fixture: &Fixture, args: &[&str]) -> String {
        let output = fixture
            .command(args)
            .env("COFFER_PSQL", self.bin.join("psql"))
            .env("COFFER_PG_DUMP", self.bin.join("pg_dump"))
            .env("COFFER_PG_DUMPALL", self.bin.join("pg_dumpall"))
            .env("COFFER_PG_RESTORE", self.bin.join("pg_restore"))
            .env_remove("PGPASSWORD")
            // Storage credentials, which no PostgreSQL program may see.
            .env("AWS_SECRET_ACCESS_KEY", "storage-secret")
            .env("AWS_ACCESS_KEY_ID", "storage-key")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "coffer {args:?}: {text}");
        text
    }

    /// (program, command line arguments, environment) of every run so far.
    fn runs(&self) -> Vec<(String, Vec<String>, Vec<u8>)> {
        let mut runs = Vec::new();
        for entry in std::fs::read_dir(&self.log).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".cmdline") else { continue };
            let cmdline = std::fs::read(&path).unwrap();
            let arguments = variables(&cmdline);
            let environ = std::fs::read(self.log.join(format!("{stem}.environ"))).unwrap();
            runs.push((stem.split('.').next().unwrap().to_string(), arguments, environ));
        }
        runs
    }
}

/// Every program got the password in its environment alone, and none got coffer's.
fn assert_password_only_in_environment(tools: &FakeTools, password: &str, programs: &[&str]) {
    let runs = tools.runs();
    for program in programs {
        assert!(runs.iter().any(|(name, _, _)| name == program), "{program} did not run: {runs:?}");
    }
    for (program, arguments, environ) in runs {
        let cmdline = arguments.join(" ");
        assert!(!cmdline.contains(password), "{program} got the password on its command line: {cmdline}");
        if arguments.iter().any(|argument| argument == "--version") {
            continue;
        }
        assert!(cmdline.contains("--dbname"), "{program}: {cmdline}");
        let environment = variables(&environ);
        assert!(environment.contains(&format!("PGPASSWORD={password}")), "{program}: {environment:?}");
        assert!(!environment.iter().any(|v| v.starts_with("COFFER_PASSWORD")), "{program}: {environment:?}");
        assert!(
            !environment.iter().any(|v| v.starts_with("AWS_")),
            "{program} got storage credentials: {environment:?}"
        );
    }
}

#[test]
fn a_uri_password_reaches_postgresql_programs_only_through_their_environment() {
    let fixture = Fixture::new();
    let tools = FakeTools::new(&fixture);
    let password = "s3cr3t/p@ss w'rd";
    let uri = "postgresql://app:s3cr3t%2Fp%40ss%20w'rd@db.invalid:5433/clinic?sslmode=require";
    let text = tools.run(&fixture, &["backup", "--pg", uri, "--pg-globals"]);
    assert_password_only_in_environment(&tools, password, &["psql", "pg_dump", "pg_dumpall"]);
    let runs = tools.runs();
    let dump = runs.iter().find(|(name, args, _)| name == "pg_dump" && args.iter().any(|a| a == "--dbname")).unwrap();
    let dbname = dump.1.iter().skip_while(|a| *a != "--dbname").nth(1).unwrap().clone();
    assert_eq!(dbname, "user='app' host='db.invalid' port='5433' dbname='clinic' sslmode='require'");
    assert!(!text.contains("s3cr3t"), "{text}");
    let listing = fixture.ok(&["--json", "snapshots"]);
    assert!(listing.contains("clinic") && !listing.contains("s3cr3t"), "{listing}");

    let target = "host=db.invalid user=app dbname=restored password='s3cr3t/p@ss w\\'rd'";
    let text = tools.run(&fixture, &["restore", "latest", "--pg-target", target]);
    assert_password_only_in_environment(&tools, password, &["psql", "pg_restore"]);
    assert!(text.contains("into host=db.invalid user=app dbname=restored password=***"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[test]
fn a_connection_string_that_libpq_would_refuse_is_refused_without_showing_it() {
    let fixture = Fixture::new();
    let tools = FakeTools::new(&fixture);
    let output = fixture
        .command(&["backup", "--pg", "host=db password='s3cr3t"])
        .env("COFFER_PG_DUMP", tools.bin.join("pg_dump"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("connection string is not valid") && !stderr.contains("s3cr3t"), "{stderr}");
    assert!(tools.runs().is_empty(), "a program ran");
}
