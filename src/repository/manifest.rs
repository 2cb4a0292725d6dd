//! Snapshot manifests: one SQLite database per snapshot, one row per file-system entry.
//!
//! Paths are absolute and stored as bytes, so names that are not UTF-8 survive. The
//! `path` column is unique and indexed: a folder is the range `[dir/, dir0)`, so
//! listing or restoring one folder reads only its rows.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use crate::error::{Error, Result};
use crate::id::BlobId;

/// Schema version written to the `meta` table; readers refuse others.
pub const MANIFEST_SCHEMA: i64 = 1;

/// What kind of file-system object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EntryKind {
    #[default]
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl EntryKind {
    /// The name stored in the `kind` column.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::CharDevice => "chardev",
            EntryKind::BlockDevice => "blockdev",
            EntryKind::Socket => "socket",
        }
    }

    /// The kind of a file-system entry of this type.
    pub fn of(file_type: std::fs::FileType) -> Self {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_file() {
            EntryKind::File
        } else if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_fifo() {
            EntryKind::Fifo
        } else if file_type.is_char_device() {
            EntryKind::CharDevice
        } else if file_type.is_block_device() {
            EntryKind::BlockDevice
        } else {
            EntryKind::Socket
        }
    }

    /// The kind of a stored name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::File, Self::Dir, Self::Symlink, Self::Fifo, Self::CharDevice, Self::BlockDevice, Self::Socket]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// One file-system entry as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// Absolute path, as bytes.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub device: u64,
    pub nlink: u64,
    pub size: u64,
    /// Device number, for character and block devices.
    pub rdev: u64,
    /// SHA-256 of a regular file's content.
    pub sha256: Option<[u8; 32]>,
    pub link_target: Option<Vec<u8>>,
    /// Row id of the first entry of this entry's hard-link group (the first entry names
    /// itself), if the file has several links.
    pub hardlink_group: Option<i64>,
}

/// What `Manifest::scan` gives per entry: path, kind, size, mtime and SHA-256.
pub type ScannedEntry = (Vec<u8>, EntryKind, u64, i64, Option<[u8; 32]>);

/// One chunk of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub blob: BlobId,
    /// Offset of the chunk in the file.
    pub offset: u64,
    pub length: u32,
}

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY) STRICT;
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    user TEXT,
    grp TEXT,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    device INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    size INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    sha256 BLOB,
    link_target BLOB,
    hardlink_group INTEGER
) STRICT;
CREATE TABLE xattrs (
    entry_id INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (entry_id, name)
) STRICT, WITHOUT ROWID;
CREATE TABLE chunks (
    entry_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    blob BLOB NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (entry_id, seq)
) STRICT, WITHOUT ROWID;
";

fn sql_error(path: &Path, error: rusqlite::Error) -> Error {
    Error::integrity(format!("manifest {}", path.display()), error.to_string())
}

/// Builds a manifest file, one entry at a time.
pub struct ManifestWriter {
    connection: Connection,
    path: PathBuf,
}

