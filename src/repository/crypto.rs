//! Keys and sealing: Argon2id key files, AES-256-GCM with per-message subkeys, keyed BLAKE3 ids.
//!
//! Every sealed message is `salt (24) || ciphertext || tag (16)`. The AES key and the
//! GCM nonce of each message are derived from the master encryption key and the random
//! salt with keyed BLAKE3, so every derived key seals exactly one message: the 2^32
//! message limit of random 96-bit GCM nonces never comes into play.

use std::ops::RangeInclusive;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};

use crate::id::{BlobId, RepositoryId};

/// Bytes a sealed message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = SALT_LEN + TAG_LEN;
const SALT_LEN: usize = 24;
const TAG_LEN: usize = 16;
const MASTER_LEN: usize = 96;
const KEY_SALT_LEN: usize = 16;
/// `nonce (12) || AES-256-GCM(master key) || tag (16)`.
const WRAPPED_LEN: usize = 12 + MASTER_LEN + TAG_LEN;

/// The secrets of one repository, wrapped by every key file.
#[derive(Clone)]
pub struct MasterKey {
    encryption: [u8; 32],
    id_key: [u8; 32],
    chunker: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Fresh random secrets for a new repository.
    pub fn generate() -> Self {
        Self { encryption: rand::random(), id_key: rand::random(), chunker: rand::random() }
    }

    fn to_bytes(&self) -> [u8; MASTER_LEN] {
        let mut bytes = [0u8; MASTER_LEN];
        bytes[..32].copy_from_slice(&self.encryption);
        bytes[32..64].copy_from_slice(&self.id_key);
        bytes[64..].copy_from_slice(&self.chunker);
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != MASTER_LEN {
            return None;
        }
        Some(Self {
            encryption: bytes[..32].try_into().ok()?,
            id_key: bytes[32..64].try_into().ok()?,
            chunker: bytes[64..].try_into().ok()?,
        })
    }

    /// The keyed BLAKE3 id of a blob's plaintext.
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// The secret that seeds the content-defined chunker's gear table.
    pub fn chunker_secret(&self) -> &[u8; 32] {
        &self.chunker
    }

    /// Encrypts and authenticates `plaintext`, binding `associated` to it.
    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> Vec<u8> {
        self.seal_parts(&[plaintext], associated)
    }

    /// Seals the concatenation of `parts` as one message, without joining them first.
    pub fn seal_parts(&self, parts: &[&[u8]], associated: &[u8]) -> Vec<u8> {
        let salt: [u8; SALT_LEN] = rand::random();
        let (key, nonce) = self.message_cipher(&salt);
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let mut sealed = Vec::with_capacity(length + SEAL_OVERHEAD);
        sealed.extend_from_slice(&salt);
        parts.iter().for_each(|part| sealed.extend_from_slice(part));
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(associated), &mut sealed[SALT_LEN..])
            .unwrap_or_else(|_| unreachable_length());
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// Decrypts a sealed message; `None` if it is damaged, truncated or not bound to `associated`.
    pub fn open(&self, sealed: &[u8], associated: &[u8]) -> Option<Vec<u8>> {
        let mut plaintext = Vec::new();
        let length = self.open_into(sealed, associated, &mut plaintext)?;
        plaintext.truncate(length);
        Some(plaintext)
    }

    /// Decrypts a sealed message into the front of `buffer` and returns its length;
    /// `None` if it is damaged, truncated or not bound to `associated`. The buffer grows
    /// as needed and never shrinks, so one buffer serves many messages without being
    /// cleared; the ciphertext is copied into it and decrypted there.
    pub fn open_into(&self, sealed: &[u8], associated: &[u8], buffer: &mut Vec<u8>) -> Option<usize> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (salt, rest) = sealed.split_at(SALT_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let (key, nonce) = self.message_cipher(salt.try_into().ok()?);
        let tag = Tag::try_from(tag).ok()?;
        if buffer.len() < ciphertext.len() {
            buffer.resize(ciphertext.len(), 0);
        }
        let output = &mut buffer[..ciphertext.len()];
        output.copy_from_slice(ciphertext);
        key.open_in_place_separate_tag(nonce, Aad::from(associated), tag, output, 0..).ok()?;
        Some(ciphertext.len())
    }

