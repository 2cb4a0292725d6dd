//! Repository locks as leases: `locks/<id>` objects, refreshed while held, stale when
//! not refreshed for [`STALE_AFTER`].
//!
//! A holder refreshes its lock every [`REFRESH_EVERY`] and checks, before it commits
//! anything, that the lock object is still there and still its own (a random token)
//! and that it was refreshed within [`HOLD_LIMIT`]; otherwise it stops with
//! `Error::LockLost`. The margin between `HOLD_LIMIT` and `STALE_AFTER` absorbs clock
//! differences between hosts. Another process may call a lock stale earlier only when
//! it can see that the holder is gone: same host, same PID namespace, same boot, and
//! no process with that PID.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::id::LockId;
use crate::repository::crypto::MasterKey;
use crate::repository::objects::Kind;

/// A lock not refreshed for this long is stale and ignored.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// A holder whose last refresh is older than this stops before committing.
pub const HOLD_LIMIT: Duration = Duration::from_secs(20 * 60);

/// How often a lock is refreshed and how long a holder trusts it (tests shorten both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    pub refresh_every: Duration,
    pub hold_limit: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        Self { refresh_every: REFRESH_EVERY, hold_limit: HOLD_LIMIT }
    }
}

/// The content of a lock object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Last refresh, RFC 3339 UTC.
    pub time: String,
    pub host: String,
    pub user: String,
    pub pid: u32,
    pub exclusive: bool,
    /// Random, chosen by the holder: the object is still its own if it holds this.
    #[serde(default)]
    pub token: String,
    /// The holder's PID namespace (`pid:[4026531836]`), where known.
    #[serde(default)]
    pub pid_namespace: Option<String>,
    /// The holder's boot (`/proc/sys/kernel/random/boot_id`), where known.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The holder's machine (`/etc/machine-id`), where known.
    #[serde(default)]
    pub machine_id: Option<String>,
}

impl LockRecord {
    fn new(exclusive: bool, token: &str) -> Self {
        Self {
            time: jiff::Timestamp::now().to_string(),
            host: crate::system::host_name(),
            user: crate::system::user_name(),
            pid: std::process::id(),
            exclusive,
            token: token.to_string(),
            pid_namespace: crate::system::pid_namespace(),
            boot_id: crate::system::boot_id(),
            machine_id: crate::system::machine_id(),
        }
    }

    /// True if the holder stopped refreshing it, or is visibly gone: a process of this
    /// host, PID namespace and boot that no longer exists, or a process of an earlier
    /// boot of this machine (same machine id, another boot id: after a power cut). A
    /// PID seen from another namespace (a container) says nothing, nor does another
    /// boot of a machine that may be another one of the same name; such a lock is
    /// judged by time.
    pub fn is_stale(&self) -> bool {
        let Ok(time) = self.time.parse::<jiff::Timestamp>() else {
            return true;
        };
        let age = jiff::Timestamp::now().duration_since(time);
        if age.as_secs() > STALE_AFTER.as_secs() as i64 {
            return true;
        }
        let this_machine = self.host == crate::system::host_name()
            && self.machine_id.is_some()
            && self.machine_id == crate::system::machine_id();
        if this_machine && self.boot_id.is_some() && self.boot_id != crate::system::boot_id() {
            return true;
        }
        let same_system = self.host == crate::system::host_name()
            && self.pid_namespace.is_some()
            && self.pid_namespace == crate::system::pid_namespace()
            && self.boot_id.is_some()
            && self.boot_id == crate::system::boot_id();
        same_system && !crate::system::process_alive(self.pid)
    }

    /// "by alice@db1 (pid 42, exclusive) since ..." for messages.
    pub fn describe(&self) -> String {
        let kind = if self.exclusive { "exclusive" } else { "shared" };
        format!("by {}@{} (pid {}, {kind}), last refreshed {}", self.user, self.host, self.pid, self.time)
    }
}