impl ManifestWriter {
    /// Creates a new manifest at `path`, which must not exist.
    pub fn create(path: &Path) -> Result<Self> {
        let error = |e| Error::Cache { path: path.to_path_buf(), message: format!("cannot create manifest: {e}") };
        let connection = Connection::open(path).map_err(error)?;
        connection
            .execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
            .map_err(error)?;
        connection.execute_batch(SCHEMA).map_err(error)?;
        connection
            .execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('writer', ?2)",
                params![MANIFEST_SCHEMA, concat!("coffer ", env!("CARGO_PKG_VERSION"))],
            )
            .map_err(error)?;
        connection.execute_batch("BEGIN").map_err(error)?;
        Ok(Self { connection, path: path.to_path_buf() })
    }

    fn error(&self, error: rusqlite::Error) -> Error {
        Error::Cache { path: self.path.clone(), message: format!("cannot write manifest: {error}") }
    }

    /// Adds an entry with its extended attributes and chunks; returns its row id.
    pub fn add(&mut self, entry: &Entry, xattrs: &[(Vec<u8>, Vec<u8>)], chunks: &[ChunkRef]) -> Result<i64> {
        self.insert(entry, xattrs, chunks).map_err(|e| self.error(e))
    }

    fn insert(&mut self, entry: &Entry, xattrs: &[(Vec<u8>, Vec<u8>)], chunks: &[ChunkRef]) -> rusqlite::Result<i64> {
        let mut insert = self.connection.prepare_cached(
            "INSERT INTO entries (path, kind, mode, uid, gid, user, grp, mtime_ns, ctime_ns, inode, device,
             nlink, size, rdev, sha256, link_target, hardlink_group)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        insert.execute(params![
            entry.path,
            entry.kind.name(),
            entry.mode,
            entry.uid,
            entry.gid,
            entry.user,
            entry.group,
            entry.mtime_ns,
            entry.ctime_ns,
            entry.inode as i64,
            entry.device as i64,
            entry.nlink as i64,
            entry.size as i64,
            entry.rdev as i64,
            entry.sha256.as_ref().map(|hash| &hash[..]),
            entry.link_target,
            entry.hardlink_group,
        ])?;
        let id = self.connection.last_insert_rowid();
        let mut xattr_insert = self
            .connection
            .prepare_cached("INSERT OR REPLACE INTO xattrs (entry_id, name, value) VALUES (?1, ?2, ?3)")?;
        for (name, value) in xattrs {
            xattr_insert.execute(params![id, name, value])?;
        }
        let mut chunk_insert = self
            .connection
            .prepare_cached("INSERT INTO chunks (entry_id, seq, blob, offset, length) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (seq, chunk) in chunks.iter().enumerate() {
            chunk_insert.execute(params![id, seq as i64, chunk.blob.as_bytes(), chunk.offset as i64, chunk.length])?;
        }
        Ok(id)
    }

    /// Puts an entry in a hard-link group, named by the row id of its first member.
    pub fn set_hardlink_group(&mut self, id: i64, group: i64) -> Result<()> {
        self.connection
            .execute("UPDATE entries SET hardlink_group = ?2 WHERE id = ?1", params![id, group])
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// True if an entry with this path was added already.
    pub fn contains(&self, path: &[u8]) -> Result<bool> {
        let found: Option<i64> = self
            .connection
            .query_row("SELECT id FROM entries WHERE path = ?1", [path], |row| row.get(0))
            .optional()
            .map_err(|e| self.error(e))?;
        Ok(found.is_some())
    }

    /// Commits and compacts the file; returns its path.
    pub fn finish(self) -> Result<PathBuf> {
        self.connection.execute_batch("COMMIT; VACUUM;").map_err(|e| self.error(e))?;
        self.connection.close().map_err(|(_, e)| Error::Cache { path: self.path.clone(), message: e.to_string() })?;
        Ok(self.path)
    }
}

/// A manifest opened for queries.
pub struct Manifest {
    connection: Connection,
    path: PathBuf,
}

const ENTRY_COLUMNS: &str = "id, path, kind, mode, uid, gid, user, grp, mtime_ns, ctime_ns, inode, device, nlink, size, rdev, sha256, link_target, hardlink_group";

