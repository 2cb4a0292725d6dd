//! Locks between backups and prunes (issue 11): a backup takes its lock before it
//! trusts the index, a lock held from another PID namespace is never judged stale by a
//! PID lookup, a backup whose lock is lost commits nothing, and an interrupted backup
//! keeps what it stored for the next run.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use coffer::backend::{Backend, LocalBackend};
use coffer::{BackupOptions, Repository};
use common::Fixture;

fn open(fixture: &Fixture) -> Repository {
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(&fixture.repo(), false).unwrap());
    Repository::open(backend, b"correct horse", Some(&fixture.path("cache-library"))).unwrap()
}

fn lock_count(fixture: &Fixture) -> usize {
    std::fs::read_dir(fixture.repo().join("locks")).map_or(0, |entries| entries.count())
}

/// Bytes of finished packs in the local repository.
fn stored_bytes(fixture: &Fixture) -> u64 {
    walkdir::WalkDir::new(fixture.repo().join("data"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|item| item.file_type().is_file() && item.file_name().len() == 64)
        .map(|item| item.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Restores every snapshot and checks the repository with --read-data.
fn assert_everything_restores(fixture: &Fixture) {
    let output = fixture.run(&["check", "--read-data"]);
    assert!(output.status.success(), "check: {}", String::from_utf8_lossy(&output.stdout));
    let listed = fixture.snapshots();
    for snapshot in listed.as_array().unwrap() {
        let id = snapshot["snapshot_id"].as_str().unwrap();
        let target = fixture.path(&format!("restore-{id}"));
        fixture.ok(&["restore", id, "--target", target.to_str().unwrap(), "--verify"]);
    }
}

/// Finding 4: a prune that runs after a backup's repository handle loaded the index,
/// but before the backup locked, must not leave the backup pointing at deleted packs.
#[test]
fn a_backup_rereads_the_index_after_taking_its_lock() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("study.dcm"), common::random_bytes(3 << 20, 1)).unwrap();
    fixture.ok(&["backup", source.to_str().unwrap(), "--tag", "old"]);
    let other = fixture.path("other");
    std::fs::create_dir(&other).unwrap();
    fixture.ok(&["backup", other.to_str().unwrap(), "--tag", "keep"]);
    // The backup's handle: its index cache names the packs of the old snapshot.
    let repository = open(&fixture);
    // Meanwhile the old snapshot is forgotten and its packs pruned.
    fixture.ok(&["forget", "--keep-tag", "keep", "--group-by", ""]);
    fixture.ok(&["prune"]);
    let options = BackupOptions { paths: vec![source.clone()], ..Default::default() };
    let report = coffer::backup(&repository, options).unwrap();
    assert!(report.snapshot.summary.bytes_added > 3 << 20, "the backup reused pruned data");
    drop(repository);
    assert_everything_restores(&fixture);
}

/// A reader that yields its bytes slowly, so a backup lasts while a test acts.
struct Slow {
    left: usize,
    pause: Duration,
}

impl Read for Slow {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        std::thread::sleep(self.pause);
        let count = buffer.len().min(self.left).min(4096);
        buffer[..count].fill(7);
        self.left -= count;
        Ok(count)
    }
}

fn slow_stdin(pause_ms: u64) -> Option<(Box<dyn Read + Send>, String)> {
    Some((Box::new(Slow { left: 40 * 4096, pause: Duration::from_millis(pause_ms) }), "slow.bin".to_string()))
}

/// Finding 5: a lock removed while the backup runs (by `unlock --remove-all`, or by a
/// process that judged it stale) stops the backup before it commits.
#[test]
fn a_backup_whose_lock_was_removed_commits_nothing() {
    let fixture = Fixture::new();
    let repository = open(&fixture);
    let remover = {
        let repo = fixture.repo();
        std::thread::spawn(move || {
            let locks = repo.join("locks");
            for _ in 0..2000 {
                if let Some(entry) = std::fs::read_dir(&locks).ok().and_then(|mut entries| entries.next()) {
                    std::fs::remove_file(entry.unwrap().path()).unwrap();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        })
    };
    let options = BackupOptions { stdin: slow_stdin(25), ..Default::default() };
    let error = coffer::backup(&repository, options).unwrap_err();
    assert!(remover.join().unwrap(), "the lock never appeared");
    assert!(matches!(error, coffer::Error::LockLost { .. }), "{error}");
    assert!(error.to_string().contains("nothing was committed"), "{error}");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 0);
}

/// Finding 5: a lock that cannot be refreshed for longer than the hold limit is given
/// up: the backup stops before it commits and says why.
#[test]
fn a_backup_whose_lock_cannot_be_refreshed_commits_nothing() {
    let fixture = Fixture::new();
    let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(&fixture.repo(), false).unwrap());
    let faulty = Arc::new(coffer::backend::FaultyBackend::new(local));
    let repository = Repository::open(faulty.clone(), b"correct horse", None).unwrap();
    repository.set_lock_timing(coffer::LockTiming {
        refresh_every: Duration::from_millis(50),
        hold_limit: Duration::from_millis(300),
    });
    let stopper = {
        let faulty = faulty.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            faulty.fail_only_keys_with_prefix(Some("locks/"));
            faulty.fail_puts_after(0); // storage refuses every lock refresh from now on
        })
    };
    let options = BackupOptions { stdin: slow_stdin(20), ..Default::default() };
    let error = coffer::backup(&repository, options).unwrap_err();
    stopper.join().unwrap();
    assert!(matches!(error, coffer::Error::LockLost { .. }), "{error}");
    assert!(error.to_string().contains("could not be refreshed"), "{error}");
    assert_eq!(fixture.snapshots().as_array().unwrap().len(), 0);
}

