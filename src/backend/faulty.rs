//! A fault-injecting wrapper: fail the Nth write, damage reads, lose deletes.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::{Backend, BackendStats, ObjectInfo};
use crate::error::{Error, Result};

/// Wraps a backend and injects the faults it is told to.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    puts: AtomicU64,
    fail_put_number: AtomicU64,
    fail_puts_after: AtomicU64,
    lose_deletes: AtomicBool,
    deletes: AtomicU64,
    fail_delete_number: AtomicU64,
    damage: Mutex<Option<ReadDamage>>,
    /// Only writes of keys with this prefix fail (all writes when `None`).
    failing_prefix: Mutex<Option<String>>,
}

/// How reads of matching objects are damaged.
#[derive(Debug, Clone)]
pub enum ReadDamage {
    /// Flip the bits of the byte at this offset of every object whose key has the prefix.
    FlipByte { key_prefix: String, offset: u64 },
    /// Return only the first `keep` bytes of matching objects.
    Truncate { key_prefix: String, keep: u64 },
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            puts: AtomicU64::new(0),
            fail_put_number: AtomicU64::new(u64::MAX),
            fail_puts_after: AtomicU64::new(u64::MAX),
            lose_deletes: AtomicBool::new(false),
            deletes: AtomicU64::new(0),
            fail_delete_number: AtomicU64::new(u64::MAX),
            damage: Mutex::new(None),
            failing_prefix: Mutex::new(None),
        }
    }

    /// The `n`th write from now on (1-based) fails; the others succeed.
    pub fn fail_put_number(&self, n: u64) {
        let done = self.puts.load(Ordering::SeqCst);
        self.fail_put_number.store(done + n, Ordering::SeqCst);
    }

    /// Every write after the next `n` fails, like a disk that fills up.
    pub fn fail_puts_after(&self, n: u64) {
        let done = self.puts.load(Ordering::SeqCst);
        self.fail_puts_after.store(done + n, Ordering::SeqCst);
    }

    /// Limits the write failures set up by the other calls to keys with this prefix
    /// (such as `locks/`); `None` lets them hit every write again.
    pub fn fail_only_keys_with_prefix(&self, prefix: Option<&str>) {
        *self.failing_prefix.lock().unwrap_or_else(|p| p.into_inner()) = prefix.map(str::to_string);
    }

    /// The `n`th delete from now on (1-based) fails; the others succeed.
    pub fn fail_delete_number(&self, n: u64) {
        let done = self.deletes.load(Ordering::SeqCst);
        self.fail_delete_number.store(done + n, Ordering::SeqCst);
    }

    /// Number of deletes attempted so far.
    pub fn deletes(&self) -> u64 {
        self.deletes.load(Ordering::SeqCst)
    }

    /// Deletes report success but remove nothing.
    pub fn lose_deletes(&self, lose: bool) {
        self.lose_deletes.store(lose, Ordering::SeqCst);
    }

    /// Damages reads as described, or stops damaging them with `None`.
    pub fn damage_reads(&self, damage: Option<ReadDamage>) {
        *self.damage.lock().unwrap_or_else(|p| p.into_inner()) = damage;
    }

    /// Number of writes attempted so far.
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    fn check_put(&self, key: &str) -> Result<()> {
        let number = self.puts.fetch_add(1, Ordering::SeqCst) + 1;
        let matching = self
            .failing_prefix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|p| key.starts_with(p.as_str()));
        let failing = matching
            && (number == self.fail_put_number.load(Ordering::SeqCst)
                || number > self.fail_puts_after.load(Ordering::SeqCst));
        if failing {
            return Err(Error::Backend {
                location: format!("{}/{key}", self.inner.location()),
                message: format!("injected failure of write number {number}"),
            });
        }
        Ok(())
    }

    fn damaged(&self, key: &str, data: Bytes, start: u64) -> Bytes {
        let damage = self.damage.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match damage {
            Some(ReadDamage::FlipByte { key_prefix, offset }) if key.starts_with(&key_prefix) => {
                let Some(at) = offset.checked_sub(start) else {
                    return data;
                };
                if at >= data.len() as u64 {
                    return data;
                }
                let mut copy = BytesMut::from(&data[..]);
                copy[at as usize] ^= 0xff;
                copy.freeze()
            }
            Some(ReadDamage::Truncate { key_prefix, keep }) if key.starts_with(&key_prefix) => {
                let keep = keep.saturating_sub(start).min(data.len() as u64);
                data.slice(..keep as usize)
            }
            _ => data,
        }
    }
}

impl Backend for FaultyBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let data = self.inner.get(key)?;
        Ok(self.damaged(key, data, 0))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let start = range.start;
        let data = self.inner.get_range(key, range)?;
        Ok(self.damaged(key, data, start))
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.check_put(key)?;
        self.inner.put(key, data)
    }

    fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        self.check_put(key)?;
        self.inner.put_new(key, data)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let number = self.deletes.fetch_add(1, Ordering::SeqCst) + 1;
        if number == self.fail_delete_number.load(Ordering::SeqCst) {
            return Err(Error::Backend {
                location: format!("{}/{key}", self.inner.location()),
                message: format!("injected failure of delete number {number}"),
            });
        }
        if self.lose_deletes.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.delete(key)
    }

    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }

    fn staging_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.staging_dir()
    }

    fn put_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<()> {
        self.check_put(key)?;
        self.inner.put_file(key, file)
    }

    fn abort_stale_uploads(&self, age: std::time::Duration) -> Result<usize> {
        self.inner.abort_stale_uploads(age)
    }

    fn checksum_writes(&self, on: bool) {
        self.inner.checksum_writes(on)
    }

    fn object_lock(&self) -> Result<super::ObjectLock> {
        self.inner.object_lock()
    }

    fn set_object_lock(&self, mode: super::ObjectLockMode, days: u32) -> Result<()> {
        self.inner.set_object_lock(mode, days)
    }

    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }
}
