//! `key list | add | remove | passwd`: the passwords that open a repository, and the
//! Argon2id cost every new key file must at least have.

use anyhow::Result;
use coffer::KdfParams;
use serde_json::json;

use super::args::{KdfArgs, KeyCommand};
use super::output::{self, note};
use super::{exit, fail, Cli};

/// The least Argon2id cost of a new key file: 19 MiB and 2 passes, the OWASP minimum
/// for Argon2id. Key files of any cost within FORMAT.md's bounds still open.
pub const KDF_FLOOR: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };

/// Lets the test suite make cheap keys (as borg's BORG_TESTONLY_WEAKEN_KDF does): a
/// key below the floor takes milliseconds to guess against, so never set it otherwise.
const WEAK_KDF_FOR_TESTS: &str = "COFFER_TESTONLY_WEAK_KDF";

/// The cost of a new key file, refused below the floor.
pub fn kdf(args: &KdfArgs) -> Result<KdfParams> {
    let params = KdfParams {
        memory_kib: args.kdf_memory_kib,
        iterations: args.kdf_iterations,
        parallelism: KdfParams::default().parallelism,
    };
    let weak_allowed = std::env::var_os(WEAK_KDF_FOR_TESTS).is_some_and(|value| value == "1");
    if !weak_allowed && (params.memory_kib < KDF_FLOOR.memory_kib || params.iterations < KDF_FLOOR.iterations) {
        return fail(
            exit::USAGE,
            format!(
                "an Argon2id cost of {} KiB and {} pass(es) is below the floor for new keys ({} KiB and {} passes)",
                params.memory_kib, params.iterations, KDF_FLOOR.memory_kib, KDF_FLOOR.iterations
            ),
        );
    }
    params.check().or_else(|reason| fail(exit::USAGE, reason))?;
    Ok(params)
}

pub fn key(cli: &Cli, command: &KeyCommand) -> Result<i32> {
    let repository = super::open(cli)?;
    match command {
        KeyCommand::List => list(cli, &repository),
        KeyCommand::Add { new_password, kdf: cost } => {
            let params = kdf(cost)?;
            let password = super::password::read_new(new_password.new_password_file.as_deref())?;
            let id = repository.add_key(password.as_bytes(), params)?;
            super::audit::key(&id);
            report(cli, "added", &id, &format!("added key {}", id.short()));
            Ok(exit::SUCCESS)
        }
        KeyCommand::Remove { id, force, other_password_file } => {
            if id.is_empty() {
                return fail(exit::USAGE, "no key id given (coffer key list shows them)");
            }
            let repository = repository.lock_exclusive()?;
            let id = repository.find_key_id(id)?;
            if id == repository.key_id() && *force {
                // A key file that merely parses may not open with any password anyone
                // knows: only a password that opens another key proves one stays.
                let Some(file) = other_password_file else {
                    return fail(
                        exit::REFUSED,
                        format!(
                            "key {} is the one this password opened; give --other-password-file with the password of a key that stays",
                            id.short()
                        ),
                    );
                };
                let other = super::password::read_new(Some(file))?;
                match repository.key_opened_by(other.as_bytes()) {
                    Ok(stays) if stays != id => {}
                    Ok(_) => {
                        return fail(
                            exit::REFUSED,
                            "the other password opens the same key; give one of a key that stays",
                        )
                    }
                    Err(error) => {
                        return fail(
                            exit::REFUSED,
                            format!("the other password proves no key stays: {}", crate::message(&error.into())),
                        )
                    }
                }
            }
            repository.ensure_may_delete(coffer::objects::Kind::Key, "key remove")?;
            repository.remove_key(&id, *force)?;
            super::audit::key(&id);
            note_locked_versions(cli, &repository);
            report(cli, "removed", &id, &format!("removed key {}", id.short()));
            Ok(exit::SUCCESS)
        }
        KeyCommand::Passwd { new_password, kdf: cost } => {
            let params = kdf(cost)?;
            let password = super::password::read_new(new_password.new_password_file.as_deref())?;
            let repository = repository.lock_exclusive()?;
            repository.ensure_may_delete(coffer::objects::Kind::Key, "key passwd")?;
            let old = repository.key_id();
            let id = repository.change_password(password.as_bytes(), params)?;
            super::audit::key(&id);
            super::audit::key(&old);
            note_locked_versions(cli, &repository);
            if cli.json {
                output::json(&json!({"added": id.to_hex(), "removed": old.to_hex()}));
            } else {
                note(cli.quiet, &format!("key {} replaced by key {} with the new password", old.short(), id.short()));
            }
            Ok(exit::SUCCESS)
        }
    }
}

/// Under Object Lock a removed key file stays as a locked old version: whoever may read
/// old versions can still open the repository with the old password until it expires.
fn note_locked_versions(cli: &Cli, repository: &coffer::Repository) {
    if let Some(lock) = repository.lock_clock().retention() {
        note(
            cli.quiet,
            &format!(
                "note: the bucket keeps the removed key file as a locked old version for up to {} day(s); \
                 until then the old password still opens the repository for anyone allowed to read old versions",
                lock.days
            ),
        );
    }
}

fn report(cli: &Cli, verb: &str, id: &coffer::KeyId, text: &str) {
    if cli.json {
        output::json(&json!({ verb: id.to_hex() }));
    } else {
        note(cli.quiet, text);
    }
}

fn list(cli: &Cli, repository: &coffer::Repository) -> Result<i32> {
    let keys = repository.keys()?;
    if cli.json {
        let list: Vec<_> = keys
            .iter()
            .map(|key| match &key.file {
                Ok(file) => json!({"key_id": key.id.to_hex(), "in_use": key.in_use, "created": file.created,
                    "host": file.host, "user": file.user, "kdf": file.kdf, "memory_kib": file.params.memory_kib,
                    "iterations": file.params.iterations, "parallelism": file.params.parallelism}),
                Err(error) => json!({"key_id": key.id.to_hex(), "in_use": key.in_use, "error": error.to_string()}),
            })
            .collect();
        output::json(&json!({ "keys": list }));
        return Ok(exit::SUCCESS);
    }
    output::line(&format!(
        "  {:<8}  {:<19}  {:<12}  {:<10}  {}",
        "id", "created (UTC)", "host", "user", "Argon2id cost"
    ));
    for key in &keys {
        let mark = if key.in_use { "*" } else { " " };
        match &key.file {
            Ok(file) => output::line(&format!(
                "{mark} {:<8}  {:<19}  {:<12}  {:<10}  {}, {} passes, {} lanes",
                key.id.short(),
                file.created.replace('T', " ").chars().take(19).collect::<String>(),
                file.host,
                file.user,
                match file.params.memory_kib % 1024 {
                    0 => format!("{} MiB", file.params.memory_kib / 1024),
                    _ => format!("{} KiB", file.params.memory_kib),
                },
                file.params.iterations,
                file.params.parallelism
            )),
            Err(error) => output::line(&format!("{mark} {:<8}  cannot be used: {error}", key.id.short())),
        }
    }
    note(cli.quiet, &format!("{} key(s); * marks the one this password opened", keys.len()));
    Ok(exit::SUCCESS)
}
