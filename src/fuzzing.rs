//! Entry points for fuzzing every decoder of repository data. The fuzz targets in
//! `fuzz/` and the bounded fuzz tests call these; none may panic on any input.

use crate::repository::crypto::MasterKey;
use crate::repository::index::IndexFile;
use crate::repository::snapshot::Snapshot;
use crate::repository::Config;

/// A fresh random key; targets keep one per process so sealed inputs can reach the
/// code behind decryption when a corpus was made with it.
pub fn fuzz_key() -> MasterKey {
    MasterKey::generate()
}

/// `config` parsing.
pub fn config(bytes: &[u8]) {
    let _ = Config::decode(bytes);
}

/// Key file parsing and unwrapping with a cheap password attempt.
pub fn key_file(bytes: &[u8]) {
    if let Ok(file) = serde_json::from_slice::<crate::repository::crypto::KeyFile>(bytes) {
        let mut cheap = file.clone();
        cheap.params.memory_kib = cheap.params.memory_kib.min(64);
        cheap.params.iterations = cheap.params.iterations.clamp(1, 2);
        let _ = crate::repository::crypto::unwrap_master_key(&cheap, b"password", &crate::id::RepositoryId([0; 32]));
    }
}

/// Pack trailer and header decoding, with the sealed layer and without it.
pub fn pack(key: &MasterKey, bytes: &[u8]) {
    let _ = crate::repository::pack::read_pack(key, bytes, None, "pack");
    let _ = crate::repository::pack::decode_header(bytes, bytes.len() as u64, "pack");
    let _ = crate::repository::pack::header_bounds(
        bytes.get(bytes.len().saturating_sub(4)..).unwrap_or(&[]),
        bytes.len() as u64,
        "pack",
    );
}

/// Index object decoding, sealed and plain.
pub fn index(key: &MasterKey, bytes: &[u8]) {
    let _ = IndexFile::decode(bytes, "index");
    if let Ok(plain) = crate::repository::pack::open_object(key, "index", bytes, "index") {
        let _ = IndexFile::decode(&plain, "index");
    }
}

/// Snapshot record decoding.
pub fn snapshot(bytes: &[u8]) {
    let _ = Snapshot::decode(bytes, "snapshot");
}

/// Blob opening (decrypt, decompress, re-hash): the first 32 bytes name the blob id,
/// the rest is the sealed blob.
pub fn blob(key: &MasterKey, bytes: &[u8]) {
    let Some(id) = bytes.get(..32).and_then(crate::id::BlobId::from_slice) else { return };
    let _ = crate::repository::pack::open_blob(key, crate::repository::pack::BlobType::Data, id, &bytes[32..], 1 << 20);
    let _ =
        crate::repository::pack::open_blob(key, crate::repository::pack::BlobType::Metadata, id, &bytes[32..], 1 << 20);
}

/// Manifest loading: the bytes are written to a file and queried like a real manifest.
pub fn manifest(bytes: &[u8]) {
    let Ok(directory) = tempfile::tempdir() else {
        return;
    };
    let path = directory.path().join("manifest.sqlite");
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let Ok(manifest) = crate::repository::manifest::Manifest::open(&path) else {
        return;
    };
    if let Ok(entries) = manifest.entries_under(b"/") {
        for (id, _) in entries.iter().take(100) {
            let _ = manifest.chunks(*id);
            let _ = manifest.xattrs(*id);
        }
    }
    let _ = manifest.blobs();
    let _ = manifest.len();
}
