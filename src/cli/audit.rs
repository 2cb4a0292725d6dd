//! The audit trail from the command line: every command that changes the repository or
//! reads data out of it leaves one record (written after its own result is safe), and
//! `audit` lists the records or verifies the chain.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use coffer::audit::{self, AuditRecord};
use coffer::backend::Backend;
use coffer::MasterKey;
use serde_json::json;

use super::args::{AuditAction, AuditArgs, Command, KeyCommand};
use super::output::{self, note};
use super::{exit, fail, Cli};

/// Where the record of this run goes, once the repository is open.
static TRAIL: Mutex<Option<(Arc<dyn Backend>, MasterKey)>> = Mutex::new(None);
/// What the command did, for its record.
static FACTS: Mutex<Facts> = Mutex::new(Facts::new());

struct Facts {
    snapshots: Vec<String>,
    restores: Vec<String>,
    bytes: Option<u64>,
    sha256: Vec<String>,
    keys: Vec<String>,
}

impl Facts {
    const fn new() -> Self {
        Self { snapshots: Vec::new(), restores: Vec::new(), bytes: None, sha256: Vec::new(), keys: Vec::new() }
    }
}

/// Called when the repository is open: the record can be written.
pub fn opened(backend: Arc<dyn Backend>, master: MasterKey) {
    *TRAIL.lock().unwrap_or_else(|p| p.into_inner()) = Some((backend, master));
}

/// A snapshot the command made, read or removed.
pub fn snapshot(id: &coffer::SnapshotId) {
    FACTS.lock().unwrap_or_else(|p| p.into_inner()).snapshots.push(id.to_hex());
}

/// A restore the command ran or rolled back.
pub fn restore(id: &coffer::RestoreId) {
    FACTS.lock().unwrap_or_else(|p| p.into_inner()).restores.push(id.to_hex());
}

/// A key file the command added or removed.
pub fn key(id: &coffer::KeyId) {
    FACTS.lock().unwrap_or_else(|p| p.into_inner()).keys.push(id.to_hex());
}

/// Bytes the command stored, wrote or removed.
pub fn bytes(count: u64) {
    *FACTS.lock().unwrap_or_else(|p| p.into_inner()).bytes.get_or_insert(0) += count;
}

/// The SHA-256 of something backed up or restored whole (a dump).
pub fn sha256(name: &str, hex: &str) {
    FACTS.lock().unwrap_or_else(|p| p.into_inner()).sha256.push(format!("{name}={hex}"));
}

/// What the command did so far (for its notification): snapshot ids, bytes, and the
/// SHA-256 of each dump as `name=hex`.
pub fn facts() -> (Vec<String>, Option<u64>, Vec<String>) {
    let facts = FACTS.lock().unwrap_or_else(|p| p.into_inner());
    (facts.snapshots.clone(), facts.bytes, facts.sha256.clone())
}

/// The name of a command that is audited, or `None` for one that only looks (a dry
/// run included: it changes nothing and reads no data out).
fn audited(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Init(_) => "init",
        Command::Backup(args) if !args.dry_run => "backup",
        Command::Restore(args) if !args.dry_run => "restore",
        Command::Dump(_) => "dump",
        Command::Unlock(_) => "unlock",
        Command::Check(_) => "check",
        Command::Drill(_) => "drill",
        Command::Forget(args) if !args.dry_run => "forget",
        Command::Prune(args) if !args.dry_run => "prune",
        Command::Repair(_) => "repair",
        Command::Key(KeyCommand::Add { .. }) => "key add",
        Command::Key(KeyCommand::Remove { .. }) => "key remove",
        Command::Key(KeyCommand::Passwd { .. }) => "key passwd",
        _ => return None,
    })
}

/// The command line, with what may hold a secret taken out: connection strings keep
/// everything but their password, commands are not shown at all.
fn redacted_args() -> Vec<String> {
    const CONNINFO: [&str; 3] = ["--pg", "--pg-target", "--pg-scratch"];
    const HIDDEN: [&str; 2] = ["--password-command", "--stdin-from-command"];
    let redact = |flag: &str, value: &str| -> String {
        if CONNINFO.contains(&flag) {
            coffer::pg::ConnInfo::parse(value).map(|c| c.to_string()).unwrap_or_else(|_| "***".into())
        } else {
            "***".into()
        }
    };
    let mut shown = Vec::new();
    let mut pending: Option<String> = None;
    for argument in std::env::args_os().skip(1).map(|a: OsString| a.to_string_lossy().into_owned()) {
        if let Some(flag) = pending.take() {
            shown.push(redact(&flag, &argument));
            continue;
        }
        match argument.split_once('=') {
            Some((flag, value)) if CONNINFO.contains(&flag) || HIDDEN.contains(&flag) => {
                shown.push(format!("{flag}={}", redact(flag, value)))
            }
            _ if CONNINFO.contains(&argument.as_str()) || HIDDEN.contains(&argument.as_str()) => {
                pending = Some(argument.clone());
                shown.push(argument);
            }
            _ => shown.push(argument),
        }
    }
    shown
}

