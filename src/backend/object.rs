//! The object_store backend: local disk now, S3-compatible stores through the same code.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{Backend, BackendStats, ObjectInfo};
use crate::error::{Error, Result};

/// A backend over any `object_store` implementation, driven from synchronous code.
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    location: String,
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl ObjectStoreBackend {
    /// A repository in a local directory, created if `create` is set.
    pub fn local(path: &std::path::Path, create: bool) -> Result<Self> {
        let location = path.display().to_string();
        if create {
            std::fs::create_dir_all(path).map_err(|e| Error::io("cannot create", path, e))?;
        }
        if !path.is_dir() {
            return Err(Error::NoRepository { location });
        }
        let store = LocalFileSystem::new_with_prefix(path)
            .map_err(|e| Error::Backend { location: location.clone(), message: e.to_string() })?;
        Self::new(Arc::new(store), location)
    }

    /// Wraps an object store; `location` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, location: String) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffer-io")
            .enable_all()
            .build()
            .map_err(|e| Error::Backend {
                location: location.clone(),
                message: format!("cannot start the I/O runtime: {e}"),
            })?;
        Ok(Self {
            store,
            runtime,
            location,
            requests: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        })
    }

    fn failure(&self, key: &str, error: object_store::Error) -> Error {
        match error {
            object_store::Error::NotFound { .. } => Error::MissingObject { object: key.to_string() },
            other => Error::Backend { location: format!("{}/{key}", self.location), message: other.to_string() },
        }
    }

    fn count(&self, read: usize, written: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        self.bytes_written.fetch_add(written as u64, Ordering::Relaxed);
    }
}

impl Backend for ObjectStoreBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let path = StorePath::from(key);
        let data = self
            .runtime
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map_err(|e| self.failure(key, e))?;
        self.count(data.len(), 0);
        Ok(data)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = StorePath::from(key);
        let wanted = range.end.saturating_sub(range.start);
        let data = self.runtime.block_on(self.store.get_range(&path, range)).map_err(|e| self.failure(key, e))?;
        self.count(data.len(), 0);
        if data.len() as u64 != wanted {
            return Err(Error::integrity(key, "object is shorter than its index says"));
        }
        Ok(data)
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = StorePath::from(key);
        self.count(0, data.len());
        self.runtime.block_on(self.store.put(&path, PutPayload::from(data))).map_err(|e| self.failure(key, e))?;
        Ok(())
    }

    fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        let path = StorePath::from(key);
        self.count(0, data.len());
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        let put = self.runtime.block_on(self.store.put_opts(&path, PutPayload::from(data), options));
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.failure(key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let folder = StorePath::from(prefix.trim_end_matches('/'));
        self.count(0, 0);
        let listed: Vec<object_store::ObjectMeta> =
            self.runtime.block_on(self.store.list(Some(&folder)).try_collect()).map_err(|e| self.failure(prefix, e))?;
        let infos = listed.into_iter().map(|meta| ObjectInfo { key: meta.location.to_string(), size: meta.size });
        Ok(infos.filter(|info| info.key.starts_with(prefix)).collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = StorePath::from(key);
        self.count(0, 0);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failure(key, e)),
        }
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}
