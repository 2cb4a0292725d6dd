//! Manifests: downloaded blob by blob, checked, validated and cached.

use std::path::PathBuf;

use super::*;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::repository::manifest::Manifest;
use crate::repository::pack::BlobType;
use crate::repository::snapshot::Snapshot;

impl Repository {
    /// Path of a snapshot's manifest in the local cache.
    pub fn manifest_cache_path(&self, id: &SnapshotId) -> PathBuf {
        self.cache_dir.join("manifests").join(format!("{id}.sqlite"))
    }

    /// Opens a snapshot's manifest, from the cache if it is there and intact. Hashing
    /// and downloading stream one blob at a time, so memory does not grow with the
    /// manifest (about 200 bytes a file).
    pub fn load_manifest(&self, id: &SnapshotId, snapshot: &Snapshot) -> Result<Manifest> {
        let path = self.manifest_cache_path(id);
        if let Ok(file) = std::fs::File::open(&path) {
            let mut hasher = blake3::Hasher::new();
            if hasher.update_reader(file).is_ok() && hasher.finalize().to_hex().as_str() == snapshot.manifest.blake3 {
                return Manifest::open(&path);
            }
        }
        let mut packs = std::collections::BTreeSet::new();
        for blob in &snapshot.manifest.blobs {
            let location = self
                .lookup(blob, BlobType::Metadata)?
                .ok_or_else(|| Error::MissingObject { object: format!("manifest blob {blob} (not in the index)") })?;
            packs.insert(location.pack);
        }
        for pack in &packs {
            self.verify_pack_header(pack)?;
        }
        let partial = path.with_extension("part");
        let write_error = |e| Error::io("cannot write", &partial, e);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(write_error)?);
        let mut hasher = blake3::Hasher::new();
        for blob in &snapshot.manifest.blobs {
            let content = self.read_blob(blob, BlobType::Metadata)?;
            hasher.update(&content);
            std::io::Write::write_all(&mut file, &content).map_err(write_error)?;
        }
        file.into_inner().map_err(|e| write_error(e.into_error()))?;
        if hasher.finalize().to_hex().as_str() != snapshot.manifest.blake3 {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::integrity(
                format!("manifest of snapshot {}", id.short()),
                "its blobs do not add up to the recorded hash",
            ));
        }
        // Validated once, before it is cached: restore and check trust cached manifests.
        if let Err(error) = Manifest::open(&partial).and_then(|manifest| manifest.validate()) {
            let _ = std::fs::remove_file(&partial);
            return Err(match error {
                Error::Integrity { reason, .. } => {
                    Error::integrity(format!("manifest of snapshot {}", id.short()), reason)
                }
                other => other,
            });
        }
        std::fs::rename(&partial, &path).map_err(|e| Error::io("cannot write", &path, e))?;
        Manifest::open(&path)
    }
}
