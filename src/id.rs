//! Typed 32-byte identifiers: blobs, packs, snapshots, keys, index objects, locks.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id's bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Full lowercase hex form, as used in object names.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, for display.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// Builds an id from a byte slice, which must be 32 bytes long.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Some(Self(bytes.try_into().ok()?))
            }

            /// A fresh random id.
            pub fn random() -> Self {
                Self(rand::random())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(text: &str) -> Result<Self> {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text, &mut bytes).map_err(|_| {
                    Error::InvalidInput(format!("{text:?} is not a valid {} id (64 hex digits)", $what))
                })?;
                Ok(Self(bytes))
            }
        }
    };
}

typed_id!(
    /// Keyed BLAKE3 of a blob's plaintext.
    BlobId, "blob");
typed_id!(
    /// BLAKE3 of a pack's stored bytes.
    PackId, "pack");
typed_id!(
    /// BLAKE3 of a snapshot record's stored bytes.
    SnapshotId, "snapshot");
typed_id!(
    /// Random name of a key file.
    KeyId, "key");
typed_id!(
    /// BLAKE3 of an index object's stored bytes.
    IndexId, "index");
typed_id!(
    /// Random name of a lock object.
    LockId, "lock");
typed_id!(
    /// Random name of a restore record.
    RestoreId, "restore");
typed_id!(
    /// Random repository identity, chosen at `init`.
    RepositoryId, "repository");