/// Appends the record of this run, if the command is audited and the repository was
/// opened. The command's own result is already safe (a snapshot is committed before
/// this runs); a record that cannot be written is said, and makes a successful run
/// exit 1.
pub fn record(cli: &Cli, outcome: &Result<i32>) -> Option<i32> {
    let name = audited(&cli.command)?;
    let (backend, master) = TRAIL.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    let facts = std::mem::replace(&mut *FACTS.lock().unwrap_or_else(|p| p.into_inner()), Facts::new());
    let (exit_code, error) = match outcome {
        Ok(code) => (*code, None),
        Err(error) => (crate::exit_code(error), Some(crate::message(error))),
    };
    let record = AuditRecord {
        command: name.to_string(),
        args: redacted_args(),
        exit_code,
        error,
        snapshots: facts.snapshots,
        restores: facts.restores,
        bytes: facts.bytes,
        sha256: facts.sha256,
        keys: facts.keys,
        ..Default::default()
    };
    match audit::append(&*backend, &master, record) {
        Ok(_) => None,
        Err(error) => {
            eprintln!("error: the audit record of this {name} could not be written: {error}");
            (exit_code == exit::SUCCESS).then_some(exit::FAILURE)
        }
    }
}

/// `audit` and `audit verify`.
pub fn run(cli: &Cli, args: &AuditArgs) -> Result<i32> {
    let repository = super::open(cli)?;
    let backend = repository.backend();
    if let Some(AuditAction::Verify { expect_head }) = &args.action {
        let found = audit::verify(&**backend, repository.master(), expect_head.as_deref())?;
        if cli.json {
            output::json(&json!({"records": found.records, "verified": found.verified, "head": found.head,
                "ok": found.broken.is_none(), "broken": found.broken}));
        } else if found.broken.is_none() {
            output::line(&format!("{} audit record(s); head {}", found.records, found.head));
        } else {
            output::line(&format!(
                "{} audit record(s); records 1 to {} hold together (hash of record {}: {})",
                found.records, found.verified, found.verified, found.head
            ));
        }
        return match found.broken {
            None => {
                note(cli.quiet || cli.json, "the audit trail is unbroken");
                Ok(exit::SUCCESS)
            }
            Some(reason) => fail(exit::DAMAGED, format!("the audit trail is broken: {reason}")),
        };
    }
    let since = args.since.as_deref().map(coffer::parse_instant).transpose()?;
    let until = args.until.as_deref().map(coffer::parse_instant).transpose()?;
    let (all, damaged) = audit::list(&**backend, repository.master())?;
    for error in &damaged {
        eprintln!("warning: {error} (not listed)");
    }
    let finish = || match damaged.len() {
        0 => Ok(exit::SUCCESS),
        n => fail(
            exit::DAMAGED,
            format!(
                "{n} audit record(s) cannot be read and were not listed; audit verify tells where the chain breaks"
            ),
        ),
    };
    let records: Vec<_> = all
        .into_iter()
        .filter(|stored| {
            let record = &stored.record;
            let time = record.time.parse::<jiff::Timestamp>().ok();
            since.is_none_or(|since| time.is_some_and(|t| t >= since))
                && until.is_none_or(|until| time.is_some_and(|t| t <= until))
                && args.user.as_ref().is_none_or(|user| &record.user == user)
                && args.host.as_ref().is_none_or(|host| &record.host == host)
                && args.command.as_ref().is_none_or(|command| &record.command == command)
                && args
                    .snapshot
                    .as_ref()
                    .is_none_or(|prefix| record.snapshots.iter().any(|s| s.starts_with(prefix.as_str())))
        })
        .collect();
    if cli.json {
        let list: Vec<_> = records.iter().map(|s| json!({"record": s.record, "hash": s.hash})).collect();
        output::json(&json!({"records": list}));
        return finish();
    }
    if args.csv {
        output::line("seq,time,user,host,command,exit_code,error,snapshots,restores,bytes,sha256,keys,args,hash,prev");
        for stored in &records {
            let r = &stored.record;
            let fields = [
                r.seq.to_string(),
                r.time.clone(),
                r.user.clone(),
                r.host.clone(),
                r.command.clone(),
                r.exit_code.to_string(),
                r.error.clone().unwrap_or_default(),
                r.snapshots.join(" "),
                r.restores.join(" "),
                r.bytes.map(|b| b.to_string()).unwrap_or_default(),
                r.sha256.join(" "),
                r.keys.join(" "),
                // A JSON array: arguments may hold spaces, commas and quotes.
                serde_json::to_string(&r.args).unwrap_or_default(),
                stored.hash.clone(),
                r.prev.clone(),
            ];
            output::line(&fields.iter().map(|field| csv_field(field)).collect::<Vec<_>>().join(","));
        }
        return finish();
    }
    output::line(&format!(
        "{:>5}  {:<19}  {:<10}  {:<12}  {:<10}  {:>4}  {}",
        "seq", "time (UTC)", "user", "host", "command", "exit", "snapshots / error"
    ));
    for stored in &records {
        let r = &stored.record;
        let detail = match &r.error {
            Some(error) => error.clone(),
            None => r.snapshots.iter().map(|s| s.chars().take(8).collect::<String>()).collect::<Vec<_>>().join(" "),
        };
        output::line(&format!(
            "{:>5}  {:<19}  {:<10}  {:<12}  {:<10}  {:>4}  {detail}",
            r.seq,
            r.time.replace('T', " ").chars().take(19).collect::<String>(),
            r.user,
            r.host,
            r.command,
            r.exit_code
        ));
    }
    finish()
}

/// One CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
