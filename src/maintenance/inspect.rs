//! Looking into snapshots without restoring them: `diff` of two manifests (one SQL
//! query over both SQLite files), `find` of a pattern across snapshots, and `stats`
//! of a snapshot or of the whole repository (logical size, stored size after
//! deduplication and compression).

use std::collections::HashSet;

use rusqlite::{params, Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::pipelines::patterns::RestorePatterns;
use crate::repository::manifest::{Entry, EntryKind, Manifest};
use crate::repository::pack::BlobType;
use crate::repository::snapshot::Snapshot;
use crate::repository::Repository;

/// How an entry changed between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Modified,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
        }
    }
}

/// One entry of a diff.
#[derive(Debug, Clone)]
pub struct DiffEntry {
    pub path: Vec<u8>,
    pub change: Change,
    /// The entry's kind in the newer snapshot (the older one's if removed).
    pub kind: EntryKind,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
    /// For `Modified`: what differs (`content`, `kind`, `link`, `mode`, `owner`,
    /// `mtime`, `xattrs`).
    pub what: Vec<&'static str>,
}

/// Opens both manifests in one read-only SQLite connection.
fn attach(old: &Manifest, new: &Manifest) -> Result<Connection> {
    let cache_error = |e: rusqlite::Error| Error::Cache { path: old.path().to_path_buf(), message: e.to_string() };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_in_memory_with_flags(flags).map_err(cache_error)?;
    for (manifest, name) in [(old, "old"), (new, "new")] {
        let uri = format!(
            "file:{}?mode=ro",
            manifest.path().display().to_string().replace('%', "%25").replace('?', "%3f").replace('#', "%23")
        );
        connection.execute(&format!("ATTACH DATABASE ?1 AS {name}"), params![uri]).map_err(cache_error)?;
    }
    Ok(connection)
}

/// What differs between two snapshots' manifests below `under` (`/` for all), sorted by
/// path. Metadata-only changes are reported only with `metadata`; a folder's mtime,
/// which changes with its content, only then too.
pub fn diff(old: &Manifest, new: &Manifest, under: &[u8], metadata: bool) -> Result<Vec<DiffEntry>> {
    let connection = attach(old, new)?;
    let error = |e: rusqlite::Error| Error::Cache { path: new.path().to_path_buf(), message: e.to_string() };
    let base = if under.len() > 1 { under.strip_suffix(b"/").unwrap_or(under) } else { under };
    let (low, high) =
        if base == b"/" { (b"/".to_vec(), b"0".to_vec()) } else { ([base, b"/"].concat(), [base, b"0"].concat()) };
    let within = |table: &str| format!("({table}.path = ?1 OR ({table}.path >= ?2 AND {table}.path < ?3))");
    let xattrs = |schema: &str, table: &str| {
        format!(
            "(SELECT group_concat(hex(name) || '=' || hex(value), ',') FROM (SELECT name, value FROM {schema}.xattrs WHERE entry_id = {table}.id ORDER BY name))"
        )
    };
    let sql = format!(
        "SELECT n.path, NULL, n.kind, NULL, n.size, 0, 0, 0, 0, 0, 0, 0 FROM new.entries n
           WHERE {n_within} AND NOT EXISTS (SELECT 1 FROM old.entries o WHERE o.path = n.path)
         UNION ALL
         SELECT o.path, o.kind, NULL, o.size, NULL, 0, 0, 0, 0, 0, 0, 0 FROM old.entries o
           WHERE {o_within} AND NOT EXISTS (SELECT 1 FROM new.entries n WHERE n.path = o.path)
         UNION ALL
         SELECT n.path, o.kind, n.kind, o.size, n.size,
                o.kind != n.kind,
                o.size != n.size OR o.sha256 IS NOT n.sha256,
                o.link_target IS NOT n.link_target OR o.rdev != n.rdev,
                o.mode != n.mode,
                o.uid != n.uid OR o.gid != n.gid,
                o.mtime_ns != n.mtime_ns,
                {old_x} IS NOT {new_x}
           FROM old.entries o JOIN new.entries n ON n.path = o.path
           WHERE {n_within}
         ORDER BY 1",
        n_within = within("n"),
        o_within = within("o"),
        old_x = xattrs("old", "o"),
        new_x = xattrs("new", "n"),
    );
    let mut statement = connection.prepare(&sql).map_err(error)?;
    let mut rows = statement.query(params![base, low, high]).map_err(error)?;
    let mut found = Vec::new();
    while let Some(row) = rows.next().map_err(error)? {
        let path: Vec<u8> = row.get(0).map_err(error)?;
        let old_kind: Option<String> = row.get(1).map_err(error)?;
        let new_kind: Option<String> = row.get(2).map_err(error)?;
        let kind_name = new_kind.as_deref().or(old_kind.as_deref()).unwrap_or("file");
        let kind = EntryKind::from_name(kind_name).unwrap_or(EntryKind::File);
        let sizes: (Option<i64>, Option<i64>) = (row.get(3).map_err(error)?, row.get(4).map_err(error)?);
        let (old_size, new_size) = (sizes.0.map(|s| s as u64), sizes.1.map(|s| s as u64));
        let change = match (&old_kind, &new_kind) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Modified,
        };
        let mut what = Vec::new();
        if change == Change::Modified {
            let flags = ["kind", "content", "link", "mode", "owner", "mtime", "xattrs"];
            for (index, name) in flags.into_iter().enumerate() {
                let differs: bool = row.get(5 + index).map_err(error)?;
                let shown = match name {
                    "kind" | "content" | "link" => true,
                    "mtime" => metadata && kind != EntryKind::Dir,
                    _ => metadata,
                };
                if differs && shown {
                    what.push(name);
                }
            }
            if what.is_empty() {
                continue;
            }
        }
        found.push(DiffEntry { path, change, kind, old_size, new_size, what });
    }
    Ok(found)
}

