//! Restore records (`restores/<random id>`): which snapshot a restore put where, the
//! safety snapshot holding what it replaced or deleted, what it created, and how it
//! ended. A record is stored, durably, before a restore changes anything, so a
//! rollback is possible after a SIGKILL or a power cut; it is rewritten with the outcome.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Repository;
use crate::error::{Error, Result};
use crate::id::{RestoreId, SnapshotId};
use crate::repository::objects::Kind;

/// The format version of restore records this build writes and reads.
pub const RESTORE_RECORD_VERSION: u32 = 1;

/// How a restore ended, as far as the record knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Started and not (yet) finished: still running, or killed.
    Running,
    Completed,
    /// Failed, with nothing to put back (no safety snapshot).
    Failed,
    /// Failed or interrupted, and every touched entry was put back.
    RolledBack,
    /// Failed, and putting the touched entries back failed too.
    RollbackFailed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::RollbackFailed => "rollback-failed",
        }
    }
}

/// One restore into a folder (docs/FORMAT.md section 9.1). Relative paths are below
/// the target, as hex of their bytes (names need not be UTF-8).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRecord {
    pub version: u32,
    /// When the restore started (RFC 3339, UTC).
    pub time: String,
    pub host: String,
    pub user: String,
    /// The snapshot restored, and the folder of it (`/` for all of it).
    pub snapshot: String,
    pub path: String,
    /// The target folder, absolute, for display (not UTF-8 bytes shown as U+FFFD).
    pub target: String,
    /// The snapshot folder and the target, as hex of their bytes: what a rollback uses.
    pub path_hex: String,
    pub target_hex: String,
    /// The target folder's device and inode when the restore started (0 if it did not
    /// exist): a rollback refuses a folder that has been replaced since.
    pub target_device: u64,
    pub target_inode: u64,
    /// For a database restore: the database written into (`target` is then the
    /// connection string, password masked, and `replaced` the relations it held).
    #[serde(default)]
    pub database: Option<String>,
    /// The snapshot (tagged `safety`) holding every entry of the target the restore
    /// replaced, changed or deleted, as it was before; none if it touched nothing.
    pub safety: Option<String>,
    /// Entries the restore made where nothing was (removed by a rollback).
    pub created: Vec<String>,
    /// Entries it replaced or whose metadata it changed, and entries it deleted.
    pub replaced: Vec<String>,
    pub deleted: Vec<String>,
    pub outcome: Outcome,
    /// When the outcome was recorded, and what went wrong.
    pub finished: Option<String>,
    pub error: Option<String>,
}

impl RestoreRecord {
    /// The record of a restore starting now, on this host, by this user: of `path` of
    /// `snapshot` into `target` (shown, and as its bytes), with the safety snapshot
    /// taken for it. The caller fills in what it touches.
    pub fn start(
        snapshot: &SnapshotId,
        path: &[u8],
        (target, target_bytes): (String, &[u8]),
        safety: Option<SnapshotId>,
    ) -> Self {
        RestoreRecord {
            version: RESTORE_RECORD_VERSION,
            time: jiff::Timestamp::now().to_string(),
            host: crate::system::host_name(),
            user: crate::system::user_name(),
            snapshot: snapshot.to_hex(),
            path: String::from_utf8_lossy(path).into_owned(),
            target,
            path_hex: hex::encode(path),
            target_hex: hex::encode(target_bytes),
            target_device: 0,
            target_inode: 0,
            database: None,
            safety: safety.map(|id| id.to_hex()),
            created: Vec::new(),
            replaced: Vec::new(),
            deleted: Vec::new(),
            outcome: Outcome::Running,
            finished: None,
            error: None,
        }
    }

    /// The safety snapshot's id, if there is one.
    pub fn safety_id(&self) -> Result<Option<SnapshotId>> {
        self.safety.as_deref().map(str::parse).transpose()
    }

    /// The target folder's path, as bytes.
    pub fn target_path(&self) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStringExt;
        let bytes = hex::decode(&self.target_hex).unwrap_or_else(|_| self.target.clone().into_bytes());
        std::path::PathBuf::from(std::ffi::OsString::from_vec(bytes))
    }

    /// The snapshot folder restored, as bytes.
    pub fn path_bytes(&self) -> Vec<u8> {
        hex::decode(&self.path_hex).unwrap_or_else(|_| self.path.clone().into_bytes())
    }

    /// The relative paths of a list, as bytes.
    pub fn paths(list: &[String]) -> Vec<Vec<u8>> {
        list.iter().filter_map(|text| hex::decode(text).ok()).collect()
    }
}

/// Readable restore records (oldest first) and the errors of unreadable ones.
pub type RestoreList = (Vec<(RestoreId, RestoreRecord)>, Vec<Error>);

impl Repository {
    /// Stores (or replaces) a restore record, durably.
    pub fn save_restore(&self, id: &RestoreId, record: &RestoreRecord) -> Result<()> {
        let plain =
            serde_json::to_vec(record).map_err(|e| Error::InvalidInput(format!("cannot encode record: {e}")))?;
        let (_, sealed) = Kind::Restore.seal(&self.master, &plain);
        self.backend.put(&Kind::Restore.key(id), Bytes::from(sealed))?;
        self.backend.sync()
    }

    /// Reads one restore record.
    pub fn load_restore(&self, id: &RestoreId) -> Result<RestoreRecord> {
        let name = Kind::Restore.key(id);
        let plain = Kind::Restore.read(&*self.backend, &self.master, id)?;
        let record: RestoreRecord = serde_json::from_slice(&plain)
            .map_err(|e| Error::integrity(&name, format!("it is not a restore record: {e}")))?;
        if record.version != RESTORE_RECORD_VERSION {
            return Err(Error::UnsupportedVersion {
                what: format!("restore record {name}"),
                found: record.version as u64,
                supported: RESTORE_RECORD_VERSION as u64,
            });
        }
        Ok(record)
    }

    /// Every restore record, oldest first; unreadable ones are returned as errors.
    pub fn list_restores(&self) -> Result<RestoreList> {
        let mut records = Vec::new();
        let mut damaged = Vec::new();
        for id in Kind::Restore.list::<RestoreId>(&*self.backend)? {
            match self.load_restore(&id) {
                Ok(record) => records.push((id, record)),
                Err(error) if error.is_integrity() || matches!(error, Error::UnsupportedVersion { .. }) => {
                    damaged.push(error)
                }
                Err(error) => return Err(error),
            }
        }
        records.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((records, damaged))
    }

    /// The restore a user names by its id or a unique prefix of it.
    pub fn find_restore(&self, spec: &str) -> Result<(RestoreId, RestoreRecord)> {
        let lower = spec.to_ascii_lowercase();
        if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput(format!("{spec:?} is not a restore id or id prefix")));
        }
        let ids: Vec<RestoreId> = Kind::Restore.list(&*self.backend)?;
        let mut matching = ids.into_iter().filter(|id| id.to_hex().starts_with(&lower));
        let first = matching.next().ok_or_else(|| Error::NotFound { what: format!("restore {spec}") })?;
        if matching.next().is_some() {
            return Err(Error::InvalidInput(format!("restore id prefix {spec} is ambiguous; give more digits")));
        }
        Ok((first, self.load_restore(&first)?))
    }
}