/// Finding 5: a backup running in its own PID namespace (a container with the host's
/// name), while a prune starts on the host: the prune is refused or deletes nothing
/// the backup uses; afterwards check is clean and every snapshot restores.
#[test]
fn a_backup_in_another_pid_namespace_is_not_taken_for_dead() {
    if !std::process::Command::new("unshare").args(["--pid", "--fork", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare --pid is not permitted here");
        return;
    }
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("kept.txt"), b"kept").unwrap();
    fixture.ok(&["backup", source.to_str().unwrap(), "--tag", "keep"]);
    // Data of a snapshot that is then forgotten: prune would delete it, and the next
    // backup deduplicates against it.
    for index in 0..24u64 {
        std::fs::write(source.join(format!("scan{index}.dcm")), common::random_bytes(4 << 20, index)).unwrap();
    }
    fixture.ok(&["backup", source.to_str().unwrap()]);
    fixture.ok(&["forget", "--keep-tag", "keep"]);
    std::fs::write(source.join("more.dcm"), common::random_bytes(64 << 20, 99)).unwrap();

    let command = fixture.command(&["backup", source.to_str().unwrap(), "--force"]);
    // Inside the namespace the backup gets a PID that no process has on the host, so
    // a PID lookup from the host would call its lock stale.
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").map_or(32768, |t| t.trim().parse().unwrap());
    let free = (max / 2..max).find(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None).is_err());
    let script = format!("echo {} > /proc/sys/kernel/ns_last_pid; \"$@\"", free.unwrap() - 1);
    let mut contained = std::process::Command::new("unshare");
    contained.args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script, "sh"]);
    contained.arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => contained.env(key, value),
            None => contained.env_remove(key),
        };
    }
    let mut backup = contained.stdout(std::process::Stdio::null()).spawn().unwrap();
    while lock_count(&fixture) == 0 && backup.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let prune = fixture.run(&["prune"]);
    let backed_up = backup.wait().unwrap();
    assert!(backed_up.success(), "the backup failed");
    match prune.status.code() {
        Some(11) => {} // refused: the backup's lock is live
        Some(0) => eprintln!("the prune ran after the backup finished"),
        other => panic!("prune exited {other:?}: {}", String::from_utf8_lossy(&prune.stderr)),
    }
    assert_everything_restores(&fixture);
}

/// Finding 9: SIGINT during a backup indexes what was stored, removes the lock, says
/// so and exits 130; the next backup uploads only what is left.
#[test]
fn an_interrupted_backup_keeps_its_packs_for_the_next_run() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    std::fs::create_dir(&source).unwrap();
    for index in 0..96u64 {
        std::fs::write(source.join(format!("scan{index}.dcm")), common::random_bytes(4 << 20, index)).unwrap();
    }
    let mut backup =
        fixture.command(&["backup", source.to_str().unwrap()]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Interrupt once a pack is stored.
    while stored_bytes(&fixture) == 0 && backup.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(backup.id() as i32), nix::sys::signal::Signal::SIGINT);
    let output = backup.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        eprintln!("the backup finished before SIGINT reached it");
        return;
    }
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT: no snapshot saved;") && stderr.contains("MiB kept"), "{stderr}");
    assert_eq!(lock_count(&fixture), 0, "the lock stayed");
    let stored = stored_bytes(&fixture);
    let summary = fixture.backup(&source);
    let added = summary["summary"]["bytes_added"].as_u64().unwrap();
    let total = 96 * (4u64 << 20);
    assert!(added + stored >= total && added <= total - stored + (16 << 20), "added {added}, kept {stored}");
    assert_everything_restores(&fixture);
}

/// Review finding: a backup whose lock was removed (`unlock --remove-all`) while a
/// prune deleted its unindexed packs must not index those packs on its way out; the
/// next backup of the same data must store it again and restore.
#[test]
fn a_backup_that_lost_its_lock_indexes_nothing_a_prune_deleted() {
    let fixture = Fixture::new();
    let blob = fixture.path("blob.bin");
    std::fs::write(&blob, common::random_bytes(40 << 20, 5)).unwrap();
    let slow = format!("cat {}; sleep 4", blob.display());
    let mut backup = fixture
        .command(&["backup", "--stdin-from-command", &slow, "--stdin-name", "scan.dcm"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while stored_bytes(&fixture) < (20 << 20) && backup.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    fixture.ok(&["unlock", "--remove-all"]);
    fixture.ok(&["prune", "--unindexed-age", "0"]);
    let output = backup.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("lost the repository lock"), "{stderr}");
    let plain = format!("cat {}", blob.display());
    fixture.ok(&["backup", "--stdin-from-command", &plain, "--stdin-name", "scan.dcm"]);
    assert_everything_restores(&fixture);
}
