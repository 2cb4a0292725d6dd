//! Snapshot records: the small encrypted objects under `snapshots/` that name a manifest.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};

/// Version of the snapshot record format.
pub const SNAPSHOT_VERSION: u64 = 1;

/// One snapshot, as stored (JSON inside the sealed object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    /// Start of the backup, RFC 3339 in UTC with nanoseconds.
    pub time: String,
    pub host: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The paths given to `backup`, made absolute.
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub parent: Option<SnapshotId>,
    /// False when some files could not be read, or standard input was empty.
    pub complete: bool,
    pub sources: Vec<Source>,
    pub summary: Summary,
    pub program_version: String,
    pub manifest: ManifestRef,
}

/// Where a snapshot's content came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A snapshot holds a handful of sources, read once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Source {
    /// Directory trees.
    Files { paths: Vec<String> },
    /// Standard input, stored as one file.
    Stdin { name: String },
    /// A PostgreSQL database, dumped by pg_dump and stored as one file of the manifest.
    Postgres(PostgresSource),
}

/// What a snapshot records about one dumped database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresSource {
    /// The database's name on its server.
    pub database: String,
    /// Where the dump is in the manifest, e.g. `/postgres/app.dump`.
    pub path: String,
    pub server_version: String,
    pub pg_dump_version: String,
    /// `custom` (pg_dump -Fc, uncompressed).
    pub format: String,
    pub size: u64,
    /// SHA-256 of the dump stream, hex.
    pub sha256: String,
    /// Latest entries of the detected migration tables (or of `--pg-schema-query`).
    pub migrations: Vec<crate::pipelines::pg::MigrationState>,
    /// The query used instead of the detected tables, if any.
    #[serde(default)]
    pub schema_query: Option<String>,
    /// Where `pg_dumpall --globals-only` output is in the manifest, if it was taken.
    #[serde(default)]
    pub globals_path: Option<String>,
    /// Each table's row count and checksum, taken in the snapshot pg_dump dumped
    /// (absent when they could not be taken, and in snapshots of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<crate::pipelines::pg::TableChecksum>>,
}

/// Counts and sizes of one backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    /// Files not in the parent snapshot (all files when there is no parent).
    #[serde(default)]
    pub files_new: u64,
    /// Files in the parent whose metadata changed, so they were read again.
    #[serde(default)]
    pub files_changed: u64,
    /// Files whose metadata matched the parent: not read, their chunks reused.
    #[serde(default)]
    pub files_unchanged: u64,
    pub dirs: u64,
    pub other_entries: u64,
    /// Total size of the regular files.
    pub total_bytes: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// New blobs stored by this backup.
    pub blobs_added: u64,
    /// Bytes of new packs written by this backup (after dedup, compression, encryption).
    pub bytes_added: u64,
    /// Uncompressed size of the new blobs this backup stored (after dedup, before compression).
    #[serde(default)]
    pub bytes_new: u64,
    pub warnings: u64,
    pub duration_seconds: f64,
}

/// The manifest of a snapshot: its metadata blobs in order, and the hash of the whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRef {
    pub blobs: Vec<BlobId>,
    pub size: u64,
    /// BLAKE3 of the manifest file, checked when it is loaded from the local cache.
    pub blake3: String,
}

impl Serialize for BlobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Snapshot {
    /// The JSON stored inside the sealed object.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a snapshot record; `name` is used in errors.
    pub fn decode(plain: &[u8], name: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let version: Version = serde_json::from_slice(plain)
            .map_err(|e| Error::integrity(name, format!("it is not a snapshot record: {e}")))?;
        if version.version != SNAPSHOT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: name.to_string(),
                found: version.version,
                supported: SNAPSHOT_VERSION,
            });
        }
        let snapshot: Snapshot = serde_json::from_slice(plain)
            .map_err(|e| Error::integrity(name, format!("it is not a snapshot record: {e}")))?;
        snapshot.validate().map_err(|reason| Error::integrity(name, reason))?;
        Ok(snapshot)
    }

    /// Checks the fields readers rely on beyond their JSON types. A record is
    /// authenticated, but written by anyone holding the password (a compromised host
    /// sharing the repository, a buggy tool), so its text fields are not trusted.
    fn validate(&self) -> std::result::Result<(), String> {
        if !is_hex_digest(&self.manifest.blake3) {
            return Err("its manifest hash is not 64 hexadecimal digits".into());
        }
        for source in &self.sources {
            let Source::Postgres(postgres) = source else { continue };
            let database = &postgres.database;
            if !is_hex_digest(&postgres.sha256) {
                return Err(format!("the sha256 of its dump of database {database:?} is not 64 hexadecimal digits"));
            }
            let paths = std::iter::once(&postgres.path).chain(postgres.globals_path.as_ref());
            if let Some(path) = paths.into_iter().find(|path| !path.starts_with('/')) {
                return Err(format!("its dump of database {database:?} names a path that is not absolute: {path:?}"));
            }
        }
        Ok(())
    }

    /// The snapshot's time as a timestamp, if it parses.
    pub fn timestamp(&self) -> Option<jiff::Timestamp> {
        self.time.parse().ok()
    }
}

