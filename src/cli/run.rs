//! `coffer run PROFILE`: a profile's whole nightly job. Each step is this program run
//! again with the profile (so each leaves its own audit record, with its own command
//! line), and tells this one its report through a private file.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::args::{Cli, RunArgs};
use super::notify::{self, Step};
use super::output;
use super::profile::{self, Profile};
use super::{exit, fail};

/// The variable through which a step hands its report to `run` (and sends none itself).
pub const REPORT_FILE: &str = "COFFER_REPORT_FILE";

pub fn run(cli: &Cli, args: &RunArgs) -> Result<i32> {
    let started = jiff::Timestamp::now();
    let config = profile::config_path(cli)?;
    let file = profile::load(&config)?;
    let profile = file.profile(&args.profile)?;
    if profile.repository.is_none() && cli.repo.is_none() {
        return fail(exit::USAGE, format!("profile {:?} names no repository", args.profile));
    }
    let _running = hold_run_lock(&config, &profile.name)?;
    let backs_up = profile.paths.as_ref().is_some_and(|p| !p.is_empty())
        || profile.databases.as_ref().is_some_and(|d| !d.is_empty());
    let mut plan: Vec<(&str, Vec<String>)> = Vec::new();
    if backs_up {
        plan.push(("backup", vec!["backup".into(), "--no-progress".into()]));
    }
    if profile.has_policy() {
        let mut forget = vec!["forget".to_string()];
        if profile.prune.unwrap_or(false) {
            forget.push("--prune".into());
        }
        plan.push(("forget", forget));
    }
    let mut check = vec!["check".to_string(), "--no-progress".into()];
    if let Some(subset) = &profile.read_data_subset {
        check.extend(["--read-data-subset".to_string(), subset.clone()]);
    }
    if profile.check_pg.unwrap_or(false) {
        check.push("--pg".into());
    }
    plan.push(("check", check));

    let scratch = tempfile::Builder::new().prefix("coffer-run-").tempdir().map_err(|e| {
        coffer::Error::io("cannot make a private folder for the run's reports", std::env::temp_dir(), e)
    })?;
    let mut steps: Vec<Step> = Vec::new();
    let mut documents = Vec::new();
    for (name, arguments) in plan {
        if name == "forget" && steps.first().is_some_and(|s| s.command == "backup" && s.outcome == "failure") {
            steps.push(Step {
                command: "forget".into(),
                outcome: "skipped".into(),
                details: vec!["skipped: the backup failed, so no snapshot is removed tonight".into()],
                ..Step::default()
            });
            continue;
        }
        if !cli.quiet && !cli.json {
            eprintln!("== coffer run {}: {name}", profile.name);
        }
        let (step, document) = run_step(cli, &config, &profile, name, &arguments, scratch.path())?;
        documents.push(json!({"command": name, "output": document}));
        steps.push(step);
        if coffer::interrupt::requested().is_some() {
            break;
        }
    }
    // A skipped step has exit code 0: it changes nothing in the worst one.
    let report = notify::report("run", &profile, started, steps);
    let code = report.exit_code;
    if cli.json {
        let mut document = serde_json::to_value(&report)?;
        document["outputs"] = json!(documents);
        output::json(&document);
    } else if !cli.quiet {
        output::line(&format!("run {} on {}: {}", profile.name, report.host, report.outcome.name()));
        for step in &report.steps {
            let what = match (&step.error, step.snapshot_ids.first()) {
                (Some(error), _) => error.clone(),
                (None, _) if step.command == "forget" => format!("removed {} snapshot(s)", step.snapshot_ids.len()),
                (None, Some(id)) => format!("snapshot {}", &id[..id.len().min(8)]),
                (None, None) => step.details.first().cloned().unwrap_or_default(),
            };
            output::line(&format!(
                "  {:<7} {:<8} exit {:<3} {:>7.1} s  {what}",
                step.command, step.outcome, step.exit_code, step.duration_seconds
            ));
        }
    }
    if std::env::var_os(REPORT_FILE).is_none() {
        notify::send(&profile, &report);
    }
    Ok(code)
}

