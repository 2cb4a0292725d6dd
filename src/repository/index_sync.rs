//! The blob index: index objects read into the local cache, written at checkpoints
//! and commits, and kept for a later run when storage cannot take them.

use std::path::PathBuf;

use bytes::Bytes;

use super::*;
use crate::error::{Error, Result};
use crate::id::IndexId;
use crate::repository::index::{IndexFile, IndexedPack, ScratchIndex};
use crate::repository::objects::Kind;

/// The index loaded by [`Repository::scratch_index`].
pub struct ScratchLoad {
    pub index: ScratchIndex,
    /// Why each damaged index object cannot be read.
    pub damaged: Vec<Error>,
    /// Index objects stored, damaged and superseded ones included.
    pub objects: usize,
    /// Intact index objects no other object supersedes.
    pub in_force: usize,
}

impl Repository {
    /// Brings the index cache up to date with the `index/` objects in storage.
    pub fn sync_index(&self) -> Result<()> {
        match self.sync_index_reporting()?.into_iter().next() {
            Some(damaged) => Err(damaged),
            None => Ok(()),
        }
    }

    /// Syncs the cache, skipping index objects that are damaged (returned) or that a
    /// loaded object supersedes (FORMAT.md section 8).
    pub(super) fn sync_index_reporting(&self) -> Result<Vec<Error>> {
        let stored = self.stored_index_ids()?;
        let known = self.index().index_files()?;
        if !known.is_subset(&stored.iter().copied().collect()) {
            self.index().clear()?;
        }
        let damaged = self.load_missing_indexes(&stored)?;
        let loaded = self.index().index_files()?;
        if self.index().superseded()?.is_disjoint(&loaded) {
            return Ok(damaged);
        }
        // A superseded object was loaded before the one superseding it: its rows may
        // point at packs prune has deleted, so rebuild without it.
        self.index().clear()?;
        self.load_missing_indexes(&stored)
    }

    pub(super) fn stored_index_ids(&self) -> Result<Vec<IndexId>> {
        Kind::Index.list(&*self.backend)
    }