/// One entry `find` met.
#[derive(Debug, Clone)]
pub struct Found {
    pub snapshot: SnapshotId,
    pub time: String,
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: Option<[u8; 32]>,
}

/// Calls `each` with every entry of the given snapshots whose path matches any of
/// `patterns` (a pattern without `/` matches a name at any depth; `*` stays within one
/// name), snapshot by snapshot, in path order; returns how many matched.
pub fn find(
    repository: &Repository,
    snapshots: &[(SnapshotId, Snapshot)],
    patterns: &[String],
    each: &mut dyn FnMut(Found),
) -> Result<u64> {
    let matcher = RestorePatterns::new(patterns)?
        .ok_or_else(|| Error::InvalidInput("find needs a pattern, such as '*.dcm' or '/data/study_001/*'".into()))?;
    // Whole paths without wildcards are looked up, not matched against every entry.
    let exact = patterns.iter().all(|p| p.starts_with('/') && !p.contains(['*', '?', '[', ']', '{', '}', '\\']));
    let mut count = 0;
    for (id, snapshot) in snapshots {
        crate::interrupt::check()?;
        let manifest = repository.load_manifest(id, snapshot)?;
        if exact {
            for pattern in patterns {
                let path = if pattern.len() > 1 { pattern.trim_end_matches('/') } else { pattern };
                if let Some((_, entry)) = manifest.entry(path.as_bytes())? {
                    count += 1;
                    let Entry { path, kind, size, mtime_ns, sha256, .. } = entry;
                    each(Found { snapshot: *id, time: snapshot.time.clone(), path, kind, size, mtime_ns, sha256 });
                }
            }
            continue;
        }
        manifest.scan(&mut |(path, kind, size, mtime_ns, sha256)| {
            let relative = path.strip_prefix(b"/").unwrap_or(&path);
            if matcher.matches_itself(&path, relative) {
                count += 1;
                each(Found { snapshot: *id, time: snapshot.time.clone(), path, kind, size, mtime_ns, sha256 });
            }
        })?;
    }
    Ok(count)
}

/// Sizes of a snapshot or of a repository.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub snapshots: u64,
    pub files: u64,
    pub dirs: u64,
    /// Sum of the sizes of the files (each snapshot's, for a repository).
    pub logical_bytes: u64,
    /// Distinct data blobs the snapshots need, their plaintext size, and their stored
    /// (compressed, encrypted) size.
    pub blobs: u64,
    pub unique_bytes: u64,
    pub stored_bytes: u64,
    /// For a repository: every pack's size (including data no snapshot needs).
    pub pack_bytes: Option<u64>,
}

impl Stats {
    /// Logical bytes per unique byte: what deduplication saves.
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.unique_bytes)
    }

    /// Unique bytes per stored byte: what compression saves.
    pub fn compression_ratio(&self) -> f64 {
        ratio(self.unique_bytes, self.stored_bytes)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Sizes of the given snapshots together (one snapshot, or all of a repository): the
/// blobs they share count once.
pub fn stats(repository: &Repository, snapshots: &[(SnapshotId, Snapshot)], whole: bool) -> Result<Stats> {
    let mut stats = Stats { snapshots: snapshots.len() as u64, ..Default::default() };
    let mut blobs: HashSet<BlobId> = HashSet::new();
    for (id, snapshot) in snapshots {
        crate::interrupt::check()?;
        let manifest = repository.load_manifest(id, snapshot)?;
        let (files, dirs, bytes) = manifest.totals()?;
        stats.files += files;
        stats.dirs += dirs;
        stats.logical_bytes += bytes;
        blobs.extend(manifest.blobs()?);
    }
    for blob in &blobs {
        if let Some(location) = repository.lookup(blob, BlobType::Data)? {
            stats.blobs += 1;
            stats.unique_bytes += location.entry.raw_length as u64;
            stats.stored_bytes += location.entry.length as u64;
        }
    }
    if whole {
        stats.pack_bytes = Some(repository.pack_totals()?.1);
    }
    Ok(stats)
}
