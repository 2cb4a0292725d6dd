//! Writes blobs into packs and packs into storage, tracking what one run adds.
//!
//! Safe to share between worker threads: each worker seals blobs and hands them over;
//! a full pack is uploaded by the worker that filled it, outside the lock.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::Result;
use crate::id::BlobId;
use crate::index::{IndexFile, IndexedPack, MAX_OBJECT_BLOBS};
use crate::pack::{seal_blob, BlobType, FinishedPack, PackWriter, SealedBlob};
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

struct State {
    data: PackWriter,
    metadata: PackWriter,
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
    /// Buffers of uploaded data packs, reused for the next ones.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
}

/// Pack buffers kept for reuse: one per worker filling or uploading a pack is enough.
const SPARE_BUFFERS: usize = 2;

impl<'r> Packer<'r> {
    pub fn new(repository: &'r Repository) -> Self {
        Self::with_checkpoints(repository, CHECKPOINT_PACKS)
    }

    /// A packer that writes a checkpoint index after every `packs` packs (at least 1).
    pub fn with_checkpoints(repository: &'r Repository, packs: usize) -> Self {
        let state = State {
            data: PackWriter::default(),
            metadata: PackWriter::default(),
            written: Vec::new(),
            stats: PackerStats::default(),
            last_checkpoint: Instant::now(),
        };
        Self {
            repository,
            checkpoint_packs: packs.max(1),
            claimed: Mutex::new(HashSet::new()),
            state: Mutex::new(state),
            spare_buffers: Mutex::new(Vec::new()),
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
            let limit = self.repository.config().pack_size as usize;
            let writer = match sealed.blob_type {
                BlobType::Data => &mut state.data,
                BlobType::Metadata => &mut state.metadata,
            };
            if writer.is_empty() && sealed.blob_type == BlobType::Data {
                *writer = PackWriter::with_buffer(self.pack_buffer(limit));
            }
            writer.add(&sealed);
            if writer.len() >= limit {
                Some(std::mem::take(writer))
            } else {
                None
            }
        };
        match full {
            Some(writer) => self.upload(writer),
            None => Ok(()),
        }
    }

    /// An empty buffer for a data pack of `limit` bytes: a spare one, or a new one with
    /// room for the blob that fills it.
    fn pack_buffer(&self, limit: usize) -> Vec<u8> {
        let spare = self.spare_buffers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        spare.unwrap_or_else(|| Vec::with_capacity(limit + (1 << 20)))
    }

    fn upload(&self, writer: PackWriter) -> Result<()> {
        let FinishedPack { id, bytes, entries } = writer.finish(self.repository.master());
        let size = bytes.len() as u64;
        self.repository.backend().put(&pack_key(&id), Bytes::clone(&bytes))?;
        let is_data = entries.first().is_some_and(|entry| entry.blob_type == BlobType::Data);
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
        if is_data {
            self.keep_buffer(bytes);
        }
        match checkpoint {
            Some(packs) => self.checkpoint(packs),
            None => Ok(()),
        }
    }

    /// Keeps an uploaded pack's buffer for the next pack, once the backend let go of it.
    fn keep_buffer(&self, bytes: Bytes) {
        let mut spare = self.spare_buffers.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_BUFFERS {
            if let Ok(buffer) = bytes.try_into_mut() {
                spare.push(buffer.into());
            }
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
            (std::mem::take(&mut state.data), std::mem::take(&mut state.metadata))
        };
        for writer in [data, metadata] {
            if !writer.is_empty() {
                self.upload(writer)?;
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(IndexFile { supersedes: Vec::new(), packs: std::mem::take(&mut state.written) })
    }

    /// Counters of what was written.
    pub fn stats(&self) -> PackerStats {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stats
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::crypto::KdfParams;
    use crate::repository::InitOptions;

    #[test]
    fn checkpointed_blobs_leave_the_claimed_set_and_are_still_deduplicated() {
        let options = InitOptions {
            kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            pack_size: 1024,
            compression_level: 0,
            ..Default::default()
        };
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
