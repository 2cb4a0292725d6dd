//! Writes blobs into packs and packs into storage, tracking what one run adds.
//!
//! Safe to share between worker threads: each worker seals blobs and hands them over;
//! a full pack is uploaded by the worker that filled it, outside the lock. Packs are
//! written to temporary files as they fill (in a local repository's `tmp/`, renamed
//! into `data/` when complete), not in memory: 16 MiB packs, in flight two or three at
//! a time, were most of a backup's memory. On S3 a pack under the multipart threshold
//! (the default 24 MiB ones) is read back whole to be sent in one request.

use std::collections::HashSet;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::repository::index::{IndexFile, IndexedPack, MAX_OBJECT_BLOBS};
use crate::repository::pack::{seal_blob, BlobType, FinishedPack, PackWriter, SealedBlob};
use crate::repository::{pack_key, Repository};

/// A checkpoint index object is written after this many packs...
pub const CHECKPOINT_PACKS: usize = 32;
/// ...or when this much time has passed since the last one, or when the packs since the
/// last one hold [`MAX_OBJECT_BLOBS`] blobs (many small files), whichever comes first.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// What a packer has written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackerStats {
    pub blobs: u64,
    /// Uncompressed size of the blobs written.
    pub raw_bytes: u64,
    pub packs: u64,
    pub bytes: u64,
    /// Index objects written at checkpoints.
    pub checkpoints: u64,
}

/// A pack being written to its temporary file.
type PackFile = PackWriter<BufWriter<NamedTempFile>>;

struct State {
    data: Option<PackFile>,
    metadata: Option<PackFile>,
    written: Vec<IndexedPack>,
    stats: PackerStats,
    last_checkpoint: Instant,
}

/// Collects blobs of one run into data and metadata packs.
pub struct Packer<'r> {
    repository: &'r Repository,
    checkpoint_packs: usize,
    claimed: Mutex<HashSet<(BlobId, BlobType)>>,
    state: Mutex<State>,
    /// Where pack files are written until they are complete.
    staging: PathBuf,
}

impl<'r> Packer<'r> {
    pub fn new(repository: &'r Repository) -> Self {
        Self::with_checkpoints(repository, CHECKPOINT_PACKS)
    }

    /// A packer that writes a checkpoint index after every `packs` packs (at least 1).
    pub fn with_checkpoints(repository: &'r Repository, packs: usize) -> Self {
        let state = State {
            data: None,
            metadata: None,
            written: Vec::new(),
            stats: PackerStats::default(),
            last_checkpoint: Instant::now(),
        };
        Self {
            repository,
            checkpoint_packs: packs.max(1),
            claimed: Mutex::new(HashSet::new()),
            state: Mutex::new(state),
            staging: staging_dir(repository),
        }
    }