    /// Loads the stored index objects the cache does not know and does not skip.
    pub(super) fn load_missing_indexes(&self, stored: &[IndexId]) -> Result<Vec<Error>> {
        let known = self.index().index_files()?;
        let superseded = self.index().superseded()?;
        let missing: Vec<IndexId> =
            stored.iter().copied().filter(|id| !known.contains(id) && !superseded.contains(id)).collect();
        let mut damaged = Vec::new();
        for batch in missing.chunks(self.index_batch()) {
            let loaded: Vec<(IndexId, Result<IndexFile>)> =
                crate::backend::in_flight(&*self.backend, batch, |id| (*id, self.load_index(id)));
            let mut index = self.index();
            for (id, file) in loaded {
                match file {
                    Ok(file) => index.add(Some(id), &file)?,
                    Err(error) if is_damage(&error) => damaged.push(error),
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(damaged)
    }

    /// Index objects loaded per batch: as many as the backend keeps requests in flight,
    /// at least 16. Their entries are in memory until the batch is added.
    fn index_batch(&self) -> usize {
        self.backend.parallel_reads().max(16)
    }

    /// Loads every stored index object (a batch at a time, in parallel) into a new scratch
    /// index in the cache directory and drops the packs only superseded objects name.
    /// Damaged objects are skipped and returned; memory does not grow with the index.
    pub fn scratch_index(&self) -> Result<ScratchLoad> {
        let stored = self.stored_index_ids()?;
        let mut index = ScratchIndex::create(&self.cache_dir)?;
        let mut damaged = Vec::new();
        let mut loaded = Vec::new();
        for batch in stored.chunks(self.index_batch()) {
            let files: Vec<(IndexId, Result<IndexFile>)> =
                crate::backend::in_flight(&*self.backend, batch, |id| (*id, self.load_index(id)));
            for (id, file) in files {
                match file {
                    Ok(file) => {
                        index.add_index_object(&id, &file)?;
                        loaded.push(id);
                    }
                    Err(error) if is_damage(&error) => damaged.push(error),
                    Err(error) => return Err(error),
                }
            }
        }
        let superseded = index.drop_superseded()?;
        let in_force = loaded.iter().filter(|id| !superseded.contains(id)).count();
        Ok(ScratchLoad { index, damaged, objects: stored.len(), in_force })
    }

    /// Ids of every object under `index/`, superseded or not.
    pub fn index_object_ids(&self) -> Result<Vec<IndexId>> {
        self.stored_index_ids()
    }

    /// Reads and decodes one index object, checking its name against its hash.
    pub fn load_index(&self, id: &IndexId) -> Result<IndexFile> {
        let plain = Kind::Index.read(&*self.backend, &self.master, id)?;
        IndexFile::decode(&plain, &Kind::Index.key(id))
    }

    /// Stores an index object and adds it to the cache. Only while this handle's lock,
    /// if it took one, is held: a prune that ran after the lock was lost may have
    /// deleted the packs the object names.
    /// The packs it names are made durable first, and it is durable when this returns.
    pub fn write_index(&self, file: &IndexFile) -> Result<IndexId> {
        self.ensure_lock_held()?;
        self.backend.sync()?;
        let id = IndexId(Kind::Index.write_sealed(&*self.backend, &self.master, &file.encode())?);
        self.backend.sync()?;
        self.index().add(Some(id), file)?;
        Ok(id)
    }

    /// Where index objects wait that a failed backup could not store.
    pub(super) fn pending_dir(&self) -> PathBuf {
        self.cache_dir.join("pending-index")
    }

    /// Keeps an index object in the local cache when storage cannot take it (a backup
    /// failed because storage went away): the next run stores it, so the packs it
    /// names are not uploaded again.
    pub fn keep_index_for_later(&self, file: &IndexFile) -> Result<()> {
        let (hash, sealed) = Kind::Index.seal(&self.master, &file.encode());
        let id = IndexId(hash);
        let folder = self.pending_dir();
        crate::system::create_private_dir(&folder).map_err(|e| Error::io("cannot create", &folder, e))?;
        let path = folder.join(id.to_hex());
        std::fs::write(&path, sealed).map_err(|e| Error::io("cannot write", &path, e))
    }

    /// Stores the index objects kept by [`Repository::keep_index_for_later`] whose packs
    /// are all still in storage (a prune in between deletes packs no index names).
    /// Called under a lock; best effort: what cannot be stored now waits.
    pub(super) fn store_pending_indexes(&self) {
        let Ok(entries) = std::fs::read_dir(self.pending_dir()) else { return };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(|name| name.parse::<IndexId>().ok()) else { continue };
            let Ok(sealed) = std::fs::read(entry.path()) else { continue };
            let decoded = Kind::Index
                .open(&self.master, &id, &sealed)
                .ok()
                .and_then(|plain| IndexFile::decode(&plain, "pending index").ok());
            let Some(file) = decoded else {
                let _ = std::fs::remove_file(entry.path());
                continue;
            };
            let stored = file.packs.iter().all(|pack| {
                let key = Kind::Pack.key(&pack.id);
                self.backend.get_range(&key, pack.size.saturating_sub(4)..pack.size).is_ok()
            });
            let put =
                || self.backend.sync().and_then(|()| self.backend.put(&Kind::Index.key(&id), Bytes::from(sealed)));
            if stored && put().and_then(|()| self.backend.sync()).is_err() {
                continue;
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// Writes `packs` as index objects of at most [`MAX_OBJECT_BLOBS`] blobs each (a pack
    /// is never split); only the last one lists `supersedes`, so until it is stored the
    /// old objects stay in force and a crash loses nothing. Returns the ids written.
    pub fn write_index_objects(
        &self,
        packs: impl IntoIterator<Item = Result<IndexedPack>>,
        supersedes: Vec<IndexId>,
    ) -> Result<Vec<IndexId>> {
        let max_blobs = self.index_object_blobs.load(std::sync::atomic::Ordering::Relaxed);
        let mut written = Vec::new();
        let mut batch: Vec<IndexedPack> = Vec::new();
        let mut blobs = 0;
        for pack in packs {
            let pack = pack?;
            if blobs > 0 && blobs + pack.blobs.len() > max_blobs {
                written
                    .push(self.write_index(&IndexFile { supersedes: Vec::new(), packs: std::mem::take(&mut batch) })?);
                blobs = 0;
            }
            blobs += pack.blobs.len();
            batch.push(pack);
        }
        if !batch.is_empty() || !supersedes.is_empty() {
            written.push(self.write_index(&IndexFile { supersedes, packs: batch })?);
        }
        Ok(written)
    }

    /// Sets the most blobs per index object written by prune and repair (tests use a
    /// small number to split them).
    #[doc(hidden)]
    pub fn set_index_object_blobs(&self, blobs: usize) {
        self.index_object_blobs.store(blobs.max(1), std::sync::atomic::Ordering::Relaxed);
    }
}