impl Manifest {
    /// Opens a manifest file read-only and checks its schema version.
    pub fn open(path: &Path) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags).map_err(|e| sql_error(path, e))?;
        // Without a stable query plan, SQLite's STAT4 build re-prepares a cached statement
        // whenever a bound value changes: a third of an unchanged backup's instructions.
        connection
            .set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(|e| sql_error(path, e))?;
        // A manifest never changes once written: keep the shared lock after the first
        // read instead of locking, and checking the file for changes, on every query.
        connection.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(|e| sql_error(path, e))?;
        let manifest = Self { connection, path: path.to_path_buf() };
        manifest.check_schema_objects()?;
        let version: Option<i64> = manifest
            .connection
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |row| row.get(0))
            .optional()
            .map_err(|e| manifest.error(e))?;
        match version {
            Some(MANIFEST_SCHEMA) => Ok(manifest),
            Some(found) => Err(Error::UnsupportedVersion {
                what: format!("manifest {}", path.display()),
                found: found as u64,
                supported: MANIFEST_SCHEMA as u64,
            }),
            None => Err(Error::integrity(format!("manifest {}", path.display()), "it has no schema version")),
        }
    }

    fn error(&self, error: rusqlite::Error) -> Error {
        sql_error(&self.path, error)
    }

    /// Accepts only the tables and indexes coffer creates: a view or trigger in a
    /// manifest could make a query run forever or change what it returns.
    fn check_schema_objects(&self) -> Result<()> {
        let mut statement =
            self.connection.prepare("SELECT type, name FROM sqlite_master").map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
            .map_err(|e| self.error(e))?;
        let mut tables = Vec::new();
        for row in rows {
            let (kind, name) = row.map_err(|e| self.error(e))?;
            match kind.as_str() {
                "table" => tables.push(name),
                "index" => {}
                _ => {
                    return Err(Error::integrity(
                        format!("manifest {}", self.path.display()),
                        format!("it contains a {kind} ({name})"),
                    ))
                }
            }
        }
        for required in ["meta", "entries", "xattrs", "chunks"] {
            if !tables.iter().any(|name| name == required) {
                return Err(Error::integrity(
                    format!("manifest {}", self.path.display()),
                    format!("it has no {required} table"),
                ));
            }
        }
        Ok(())
    }

    /// The file holding this manifest, for direct SQL queries.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry at exactly `path`.
    pub fn entry(&self, path: &[u8]) -> Result<Option<(i64, Entry)>> {
        // Prepared once: the unchanged-file check calls this for every file of a backup.
        let mut statement = self
            .connection
            .prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE path = ?1"))
            .map_err(|e| self.error(e))?;
        let row = statement.query_row([path], read_entry).optional().map_err(|e| self.error(e))?;
        row.map(|(id, entry)| Ok((id, entry?))).transpose()
    }

    /// Every entry at or below `path` (all entries for `/`), in path order.
    pub fn entries_under(&self, path: &[u8]) -> Result<Vec<(i64, Entry)>> {
        let base = path.strip_suffix(b"/").unwrap_or(path);
        let (low, high) = ([base, b"/"].concat(), [base, b"0"].concat());
        let sql =
            format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE path = ?1 OR (path >= ?2 AND path < ?3) ORDER BY path");
        let mut statement = self.connection.prepare(&sql).map_err(|e| self.error(e))?;
        let rows = statement.query_map(params![base, low, high], read_entry).map_err(|e| self.error(e))?;
        let mut entries = Vec::new();
        for row in rows {
            let (id, entry) = row.map_err(|e| self.error(e))?;
            entries.push((id, entry?));
        }
        Ok(entries)
    }

    /// Calls `each` with every entry's path, kind, size, mtime and SHA-256, in path
    /// order (what `find` matches), without holding them all.
    pub fn scan(&self, each: &mut dyn FnMut(ScannedEntry)) -> Result<()> {
        let mut statement = self
            .connection
            .prepare("SELECT path, kind, size, mtime_ns, sha256 FROM entries ORDER BY path")
            .map_err(|e| self.error(e))?;
        let mut rows = statement.query([]).map_err(|e| self.error(e))?;
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            let read = || -> rusqlite::Result<ScannedEntry> {
                let kind: String = row.get(1)?;
                let sha256: Option<Vec<u8>> = row.get(4)?;
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    EntryKind::from_name(&kind).unwrap_or(EntryKind::File),
                    row.get::<_, i64>(2)? as u64,
                    row.get::<_, i64>(3)?,
                    sha256.and_then(|bytes| bytes.try_into().ok()),
                ))
            };
            each(read().map_err(|e| self.error(e))?);
        }
        Ok(())
    }

    /// The number of files and folders, and the files' total size.
    pub fn totals(&self) -> Result<(u64, u64, u64)> {
        self.connection
            .query_row(
                "SELECT count(*) FILTER (WHERE kind = 'file'), count(*) FILTER (WHERE kind = 'dir'),
                        coalesce(sum(size) FILTER (WHERE kind = 'file'), 0) FROM entries",
                [],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)? as u64)),
            )
            .map_err(|e| self.error(e))
    }

    /// The ordered chunks of an entry.
    pub fn chunks(&self, entry_id: i64) -> Result<Vec<ChunkRef>> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT blob, offset, length FROM chunks WHERE entry_id = ?1 ORDER BY seq")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([entry_id], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?, row.get::<_, u32>(2)?)))
            .map_err(|e| self.error(e))?;
        let mut chunks = Vec::new();
        for row in rows {
            let (blob, offset, length) = row.map_err(|e| self.error(e))?;
            let blob = BlobId::from_slice(&blob).ok_or_else(|| {
                Error::integrity(format!("manifest {}", self.path.display()), "a chunk id is malformed")
            })?;
            chunks.push(ChunkRef { blob, offset: offset as u64, length });
        }
        Ok(chunks)
    }

    /// The extended attributes of an entry.
    pub fn xattrs(&self, entry_id: i64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT name, value FROM xattrs WHERE entry_id = ?1 ORDER BY name")
            .map_err(|e| self.error(e))?;
        let rows = statement.query_map([entry_id], |row| Ok((row.get(0)?, row.get(1)?))).map_err(|e| self.error(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.error(e))
    }

    /// Number of entries.
    pub fn len(&self) -> Result<u64> {
        self.connection
            .query_row("SELECT count(*) FROM entries", [], |row| row.get::<_, i64>(0).map(|count| count as u64))
            .map_err(|e| self.error(e))
    }

    /// True if the manifest has no entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Every distinct blob the manifest refers to.
    pub fn blobs(&self) -> Result<Vec<BlobId>> {
        // Deduplicated here rather than with SELECT DISTINCT, for which SQLite builds a
        // temporary b-tree on disk: three times slower on a manifest of 100,000 files.
        let mut statement = self.connection.prepare("SELECT blob FROM chunks").map_err(|e| self.error(e))?;
        let mut rows = statement.query([]).map_err(|e| self.error(e))?;
        let mut blobs = std::collections::HashSet::new();
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            let bytes = row.get_ref(0).map_err(|e| self.error(e))?.as_blob().unwrap_or_default();
            blobs.insert(BlobId::from_slice(bytes).ok_or_else(|| {
                Error::integrity(format!("manifest {}", self.path.display()), "a chunk id is malformed")
            })?);
        }
        Ok(blobs.into_iter().collect())
    }
}