    /// The AES-256-GCM key and nonce of one message. ring's AES-GCM, which uses the
    /// VAES and VPCLMULQDQ instructions where the processor has them: 1 MiB sealed in
    /// 0.68 ms with the aes-gcm crate before, a third of a backup's and restore's work
    /// on incompressible data.
    fn message_cipher(&self, salt: &[u8; SALT_LEN]) -> (LessSafeKey, Nonce) {
        let mut hasher = blake3::Hasher::new_keyed(&self.encryption);
        hasher.update(b"coffer seal v1");
        hasher.update(salt);
        let mut material = [0u8; 44];
        hasher.finalize_xof().fill(&mut material);
        let key: [u8; 32] = material[..32].try_into().unwrap_or([0; 32]);
        let nonce: [u8; 12] = material[32..].try_into().unwrap_or([0; 12]);
        (aead_key(&key), Nonce::assume_unique_for_key(nonce))
    }
}

/// An AES-256-GCM key; a 32-byte key is always one.
fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable_key()))
}

fn unreachable_key() -> UnboundKey {
    panic!("AES-256-GCM refused a 32-byte key")
}

// AES-GCM encryption fails only for messages over 64 GiB, which coffer never seals.
fn unreachable_length() -> Tag {
    panic!("AES-GCM refused a message: coffer never seals messages over 64 GiB")
}

/// Argon2id cost parameters, stored in each key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The cheapest parameters the bounds allow: for tests and benchmarks, which make
    /// many repositories. Never for a real one.
    #[doc(hidden)]
    pub const QUICK: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
}

/// Argon2id memory a key file may ask for, in KiB: up to 1 GiB. Parameters come from
/// storage, and Argon2 allocates all of its memory at once: without a bound, a tampered
/// key file made every command try to allocate gigabytes, or terabytes, per key file.
pub const KDF_MEMORY_KIB: RangeInclusive<u32> = 8..=1024 * 1024;
/// Argon2id passes a key file may ask for.
pub const KDF_ITERATIONS: RangeInclusive<u32> = 1..=64;
/// Argon2id lanes a key file may ask for.
pub const KDF_LANES: RangeInclusive<u32> = 1..=16;

impl KdfParams {
    /// Why these parameters are out of bounds (FORMAT.md section 4.2), if they are.
    pub fn check(&self) -> Result<(), String> {
        let out_of = |what: &str, value: u32, bounds: &RangeInclusive<u32>| {
            format!("Argon2id {what} {value} is outside the bounds {} to {}", bounds.start(), bounds.end())
        };
        if !KDF_MEMORY_KIB.contains(&self.memory_kib) {
            return Err(out_of("memory (KiB)", self.memory_kib, &KDF_MEMORY_KIB));
        }
        if !KDF_ITERATIONS.contains(&self.iterations) {
            return Err(out_of("pass count", self.iterations, &KDF_ITERATIONS));
        }
        if !KDF_LANES.contains(&self.parallelism) {
            return Err(out_of("lane count", self.parallelism, &KDF_LANES));
        }
        if self.memory_kib < 8 * self.parallelism {
            return Err(format!("Argon2id memory of {} KiB is less than 8 KiB per lane", self.memory_kib));
        }
        Ok(())
    }
}

impl Default for KdfParams {
    /// 32 MiB and 6 passes: the same memory-time product as 64 MiB and 3 passes, at
    /// half the peak memory, which every command pays once at start. Two lanes, computed
    /// on two threads: an attacker's cost per guess is the same, and opening a
    /// repository takes about 0.08 s instead of 0.15 s on two cores.
    fn default() -> Self {
        Self { memory_kib: 32 * 1024, iterations: 6, parallelism: 2 }
    }
}

