//! Every kind of object in a repository, in one place: where it lives (its prefix),
//! how it is named (by the BLAKE3 of its bytes, or at random), how it is sealed (the
//! label bound into its associated data), and how it is read back and verified. No
//! other module builds an object's name or opens a sealed object by hand.

use bytes::Bytes;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::id::PackId;
use crate::repository::crypto::MasterKey;
use crate::repository::pack::{decode_header, header_bounds, open_object, seal_object, PackEntry};

/// The kinds of object, with their layout (docs/FORMAT.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `config`: plain JSON, written once.
    Config,
    /// `keys/<random id>`: plain JSON key files.
    Key,
    /// `data/<xx>/<BLAKE3 of the pack>`: packs, whose headers are sealed.
    Pack,
    /// `index/<BLAKE3 of the sealed bytes>`.
    Index,
    /// `snapshots/<BLAKE3 of the sealed bytes>`, written create-only.
    Snapshot,
    /// `locks/<random id>`.
    Lock,
    /// `restores/<random id>`: one record per restore into a folder, rewritten with
    /// its outcome.
    Restore,
    /// `audit/<20-digit sequence number>`: the audit trail, written create-only.
    Audit,
}

impl Kind {
    /// The folder (or, for `config`, the name) of this kind.
    pub const fn prefix(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Key => "keys/",
            Kind::Pack => "data/",
            Kind::Index => "index/",
            Kind::Snapshot => "snapshots/",
            Kind::Lock => "locks/",
            Kind::Restore => "restores/",
            Kind::Audit => "audit/",
        }
    }

    /// The label sealed objects of this kind are bound to (FORMAT.md section 5.3).
    pub const fn seal_label(self) -> &'static str {
        match self {
            Kind::Config | Kind::Key => "",
            Kind::Pack => "pack-header",
            Kind::Index => "index",
            Kind::Snapshot => "snapshot",
            Kind::Lock => "lock",
            Kind::Restore => "restore",
            Kind::Audit => "audit",
        }
    }

    /// True if an object's name is the BLAKE3 of its stored bytes.
    pub const fn named_by_hash(self) -> bool {
        matches!(self, Kind::Pack | Kind::Index | Kind::Snapshot)
    }

    /// The name of the object with this id.
    pub fn key(self, id: &impl std::fmt::Display) -> String {
        match self {
            Kind::Config => "config".to_string(),
            Kind::Pack => {
                let hex = id.to_string();
                format!("data/{}/{hex}", &hex[..2.min(hex.len())])
            }
            other => format!("{}{id}", other.prefix()),
        }
    }

    /// The ids of every stored object of this kind; names that are not this kind's
    /// (other files, staging files) are left out.
    pub fn list<I: std::str::FromStr + std::fmt::Display>(self, backend: &dyn Backend) -> Result<Vec<I>> {
        Ok(self.list_with_info(backend)?.into_iter().map(|(id, _)| id).collect())
    }

    /// The same, with what the listing says of each object.
    pub fn list_with_info<I: std::str::FromStr + std::fmt::Display>(
        self,
        backend: &dyn Backend,
    ) -> Result<Vec<(I, crate::backend::ObjectInfo)>> {
        let mut found = Vec::new();
        for info in backend.list(self.prefix())? {
            let Some(id) = info.key.rsplit('/').next().and_then(|name| name.parse::<I>().ok()) else { continue };
            if info.key == self.key(&id) {
                found.push((id, info));
            }
        }
        Ok(found)
    }

    /// Seals `plain` as an object of this kind; returns its name-giving hash (for kinds
    /// named by hash) and the bytes to store.
    pub fn seal(self, master: &MasterKey, plain: &[u8]) -> ([u8; 32], Vec<u8>) {
        let sealed = seal_object(master, self.seal_label(), plain);
        (*blake3::hash(&sealed).as_bytes(), sealed)
    }

    /// Reads the object named by `id` and opens it, checking first, for kinds named by
    /// hash, that its bytes are what its name says.
    pub fn read(self, backend: &dyn Backend, master: &MasterKey, id: &impl IdBytes) -> Result<Vec<u8>> {
        let name = self.key(id);
        let bytes = backend.get(&name)?;
        self.open(master, id, &bytes)
    }

    /// Opens stored bytes of the object named by `id` (read from storage or a cache).
    pub fn open(self, master: &MasterKey, id: &impl IdBytes, bytes: &[u8]) -> Result<Vec<u8>> {
        let name = self.key(id);
        if self.named_by_hash() && blake3::hash(bytes).as_bytes() != id.id_bytes() {
            return Err(Error::integrity(&name, "its content does not match its name (hash mismatch)"));
        }
        open_object(master, self.seal_label(), bytes, &name)
    }

    /// Stores a sealed object under the name its hash gives it; returns the hash.
    pub fn write_sealed(self, backend: &dyn Backend, master: &MasterKey, plain: &[u8]) -> Result<[u8; 32]> {
        let (hash, sealed) = self.seal(master, plain);
        let name = self.key(&hex::encode(hash));
        match self {
            Kind::Snapshot => backend.put_new(&name, Bytes::from(sealed)).map(drop)?,
            _ => backend.put(&name, Bytes::from(sealed))?,
        }
        Ok(hash)
    }

    /// Deletes the object named by `id` (a missing one is not an error).
    pub fn delete(self, backend: &dyn Backend, id: &impl std::fmt::Display) -> Result<()> {
        backend.delete(&self.key(id))
    }
}

