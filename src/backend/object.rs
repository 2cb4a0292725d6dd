//! The object_store backend: S3-compatible stores (and object_store's in-memory and
//! other stores, for tests). Remote requests are retried under one policy (`retry.rs`): reads resume from
//! the byte where a body was cut off, multipart uploads retry each part, and a
//! create-only write whose outcome is unknown is settled by reading the object back.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as StorePath;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};

use super::retry::{retry, RetryAfter, RetryPolicy};
use super::{Backend, BackendStats, ObjectInfo};
use crate::error::{Error, Result};

/// Objects at least this large are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 32 * 1024 * 1024;
/// Size of one part of a multipart upload (S3 needs at least 5 MiB).
const MULTIPART_PART: usize = 16 * 1024 * 1024;

/// The error and all its sources, joined.
pub fn chain_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().chars().take(400).collect()
}

/// What went wrong, in a few words, from object_store's long error text: the HTTP
/// status and S3 error code of an answer, or what happened to the connection.
fn reason(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let code = text.split("<Code>").nth(1).and_then(|rest| rest.split("</Code>").next());
    if let Some(at) = lower.find("status code: ") {
        let status: String = text[at + 13..].chars().take_while(|c| c.is_ascii_digit()).collect();
        return match code {
            Some(code) => format!("the server answered {status} {code}"),
            None => format!("the server answered {status}"),
        };
    }
    let connection = [
        ("connection refused", "the connection was refused"),
        ("connection reset", "the connection was reset"),
        ("timed out", "the request timed out"),
        ("dns error", "the server's name could not be resolved"),
        ("error decoding response body", "the answer was cut short"),
        ("incomplete", "the answer was cut short"),
        ("connection closed", "the connection was closed before an answer"),
        ("error sending request", "the request could not be sent"),
    ];
    match connection.iter().find(|(needle, _)| lower.contains(needle)) {
        Some((_, said)) => said.to_string(),
        None => first_line(text),
    }
}

/// Sorts a generic storage failure into transient (reported as unreachable, and
/// retried), missing bucket, access denied, or other.
fn classify(error: &object_store::Error, location: String, root: &str, text: String) -> Error {
    let lower = text.to_ascii_lowercase();
    if lower.contains("nosuchbucket") {
        return Error::NoRepository { location: format!("{root} (the bucket does not exist)") };
    }
    if lower.contains("accessdenied") || lower.contains("signaturedoesnotmatch") || lower.contains("invalidaccesskeyid")
    {
        return Error::AccessDenied { location: root.to_string(), message: reason(&text) };
    }
    if is_transient(error, &lower) {
        let key = location.strip_prefix(root).unwrap_or(&location).trim_start_matches('/');
        return Error::Unreachable { location: root.to_string(), message: format!("{} ({key})", reason(&text)) };
    }
    Error::Backend { location, message: reason(&text) }
}

/// True for a failure below or around the HTTP status line (connect, timeout, reset,
/// a body cut short) and for answers that ask to try again (5xx, 429, 408, SlowDown).
fn is_transient(error: &object_store::Error, lower: &str) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<object_store::client::HttpError>().is_some() {
            return true;
        }
        source = cause.source();
    }
    let answers = [
        "status code: 5",
        "status code: 429",
        "status code: 408",
        "slowdown",
        "internalerror",
        "requesttimeout",
        "serviceunavailable",
    ];
    let transport = [
        "connection refused",
        "error sending request",
        "dns error",
        "timed out",
        "connection reset",
        "connection closed",
        "tcp connect",
        "broken pipe",
        "unexpected eof",
        "incomplete",
        "error decoding response body",
    ];
    answers.iter().chain(transport.iter()).any(|needle| lower.contains(needle))
}