/// The stored form of `keys/<id>`: a master key wrapped under a password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u64,
    pub created: String,
    pub host: String,
    pub user: String,
    pub kdf: String,
    pub params: KdfParams,
    /// Hex of the 16-byte Argon2id salt.
    pub salt: String,
    /// Hex of `nonce (12) || AES-256-GCM(master key) || tag (16)`.
    pub wrapped: String,
}

/// Version of the key file format this program writes and reads.
pub const KEY_FILE_VERSION: u64 = 1;

impl KeyFile {
    /// Checks what can be checked without the password: the key derivation, its
    /// parameters' bounds, and the lengths of the salt and the wrapped key. A key file
    /// that fails is damaged; one that passes and does not open may be either damaged
    /// or opened with the wrong password, which cryptography cannot tell apart.
    pub fn check(&self) -> Result<(), String> {
        if self.kdf != "argon2id" {
            return Err(format!("key derivation {:?} is not argon2id", self.kdf));
        }
        self.params.check()?;
        if hex::decode(&self.salt).map_or(true, |salt| salt.len() != KEY_SALT_LEN) {
            return Err(format!("salt is not {KEY_SALT_LEN} bytes of hex"));
        }
        if hex::decode(&self.wrapped).map_or(true, |wrapped| wrapped.len() != WRAPPED_LEN) {
            return Err(format!("wrapped key is not {WRAPPED_LEN} bytes of hex"));
        }
        Ok(())
    }
}

fn password_key(password: &[u8], salt: &[u8], params: KdfParams) -> Option<[u8; 32]> {
    let argon_params = argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32)).ok()?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    let mut key = [0u8; 32];
    argon.hash_password_into(password, salt, &mut key).ok()?;
    Some(key)
}

fn key_file_associated(repository: &RepositoryId) -> Vec<u8> {
    let mut associated = b"coffer key v1".to_vec();
    associated.extend_from_slice(repository.as_bytes());
    associated
}

/// Wraps `master` under `password`; the result is bound to the repository id.
pub fn wrap_master_key(
    master: &MasterKey,
    password: &[u8],
    params: KdfParams,
    repository: &RepositoryId,
    created: String,
    host: String,
    user: String,
) -> Option<KeyFile> {
    params.check().ok()?;
    let salt: [u8; KEY_SALT_LEN] = rand::random();
    let key = password_key(password, &salt, params)?;
    let nonce: [u8; 12] = rand::random();
    let mut buffer = master.to_bytes().to_vec();
    let tag = aead_key(&key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(key_file_associated(repository)),
            &mut buffer,
        )
        .ok()?;
    let mut wrapped = nonce.to_vec();
    wrapped.extend_from_slice(&buffer);
    wrapped.extend_from_slice(tag.as_ref());
    Some(KeyFile {
        version: KEY_FILE_VERSION,
        created,
        host,
        user,
        kdf: "argon2id".to_string(),
        params,
        salt: hex::encode(salt),
        wrapped: hex::encode(wrapped),
    })
}

