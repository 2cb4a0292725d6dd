//! The audit trail: one sealed record per command that changes the repository or
//! reads data out of it, named `audit/<sequence number>` and written create-only, each
//! holding the SHA-256 of the stored bytes of the record before it. Removing, changing
//! (even re-encrypted with the right key), reordering or renaming a record breaks the
//! chain at a record `verify` names; cutting records off the end is caught against a
//! head hash written down elsewhere (`--expect-head`). Two writers racing for one
//! sequence number cannot both win: the loser reads the new head and tries again.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::repository::crypto::MasterKey;
use crate::repository::objects::Kind;

/// The format version of audit records this build writes and reads.
pub const AUDIT_VERSION: u32 = 1;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A record's sequence number, its name: 20 decimal digits, so names sort in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sequence(pub u64);

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}", self.0)
    }
}

impl FromStr for Sequence {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        if text.len() != 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidInput(format!("{text:?} is not an audit record number")));
        }
        text.parse().map(Sequence).map_err(|_| Error::InvalidInput(format!("{text:?} is not an audit record number")))
    }
}

/// One audit record (docs/FORMAT.md section 12).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub version: u32,
    pub seq: u64,
    /// SHA-256 (hex) of the stored bytes of record `seq - 1`; `GENESIS` for the first.
    pub prev: String,
    /// When the command ended (RFC 3339, UTC), who ran it, where, with which coffer.
    pub time: String,
    pub user: String,
    pub host: String,
    pub program_version: String,
    /// The command (`backup`, `restore`, ...) and its arguments, secrets redacted.
    pub command: String,
    pub args: Vec<String>,
    /// The exit code, and the error for a failed command.
    pub exit_code: i32,
    pub error: Option<String>,
    /// Snapshots the command made, read or removed; restores it ran.
    pub snapshots: Vec<String>,
    pub restores: Vec<String>,
    /// Bytes the command stored, wrote or removed, as it counts them.
    pub bytes: Option<u64>,
    /// SHA-256 of what was backed up or restored where the command knows it (a dump),
    /// as `name=hex`; files are covered by the snapshot's manifest.
    pub sha256: Vec<String>,
    /// Key files the command added or removed (`key add`, `key remove`, `key passwd`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// A record as read back, with the hash of its stored bytes.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub seq: Sequence,
    pub record: AuditRecord,
    pub hash: String,
}

fn hash_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Appends `record` as the next record of the chain, stamped with the time, this user,
/// host and coffer version; returns its number and the new head hash. A create-only
/// write of the next number that loses a race is retried after reading the new head.
pub fn append(backend: &dyn Backend, master: &MasterKey, mut record: AuditRecord) -> Result<(u64, String)> {
    record.version = AUDIT_VERSION;
    record.time = jiff::Timestamp::now().to_string();
    record.user = crate::system::user_name();
    record.host = crate::system::host_name();
    record.program_version = concat!("coffer ", env!("CARGO_PKG_VERSION")).to_string();
    for _ in 0..64 {
        let head = Kind::Audit.list::<Sequence>(backend)?.into_iter().max();
        let (seq, prev) =
            match head {
                None => (1, GENESIS.to_string()),
                Some(head) => match head.0.checked_add(1) {
                    Some(next) => (next, hash_hex(&backend.get(&Kind::Audit.key(&head))?)),
                    None => return Err(Error::integrity(
                        Kind::Audit.key(&head),
                        "its number is the largest possible, so no record can follow it (no coffer writes that name; \
                         audit verify shows where the chain breaks)",
                    )),
                },
            };
        record.seq = seq;
        record.prev = prev;
        let plain = serde_json::to_vec(&record).map_err(|e| Error::InvalidInput(format!("cannot encode: {e}")))?;
        let (_, sealed) = Kind::Audit.seal(master, &plain);
        let hash = hash_hex(&sealed);
        if backend.put_new(&Kind::Audit.key(&Sequence(seq)), Bytes::from(sealed))? {
            backend.sync()?;
            return Ok((seq, hash));
        }
        // Another writer took this number: read the new head and try the next.
        std::thread::sleep(std::time::Duration::from_millis(5 + rand::random::<u64>() % 50));
    }
    Err(Error::Refused("could not append to the audit trail: 64 other writers won the race".into()))
}

