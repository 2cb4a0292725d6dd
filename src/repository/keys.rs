//! Key files: one per password, each wrapping the master keys (FORMAT.md section 4).

use bytes::Bytes;
use rayon::prelude::*;

use super::*;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::id::{KeyId, RepositoryId};
use crate::repository::crypto::{unwrap_master_key, wrap_master_key, KdfParams, KeyFile, MasterKey, KEY_FILE_VERSION};
use crate::repository::objects::Kind;

/// One stored key file as `key list` shows it: its metadata, or why it cannot be read.
#[derive(Debug)]
pub struct StoredKey {
    pub id: KeyId,
    pub file: Result<KeyFile>,
    /// True for the key file that opened this repository handle.
    pub in_use: bool,
}

impl Repository {
    /// Adds a key file for another password; returns its id.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<KeyId> {
        let id = add_key(&*self.backend, &self.master, &self.config.id, password, kdf)?;
        self.backend.sync()?;
        Ok(id)
    }

    /// Every key file, sorted by creation time; damaged or newer ones with their error.
    pub fn keys(&self) -> Result<Vec<StoredKey>> {
        let mut keys = Vec::new();
        for (id, info) in Kind::Key.list_with_info::<KeyId>(&*self.backend)? {
            let file = self.backend.get(&info.key).and_then(|bytes| read_key_file(&info.key, &bytes));
            keys.push(StoredKey { id, file, in_use: id == self.key_id });
        }
        keys.sort_by(|a, b| {
            let created = |key: &StoredKey| key.file.as_ref().map(|file| file.created.clone()).unwrap_or_default();
            created(a).cmp(&created(b)).then(a.id.to_hex().cmp(&b.id.to_hex()))
        });
        Ok(keys)
    }

    /// The one key file whose id starts with `prefix` (hex).
    pub fn find_key_id(&self, prefix: &str) -> Result<KeyId> {
        let prefix = prefix.to_ascii_lowercase();
        let matching: Vec<KeyId> = Kind::Key
            .list::<KeyId>(&*self.backend)?
            .into_iter()
            .filter(|id| !prefix.is_empty() && id.to_hex().starts_with(&prefix))
            .collect();
        match matching.as_slice() {
            [id] => Ok(*id),
            [] => Err(Error::NotFound { what: format!("key {prefix:?}") }),
            _ => {
                Err(Error::InvalidInput(format!("key id {prefix:?} matches {} keys; give more of it", matching.len())))
            }
        }
    }

    /// The key file `password` opens (any key, not only the one of this handle).
    pub fn key_opened_by(&self, password: &[u8]) -> Result<KeyId> {
        find_key(&*self.backend, &self.config.id, password).map(|(id, _)| id)
    }

    /// Removes a key file. Refused when it would leave no intact key file (the last
    /// key), and for the key that opened this handle unless `force`: its holder may
    /// not know another password (the CLI also asks for proof that another key opens).
    /// The caller holds the exclusive lock, so two removals cannot each take one of the
    /// last two keys.
    pub fn remove_key(&self, id: &KeyId, force: bool) -> Result<()> {
        let keys = self.keys()?;
        if !keys.iter().any(|key| key.id == *id) {
            return Err(Error::NotFound { what: format!("key {}", id.to_hex()) });
        }
        let others_intact = keys.iter().filter(|key| key.id != *id && key.file.is_ok()).count();
        if others_intact == 0 {
            return Err(Error::Refused(format!(
                "key {} is the repository's last intact key; without it no password opens the repository",
                id.short()
            )));
        }
        if *id == self.key_id && !force {
            return Err(Error::Refused(format!(
                "key {} is the one this password opened; add --force and --other-password-file with the password of a key that stays",
                id.short()
            )));
        }
        Kind::Key.delete(&*self.backend, id)?;
        self.backend.sync()
    }

    /// Changes the password of the key in use: writes a key file for the new password,
    /// then removes the old one. A crash in between leaves both, never neither.
    pub fn change_password(&self, password: &[u8], kdf: KdfParams) -> Result<KeyId> {
        let new = self.add_key(password, kdf)?;
        Kind::Key.delete(&*self.backend, &self.key_id)?;
        self.backend.sync()?;
        Ok(new)
    }
}

pub(super) fn add_key(
    backend: &dyn Backend,
    master: &MasterKey,
    repository: &RepositoryId,
    password: &[u8],
    kdf: KdfParams,
) -> Result<KeyId> {
    kdf.check().map_err(|reason| Error::InvalidInput(format!("cannot make a key file: {reason}")))?;
    let created = jiff::Timestamp::now().to_string();
    let file = wrap_master_key(
        master,
        password,
        kdf,
        repository,
        created,
        crate::system::host_name(),
        crate::system::user_name(),
    )
    .ok_or_else(|| Error::InvalidInput(format!("key derivation parameters {kdf:?} are not valid for Argon2id")))?;
    let id = KeyId::random();
    let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    backend.put_new(&Kind::Key.key(&id), Bytes::from(bytes))?;
    Ok(id)
}

/// Tries the password on every intact key file. A damaged or newer key file does not
/// stop the others from opening; if no key opens, it is what is reported (as damage,
/// exit 13, or an unknown version), not a wrong password.
pub(super) fn find_key(
    backend: &dyn Backend,
    repository: &RepositoryId,
    password: &[u8],
) -> Result<(KeyId, MasterKey)> {
    let mut files = Vec::new();
    let mut unusable = Vec::new();
    for (id, info) in Kind::Key.list_with_info::<KeyId>(backend)? {
        let bytes = backend.get(&info.key)?;
        match read_key_file(&info.key, &bytes) {
            Ok(file) => files.push((id, info.key, file)),
            Err(error) => unusable.push(error),
        }
    }
    let opened = files
        .par_iter()
        .find_map_any(|(id, _, file)| unwrap_master_key(file, password, repository).map(|key| (*id, key)));
    if let Some(found) = opened {
        return Ok(found);
    }
    match (unusable.into_iter().next(), files.as_slice()) {
        (Some(Error::Integrity { object, reason }), [_, ..]) => Err(Error::Integrity {
            object,
            reason: format!("{reason} (and the password opens none of the {} other key file(s))", files.len()),
        }),
        (Some(error), _) => Err(error),
        (None, []) => Err(Error::integrity(format!("{}/keys", backend.location()), "the repository has no key files")),
        // One key that does not open: a changed byte in it looks exactly like a wrong password.
        (None, [(_, name, _)]) => {
            Err(Error::WrongPassword { location: backend.location(), only_key: Some(name.clone()) })
        }
        (None, _) => Err(Error::WrongPassword { location: backend.location(), only_key: None }),
    }
}

/// Parses a key file and checks everything that can be checked without the password.
pub(super) fn read_key_file(name: &str, bytes: &[u8]) -> Result<KeyFile> {
    #[derive(Deserialize)]
    struct Version {
        version: u64,
    }
    let version: Version =
        serde_json::from_slice(bytes).map_err(|e| Error::integrity(name, format!("it is not a key file: {e}")))?;
    if version.version != KEY_FILE_VERSION {
        return Err(Error::UnsupportedVersion {
            what: name.to_string(),
            found: version.version,
            supported: KEY_FILE_VERSION,
        });
    }
    let file: KeyFile =
        serde_json::from_slice(bytes).map_err(|e| Error::integrity(name, format!("it is not a key file: {e}")))?;
    file.check().map_err(|reason| Error::integrity(name, format!("its {reason}")))?;
    Ok(file)
}