/// Unwraps the master key with `password`; `None` if the password does not open it,
/// or if the file fails [`KeyFile::check`] (then nothing is derived or allocated).
pub fn unwrap_master_key(file: &KeyFile, password: &[u8], repository: &RepositoryId) -> Option<MasterKey> {
    file.check().ok()?;
    let salt = hex::decode(&file.salt).ok()?;
    let wrapped = hex::decode(&file.wrapped).ok()?;
    let key = password_key(password, &salt, file.params)?;
    let nonce: [u8; 12] = wrapped[..12].try_into().ok()?;
    let mut buffer = wrapped[12..12 + MASTER_LEN].to_vec();
    let tag = Tag::try_from(&wrapped[12 + MASTER_LEN..]).ok()?;
    aead_key(&key)
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(key_file_associated(repository)),
            tag,
            &mut buffer,
            0..,
        )
        .ok()?;
    MasterKey::from_bytes(&buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), ad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let master = MasterKey::generate();
            let sealed = master.seal(&data, &ad);
            prop_assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
            prop_assert_eq!(master.open(&sealed, &ad), Some(data));
        }

        #[test]
        fn any_flipped_bit_is_rejected(data in proptest::collection::vec(any::<u8>(), 0..512), position in any::<prop::sample::Index>(), bit in 0u8..8) {
            let master = MasterKey::generate();
            let mut sealed = master.seal(&data, b"ad");
            let at = position.index(sealed.len());
            sealed[at] ^= 1 << bit;
            prop_assert_eq!(master.open(&sealed, b"ad"), None);
        }
    }

    #[test]
    fn associated_data_is_bound() {
        let master = MasterKey::generate();
        let sealed = master.seal(b"hello", b"blob 1");
        assert!(master.open(&sealed, b"blob 2").is_none());
        assert!(MasterKey::generate().open(&sealed, b"blob 1").is_none());
    }

    #[test]
    fn key_file_round_trip_and_wrong_password() {
        let master = MasterKey::generate();
        let repository = RepositoryId::random();
        let params = KdfParams::QUICK;
        let file =
            wrap_master_key(&master, b"secret", params, &repository, "t".into(), "h".into(), "u".into()).unwrap();
        let opened = unwrap_master_key(&file, b"secret", &repository).unwrap();
        assert_eq!(opened.to_bytes(), master.to_bytes());
        assert!(unwrap_master_key(&file, b"wrong", &repository).is_none());
        assert!(unwrap_master_key(&file, b"secret", &RepositoryId::random()).is_none());
    }

    #[test]
    fn key_files_out_of_bounds_are_refused_before_any_derivation() {
        let master = MasterKey::generate();
        let repository = RepositoryId::random();
        let params = KdfParams::QUICK;
        let file =
            wrap_master_key(&master, b"secret", params, &repository, "t".into(), "h".into(), "u".into()).unwrap();
        assert_eq!(file.check(), Ok(()));
        let tampered = [
            KdfParams { memory_kib: u32::MAX, ..params },
            KdfParams { memory_kib: 1024 * 1024 + 1, ..params },
            KdfParams { iterations: 0, ..params },
            KdfParams { iterations: u32::MAX, ..params },
            KdfParams { parallelism: 17, ..params },
            KdfParams { memory_kib: 8, parallelism: 2, ..params },
        ];
        for params in tampered {
            let bad = KeyFile { params, ..file.clone() };
            assert!(bad.check().is_err(), "{params:?}");
            // u32::MAX KiB would be 4 TiB: this returns at once only if nothing is allocated.
            assert!(unwrap_master_key(&bad, b"secret", &repository).is_none());
        }
        let short = KeyFile { wrapped: file.wrapped[..200].to_string(), ..file.clone() };
        assert!(short.check().unwrap_err().contains("wrapped key"));
        let salt = KeyFile { salt: "zz".repeat(16), ..file.clone() };
        assert!(salt.check().unwrap_err().contains("salt"));
        let kdf = KeyFile { kdf: "scrypt".into(), ..file };
        assert!(kdf.check().unwrap_err().contains("scrypt"));
        let huge = KdfParams { memory_kib: 2 * 1024 * 1024, ..params };
        assert!(wrap_master_key(&master, b"pw", huge, &repository, "t".into(), "h".into(), "u".into()).is_none());
    }

    #[test]
    fn blob_ids_are_keyed() {
        let one = MasterKey::generate();
        let two = MasterKey::generate();
        assert_ne!(one.blob_id(b"same"), two.blob_id(b"same"));
        assert_eq!(one.blob_id(b"same"), one.blob_id(b"same"));
    }
}