/// Seals a record as it is stored (for tools and tests that rewrite one).
pub fn seal(master: &MasterKey, record: &AuditRecord) -> Vec<u8> {
    Kind::Audit.seal(master, &serde_json::to_vec(record).unwrap_or_default()).1
}

/// Opens the stored bytes of record `seq`.
pub fn open(master: &MasterKey, seq: Sequence, bytes: &[u8]) -> Result<AuditRecord> {
    let name = Kind::Audit.key(&seq);
    let plain = crate::repository::pack::open_object(master, Kind::Audit.seal_label(), bytes, &name)?;
    let record: AuditRecord = serde_json::from_slice(&plain)
        .map_err(|e| Error::integrity(&name, format!("it is not an audit record: {e}")))?;
    if record.version != AUDIT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: format!("audit record {name}"),
            found: record.version as u64,
            supported: AUDIT_VERSION as u64,
        });
    }
    Ok(record)
}

/// Reads and opens one record.
/// Reads and opens record `seq`, with the hash of its stored bytes.
pub fn read(backend: &dyn Backend, master: &MasterKey, seq: Sequence) -> Result<StoredRecord> {
    let bytes = backend.get(&Kind::Audit.key(&seq))?;
    let record = open(master, seq, &bytes)?;
    Ok(StoredRecord { seq, record, hash: hash_hex(&bytes) })
}

/// Every record, in order.
/// Every record in order of its number, and why each one that cannot be read cannot
/// (so an export still holds every readable record).
pub fn list(backend: &dyn Backend, master: &MasterKey) -> Result<(Vec<StoredRecord>, Vec<Error>)> {
    let mut seqs = Kind::Audit.list::<Sequence>(backend)?;
    seqs.sort();
    let (mut records, mut damaged) = (Vec::new(), Vec::new());
    for seq in seqs {
        match read(backend, master, seq) {
            Ok(record) => records.push(record),
            Err(error @ (Error::Integrity { .. } | Error::MissingObject { .. } | Error::UnsupportedVersion { .. })) => {
                damaged.push(error)
            }
            Err(error) => return Err(error),
        }
    }
    Ok((records, damaged))
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct Verification {
    pub records: u64,
    /// How many records, from the first, hold together (all of them if unbroken).
    pub verified: u64,
    /// The hash of the last record's stored bytes (GENESIS for an empty trail).
    pub head: String,
    /// The first break in the chain, in one sentence, if any.
    pub broken: Option<String>,
}

/// Checks the whole chain: numbers 1..=n without a gap, each record readable, its
/// number the one it is stored under, its `prev` the hash of the record before; and,
/// with `expect_head`, that this hash is the hash of one of the records (nothing after
/// it was cut off the end).
pub fn verify(backend: &dyn Backend, master: &MasterKey, expect_head: Option<&str>) -> Result<Verification> {
    let mut seqs = Kind::Audit.list::<Sequence>(backend)?;
    seqs.sort();
    let mut previous = GENESIS.to_string();
    let mut seen_expected = expect_head.is_none_or(|head| head.eq_ignore_ascii_case(GENESIS));
    let mut broken = None;
    let mut verified = 0;
    for (index, seq) in seqs.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        if seq.0 != expected_seq {
            broken = Some(format!(
                "audit record {expected_seq} is missing (the next one stored is {}): records were removed",
                seq.0
            ));
            break;
        }
        let stored = match read(backend, master, *seq) {
            Ok(stored) => stored,
            Err(error) => {
                broken = Some(format!("audit record {} cannot be read: {error}", seq.0));
                break;
            }
        };
        if stored.record.seq != seq.0 {
            broken = Some(format!(
                "audit record {} holds the record numbered {}: records were swapped or renamed",
                seq.0, stored.record.seq
            ));
            break;
        }
        if stored.record.prev != previous {
            broken = Some(format!(
                "audit record {} does not follow record {}: one of them was changed, replaced or re-encrypted",
                seq.0,
                seq.0 - 1
            ));
            break;
        }
        previous = stored.hash;
        verified = seq.0;
        if expect_head.is_some_and(|head| head.eq_ignore_ascii_case(&previous)) {
            seen_expected = true;
        }
    }
    if broken.is_none() && !seen_expected {
        broken = Some(format!(
            "no record of the trail has the expected head hash {}: records were cut off its end (or the hash belongs to another repository)",
            expect_head.unwrap_or_default()
        ));
    }
    Ok(Verification { records: seqs.len() as u64, verified, head: previous, broken })
}