    /// The repository written to.
    pub fn repository(&self) -> &'r Repository {
        self.repository
    }

    /// True if the caller must store this blob: it is neither indexed nor claimed by this run.
    pub fn claim(&self, id: BlobId, blob_type: BlobType) -> Result<bool> {
        if self.claimed.lock().unwrap_or_else(|p| p.into_inner()).contains(&(id, blob_type)) {
            return Ok(false);
        }
        if self.repository.lookup(&id, blob_type)?.is_some() {
            return Ok(false);
        }
        Ok(self.claimed.lock().unwrap_or_else(|p| p.into_inner()).insert((id, blob_type)))
    }

    /// Seals a claimed blob and adds it to the current pack of its type.
    pub fn store(&self, id: BlobId, blob_type: BlobType, data: &[u8]) -> Result<()> {
        let repository = self.repository;
        let sealed = seal_blob(repository.master(), blob_type, id, data, repository.config().compression_level)?;
        self.add(sealed)
    }

    /// Claims and stores a blob if needed; returns its id.
    pub fn store_if_new(&self, blob_type: BlobType, data: &[u8]) -> Result<BlobId> {
        let id = self.repository.master().blob_id(data);
        if self.claim(id, blob_type)? {
            self.store(id, blob_type, data)?;
        }
        Ok(id)
    }

    fn add(&self, sealed: SealedBlob) -> Result<()> {
        let full = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let limit = self.repository.config().pack_size;
            let slot = match sealed.blob_type {
                BlobType::Data => &mut state.data,
                BlobType::Metadata => &mut state.metadata,
            };
            let writer = match slot {
                Some(writer) => writer,
                None => slot.insert(self.new_pack_file()?),
            };
            if let Err(error) = writer.add(&sealed) {
                // Part of the blob may be in the file: the pack is abandoned (its file
                // removed) rather than finished with bytes its hash did not see.
                *slot = None;
                return Err(self.write_error(error));
            }
            if writer.len() >= limit {
                slot.take()
            } else {
                None
            }
        };
        match full {
            Some(writer) => self.upload(writer),
            None => Ok(()),
        }
    }

    /// A new pack in a temporary file; removed again unless it is uploaded.
    fn new_pack_file(&self) -> Result<PackFile> {
        std::fs::create_dir_all(&self.staging).map_err(|e| Error::io("cannot create", &self.staging, e))?;
        let file = tempfile::Builder::new()
            .prefix(&staging_prefix())
            .suffix(".pack")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(&self.staging)
            .map_err(|e| Error::io("cannot create a pack file in", &self.staging, e))?;
        // Held while the file is open: another run tells a live pack file from one left
        // by a killed process by whether it can take this lock, whatever host name or
        // PID namespace either runs in.
        crate::system::lock_file(file.as_file());
        Ok(PackWriter::new(BufWriter::with_capacity(256 * 1024, file)))
    }

    fn write_error(&self, error: std::io::Error) -> Error {
        Error::io("cannot write a pack file in", &self.staging, error)
    }

    fn upload(&self, writer: PackFile) -> Result<()> {
        let FinishedPack { id, sink, size, entries } =
            writer.finish(self.repository.master()).map_err(|e| self.write_error(e))?;
        let file = sink.into_inner().map_err(|e| self.write_error(e.into_error()))?;
        self.repository.backend().put_file(&pack_key(&id), file)?;
        let checkpoint = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.stats.blobs += entries.len() as u64;
            state.stats.raw_bytes += entries.iter().map(|entry| entry.raw_length as u64).sum::<u64>();
            state.stats.packs += 1;
            state.stats.bytes += size;
            state.written.push(IndexedPack { id, size, blobs: entries });
            let blobs: usize = state.written.iter().map(|pack| pack.blobs.len()).sum();
            let due = state.written.len() >= self.checkpoint_packs
                || blobs >= MAX_OBJECT_BLOBS
                || state.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
            due.then(|| std::mem::take(&mut state.written))
        };
        match checkpoint {
            Some(packs) => self.checkpoint(packs),
            None => Ok(()),
        }
    }

    /// Indexes the packs written so far, so a run killed later reuses them. Their blobs
    /// are now found by lookup, so they leave the claimed set, which therefore holds
    /// only blobs since the last checkpoint instead of every blob of the run.
    fn checkpoint(&self, packs: Vec<IndexedPack>) -> Result<()> {
        let file = IndexFile { supersedes: Vec::new(), packs };
        self.repository.write_index(&file)?;
        {
            let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
            for entry in file.packs.iter().flat_map(|pack| &pack.blobs) {
                claimed.remove(&(entry.id, entry.blob_type));
            }
            let keep = claimed.len() * 2;
            claimed.shrink_to(keep);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.stats.checkpoints += 1;
        state.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Uploads the partial packs and returns the index of everything written, leaving
    /// the packer empty so it can go on (a checkpoint) or be dropped.
    pub fn flush(&self) -> Result<IndexFile> {
        let (data, metadata) = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.data.take(), state.metadata.take())
        };
        for writer in [data, metadata].into_iter().flatten() {
            if !writer.is_empty() {
                self.upload(writer)?;
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(IndexFile { supersedes: Vec::new(), packs: std::mem::take(&mut state.written) })
    }

    /// Takes what a failed run finished, for an index object: the packs stored since
    /// the last checkpoint, and with `with_partial` also the packs in hand (uploaded
    /// first).
    pub fn take_finished(&self, with_partial: bool) -> Result<IndexFile> {
        if with_partial {
            return self.flush();
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(IndexFile { supersedes: Vec::new(), packs: std::mem::take(&mut state.written) })
    }

    /// Counters of what was written.
    pub fn stats(&self) -> PackerStats {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stats
    }
}

/// Where a packer writes pack files: the backend's staging folder (a local repository's
/// `tmp/`, so finished packs are renamed into place), else the cache directory's `tmp/`.
/// Pack files of this host's processes that have gone away (killed, crashed) are removed.
fn staging_dir(repository: &Repository) -> PathBuf {
    let staging = repository.backend().staging_dir().unwrap_or_else(|| repository.cache_dir().join("tmp"));
    remove_stale_pack_files(&staging);
    staging
}

/// `pack-<host>-<pid>-`: whose a pack file is, so a later run can tell a stale one.
fn staging_prefix() -> String {
    format!("{}{}-", host_prefix(), std::process::id())
}

fn host_prefix() -> String {
    let host: String = crate::system::host_name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
        .collect();
    format!("pack-{host}-")
}

/// Best effort: a pack file (or an object being written, `object-*.tmp`) left behind
/// holds nothing any index names. A file is left behind if no process holds its lock
/// (a live writer always does, but an object file only from a moment after it is
/// created, so it must also be 10 seconds old: eight concurrent backups into a new
/// repository lost objects to this); pack files of versions that did not lock them
/// must also be of a gone process of this host or unchanged for 15 minutes.
fn remove_stale_pack_files(staging: &Path) {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return;
    };
    let ours = host_prefix();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("pack-") && !name.starts_with("object-") {
            continue;
        }
        let Some(_unlocked) = crate::system::lock_if_free(&entry.path()) else { continue };
        if name.starts_with("object-") {
            let age = entry.metadata().and_then(|metadata| metadata.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_some_and(|age| age >= Duration::from_secs(10)) {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let pid = name.strip_prefix(&ours).and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse().ok());
        let gone = pid.is_some_and(|pid| !crate::system::process_alive(pid));
        let idle = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|time| time.elapsed().is_ok_and(|age| age > Duration::from_secs(15 * 60)));
        if gone || idle {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::repository::crypto::KdfParams;
    use crate::repository::InitOptions;

    #[test]
    fn pack_files_of_processes_that_are_gone_are_removed() {
        let staging = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let names = [
            format!("{}{gone}-abc.pack", host_prefix()),
            format!("{}-xyz.pack", staging_prefix().trim_end_matches('-')),
            format!("pack-another.host-{gone}-abc.pack"),
            "notes.txt".to_string(),
        ];
        for name in &names {
            std::fs::write(staging.path().join(name), b"partial pack").unwrap();
        }
        remove_stale_pack_files(staging.path());
        let left: HashSet<String> = std::fs::read_dir(staging.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, names[1..].iter().cloned().collect(), "only this host's file of a gone process goes");
    }

    #[test]
    fn a_locked_pack_file_is_live_whatever_its_name_says() {
        let staging = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        // A writer in a container: the host's name, a PID that means nothing here.
        let path = staging.path().join(format!("{}{gone}-live.pack", host_prefix()));
        let live = std::fs::File::create(&path).unwrap();
        // SAFETY: flock on a descriptor owned by `live`.
        assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&live), libc::LOCK_EX) }, 0);
        remove_stale_pack_files(staging.path());
        assert!(path.exists(), "a live writer's pack file was removed");
        drop(live);
        remove_stale_pack_files(staging.path());
        assert!(!path.exists());
    }

    #[test]
    fn checkpointed_blobs_leave_the_claimed_set_and_are_still_deduplicated() {
        let options =
            InitOptions { kdf: KdfParams::QUICK, pack_size: 1024, compression_level: 0, ..Default::default() };
        let repository = Repository::init(Arc::new(MemoryBackend::new()), b"pw", &options, None).unwrap();
        // Blobs larger than a pack and a checkpoint after every pack: each blob is indexed
        // as soon as it is stored.
        let packer = Packer::with_checkpoints(&repository, 1);
        let (one, two) = ("first blob ".repeat(200), "second blob ".repeat(200));
        let first = packer.store_if_new(BlobType::Data, one.as_bytes()).unwrap();
        packer.store_if_new(BlobType::Data, two.as_bytes()).unwrap();
        assert!(packer.stats().checkpoints >= 1);
        assert!(
            !packer.claimed.lock().unwrap().contains(&(first, BlobType::Data)),
            "the claim outlived the checkpoint"
        );
        assert!(!packer.claim(first, BlobType::Data).unwrap(), "an indexed blob was claimed again");
        let blobs = packer.stats().blobs;
        packer.store_if_new(BlobType::Data, one.as_bytes()).unwrap();
        assert_eq!(packer.stats().blobs, blobs, "the same blob was stored twice");
    }
}