impl Manifest {
    /// Checks every entry's path and kind (one pass over the paths): a manifest that
    /// fails is damaged, and no part of it is restored.
    pub fn validate(&self) -> Result<()> {
        let mut statement = self.connection.prepare("SELECT id, path, kind FROM entries").map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?, row.get::<_, String>(2)?)))
            .map_err(|e| self.error(e))?;
        for row in rows {
            let (id, path, kind) = row.map_err(|e| self.error(e))?;
            let named = |error: Error| match error {
                Error::Integrity { reason, .. } => {
                    Error::integrity(format!("manifest {}", self.path.display()), reason)
                }
                other => other,
            };
            check_path(id, &path).map_err(named)?;
            if EntryKind::from_name(&kind).is_none() {
                return Err(Error::integrity(
                    format!("manifest {}", self.path.display()),
                    format!("entry {id} has unknown kind {kind:?}"),
                ));
            }
        }
        Ok(())
    }

    /// The paths of the entries whose content uses any of `blobs`, in path order: one
    /// pass over the chunk list, for naming what a damaged blob takes with it.
    pub fn paths_using(&self, blobs: &std::collections::HashSet<BlobId>) -> Result<Vec<Vec<u8>>> {
        let mut statement = self
            .connection
            .prepare("SELECT c.blob, e.path FROM chunks c JOIN entries e ON e.id = c.entry_id")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?)))
            .map_err(|e| self.error(e))?;
        let mut paths = std::collections::BTreeSet::new();
        for row in rows {
            let (blob, path) = row.map_err(|e| self.error(e))?;
            if BlobId::from_slice(&blob).is_some_and(|id| blobs.contains(&id)) {
                paths.insert(path);
            }
        }
        Ok(paths.into_iter().collect())
    }
}