/// Takes the lock that keeps two runs of one profile from overlapping (a timer's and one
/// started by hand, say); it is let go when the process ends, however it ends.
fn hold_run_lock(config: &Path, name: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let dir = run_lock_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| coffer::Error::io("cannot make the folder of run locks", &dir, e))?;
    // A folder another user made (in /tmp, say) could hold a planted lock.
    let owner = std::fs::symlink_metadata(&dir).map_err(|e| coffer::Error::io("cannot read", &dir, e))?;
    if owner.uid() != nix::unistd::geteuid().as_raw() || !owner.is_dir() {
        return fail(exit::REFUSED, format!("{} is not a folder of this user: no run lock there", dir.display()));
    }
    // One lock per profile of one configuration file, wherever HOME or the cache is.
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let key = blake3::hash(format!("{}\0{name}", config.display()).as_bytes()).to_hex();
    let path = dir.join(format!("run-{}.lock", &key[..32]));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| coffer::Error::io("cannot open the run's lock file", &path, e))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => fail(
            exit::LOCKED,
            format!("another coffer run of profile {name:?} is in progress (it holds {})", path.display()),
        ),
        Err((_, errno)) => Err(coffer::Error::io("cannot lock", &path, errno.into()).into()),
    }
}

/// Where run locks are: /run/lock/coffer for root (a timer's run has no HOME), else
/// $XDG_RUNTIME_DIR/coffer, else a private folder in the temporary folder.
/// `COFFER_RUN_LOCK_DIR` names another (tests).
pub fn run_lock_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("COFFER_RUN_LOCK_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    if nix::unistd::geteuid().is_root() && Path::new("/run/lock").is_dir() {
        return "/run/lock/coffer".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(&dir).join("coffer"),
        None => std::env::temp_dir().join(format!("coffer-{}", nix::unistd::geteuid())),
    }
}

/// Runs one step as its own process; its stdout is kept (JSON) when `run` prints JSON.
fn run_step(
    cli: &Cli,
    config: &Path,
    profile: &Profile,
    name: &str,
    arguments: &[String],
    scratch: &Path,
) -> Result<(Step, serde_json::Value)> {
    let program = std::env::current_exe()
        .map_err(|e| coffer::Error::io("cannot find this program to run its steps", "/proc/self/exe", e))?;
    let report_file = scratch.join(format!("{name}.json"));
    let mut command = std::process::Command::new(program);
    command.arg("--config").arg(config).arg("--profile").arg(&profile.name);
    if let Some(repo) = &cli.repo {
        command.arg("--repo").arg(repo);
    }
    if let Some(file) = &cli.password_file {
        command.arg("--password-file").arg(file);
    }
    // The command may hold a secret (a vault token): through the environment, which
    // the step takes out of its own at start, never on a command line that ps shows.
    if let Some(password_command) = &cli.password_command {
        command.env("COFFER_PASSWORD_COMMAND", password_command);
    }
    if let Some(super::password::Secret(password)) = &cli.password_env {
        command.env("COFFER_PASSWORD", password);
    }
    if let Some(dir) = &cli.cache_dir {
        command.arg("--cache-dir").arg(dir);
    }
    if cli.no_cache {
        command.arg("--no-cache");
    }
    if let Some(connections) = cli.connections {
        command.arg("--connections").arg(connections.to_string());
    }
    if let Some(endpoint) = &cli.s3_endpoint {
        command.arg("--s3-endpoint").arg(endpoint);
    }
    if cli.quiet {
        command.arg("--quiet");
    }
    if cli.json {
        command.arg("--json").stdout(Stdio::piped());
    }
    command.args(arguments).env(REPORT_FILE, &report_file).stdin(Stdio::null());
    let begun = Instant::now();
    let child = command
        .spawn()
        .map_err(|e| coffer::Error::io("cannot start the step", std::env::current_exe().unwrap_or_default(), e))?;
    let finished = child
        .wait_with_output()
        .map_err(|e| coffer::Error::io("cannot wait for the step", std::env::current_exe().unwrap_or_default(), e))?;
    let document = String::from_utf8_lossy(&finished.stdout)
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .unwrap_or(serde_json::Value::Null);
    let code = finished.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + finished.status.signal().unwrap_or(0)
    });
    let step = std::fs::read(&report_file).ok().and_then(|bytes| serde_json::from_slice::<Step>(&bytes).ok());
    let step = step.unwrap_or_else(|| Step {
        // The step ended before it could write its report (killed, say).
        command: name.to_string(),
        exit_code: code,
        outcome: notify::outcome_of(code).name().to_string(),
        error: Some(format!("coffer {name} ended with exit code {code} and left no report")),
        next_step: notify::next_step(code).map(str::to_string),
        duration_seconds: begun.elapsed().as_secs_f64(),
        ..Step::default()
    });
    Ok((Step { command: name.to_string(), ..step }, document))
}