/// An id whose 32 bytes an object's hash is compared with.
pub trait IdBytes: std::fmt::Display {
    fn id_bytes(&self) -> &[u8; 32];
}

macro_rules! id_bytes {
    ($($id:ty),*) => {$(
        impl IdBytes for $id {
            fn id_bytes(&self) -> &[u8; 32] {
                self.as_bytes()
            }
        }
    )*};
}
id_bytes!(
    crate::id::PackId,
    crate::id::IndexId,
    crate::id::SnapshotId,
    crate::id::LockId,
    crate::id::KeyId,
    crate::id::RestoreId
);

/// The name of a pack.
pub fn pack_key(id: &PackId) -> String {
    Kind::Pack.key(id)
}

/// Reads and authenticates the header of a pack of `size` bytes: its last four bytes
/// give the header's length, the header is opened and decoded. `tail` (where it starts,
/// and the bytes) are the pack's last bytes when the caller read them already.
pub fn read_pack_header(
    backend: &dyn Backend,
    master: &MasterKey,
    pack: &PackId,
    size: u64,
    tail: Option<(u64, &[u8])>,
) -> Result<Vec<PackEntry>> {
    let key = pack_key(pack);
    let fetched;
    let (tail_start, tail) = match tail {
        Some(tail) => tail,
        None => {
            let start = size.saturating_sub(4);
            fetched = backend.get_range(&key, start..size)?;
            (start, &fetched[..])
        }
    };
    let last_four = tail.get(tail.len().saturating_sub(4)..).unwrap_or_default();
    let (start, length) = header_bounds(last_four, size, &key)?;
    let sealed = match start.checked_sub(tail_start) {
        // A short last piece (a backend that returned less than asked) has no header.
        Some(from) => tail
            .get(from as usize..(from + length) as usize)
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| Error::integrity(&key, "it is shorter than its index says"))?,
        None => backend.get_range(&key, start..start + length)?,
    };
    let plain = open_object(master, Kind::Pack.seal_label(), &sealed, &key).map_err(|error| match error {
        Error::Integrity { reason, .. } => Error::integrity(&key, reason.replacen("it ", "its header ", 1)),
        other => other,
    })?;
    decode_header(&plain, start, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_format() {
        let id = PackId([0x3f; 32]);
        assert_eq!(pack_key(&id), format!("data/3f/{id}"));
        assert_eq!(Kind::Index.key(&id), format!("index/{id}"));
        assert_eq!(Kind::Config.key(&""), "config");
        assert!(Kind::Snapshot.named_by_hash() && !Kind::Lock.named_by_hash());
    }
}
