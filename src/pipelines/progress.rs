//! Progress of a running backup or restore: counters that the archiver and its scan
//! (or the restorer, whose plan gives the totals) update and that any observer (the
//! CLI's progress line, a service) reads while it runs. Nothing here prints; drawing
//! is the caller's business.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counters of one backup, shared between threads (wrap it in an `Arc`).
///
/// The totals come from a scan that walks the same trees with the same excludes,
/// reading metadata only; until it finishes they are lower bounds.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    scan_finished: AtomicBool,
    walk_finished: AtomicBool,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    bytes_read: AtomicU64,
    current: Mutex<PathBuf>,
}

/// The counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressSnapshot {
    /// Regular files found by the scan so far.
    pub files_total: u64,
    /// Their total size.
    pub bytes_total: u64,
    /// True once the scan has seen everything: the totals are final.
    pub scan_finished: bool,
    /// Files (and streams) stored, whether read or found unchanged.
    pub files_done: u64,
    /// Bytes of those files: read, or found unchanged and skipped.
    pub bytes_done: u64,
    /// Bytes actually read from files and streams.
    pub bytes_read: u64,
    pub elapsed: Duration,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Counters at zero; the elapsed time counts from now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            scan_finished: AtomicBool::new(false),
            walk_finished: AtomicBool::new(false),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            current: Mutex::new(PathBuf::new()),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            scan_finished: self.scan_finished.load(Ordering::Acquire),
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        }
    }

    /// The file being stored now (empty before the first and for streams).
    pub fn current_path(&self) -> PathBuf {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn add_scanned(&self, size: u64) {
        self.files_total.fetch_add(1, Ordering::Relaxed);
        self.bytes_total.fetch_add(size, Ordering::Relaxed);
    }

    pub(crate) fn finish_scan(&self) {
        self.scan_finished.store(true, Ordering::Release);
    }

    /// Tells the scan that the walk is over, so it need not go on.
    pub(crate) fn finish_walk(&self) {
        self.walk_finished.store(true, Ordering::Relaxed);
    }

    pub(crate) fn walk_finished(&self) -> bool {
        self.walk_finished.load(Ordering::Relaxed)
    }

    pub(crate) fn start_file(&self, path: &Path) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.clear();
        current.push(path);
    }

    pub(crate) fn add_read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_skipped(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }
}

impl ProgressSnapshot {
    /// Bytes processed per second so far.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.bytes_done as f64 / seconds
        } else {
            0.0
        }
    }

    /// Time left at the average rate so far; unknown until the scan has finished and
    /// some bytes (or, for trees of empty files, files) are done.
    pub fn eta(&self) -> Option<Duration> {
        if !self.scan_finished {
            return None;
        }
        let (done, total) = match self.bytes_total {
            0 => (self.files_done, self.files_total),
            _ => (self.bytes_done, self.bytes_total),
        };
        if done == 0 {
            return None;
        }
        let remaining = total.saturating_sub(done) as f64;
        Some(Duration::from_secs_f64(self.elapsed.as_secs_f64() * remaining / done as f64))
    }

    /// Share of the bytes (or files) done, 0 to 100; unknown while the totals are zero.
    pub fn percent(&self) -> Option<f64> {
        let (done, total) = match self.bytes_total {
            0 => (self.files_done, self.files_total),
            _ => (self.bytes_done, self.bytes_total),
        };
        (total > 0).then(|| (done as f64 * 100.0 / total as f64).min(100.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(bytes_done: u64, bytes_total: u64, seconds: u64, scan_finished: bool) -> ProgressSnapshot {
        ProgressSnapshot {
            files_total: 10,
            bytes_total,
            scan_finished,
            files_done: 5,
            bytes_done,
            bytes_read: bytes_done,
            elapsed: Duration::from_secs(seconds),
        }
    }

    #[test]
    fn eta_extrapolates_the_average_rate_once_the_totals_are_known() {
        assert_eq!(at(250, 1000, 10, true).eta(), Some(Duration::from_secs(30)));
        assert_eq!(at(250, 1000, 10, false).eta(), None, "the total may still grow");
        assert_eq!(at(0, 1000, 10, true).eta(), None, "no rate yet");
        assert_eq!(at(1200, 1000, 10, true).eta(), Some(Duration::ZERO), "files grew while read");
        assert_eq!(at(0, 0, 10, true).eta(), Some(Duration::from_secs(10)), "empty files: counted by file");
        assert_eq!(at(250, 1000, 10, true).rate(), 25.0);
        assert_eq!(at(250, 1000, 10, true).percent(), Some(25.0));
    }

    #[test]
    fn counters_add_up() {
        let progress = Progress::new();
        progress.add_scanned(100);
        progress.add_scanned(50);
        progress.finish_scan();
        progress.start_file(Path::new("/data/a"));
        progress.add_read(100);
        progress.file_done();
        progress.add_skipped(50);
        progress.file_done();
        let now = progress.snapshot();
        assert_eq!((now.files_total, now.bytes_total, now.scan_finished), (2, 150, true));
        assert_eq!((now.files_done, now.bytes_done, now.bytes_read), (2, 150, 100));
        assert_eq!(progress.current_path(), Path::new("/data/a"));
    }
}