/// Why `latest` names nothing: no snapshots, none through the filters, or none as
/// early as `--at` (then the oldest that would match is named).
fn no_latest(snapshots: &[(SnapshotId, Snapshot)], filter: &SnapshotFilter) -> Error {
    if snapshots.is_empty() {
        return Error::NotFound { what: "snapshot \"latest\" (the repository has no snapshots)".into() };
    }
    let Some(at) = filter.at else {
        return Error::NotFound { what: format!("snapshot \"latest\" with {}", filter.describe()) };
    };
    let unfiltered = SnapshotFilter { at: None, ..filter.clone() };
    let oldest = snapshots.iter().filter(|(_, s)| unfiltered.candidate(s)).filter_map(|(_, s)| s.timestamp()).min();
    let shown = at.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string();
    Error::NotFound {
        what: match oldest {
            Some(oldest) => format!(
                "a snapshot at or before {shown} (the oldest{} is from {})",
                if unfiltered.is_empty() { String::new() } else { format!(" with {}", unfiltered.describe()) },
                oldest.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %Z")
            ),
            None => format!("a snapshot with {}", filter.describe()),
        },
    }
}

/// A SHA-256 or BLAKE3 digest as hex: exactly 64 ASCII hexadecimal digits.
fn is_hex_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The record a snapshot spec names: an index into the readable snapshots, or into
/// the ids of the damaged records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Readable(usize),
    Damaged(usize),
}

/// Which snapshots `latest` names (and `snapshots` lists): filters by host, tag and
/// path, and, with `at`, the newest not later than that instant. Safety snapshots are
/// left out unless the tags ask for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// The snapshot's host is one of these.
    pub hosts: Vec<String>,
    /// The snapshot carries one of these tags.
    pub tags: Vec<String>,
    /// The snapshot's paths include every one of these.
    pub paths: Vec<String>,
    /// `latest` means the newest snapshot taken at or before this instant.
    pub at: Option<jiff::Timestamp>,
}

impl SnapshotFilter {
    /// True if the host, tag and path filters let `snapshot` through (`at` aside).
    pub fn matches(&self, snapshot: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&snapshot.host))
            && (self.tags.is_empty() || self.tags.iter().any(|tag| snapshot.tags.contains(tag)))
            && self.paths.iter().all(|path| snapshot.paths.iter().any(|theirs| theirs == path.trim_end_matches('/')))
    }

    /// True if `latest` may name `snapshot`.
    fn candidate(&self, snapshot: &Snapshot) -> bool {
        let safety_asked = self.tags.iter().any(|tag| tag == "safety");
        self.matches(snapshot)
            && (safety_asked || !snapshot.is_safety())
            && self.at.is_none_or(|at| snapshot.timestamp().is_some_and(|time| time <= at))
    }

    pub fn is_empty(&self) -> bool {
        *self == SnapshotFilter::default()
    }

    /// "host db1, tag nightly, at or before 2026-11-20T01:00:00Z", for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.hosts.is_empty() {
            parts.push(format!("host {}", self.hosts.join(" or ")));
        }
        if !self.tags.is_empty() {
            parts.push(format!("tag {}", self.tags.join(" or ")));
        }
        if !self.paths.is_empty() {
            parts.push(format!("path {}", self.paths.join(" and ")));
        }
        if let Some(at) = self.at {
            parts.push(format!("at or before {at}"));
        }
        parts.join(", ")
    }
}

/// Parses the instant of `--at`: RFC 3339 (`2026-11-20T02:00:00+01:00`), or a local
/// date and time (`2026-11-20 02:00`, seconds optional), or a local date alone, which
/// means the end of that day.
pub fn parse_instant(text: &str) -> Result<jiff::Timestamp> {
    let text = text.trim();
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return Ok(timestamp);
    }
    let zone = jiff::tz::TimeZone::system();
    let local = match text.parse::<jiff::civil::DateTime>() {
        Ok(datetime) if text.len() > 10 => Some(datetime),
        _ => text.parse::<jiff::civil::Date>().ok().map(|date| date.at(23, 59, 59, 999_999_999)),
    };
    local
        .and_then(|datetime| datetime.to_zoned(zone).ok())
        .map(|zoned| zoned.timestamp())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "--at {text:?} is not a time: use \"2026-11-20 02:00\" (local time), 2026-11-20 (the end of that day) or RFC 3339"
            ))
        })
}

