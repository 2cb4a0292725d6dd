//! The blob index: index objects (blob -> pack location) and their local SQLite cache.
//!
//! Index objects are the repository's record of which pack holds each blob. The cache
//! is rebuilt from them at will, so memory use does not grow with the repository.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, PackId};
use crate::repository::pack::{BlobType, PackEntry};

mod scratch;
pub use scratch::ScratchIndex;

/// Most blobs one index object written by prune or repair lists; more are split over
/// several objects, so no single object has to be held whole in memory.
pub const MAX_OBJECT_BLOBS: usize = 100_000;

/// Version byte at the start of an index object's plaintext.
pub const INDEX_VERSION: u8 = 1;
const BLOB_RECORD: usize = 32 + 1 + 4 + 4 + 4;

/// One pack as listed in an index object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    pub id: PackId,
    pub size: u64,
    pub blobs: Vec<PackEntry>,
}

/// The plaintext content of `index/<id>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index objects this one replaces (written by prune); they may be deleted.
    pub supersedes: Vec<IndexId>,
    pub packs: Vec<IndexedPack>,
}

impl IndexFile {
    /// The binary encoding described in FORMAT.md.
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut out = Vec::with_capacity(9 + self.supersedes.len() * 32 + self.packs.len() * 44 + blobs * BLOB_RECORD);
        out.push(INDEX_VERSION);
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            out.extend_from_slice(id.as_bytes());
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for pack in &self.packs {
            out.extend_from_slice(pack.id.as_bytes());
            out.extend_from_slice(&pack.size.to_le_bytes());
            out.extend_from_slice(&(pack.blobs.len() as u32).to_le_bytes());
            for blob in &pack.blobs {
                out.extend_from_slice(blob.id.as_bytes());
                out.push(blob.blob_type.code());
                out.extend_from_slice(&blob.offset.to_le_bytes());
                out.extend_from_slice(&blob.length.to_le_bytes());
                out.extend_from_slice(&blob.raw_length.to_le_bytes());
            }
        }
        out
    }

    /// Decodes an index object's plaintext; `name` is used in errors.
    pub fn decode(plain: &[u8], name: &str) -> Result<Self> {
        let mut reader = Reader { data: plain, name };
        let version = reader.u8()?;
        if version != INDEX_VERSION {
            return Err(Error::UnsupportedVersion {
                what: name.to_string(),
                found: version as u64,
                supported: INDEX_VERSION as u64,
            });
        }
        let count = reader.count(32)?;
        let supersedes = (0..count).map(|_| Ok(IndexId(reader.id()?))).collect::<Result<_>>()?;
        let pack_count = reader.count(44)?;
        let mut packs = Vec::with_capacity(pack_count);
        for _ in 0..pack_count {
            let id = PackId(reader.id()?);
            let size = reader.u64()?;
            let blob_count = reader.count(BLOB_RECORD)?;
            let blobs = (0..blob_count).map(|_| reader.blob()).collect::<Result<_>>()?;
            packs.push(IndexedPack { id, size, blobs });
        }
        if !reader.data.is_empty() {
            return Err(Error::integrity(name, "it has trailing bytes"));
        }
        Ok(Self { supersedes, packs })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    name: &'a str,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8]> {
        if self.data.len() < count {
            return Err(Error::integrity(self.name, "it ends early"));
        }
        let (head, tail) = self.data.split_at(count);
        self.data = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(bytes))
    }
    fn id(&mut self) -> Result<[u8; 32]> {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.take(32)?);
        Ok(bytes)
    }
    /// A count of records of at least `record` bytes each, checked against what is left.
    fn count(&mut self, record: usize) -> Result<usize> {
        let count = self.u32()? as usize;
        if count.saturating_mul(record) > self.data.len() {
            return Err(Error::integrity(self.name, "a count exceeds its length"));
        }
        Ok(count)
    }
    fn blob(&mut self) -> Result<PackEntry> {
        let id = BlobId(self.id()?);
        let blob_type = BlobType::from_code(self.u8()?)
            .ok_or_else(|| Error::integrity(self.name, "it names an unknown blob type"))?;
        Ok(PackEntry { id, blob_type, offset: self.u32()?, length: self.u32()?, raw_length: self.u32()? })
    }
}

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub entry: PackEntry,
}