type EntryRow = (i64, Result<Entry>);

/// Why a manifest path is unsafe to restore, if it is: a path must be `/` or `/`
/// followed by names separated by single slashes, none empty, `.` or `..`, and none
/// holding a NUL byte. A manifest is written with the password, so a compromised host
/// sharing the repository could write anything; restore must never follow such a
/// path out of its target.
pub fn path_problem(path: &[u8]) -> Option<&'static str> {
    let Some(rest) = path.strip_prefix(b"/") else {
        return Some("it is not absolute");
    };
    if rest.is_empty() {
        return None;
    }
    if path.contains(&0) {
        return Some("it holds a NUL byte");
    }
    for name in rest.split(|&b| b == b'/') {
        match name {
            b"" => return Some("it has an empty component (a doubled, leading or trailing slash)"),
            b"." | b".." => return Some("it has a . or .. component"),
            _ => {}
        }
    }
    None
}

fn check_path(id: i64, path: &[u8]) -> Result<()> {
    match path_problem(path) {
        None => Ok(()),
        Some(problem) => Err(Error::integrity(
            "manifest",
            format!("entry {id} has the unsafe path {:?}: {problem}", String::from_utf8_lossy(path)),
        )),
    }
}

fn read_entry(row: &Row<'_>) -> rusqlite::Result<EntryRow> {
    let id: i64 = row.get(0)?;
    let kind_name: String = row.get(2)?;
    let sha: Option<Vec<u8>> = row.get(15)?;
    let entry = (|| {
        let kind = EntryKind::from_name(&kind_name)
            .ok_or_else(|| Error::integrity("manifest", format!("entry {id} has unknown kind {kind_name:?}")))?;
        let sha256 = match sha {
            None => None,
            Some(bytes) => Some(
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| Error::integrity("manifest", format!("entry {id} has a malformed SHA-256")))?,
            ),
        };
        let path: Vec<u8> = row.get(1)?;
        check_path(id, &path)?;
        Ok(Entry {
            path,
            kind,
            mode: row.get(3)?,
            uid: row.get(4)?,
            gid: row.get(5)?,
            user: row.get(6)?,
            group: row.get(7)?,
            mtime_ns: row.get(8)?,
            ctime_ns: row.get(9)?,
            inode: row.get::<_, i64>(10)? as u64,
            device: row.get::<_, i64>(11)? as u64,
            nlink: row.get::<_, i64>(12)? as u64,
            size: row.get::<_, i64>(13)? as u64,
            rdev: row.get::<_, i64>(14)? as u64,
            sha256,
            link_target: row.get(16)?,
            hardlink_group: row.get(17)?,
        })
    })();
    let entry = entry.map_err(|e: Error| e);
    Ok((id, entry))
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        Error::integrity("manifest", error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(path: &[u8], kind: EntryKind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            user: Some("alice".into()),
            group: None,
            mtime_ns: -5,
            ctime_ns: 1_700_000_000_123_456_789,
            inode: u64::MAX,
            device: 3,
            nlink: 1,
            size: 1 << 40,
            rdev: 0,
            sha256: Some([9; 32]),
            link_target: None,
            hardlink_group: None,
        }
    }

    proptest! {
        #[test]
        fn entries_round_trip(names in proptest::collection::btree_set(proptest::collection::vec(1u8..=255, 1..20), 1..30)) {
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path().join("m.sqlite");
            let mut writer = ManifestWriter::create(&path).unwrap();
            let mut expected = Vec::new();
            for name in &names {
                let mut full = b"/d/n".to_vec();
                full.extend(name.iter().map(|&b| if b == b'/' { b'_' } else { b }));
                if expected.iter().any(|(e, _): &(Entry, Vec<ChunkRef>)| e.path == full) { continue; }
                let entry = sample(&full, EntryKind::File);
                let chunks = vec![ChunkRef { blob: BlobId([name[0]; 32]), offset: 0, length: 7 }];
                writer.add(&entry, &[(b"user.k".to_vec(), name.clone())], &chunks).unwrap();
                expected.push((entry, chunks));
            }
            let manifest = Manifest::open(&writer.finish().unwrap()).unwrap();
            prop_assert_eq!(manifest.len().unwrap() as usize, expected.len());
            for (entry, chunks) in &expected {
                let (id, found) = manifest.entry(&entry.path).unwrap().unwrap();
                prop_assert_eq!(&found, entry);
                prop_assert_eq!(&manifest.chunks(id).unwrap(), chunks);
                prop_assert_eq!(manifest.xattrs(id).unwrap().len(), 1);
            }
        }
    }

    #[test]
    fn folder_queries_take_only_the_folder() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("m.sqlite");
        let mut writer = ManifestWriter::create(&path).unwrap();
        for name in ["/a", "/a/b", "/a/b/c", "/a-b", "/a0", "/ab", "/a/b0"] {
            writer.add(&sample(name.as_bytes(), EntryKind::Dir), &[], &[]).unwrap();
        }
        let manifest = Manifest::open(&writer.finish().unwrap()).unwrap();
        let under: Vec<Vec<u8>> = manifest.entries_under(b"/a/b").unwrap().into_iter().map(|(_, e)| e.path).collect();
        assert_eq!(under, vec![b"/a/b".to_vec(), b"/a/b/c".to_vec()]);
        assert_eq!(manifest.entries_under(b"/a").unwrap().len(), 4);
        assert_eq!(manifest.entries_under(b"/").unwrap().len(), 7);
    }

    #[test]
    fn a_view_posing_as_a_table_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("hostile.sqlite");
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY);
                 INSERT INTO meta VALUES ('schema_version', 1);
                 CREATE TABLE xattrs (entry_id, name, value); CREATE TABLE chunks (entry_id, seq, blob, offset, length);
                 CREATE VIEW entries AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x AS id FROM c;",
            )
            .unwrap();
        drop(connection);
        let error = Manifest::open(&path).err().unwrap();
        assert!(error.to_string().contains("view"), "{error}");
    }

    #[test]
    fn unsafe_paths_are_refused_where_they_are_read() {
        for good in [&b"/"[..], b"/a", b"/a/b c/\xff", b"/..a/.b/c.."] {
            assert_eq!(path_problem(good), None, "{good:?}");
        }
        for bad in [&b""[..], b"a", b"//etc", b"/a/../b", b"/a/./b", b"/a/", b"/a//b", b"/..", b"/a\0b"] {
            assert!(path_problem(bad).is_some(), "{bad:?}");
        }
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("m.sqlite");
        let mut writer = ManifestWriter::create(&path).unwrap();
        writer.add(&sample(b"/fine", EntryKind::File), &[], &[]).unwrap();
        writer.add(&sample(b"/x/../../etc/passwd", EntryKind::File), &[], &[]).unwrap();
        let manifest = Manifest::open(&writer.finish().unwrap()).unwrap();
        assert!(manifest.entry(b"/fine").unwrap().is_some());
        assert!(manifest.entry(b"/x/../../etc/passwd").unwrap_err().is_integrity());
        assert!(manifest.entries_under(b"/").unwrap_err().is_integrity());
        assert!(manifest.validate().unwrap_err().to_string().contains(".. component"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("bad.sqlite");
        std::fs::write(&path, b"SQLite format 3\0 but not really").unwrap();
        assert!(Manifest::open(&path).is_err());
    }
}
