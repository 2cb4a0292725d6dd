//! Blobs and packs: where a blob is, reading and verifying it, and pack headers.

use super::*;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::repository::index::BlobLocation;
use crate::repository::objects::{read_pack_header, Kind};
use crate::repository::pack::{visit_blob, BlobType, PackEntry};

impl Repository {
    /// Every pack in storage and its size, from one listing of `data/`. Names that are
    /// not `data/<xx>/<pack id>` are left out.
    pub fn list_packs(&self) -> Result<std::collections::HashMap<PackId, u64>> {
        Ok(self.list_packs_with_times()?.into_iter().map(|(id, (size, _))| (id, size)).collect())
    }

    /// Every pack in storage with its size and when storage says it was written.
    pub fn list_packs_with_times(
        &self,
    ) -> Result<std::collections::HashMap<PackId, (u64, Option<std::time::SystemTime>)>> {
        let listed = Kind::Pack.list_with_info::<PackId>(&*self.backend)?;
        Ok(listed.into_iter().map(|(id, info)| (id, (info.size, info.modified))).collect())
    }

    /// When each pack was last verified in full by `check` on this machine (local cache).
    pub fn pack_verification_times(&self) -> Result<std::collections::HashMap<PackId, i64>> {
        self.index().verification_times()
    }

    /// Records in the local cache that these packs were verified now.
    pub fn record_verified(&self, packs: &[PackId]) -> Result<()> {
        self.index().mark_verified(packs, jiff::Timestamp::now().as_second())
    }

    /// Where a blob is stored, if it is.
    pub fn lookup(&self, id: &BlobId, blob_type: BlobType) -> Result<Option<BlobLocation>> {
        self.index().lookup(id, blob_type)
    }

    /// The number of packs the index names and their total size.
    pub fn pack_totals(&self) -> Result<(u64, u64)> {
        self.index().pack_totals()
    }

    /// Reads, decrypts and verifies one blob.
    pub fn read_blob(&self, id: &BlobId, blob_type: BlobType) -> Result<Vec<u8>> {
        let location = self
            .lookup(id, blob_type)?
            .ok_or_else(|| Error::MissingObject { object: format!("blob {id} (not in the index)") })?;
        let entry = location.entry;
        let key = pack_key(&location.pack);
        let sealed = self.backend.get_range(&key, entry.offset as u64..entry.offset as u64 + entry.length as u64)?;
        self.open_sealed_blob(&location, &sealed)
    }

    /// Opens a blob read from its pack, naming the pack if it is damaged.
    pub fn open_sealed_blob(&self, location: &BlobLocation, sealed: &[u8]) -> Result<Vec<u8>> {
        self.visit_sealed_blob(location, sealed, <[u8]>::to_vec)
    }

    /// Opens a blob read from its pack into scratch memory and hands its content to
    /// `visit`, naming the pack if it is damaged.
    pub fn visit_sealed_blob<R>(
        &self,
        location: &BlobLocation,
        sealed: &[u8],
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let entry = location.entry;
        visit_blob(&self.master, entry.blob_type, entry.id, sealed, entry.raw_length, visit).ok_or_else(|| {
            Error::integrity(
                pack_key(&location.pack),
                format!("blob {} at offset {} fails authentication", entry.id, entry.offset),
            )
        })
    }

    /// Reads and authenticates a pack's header, and checks that it agrees with the index
    /// for every blob the index places in this pack. Any changed byte of the header or
    /// of its length trailer fails here; changed blob bytes fail when the blob is opened.
    pub fn verify_pack_header(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        let key = pack_key(pack);
        let size = self
            .index()
            .pack_size(pack)?
            .ok_or_else(|| Error::MissingObject { object: format!("{key} (not in the index)") })?;
        let entries = read_pack_header(&*self.backend, &self.master, pack, size, None)?;
        for entry in &entries {
            let indexed = self.lookup(&entry.id, entry.blob_type)?;
            if indexed.is_some_and(|location| location.pack == *pack && location.entry != *entry) {
                return Err(Error::integrity(
                    &key,
                    format!("its header and the index disagree about blob {}", entry.id),
                ));
            }
        }
        Ok(entries)
    }
}