/// Time since boot, suspended time included (`CLOCK_BOOTTIME`): a holder that was
/// suspended (a paused VM, a laptop asleep) for longer than the hold limit must see
/// that it was, though the monotonic clock stood still.
fn boot_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|time| Duration::new(time.tv_sec() as u64, time.tv_nsec() as u32))
        .unwrap_or_else(|_| Instant::now().elapsed())
}

fn key_of(id: &LockId) -> String {
    Kind::Lock.key(id)
}

fn read_lock(backend: &dyn Backend, master: &MasterKey, id: &LockId) -> Result<Option<LockRecord>> {
    let bytes = backend.get(&key_of(id))?;
    let plain = Kind::Lock.open(master, id, &bytes).ok();
    Ok(plain.and_then(|plain| serde_json::from_slice(&plain).ok()))
}

/// Reads every lock object; unreadable ones are reported as stale records.
pub fn list_locks(backend: &dyn Backend, master: &MasterKey) -> Result<Vec<(LockId, Option<LockRecord>)>> {
    let mut locks = Vec::new();
    for id in Kind::Lock.list::<LockId>(backend)? {
        match read_lock(backend, master, &id) {
            Ok(record) => locks.push((id, record)),
            Err(Error::MissingObject { .. }) => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(locks)
}

/// What the refresher learned, shared with the holder.
struct LeaseState {
    /// On the boot-time clock, which goes on while the machine is suspended.
    last_refresh: Duration,
    /// Why the lock is no longer held, once that is known.
    lost: Option<String>,
}

/// What a holder knows of its lock, shared by the guard, its refresher and the
/// repository (which checks it before every commit step).
pub(crate) struct Lease {
    backend: Arc<dyn Backend>,
    master: MasterKey,
    id: LockId,
    token: String,
    timing: LockTiming,
    state: Mutex<LeaseState>,
}

impl Lease {
    /// Fails with `Error::LockLost` unless the lock is still held: refreshed within the
    /// hold limit, and its object still there and still this holder's.
    pub(crate) fn ensure_held(&self) -> Result<()> {
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(reason) = &state.lost {
                return Err(Error::LockLost { reason: reason.clone() });
            }
            let since = boot_time().saturating_sub(state.last_refresh);
            if since > self.timing.hold_limit {
                let reason = format!(
                    "it could not be refreshed for {} s, so other processes may take it for stale",
                    since.as_secs()
                );
                return Err(Error::LockLost { reason });
            }
        }
        match check_own(&*self.backend, &self.master, &self.id, &self.token) {
            Ok(()) => Ok(()),
            Err(Refresh::Lost(reason)) => Err(Error::LockLost { reason }),
            Err(Refresh::Failed(error)) => Err(error),
        }
    }

    fn refresh(&self, exclusive: bool) {
        let outcome = check_own(&*self.backend, &self.master, &self.id, &self.token).and_then(|()| {
            let record = LockRecord::new(exclusive, &self.token);
            write_lock(&*self.backend, &self.master, &self.id, &record).map_err(Refresh::Failed)
        });
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => state.last_refresh = boot_time(),
            Err(Refresh::Lost(reason)) => {
                state.lost.get_or_insert(reason);
            }
            // Tried again at the next tick; `ensure_held` gives up at the hold limit.
            Err(Refresh::Failed(_)) => {}
        }
    }

    fn is_lost(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).lost.is_some()
    }
}