/// Schema version of the local index cache; a different one is rebuilt.
const CACHE_SCHEMA: i64 = 1;

/// The local SQLite cache of all index objects of one repository.
pub struct IndexCache {
    connection: Connection,
    path: PathBuf,
    /// Lookups made in the read transaction held open between writes (0: none open).
    reads: std::cell::Cell<u32>,
}

/// Lookups served by one read transaction before it is ended, so other processes'
/// additions become visible and the WAL can be checkpointed.
const READS_PER_TRANSACTION: u32 = 4096;

impl IndexCache {
    /// Opens (creating if needed) the cache at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let connection = Connection::open(path).map_err(|e| cache_error(path, e))?;
        let cache = Self { connection, path: path.to_path_buf(), reads: 0.into() };
        cache.prepare().map_err(|e| cache_error(path, e))?;
        Ok(cache)
    }

    /// A cache in memory, for tests and one-off runs.
    pub fn in_memory() -> Result<Self> {
        let path = PathBuf::from(":memory:");
        let connection = Connection::open_in_memory().map_err(|e| cache_error(&path, e))?;
        let cache = Self { connection, path, reads: 0.into() };
        cache.prepare().map_err(|e| cache_error(&cache.path, e))?;
        Ok(cache)
    }

    fn prepare(&self) -> rusqlite::Result<()> {
        self.connection.busy_timeout(std::time::Duration::from_secs(60))?;
        // A stable plan: no re-prepare of the per-blob lookup on every new binding.
        self.connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        self.connection.pragma_update(None, "journal_mode", "WAL")?;
        self.connection.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = self.connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version != CACHE_SCHEMA {
            self.connection.execute_batch(
                "DROP TABLE IF EXISTS index_files; DROP TABLE IF EXISTS packs; DROP TABLE IF EXISTS blobs;",
            )?;
        }
        self.connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS index_files (id BLOB PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS packs (id BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS blobs (
                 id BLOB NOT NULL, type INTEGER NOT NULL, pack BLOB NOT NULL,
                 offset INTEGER NOT NULL, length INTEGER NOT NULL, raw_length INTEGER NOT NULL,
                 PRIMARY KEY (id, type)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS superseded (id BLOB PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS verified (pack BLOB PRIMARY KEY, time INTEGER NOT NULL) WITHOUT ROWID;",
        )?;
        self.connection.pragma_update(None, "user_version", CACHE_SCHEMA)
    }

    fn error(&self, error: rusqlite::Error) -> Error {
        cache_error(&self.path, error)
    }

    /// Lookups share one read transaction: as separate statements each took and released
    /// the WAL's read lock, about ten fcntl calls per file in a backup or restore.
    fn begin_read(&self) -> Result<()> {
        if self.reads.get() >= READS_PER_TRANSACTION {
            self.end_read()?;
        }
        if self.reads.get() == 0 {
            self.connection.execute_batch("BEGIN").map_err(|e| self.error(e))?;
        }
        self.reads.set(self.reads.get() + 1);
        Ok(())
    }

    /// Ends the read transaction, if one is open; every write starts with this.
    fn end_read(&self) -> Result<()> {
        if self.reads.replace(0) > 0 {
            self.connection.execute_batch("COMMIT").map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Ids of the index objects loaded into the cache.
    pub fn index_files(&self) -> Result<HashSet<IndexId>> {
        let mut statement = self.connection.prepare("SELECT id FROM index_files").map_err(|e| self.error(e))?;
        let rows = statement.query_map([], |row| row.get::<_, Vec<u8>>(0)).map_err(|e| self.error(e))?;
        let mut ids = HashSet::new();
        for row in rows {
            let bytes = row.map_err(|e| self.error(e))?;
            ids.insert(
                IndexId::from_slice(&bytes)
                    .ok_or_else(|| Error::Cache { path: self.path.clone(), message: "malformed index id".into() })?,
            );
        }
        Ok(ids)
    }

    /// Index objects named in the `supersedes` list of an object loaded so far. They
    /// stay listed across `clear`: once superseded, an object is never read again.
    pub fn superseded(&self) -> Result<HashSet<IndexId>> {
        let mut statement = self.connection.prepare("SELECT id FROM superseded").map_err(|e| self.error(e))?;
        let rows = statement.query_map([], |row| row.get::<_, Vec<u8>>(0)).map_err(|e| self.error(e))?;
        let mut ids = HashSet::new();
        for row in rows {
            let bytes = row.map_err(|e| self.error(e))?;
            ids.extend(IndexId::from_slice(&bytes));
        }
        Ok(ids)
    }

    /// When each pack was last read in full and found intact (seconds since the epoch).
    /// Kept across `clear`: a pack id names its bytes.
    pub fn verification_times(&self) -> Result<std::collections::HashMap<PackId, i64>> {
        let mut statement = self.connection.prepare("SELECT pack, time FROM verified").map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?)))
            .map_err(|e| self.error(e))?;
        let mut times = std::collections::HashMap::new();
        for row in rows {
            let (pack, time) = row.map_err(|e| self.error(e))?;
            times.extend(PackId::from_slice(&pack).map(|pack| (pack, time)));
        }
        Ok(times)
    }

    /// Records that these packs were verified at `time`.
    pub fn mark_verified(&mut self, packs: &[PackId], time: i64) -> Result<()> {
        self.end_read()?;
        let path = self.path.clone();
        let transaction = self.connection.transaction().map_err(|e| cache_error(&path, e))?;
        for pack in packs {
            transaction
                .execute("INSERT OR REPLACE INTO verified (pack, time) VALUES (?1, ?2)", params![pack.as_bytes(), time])
                .map_err(|e| cache_error(&path, e))?;
        }
        transaction.commit().map_err(|e| cache_error(&path, e))
    }

    /// Forgets everything, before a rebuild.
    pub fn clear(&self) -> Result<()> {
        self.end_read()?;
        self.connection
            .execute_batch("DELETE FROM index_files; DELETE FROM packs; DELETE FROM blobs;")
            .map_err(|e| self.error(e))
    }

    /// Adds the content of one index object.
    pub fn add(&mut self, id: Option<IndexId>, file: &IndexFile) -> Result<()> {
        self.end_read()?;
        let path = self.path.clone();
        let transaction = self.connection.transaction().map_err(|e| cache_error(&path, e))?;
        insert_index(&transaction, id, file).map_err(|e| cache_error(&path, e))?;
        transaction.commit().map_err(|e| cache_error(&path, e))
    }

    /// The location of a blob, if any pack holds it.
    pub fn lookup(&self, id: &BlobId, blob_type: BlobType) -> Result<Option<BlobLocation>> {
        self.begin_read()?;
        let mut statement = self
            .connection
            .prepare_cached("SELECT pack, offset, length, raw_length FROM blobs WHERE id = ?1 AND type = ?2")
            .map_err(|e| self.error(e))?;
        let row = statement
            .query_row(params![id.as_bytes(), blob_type.code()], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, u32>(1)?, row.get::<_, u32>(2)?, row.get::<_, u32>(3)?))
            })
            .optional()
            .map_err(|e| self.error(e))?;
        let Some((pack, offset, length, raw_length)) = row else {
            return Ok(None);
        };
        let pack = PackId::from_slice(&pack)
            .ok_or_else(|| Error::Cache { path: self.path.clone(), message: "malformed pack id".into() })?;
        Ok(Some(BlobLocation { pack, entry: PackEntry { id: *id, blob_type, offset, length, raw_length } }))
    }

    /// Size of an indexed pack.
    pub fn pack_size(&self, pack: &PackId) -> Result<Option<u64>> {
        self.connection
            .query_row("SELECT size FROM packs WHERE id = ?1", [pack.as_bytes()], |row| {
                row.get::<_, i64>(0).map(|size| size as u64)
            })
            .optional()
            .map_err(|e| self.error(e))
    }

    /// Number of indexed packs and their total size.
    pub fn pack_totals(&self) -> Result<(u64, u64)> {
        self.connection
            .query_row("SELECT count(*), coalesce(sum(size), 0) FROM packs", [], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.error(e))
    }

    /// Number of indexed blobs.
    pub fn blob_count(&self) -> Result<u64> {
        self.connection
            .query_row("SELECT count(*) FROM blobs", [], |row| row.get::<_, i64>(0).map(|count| count as u64))
            .map_err(|e| self.error(e))
    }
}