impl Snapshot {
    /// True for a restore's safety snapshot (tagged `safety`).
    pub fn is_safety(&self) -> bool {
        self.tags.iter().any(|tag| tag == "safety")
    }
}

/// Picks the snapshot named by `spec`: `latest`, a full id, or a unique id prefix.
/// A damaged record is never passed over for a readable one: while any is damaged,
/// `latest` cannot be known (the damaged one may be the newest), and a prefix matches
/// damaged records too.
/// `latest` means the newest snapshot that `filter` lets through.
pub fn resolve_filtered(
    spec: &str,
    snapshots: &[(SnapshotId, Snapshot)],
    damaged: &[SnapshotId],
    filter: &SnapshotFilter,
) -> Result<Resolved> {
    if spec == "latest" {
        // Safety snapshots hold what a restore replaced: never what "latest" means.
        let newest = (0..snapshots.len()).filter(|&n| filter.candidate(&snapshots[n].1)).max_by(|&a, &b| {
            let (a, b) = (&snapshots[a].1, &snapshots[b].1);
            a.timestamp().cmp(&b.timestamp()).then(a.time.cmp(&b.time))
        });
        if let Some(first) = damaged.first() {
            return Err(Error::LatestUnknown {
                damaged: damaged.len(),
                first: crate::repository::objects::Kind::Snapshot.key(&first),
                newest_readable: newest.map(|n| format!("{} ({})", snapshots[n].0.short(), snapshots[n].1.time)),
            });
        }
        return newest.map(Resolved::Readable).ok_or_else(|| no_latest(snapshots, filter));
    }
    let spec_lower = spec.to_ascii_lowercase();
    if spec_lower.is_empty() || !spec_lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!("{spec:?} is not a snapshot id, id prefix or \"latest\"")));
    }
    let named = |id: &SnapshotId| id.to_hex().starts_with(&spec_lower);
    let readable = snapshots.iter().enumerate().filter(|(_, (id, _))| named(id)).map(|(n, _)| Resolved::Readable(n));
    let unreadable = damaged.iter().enumerate().filter(|(_, id)| named(id)).map(|(n, _)| Resolved::Damaged(n));
    let mut matches = readable.chain(unreadable);
    let first = matches.next().ok_or_else(|| Error::NotFound { what: format!("snapshot {spec}") })?;
    if matches.next().is_some() {
        return Err(Error::InvalidInput(format!("snapshot prefix {spec} is ambiguous; give more digits")));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(spec: &str, snapshots: &[(SnapshotId, Snapshot)], damaged: &[SnapshotId]) -> Result<Resolved> {
        resolve_filtered(spec, snapshots, damaged, &SnapshotFilter::default())
    }

    #[test]
    fn at_and_filters_choose_latest() {
        let mut safety = sample("2026-11-21T05:00:00Z");
        safety.tags = vec!["safety".into()];
        let mut other_host = sample("2026-11-20T12:00:00Z");
        other_host.host = "other".into();
        let list = vec![
            (SnapshotId([1; 32]), sample("2026-11-19T02:00:00Z")),
            (SnapshotId([2; 32]), sample("2026-11-20T02:00:00Z")),
            (SnapshotId([3; 32]), other_host),
            (SnapshotId([4; 32]), safety),
        ];
        let at = |text: &str| SnapshotFilter { at: Some(text.parse().unwrap()), ..Default::default() };
        let pick = |filter: &SnapshotFilter| resolve_filtered("latest", &list, &[], filter);
        assert_eq!(pick(&SnapshotFilter::default()).unwrap(), Resolved::Readable(2), "safety snapshots are not latest");
        assert_eq!(pick(&at("2026-11-20T02:00:00Z")).unwrap(), Resolved::Readable(1), "at the instant itself");
        assert_eq!(pick(&at("2026-11-20T01:59:59Z")).unwrap(), Resolved::Readable(0));
        let host = SnapshotFilter { hosts: vec!["h".into()], ..Default::default() };
        assert_eq!(pick(&host).unwrap(), Resolved::Readable(1));
        let tagged = SnapshotFilter { tags: vec!["safety".into()], ..Default::default() };
        assert_eq!(pick(&tagged).unwrap(), Resolved::Readable(3), "asked for by tag");
        let early = pick(&at("2026-11-01T00:00:00Z")).unwrap_err().to_string();
        assert!(early.contains("at or before") && early.contains("the oldest is from 2026-11-"), "{early}");
        assert!(matches!(resolve_filtered("0101", &list, &[], &at("2026-11-20T00:00:00Z")), Ok(Resolved::Readable(0))));
    }

    #[test]
    fn at_parses_local_times_dates_and_rfc3339() {
        assert_eq!(parse_instant("2026-11-20T02:00:00Z").unwrap().to_string(), "2026-11-20T02:00:00Z");
        assert!(parse_instant("2026-11-20 02:00").is_ok());
        assert!(parse_instant("2026-11-20T02:00:30").is_ok());
        let day = parse_instant("2026-11-20").unwrap();
        assert!(day > parse_instant("2026-11-20 23:59").unwrap(), "a date alone is the end of that day");
        assert!(matches!(parse_instant("yesterday"), Err(Error::InvalidInput(_))));
    }

    fn sample(time: &str) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            time: time.into(),
            host: "h".into(),
            user: "u".into(),
            uid: 0,
            gid: 0,
            paths: vec!["/d".into()],
            tags: vec![],
            parent: None,
            complete: true,
            sources: vec![Source::Files { paths: vec!["/d".into()] }],
            summary: Summary::default(),
            program_version: "t".into(),
            manifest: ManifestRef { blobs: vec![BlobId([1; 32])], size: 1, blake3: "0f".repeat(32) },
        }
    }

    #[test]
    fn round_trip_and_resolution() {
        let one = sample("2026-01-01T00:00:00Z");
        assert_eq!(Snapshot::decode(&one.encode(), "s").unwrap(), one);
        let list = vec![(SnapshotId([0xab; 32]), one), (SnapshotId([0xac; 32]), sample("2026-02-01T00:00:00Z"))];
        assert_eq!(resolve("latest", &list, &[]).unwrap(), Resolved::Readable(1));
        assert_eq!(resolve("abab", &list, &[]).unwrap(), Resolved::Readable(0));
        assert!(matches!(resolve("a", &list, &[]), Err(Error::InvalidInput(_))));
        assert!(matches!(resolve("ff", &list, &[]), Err(Error::NotFound { .. })));
        assert!(matches!(resolve("zz", &list, &[]), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn a_damaged_record_is_never_passed_over() {
        let list = vec![(SnapshotId([0xab; 32]), sample("2026-01-01T00:00:00Z"))];
        let damaged = [SnapshotId([0xa0; 32])];
        let Err(Error::LatestUnknown { damaged: 1, first, newest_readable: Some(newest) }) =
            resolve("latest", &list, &damaged)
        else {
            panic!("latest was resolved with a damaged record");
        };
        assert_eq!(first, format!("snapshots/{}", SnapshotId([0xa0; 32])));
        assert!(newest.starts_with("abababab (2026-01-01"), "{newest}");
        assert_eq!(resolve("a0", &list, &damaged).unwrap(), Resolved::Damaged(0));
        assert!(matches!(resolve("a", &list, &damaged), Err(Error::InvalidInput(_))));
        assert_eq!(resolve("ab", &list, &damaged).unwrap(), Resolved::Readable(0));
    }

    #[test]
    fn text_fields_readers_rely_on_are_validated() {
        let postgres = |sha256: &str, path: &str| PostgresSource {
            database: "clinic".into(),
            path: path.into(),
            server_version: "16".into(),
            pg_dump_version: "16".into(),
            format: "custom".into(),
            size: 1,
            sha256: sha256.into(),
            migrations: vec![],
            schema_query: None,
            globals_path: None,
            tables: None,
        };
        let with = |source: PostgresSource| {
            let mut record = sample("2026-01-01T00:00:00Z");
            record.sources.push(Source::Postgres(source));
            record.encode()
        };
        let good = with(postgres(&"ab".repeat(32), "/postgres/clinic.dump"));
        assert!(Snapshot::decode(&good, "s").is_ok());
        for (sha256, path) in [
            ("é".repeat(32).as_str(), "/postgres/clinic.dump"),
            ("ab", "/postgres/clinic.dump"),
            (&"zz".repeat(32), "/postgres/clinic.dump"),
            (&"ab".repeat(32), "postgres/clinic.dump"),
        ] {
            let error = Snapshot::decode(&with(postgres(sha256, path)), "s").unwrap_err();
            assert!(matches!(error, Error::Integrity { .. }), "{error}");
        }
        let mut record = sample("2026-01-01T00:00:00Z");
        record.manifest.blake3 = "é".repeat(32);
        assert!(matches!(Snapshot::decode(&record.encode(), "s"), Err(Error::Integrity { .. })));
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut record = serde_json::to_value(sample("2026-01-01T00:00:00Z")).unwrap();
        record["version"] = 9.into();
        let bytes = serde_json::to_vec(&record).unwrap();
        assert!(matches!(Snapshot::decode(&bytes, "s"), Err(Error::UnsupportedVersion { found: 9, .. })));
        assert!(Snapshot::decode(b"{", "s").is_err());
    }
}