/// A held lock; dropping it stops the refresher and removes the lock object.
pub struct LockGuard {
    lease: Arc<Lease>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// Takes a shared or exclusive lock, or fails with `Error::Locked` naming the holder.
    pub fn acquire(backend: Arc<dyn Backend>, master: &MasterKey, exclusive: bool, timing: LockTiming) -> Result<Self> {
        let id = LockId::random();
        let token = hex::encode(rand::random::<[u8; 16]>());
        let record = LockRecord::new(exclusive, &token);
        let (_, sealed) = Kind::Lock.seal(master, &serde_json::to_vec(&record).unwrap_or_default());
        match backend.put_new(&key_of(&id), Bytes::from(sealed)) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Locked { holder: format!("by another process that chose the same lock id {id}") })
            }
            Err(error) => {
                // The write may have been stored although it failed: no lock left behind.
                let _ = backend.delete(&key_of(&id));
                return Err(error);
            }
        }
        let state = Mutex::new(LeaseState { last_refresh: boot_time(), lost: None });
        let lease = Arc::new(Lease { backend: backend.clone(), master: master.clone(), id, token, timing, state });
        // From here on, dropping the guard removes the lock object.
        let mut guard = Self { lease, stop: None, refresher: None };
        let mut overridden = Vec::new();
        for (other, record) in list_locks(&*backend, master)? {
            let Some(record) = record.filter(|_| other != id) else {
                continue;
            };
            if !(exclusive || record.exclusive) {
                continue;
            }
            if !record.is_stale() {
                return Err(Error::Locked { holder: record.describe() });
            }
            overridden.push(other);
        }
        // A stale lock that this one overrides is removed, so that its holder, if it
        // is only slow (suspended, or on a host whose clock is behind), finds its lock
        // gone and commits nothing.
        for other in overridden {
            backend.delete(&key_of(&other))?;
        }
        guard.start_refresher(exclusive);
        Ok(guard)
    }

    fn start_refresher(&mut self, exclusive: bool) {
        let (stop, stopped) = mpsc::channel::<()>();
        let lease = self.lease.clone();
        let refresher = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(lease.timing.refresh_every) {
                lease.refresh(exclusive);
                if lease.is_lost() {
                    return;
                }
            }
        });
        self.stop = Some(stop);
        self.refresher = Some(refresher);
    }

    /// Fails with `Error::LockLost` unless the lock is still held; see [`Lease`].
    pub fn ensure_held(&self) -> Result<()> {
        self.lease.ensure_held()
    }

    /// The lock object's id.
    pub fn id(&self) -> LockId {
        self.lease.id
    }

    pub(crate) fn lease(&self) -> std::sync::Weak<Lease> {
        Arc::downgrade(&self.lease)
    }
}

enum Refresh {
    /// The object is gone or another's: the lock is lost for good.
    Lost(String),
    /// Storage failed; the lock may still be held.
    Failed(Error),
}

fn check_own(backend: &dyn Backend, master: &MasterKey, id: &LockId, token: &str) -> std::result::Result<(), Refresh> {
    match read_lock(backend, master, id) {
        Ok(Some(record)) if record.token == token => Ok(()),
        Ok(_) => Err(Refresh::Lost(format!("lock object {} was replaced by another", key_of(id)))),
        Err(Error::MissingObject { .. }) => Err(Refresh::Lost(format!(
            "lock object {} was removed (by `coffer unlock` or a process that judged it stale)",
            key_of(id)
        ))),
        Err(error) => Err(Refresh::Failed(error)),
    }
}

fn write_lock(backend: &dyn Backend, master: &MasterKey, id: &LockId, record: &LockRecord) -> Result<()> {
    let plain = serde_json::to_vec(record).unwrap_or_default();
    backend.put(&key_of(id), Bytes::from(Kind::Lock.seal(master, &plain).1))
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(refresher) = self.refresher.take() {
            let _ = refresher.join();
        }
        let key = key_of(&self.lease.id);
        if let Err(error) = self.lease.backend.delete(&key) {
            crate::backend::note(format!(
                "the lock {key} could not be removed ({error}); it goes stale in 30 minutes, or `coffer unlock` removes it"
            ));
        }
    }
}