fn insert_index(
    transaction: &rusqlite::Transaction<'_>,
    id: Option<IndexId>,
    file: &IndexFile,
) -> rusqlite::Result<()> {
    if let Some(id) = id {
        transaction.execute("INSERT OR IGNORE INTO index_files (id) VALUES (?1)", [id.as_bytes()])?;
    }
    for superseded in &file.supersedes {
        transaction.execute("INSERT OR IGNORE INTO superseded (id) VALUES (?1)", [superseded.as_bytes()])?;
    }
    let mut pack_insert = transaction.prepare_cached("INSERT OR IGNORE INTO packs (id, size) VALUES (?1, ?2)")?;
    let mut blob_insert = transaction.prepare_cached(
        "INSERT OR IGNORE INTO blobs (id, type, pack, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for pack in &file.packs {
        pack_insert.execute(params![pack.id.as_bytes(), pack.size as i64])?;
        for blob in &pack.blobs {
            blob_insert.execute(params![
                blob.id.as_bytes(),
                blob.blob_type.code(),
                pack.id.as_bytes(),
                blob.offset,
                blob.length,
                blob.raw_length
            ])?;
        }
    }
    Ok(())
}

fn cache_error(path: &Path, error: rusqlite::Error) -> Error {
    Error::Cache { path: path.to_path_buf(), message: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry_strategy() -> impl Strategy<Value = PackEntry> {
        (any::<[u8; 32]>(), any::<bool>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(id, meta, offset, length, raw_length)| PackEntry {
                id: BlobId(id),
                blob_type: if meta { BlobType::Metadata } else { BlobType::Data },
                offset,
                length,
                raw_length,
            },
        )
    }

    fn index_strategy() -> impl Strategy<Value = IndexFile> {
        let pack = (any::<[u8; 32]>(), any::<u64>(), proptest::collection::vec(entry_strategy(), 0..10))
            .prop_map(|(id, size, blobs)| IndexedPack { id: PackId(id), size, blobs });
        (proptest::collection::vec(any::<[u8; 32]>(), 0..3), proptest::collection::vec(pack, 0..5)).prop_map(
            |(supersedes, packs)| IndexFile { supersedes: supersedes.into_iter().map(IndexId).collect(), packs },
        )
    }

    proptest! {
        #[test]
        fn index_round_trip(index in index_strategy()) {
            let decoded = IndexFile::decode(&index.encode(), "index").unwrap();
            prop_assert_eq!(decoded, index);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = IndexFile::decode(&bytes, "index");
        }

        #[test]
        fn cache_finds_every_blob(index in index_strategy()) {
            let mut cache = IndexCache::in_memory().unwrap();
            cache.add(Some(IndexId([1; 32])), &index).unwrap();
            for pack in &index.packs {
                for blob in &pack.blobs {
                    let found = cache.lookup(&blob.id, blob.blob_type).unwrap();
                    prop_assert!(found.is_some());
                }
            }
        }
    }

    #[test]
    fn cache_survives_reopen_and_clear() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("index.sqlite");
        let blob = PackEntry { id: BlobId([5; 32]), blob_type: BlobType::Data, offset: 0, length: 10, raw_length: 3 };
        let file = IndexFile {
            supersedes: vec![],
            packs: vec![IndexedPack { id: PackId([6; 32]), size: 50, blobs: vec![blob] }],
        };
        IndexCache::open(&path).unwrap().add(Some(IndexId([7; 32])), &file).unwrap();
        let cache = IndexCache::open(&path).unwrap();
        assert_eq!(cache.index_files().unwrap().len(), 1);
        assert_eq!(cache.lookup(&blob.id, BlobType::Data).unwrap().unwrap().pack, PackId([6; 32]));
        assert!(cache.lookup(&blob.id, BlobType::Metadata).unwrap().is_none());
        assert_eq!(cache.pack_size(&PackId([6; 32])).unwrap(), Some(50));
        cache.clear().unwrap();
        assert_eq!(cache.blob_count().unwrap(), 0);
    }

    #[test]
    fn superseded_objects_are_remembered_across_clear() {
        let mut cache = IndexCache::in_memory().unwrap();
        let newer = IndexFile { supersedes: vec![IndexId([1; 32]), IndexId([2; 32])], packs: vec![] };
        cache.add(Some(IndexId([3; 32])), &newer).unwrap();
        cache.clear().unwrap();
        let expected: HashSet<IndexId> = [IndexId([1; 32]), IndexId([2; 32])].into();
        assert_eq!(cache.superseded().unwrap(), expected);
    }
}