/// A backend over any `object_store` implementation, driven from synchronous code.
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    /// The store for multipart uploads whose parts are retried one by one (S3).
    multipart: Option<Arc<dyn MultipartStore>>,
    /// Bucket-level requests: unfinished multipart uploads, Object Lock (S3).
    bucket: Option<Arc<super::bucket::BucketApi>>,
    /// Whether writes carry Content-MD5 (shared with the HTTP client).
    content_md5: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// How remote requests are retried; `None` on a local disk, whose failures are final.
    policy: Option<RetryPolicy>,
    hint: Arc<RetryAfter>,
    runtime: tokio::runtime::Runtime,
    location: String,
    /// Requests the store lets through at once (`--connections`), which restores and
    /// index loads keep in flight.
    connections: usize,
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl ObjectStoreBackend {
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
            multipart: None,
            bucket: None,
            content_md5: None,
            policy: None,
            hint: Arc::new(RetryAfter::default()),
            runtime,
            location,
            connections: 8,
            requests: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        })
    }

    fn failure(&self, key: &str, error: object_store::Error) -> Error {
        let location = format!("{}/{key}", self.location);
        match error {
            object_store::Error::NotFound { .. } => Error::MissingObject { object: key.to_string() },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                Error::AccessDenied { location: self.location.clone(), message: reason(&chain_text(&error)) }
            }
            other => {
                let text = chain_text(&other);
                classify(&other, location, &self.location, text)
            }
        }
    }

    /// A `NotFound` from a write or a listing means the bucket itself is missing.
    fn write_failure(&self, key: &str, error: object_store::Error) -> Error {
        match error {
            object_store::Error::NotFound { .. } => {
                Error::NoRepository { location: format!("{} (the bucket does not exist)", self.location) }
            }
            other => self.failure(key, other),
        }
    }

    /// Remote requests are retried under `policy`, waiting at least as long as a
    /// server's `Retry-After` (recorded in `hint`). Without this, every failure is
    /// final (a local disk).
    pub fn with_retries(mut self, policy: RetryPolicy, hint: Arc<RetryAfter>) -> Self {
        self.policy = Some(policy);
        self.hint = hint;
        self
    }

    /// Uploads large objects through `store`, retrying each part on its own.
    /// Sets how many requests reads keep in flight (the store's own limit).
    pub fn with_connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    pub fn with_multipart(mut self, store: Arc<dyn MultipartStore>) -> Self {
        self.multipart = Some(store);
        self
    }

    /// The switch that makes the HTTP client add Content-MD5 to writes.
    pub(super) fn with_content_md5(mut self, switch: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.content_md5 = Some(switch);
        self
    }

    /// Lets prune find and abort unfinished uploads, and init set Object Lock.
    pub(super) fn with_bucket_api(mut self, bucket: super::bucket::BucketApi) -> Self {
        self.bucket = Some(Arc::new(bucket));
        self
    }

    /// Runs one request under the retry policy (once, without one).
    fn retried<T>(&self, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
        match &self.policy {
            Some(policy) => retry(policy, &self.hint, |_| attempt()),
            None => attempt(),
        }
    }

    /// Uploads a file: in one request below `MULTIPART_THRESHOLD`, else in parts of
    /// `MULTIPART_PART` read from the file one at a time, so memory stays at one part
    /// whatever the object's size.
    fn upload_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<()> {
        let size = file.as_file().metadata().map_err(|e| Error::io("cannot read", file.path(), e))?.len() as usize;
        if size < MULTIPART_THRESHOLD || self.multipart.is_none() {
            let bytes = std::fs::read(file.path()).map_err(|e| Error::io("cannot read", file.path(), e))?;
            return self.put(key, Bytes::from(bytes));
        }
        let mut reader = std::fs::File::open(file.path()).map_err(|e| Error::io("cannot read", file.path(), e))?;
        let path = file.path().to_path_buf();
        self.upload_in_parts(key, size, |part| {
            let mut buffer = Vec::with_capacity(part);
            std::io::Read::read_to_end(&mut std::io::Read::take(&mut reader, part as u64), &mut buffer)
                .map_err(|e| Error::io("cannot read", &path, e))?;
            Ok(Bytes::from(buffer))
        })
    }

    /// A multipart upload whose every request is retried on its own. A failure aborts
    /// the upload (its parts cost storage); an abort that fails too is noted beside the
    /// first error, never instead of it.
    fn upload_in_parts(&self, key: &str, size: usize, next_part: impl FnMut(usize) -> Result<Bytes>) -> Result<()> {
        let Some(store) = self.multipart.clone() else {
            return Err(Error::Backend { location: self.location.clone(), message: "no multipart store".into() });
        };
        let path = StorePath::from(key);
        self.requests.fetch_add(size.div_ceil(MULTIPART_PART) as u64 + 2, Ordering::Relaxed);
        self.bytes_written.fetch_add(size as u64, Ordering::Relaxed);
        let id = self
            .retried(|| self.runtime.block_on(store.create_multipart(&path)).map_err(|e| self.write_failure(key, e)))?;
        if let Err(error) = self.send_parts(&*store, key, &id, size, next_part) {
            if let Err(abort) = self.runtime.block_on(store.abort_multipart(&path, &id)) {
                crate::backend::note(format!(
                    "could not abort the unfinished upload of {key} ({}); its parts stay on the server until they are aborted",
                    first_line(&chain_text(&abort))
                ));
            }
            return Err(error);
        }
        Ok(())
    }

    fn send_parts(
        &self,
        store: &dyn MultipartStore,
        key: &str,
        id: &object_store::MultipartId,
        size: usize,
        mut next_part: impl FnMut(usize) -> Result<Bytes>,
    ) -> Result<()> {
        let path = StorePath::from(key);
        let mut parts: Vec<PartId> = Vec::with_capacity(size.div_ceil(MULTIPART_PART));
        for index in 0..size.div_ceil(MULTIPART_PART) {
            let data = next_part(MULTIPART_PART)?;
            let put = || self.runtime.block_on(store.put_part(&path, id, index, PutPayload::from(data.clone())));
            parts.push(self.retried(|| put().map_err(|e| self.write_failure(key, e)))?);
        }
        let complete = || self.runtime.block_on(store.complete_multipart(&path, id, parts.clone()));
        match self.retried(|| complete().map_err(|e| self.write_failure(key, e))) {
            Ok(_) => Ok(()),
            // A completion whose answer was lost and that was sent again: the server
            // no longer knows the upload, and the object is there, whole.
            Err(error) if self.head_size(key) == Some(size as u64) => {
                let _ = error;
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// The size of an object, if it can be seen.
    fn head_size(&self, key: &str) -> Option<u64> {
        let path = StorePath::from(key);
        let head = self.retried(|| self.runtime.block_on(self.store.head(&path)).map_err(|e| self.failure(key, e)));
        head.ok().map(|meta| meta.size)
    }

    /// Reads `range` of an object into `data`, resuming after what `data` already
    /// holds: a body cut off by a reset is asked for again from the byte it stopped at.
    fn read_range_into(&self, key: &str, range: &Range<u64>, data: &mut Vec<u8>) -> Result<()> {
        let start = range.start + data.len() as u64;
        if start >= range.end {
            return Ok(());
        }
        let path = StorePath::from(key);
        let options = GetOptions { range: Some(GetRange::Bounded(start..range.end)), ..Default::default() };
        self.count(0, 0);
        let read = self.runtime.block_on(async {
            let mut stream = self.store.get_opts(&path, options).await?.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                self.bytes_read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                data.extend_from_slice(&chunk);
            }
            Ok(())
        });
        read.map_err(|error| match error {
            object_store::Error::NotFound { .. } => self.failure(key, error),
            error => self.range_failure(key, &(start..range.end), error),
        })
    }

    /// A create-only write whose first attempt may have been stored although its
    /// answer was lost: an object found with the same bytes was written by us.
    fn settle_put_new(&self, key: &str, data: &Bytes) -> Result<bool> {
        match self.get(key) {
            Ok(stored) => Ok(stored == *data),
            Err(Error::MissingObject { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn put_new_once(&self, key: &str, data: &Bytes) -> Result<bool> {
        let path = StorePath::from(key);
        self.count(0, data.len());
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        let put = self.runtime.block_on(self.store.put_opts(&path, PutPayload::from(data.clone()), options));
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.write_failure(key, e)),
        }
    }

    /// Why a range read failed. Stores report a range beyond an object's end in their
    /// own ways (a local store as a generic error, S3 as status 416): the object's size
    /// tells a short object, which is damage, from a failure of the store, which is not.
    fn range_failure(&self, key: &str, range: &Range<u64>, error: object_store::Error) -> Error {
        self.count(0, 0);
        match self.runtime.block_on(self.store.head(&StorePath::from(key))) {
            Ok(meta) if meta.size < range.end => short_object(key, meta.size, range),
            Ok(_) => self.failure(key, error),
            Err(head_error) => self.failure(key, head_error),
        }
    }

    fn count(&self, read: usize, written: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        self.bytes_written.fetch_add(written as u64, Ordering::Relaxed);
    }
}

/// A read that needs bytes the object does not have: it was truncated.
fn short_object(key: &str, size: u64, range: &Range<u64>) -> Error {
    Error::integrity(
        key,
        format!(
            "it is {size} bytes long, shorter than its index says (bytes {}..{} are needed)",
            range.start, range.end
        ),
    )
}

impl Backend for ObjectStoreBackend {
    fn parallel_reads(&self) -> usize {
        self.connections
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn get(&self, key: &str) -> Result<Bytes> {
        let path = StorePath::from(key);
        let data = self.retried(|| {
            self.count(0, 0);
            self.runtime
                .block_on(async { self.store.get(&path).await?.bytes().await })
                .map_err(|e| self.failure(key, e))
        })?;
        self.bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            // object_store refuses an empty range; the last bytes of an empty pack are one.
            return Ok(Bytes::new());
        }
        let wanted = range.end - range.start;
        let mut data = Vec::with_capacity(wanted as usize);
        self.retried(|| self.read_range_into(key, &range, &mut data))?;
        if (data.len() as u64) < wanted {
            return Err(short_object(key, range.start + data.len() as u64, &range));
        }
        Ok(Bytes::from(data))
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = StorePath::from(key);
        if data.len() >= MULTIPART_THRESHOLD && self.multipart.is_some() {
            let mut offset = 0;
            return self.upload_in_parts(key, data.len(), |part| {
                let end = (offset + part).min(data.len());
                let slice = data.slice(offset..end);
                offset = end;
                Ok(slice)
            });
        }
        if data.len() < MULTIPART_THRESHOLD {
            return self.retried(|| {
                self.count(0, data.len());
                let payload = PutPayload::from(data.clone());
                self.runtime.block_on(self.store.put(&path, payload)).map(drop).map_err(|e| self.write_failure(key, e))
            });
        }
        // A local disk: object_store writes the parts to a staging file.
        self.requests.fetch_add(data.len().div_ceil(MULTIPART_PART) as u64 + 1, Ordering::Relaxed);
        self.count(0, data.len());
        self.runtime
            .block_on(async {
                let upload = self.store.put_multipart(&path).await?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
                writer.put(data);
                writer.finish().await
            })
            .map_err(|e| self.write_failure(key, e))?;
        Ok(())
    }

    fn put_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<()> {
        self.upload_file(key, file)
    }

    fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        let mut attempts = 0;
        let created = self.retried(|| {
            attempts += 1;
            self.put_new_once(key, &data)
        })?;
        // A retry that finds the object may be finding the first attempt's write.
        if !created && attempts > 1 {
            return self.settle_put_new(key, &data);
        }
        Ok(created)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let folder = StorePath::from(prefix.trim_end_matches('/'));
        // A listing is read whole, page by page; a page cut off starts it over.
        let listed: Vec<object_store::ObjectMeta> = self.retried(|| {
            self.count(0, 0);
            self.runtime.block_on(self.store.list(Some(&folder)).try_collect()).map_err(|e| self.failure(prefix, e))
        })?;
        let infos = listed.into_iter().map(|meta| ObjectInfo {
            key: meta.location.to_string(),
            size: meta.size,
            modified: u64::try_from(meta.last_modified.timestamp())
                .ok()
                .map(|seconds| std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds)),
        });
        Ok(infos.filter(|info| info.key.starts_with(prefix)).collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        if let Some(bucket) = &self.bucket {
            return self.retried(|| {
                self.count(0, 0);
                self.runtime.block_on(bucket.delete_object(key))
            });
        }
        let path = StorePath::from(key);
        self.retried(|| {
            self.count(0, 0);
            match self.runtime.block_on(self.store.delete(&path)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.failure(key, e)),
            }
        })
    }

    fn abort_stale_uploads(&self, age: std::time::Duration) -> Result<usize> {
        match &self.bucket {
            Some(bucket) => self.retried(|| self.runtime.block_on(bucket.abort_older_than(age))),
            None => Ok(0),
        }
    }

    fn checksum_writes(&self, on: bool) {
        if let Some(switch) = &self.content_md5 {
            switch.store(on, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn object_lock(&self) -> Result<super::ObjectLock> {
        match &self.bucket {
            Some(bucket) => self.retried(|| self.runtime.block_on(bucket.object_lock())),
            None => Ok(super::ObjectLock::Unsupported),
        }
    }

    fn set_object_lock(&self, mode: super::ObjectLockMode, days: u32) -> Result<()> {
        match &self.bucket {
            Some(bucket) => self.retried(|| self.runtime.block_on(bucket.set_default_retention(mode, days))),
            None => Err(crate::error::Error::InvalidInput(format!("{} does not support Object Lock", self.location))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_a_few_words() {
        let status = "Generic S3 error: Error performing GET http://h/b/k in 741µs - Server returned non-2xx status code: 503 Service Unavailable: <?xml version=\"1.0\"?><Error><Code>SlowDown</Code></Error>";
        assert_eq!(reason(status), "the server answered 503 SlowDown");
        let refused = "Error performing PUT http://h/b/k - HTTP error: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)";
        assert_eq!(reason(refused), "the connection was refused");
    }
}
