//! Repository locks as leases: `locks/<id>` objects, refreshed while held, stale when old.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::id::LockId;
use crate::pack::{open_object, seal_object};

/// A lock not refreshed for this long is stale and ignored.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// The content of a lock object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Last refresh, RFC 3339 UTC.
    pub time: String,
    pub host: String,
    pub user: String,
    pub pid: u32,
    pub exclusive: bool,
}

impl LockRecord {
    fn new(exclusive: bool) -> Self {
        Self {
            time: jiff::Timestamp::now().to_string(),
            host: crate::system::host_name(),
            user: crate::system::user_name(),
            pid: std::process::id(),
            exclusive,
        }
    }

    /// True if the holder stopped refreshing it, or is a process of this host that is gone.
    pub fn is_stale(&self) -> bool {
        let Ok(time) = self.time.parse::<jiff::Timestamp>() else {
            return true;
        };
        let age = jiff::Timestamp::now().duration_since(time);
        if age.as_secs() > STALE_AFTER.as_secs() as i64 {
            return true;
        }
        self.host == crate::system::host_name() && !crate::system::process_alive(self.pid)
    }

    /// "by alice@db1 (pid 42, exclusive) since ..." for messages.
    pub fn describe(&self) -> String {
        let kind = if self.exclusive { "exclusive" } else { "shared" };
        format!("by {}@{} (pid {}, {kind}) since {}", self.user, self.host, self.pid, self.time)
    }
}

fn key_of(id: &LockId) -> String {
    format!("locks/{id}")
}

/// Reads every lock object; unreadable ones are reported as stale records.
pub fn list_locks(backend: &dyn Backend, master: &MasterKey) -> Result<Vec<(LockId, Option<LockRecord>)>> {
    let mut locks = Vec::new();
    for info in backend.list("locks/")? {
        let Some(id) = info.key.strip_prefix("locks/").and_then(|name| name.parse::<LockId>().ok()) else {
            continue;
        };
        let record = match backend.get(&info.key) {
            Ok(bytes) => open_object(master, "lock", &bytes, &info.key)
                .ok()
                .and_then(|plain| serde_json::from_slice(&plain).ok()),
            Err(Error::MissingObject { .. }) => continue,
            Err(error) => return Err(error),
        };
        locks.push((id, record));
    }
    Ok(locks)
}

/// A held lock; dropping it stops the refresher and removes the lock object.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    id: LockId,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// Takes a shared or exclusive lock, or fails with `Error::Locked` naming the holder.
    pub fn acquire(backend: Arc<dyn Backend>, master: &MasterKey, exclusive: bool) -> Result<Self> {
        let id = LockId::random();
        let sealed = seal_object(master, "lock", &serde_json::to_vec(&LockRecord::new(exclusive)).unwrap_or_default());
        if !backend.put_new(&key_of(&id), Bytes::from(sealed))? {
            return Err(Error::Locked { holder: format!("by another process that chose the same lock id {id}") });
        }
        let mut guard = Self { backend: backend.clone(), id, stop: None, refresher: None };
        for (other, record) in list_locks(&*backend, master)? {
            let Some(record) = record.filter(|_| other != id) else {
                continue;
            };
            if !record.is_stale() && (exclusive || record.exclusive) {
                return Err(Error::Locked { holder: record.describe() });
            }
        }
        guard.start_refresher(master.clone(), exclusive);
        Ok(guard)
    }

    fn start_refresher(&mut self, master: MasterKey, exclusive: bool) {
        let (stop, stopped) = mpsc::channel::<()>();
        let backend = self.backend.clone();
        let id = self.id;
        let refresher = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(REFRESH_EVERY) {
                let _ = write_lock(&*backend, &master, &id, &LockRecord::new(exclusive));
            }
        });
        self.stop = Some(stop);
        self.refresher = Some(refresher);
    }
}

fn write_lock(backend: &dyn Backend, master: &MasterKey, id: &LockId, record: &LockRecord) -> Result<()> {
    let plain = serde_json::to_vec(record).unwrap_or_default();
    backend.put(&key_of(id), Bytes::from(seal_object(master, "lock", &plain)))
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(refresher) = self.refresher.take() {
            let _ = refresher.join();
        }
        let _ = self.backend.delete(&key_of(&self.id));
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
        let one = LockGuard::acquire(backend.clone(), &master, false).unwrap();
        let two = LockGuard::acquire(backend.clone(), &master, false).unwrap();
        let error = LockGuard::acquire(backend.clone(), &master, true).err().unwrap();
        assert!(matches!(error, Error::Locked { .. }), "{error}");
        drop((one, two));
        let held = LockGuard::acquire(backend.clone(), &master, true).unwrap();
        assert!(LockGuard::acquire(backend.clone(), &master, false).is_err());
        drop(held);
        assert!(backend.list("locks/").unwrap().is_empty());
    }

    #[test]
    fn stale_locks_are_ignored_and_removed() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let master = MasterKey::generate();
        let mut old = LockRecord::new(true);
        old.time = "2020-01-01T00:00:00Z".into();
        write_lock(&*backend, &master, &LockId::random(), &old).unwrap();
        let mut dead = LockRecord::new(true);
        dead.pid = u32::MAX - 1;
        write_lock(&*backend, &master, &LockId::random(), &dead).unwrap();
        drop(LockGuard::acquire(backend.clone(), &master, true).unwrap());
        assert_eq!(remove_locks(&*backend, &master, false).unwrap(), 2);
        assert!(backend.list("locks/").unwrap().is_empty());
    }
}
