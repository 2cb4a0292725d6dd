//! An in-memory backend: fast, isolated storage for tests and benchmarks.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;

use super::{slice_range, Backend, BackendStats, ObjectInfo};
use crate::error::{Error, Result};

/// Objects kept in a sorted map behind a lock.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: RwLock<BTreeMap<String, Bytes>>,
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.read().unwrap_or_else(|poison| poison.into_inner())
    }

    fn objects_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.write().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Replaces an object's bytes directly, bypassing counters (for damage tests).
    pub fn tamper(&self, key: &str, data: Bytes) {
        self.objects_mut().insert(key.to_string(), data);
    }

    fn count(&self, read: usize, written: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        self.bytes_written.fetch_add(written as u64, Ordering::Relaxed);
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".to_string()
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let data = self.objects().get(key).cloned();
        let data = data.ok_or_else(|| Error::MissingObject { object: key.to_string() })?;
        self.count(data.len(), 0);
        Ok(data)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let data = self.get(key)?;
        slice_range(key, &data, range)
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.count(0, data.len());
        self.objects_mut().insert(key.to_string(), data);
        Ok(())
    }

    fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        self.count(0, data.len());
        let mut objects = self.objects_mut();
        if objects.contains_key(key) {
            return Ok(false);
        }
        objects.insert(key.to_string(), data);
        Ok(true)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.count(0, 0);
        let objects = self.objects();
        let listed = objects
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, data)| ObjectInfo { key: key.clone(), size: data.len() as u64, modified: None });
        Ok(listed.collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.count(0, 0);
        self.objects_mut().remove(key);
        Ok(())
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}