/// Removes stale locks (or every lock with `all`); returns how many were removed.
pub fn remove_locks(backend: &dyn Backend, master: &MasterKey, all: bool) -> Result<usize> {
    let mut removed = 0;
    for (id, record) in list_locks(backend, master)? {
        if all || record.as_ref().is_none_or(LockRecord::is_stale) {
            backend.delete(&key_of(&id))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let master = MasterKey::generate();
        let one = LockGuard::acquire(backend.clone(), &master, false, LockTiming::default()).unwrap();
        let two = LockGuard::acquire(backend.clone(), &master, false, LockTiming::default()).unwrap();
        let error = LockGuard::acquire(backend.clone(), &master, true, LockTiming::default()).err().unwrap();
        assert!(matches!(error, Error::Locked { .. }), "{error}");
        drop((one, two));
        let held = LockGuard::acquire(backend.clone(), &master, true, LockTiming::default()).unwrap();
        assert!(LockGuard::acquire(backend.clone(), &master, false, LockTiming::default()).is_err());
        drop(held);
        assert!(backend.list("locks/").unwrap().is_empty());
    }

    #[test]
    fn stale_locks_are_ignored_and_removed() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let master = MasterKey::generate();
        let mut old = LockRecord::new(false, "t");
        old.time = "2020-01-01T00:00:00Z".into();
        write_lock(&*backend, &master, &LockId::random(), &old).unwrap();
        let mut dead = LockRecord::new(false, "t");
        dead.pid = u32::MAX - 1;
        write_lock(&*backend, &master, &LockId::random(), &dead).unwrap();
        // A shared lock does not conflict with them, so leaves them to `unlock`.
        drop(LockGuard::acquire(backend.clone(), &master, false, LockTiming::default()).unwrap());
        assert_eq!(remove_locks(&*backend, &master, false).unwrap(), 2);
        assert!(backend.list("locks/").unwrap().is_empty());
    }

    #[test]
    fn a_dead_pid_counts_only_in_the_same_namespace_and_boot() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let mut here = LockRecord::new(false, "t");
        here.pid = gone;
        assert!(here.is_stale(), "a gone process of this namespace and boot");
        let mut container = here.clone();
        container.pid_namespace = Some("pid:[1]".into());
        assert!(!container.is_stale(), "a PID from another namespace says nothing");
        let mut other_boot = here.clone();
        other_boot.boot_id = Some("another boot".into());
        assert!(other_boot.is_stale(), "an earlier boot of this machine: after a power cut");
        other_boot.machine_id = Some("another machine of the same name".into());
        assert!(!other_boot.is_stale());
        let mut old_version = here;
        (old_version.pid_namespace, old_version.boot_id, old_version.machine_id) = (None, None, None);
        assert!(!old_version.is_stale(), "a record without namespace and boot is judged by time");
    }

    #[test]
    fn a_stale_lock_that_is_overridden_is_removed() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let master = MasterKey::generate();
        let mut old = LockRecord::new(true, "t");
        old.time = "2020-01-01T00:00:00Z".into();
        let stale = LockId::random();
        write_lock(&*backend, &master, &stale, &old).unwrap();
        let held = LockGuard::acquire(backend.clone(), &master, true, LockTiming::default()).unwrap();
        let left: Vec<String> = backend.list("locks/").unwrap().into_iter().map(|info| info.key).collect();
        assert_eq!(left, vec![key_of(&held.id())], "the stale lock it overrode is gone, so its holder stops");
    }

    #[test]
    fn a_removed_lock_is_lost_before_commit() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let master = MasterKey::generate();
        let held = LockGuard::acquire(backend.clone(), &master, false, LockTiming::default()).unwrap();
        held.ensure_held().unwrap();
        assert_eq!(remove_locks(&*backend, &master, true).unwrap(), 1);
        let error = held.ensure_held().unwrap_err();
        assert!(matches!(error, Error::LockLost { .. }), "{error}");
        assert!(error.to_string().contains("removed"), "{error}");
    }

    #[test]
    fn a_lock_that_cannot_be_refreshed_is_given_up() {
        let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let faulty = Arc::new(crate::backend::FaultyBackend::new(memory));
        let master = MasterKey::generate();
        let timing = LockTiming { refresh_every: Duration::from_millis(20), hold_limit: Duration::from_millis(200) };
        let held = LockGuard::acquire(faulty.clone(), &master, false, timing).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        held.ensure_held().unwrap();
        faulty.fail_puts_after(0);
        std::thread::sleep(Duration::from_millis(400));
        let error = held.ensure_held().unwrap_err();
        assert!(matches!(error, Error::LockLost { .. }), "{error}");
    }
}
