//! A disposable on-disk copy of the repository's index, for the passes that look at
//! every blob at once (`check`, `prune`): the index entries of every index object in
//! force, the blobs a check found lost, and the blobs the snapshots use.
//!
//! It lives in a temporary SQLite file in the cache directory and is deleted when
//! dropped. SQLite's page cache is capped, so memory stays flat however many millions
//! of blobs the repository holds; the work spills to the file instead. Manifests are
//! attached to it, so "which chunks of this snapshot are lost" and "which blobs do the
//! snapshots use" are joins, not sets built in memory.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, PackId};
use crate::repository::index::{IndexFile, IndexedPack};
use crate::repository::pack::{BlobType, PackEntry};

/// SQLite page cache of a scratch index, in KiB.
const CACHE_KIB: i64 = 32 * 1024;

const SCHEMA: &str = "
CREATE TABLE packs (id BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE pack_refs (pack BLOB NOT NULL, object BLOB NOT NULL, PRIMARY KEY (pack, object)) WITHOUT ROWID;
CREATE TABLE superseded (object BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE blobs (
    pack BLOB NOT NULL, id BLOB NOT NULL, type INTEGER NOT NULL,
    offset INTEGER NOT NULL, length INTEGER NOT NULL, raw_length INTEGER NOT NULL,
    PRIMARY KEY (pack, id, type)) WITHOUT ROWID;
CREATE TABLE lost (id BLOB NOT NULL, type INTEGER NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (id, type)) WITHOUT ROWID;
CREATE TABLE used (id BLOB NOT NULL, type INTEGER NOT NULL, pack BLOB, PRIMARY KEY (id, type)) WITHOUT ROWID;
";

/// See the module documentation.
pub struct ScratchIndex {
    connection: Connection,
    // Declared after the connection, so the file is removed after SQLite closes it.
    file: tempfile::NamedTempFile,
}

impl std::fmt::Debug for ScratchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchIndex").field("path", &self.file.path()).finish()
    }
}

impl ScratchIndex {
    /// Creates an empty scratch index in a new temporary file in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        let file = tempfile::Builder::new()
            .prefix("scratch-")
            .suffix(".sqlite")
            .tempfile_in(dir)
            .map_err(|e| Error::io("cannot create a scratch file in", dir, e))?;
        let error = |e: rusqlite::Error| Error::Cache { path: file.path().to_path_buf(), message: e.to_string() };
        let connection = Connection::open(file.path()).map_err(error)?;
        connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(error)?;
        connection.pragma_update(None, "journal_mode", "OFF").map_err(error)?;
        connection.pragma_update(None, "synchronous", "OFF").map_err(error)?;
        connection.pragma_update(None, "temp_store", "FILE").map_err(error)?;
        connection.pragma_update(None, "cache_size", -CACHE_KIB).map_err(error)?;
        connection.execute_batch(SCHEMA).map_err(error)?;
        Ok(Self { connection, file })
    }

    fn error(&self, error: rusqlite::Error) -> Error {
        Error::Cache { path: self.file.path().to_path_buf(), message: error.to_string() }
    }

    /// Adds the packs and blobs of one index object and remembers what it supersedes.
    pub fn add_index_object(&mut self, object: &IndexId, file: &IndexFile) -> Result<()> {
        let path = self.file.path().to_path_buf();
        let error = |e: rusqlite::Error| Error::Cache { path: path.clone(), message: e.to_string() };
        let transaction = self.connection.transaction().map_err(error)?;
        {
            let mut superseded =
                transaction.prepare_cached("INSERT OR IGNORE INTO superseded (object) VALUES (?1)").map_err(error)?;
            for id in &file.supersedes {
                superseded.execute([id.as_bytes()]).map_err(error)?;
            }
            let mut pack_insert =
                transaction.prepare_cached("INSERT OR IGNORE INTO packs (id, size) VALUES (?1, ?2)").map_err(error)?;
            let mut reference = transaction
                .prepare_cached("INSERT OR IGNORE INTO pack_refs (pack, object) VALUES (?1, ?2)")
                .map_err(error)?;
            let mut blob_insert = transaction
                .prepare_cached(
                    "INSERT OR IGNORE INTO blobs (pack, id, type, offset, length, raw_length)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(error)?;
            for pack in &file.packs {
                pack_insert.execute(params![pack.id.as_bytes(), pack.size as i64]).map_err(error)?;
                reference.execute(params![pack.id.as_bytes(), object.as_bytes()]).map_err(error)?;
                for blob in &pack.blobs {
                    blob_insert
                        .execute(params![
                            pack.id.as_bytes(),
                            blob.id.as_bytes(),
                            blob.blob_type.code(),
                            blob.offset,
                            blob.length,
                            blob.raw_length
                        ])
                        .map_err(error)?;
                }
            }
        }
        transaction.commit().map_err(error)
    }

    /// Once every index object is added (and before anything else): forgets the packs
    /// that only superseded objects name (FORMAT.md section 8) and indexes the blobs by
    /// id, which is faster once than on every insert. Returns every object id some
    /// object supersedes.
    pub fn drop_superseded(&mut self) -> Result<HashSet<IndexId>> {
        let mut statement = self.connection.prepare("SELECT object FROM superseded").map_err(|e| self.error(e))?;
        let rows = statement.query_map([], |row| row.get::<_, Vec<u8>>(0)).map_err(|e| self.error(e))?;
        let mut superseded = HashSet::new();
        for row in rows {
            superseded.extend(IndexId::from_slice(&row.map_err(|e| self.error(e))?));
        }
        drop(statement);
        self.connection
            .execute_batch(
                "DELETE FROM pack_refs WHERE object IN (SELECT object FROM superseded);
                 DELETE FROM packs WHERE id NOT IN (SELECT pack FROM pack_refs);
                 DELETE FROM blobs WHERE pack NOT IN (SELECT id FROM packs);
                 CREATE INDEX blobs_by_id ON blobs (id, type);",
            )
            .map_err(|e| self.error(e))?;
        Ok(superseded)
    }

    /// Every indexed pack and the size the index gives it, in id order.
    pub fn packs(&self) -> Result<Vec<(PackId, u64)>> {
        let mut statement =
            self.connection.prepare("SELECT id, size FROM packs ORDER BY id").map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?)))
            .map_err(|e| self.error(e))?;
        let mut packs = Vec::new();
        for row in rows {
            let (id, size) = row.map_err(|e| self.error(e))?;
            packs.push((self.pack_id(&id)?, size as u64));
        }
        Ok(packs)
    }

    fn pack_id(&self, bytes: &[u8]) -> Result<PackId> {
        PackId::from_slice(bytes)
            .ok_or_else(|| Error::Cache { path: self.file.path().to_path_buf(), message: "malformed pack id".into() })
    }

    fn blob_id(&self, bytes: &[u8]) -> Result<BlobId> {
        BlobId::from_slice(bytes)
            .ok_or_else(|| Error::Cache { path: self.file.path().to_path_buf(), message: "malformed blob id".into() })
    }

    /// One indexed pack with the blobs the index places in it, in offset order.
    pub fn pack(&self, id: &PackId, size: u64) -> Result<IndexedPack> {
        let blobs =
            self.entries("SELECT id, type, offset, length, raw_length FROM blobs WHERE pack = ?1 ORDER BY offset", id)?;
        Ok(IndexedPack { id: *id, size, blobs })
    }

    fn entries(&self, sql: &str, pack: &PackId) -> Result<Vec<PackEntry>> {
        let mut statement = self.connection.prepare_cached(sql).map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([pack.as_bytes()], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, u8>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, u32>(3)?,
                    row.get::<_, u32>(4)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut entries = Vec::new();
        for row in rows {
            let (id, code, offset, length, raw_length) = row.map_err(|e| self.error(e))?;
            let blob_type = BlobType::from_code(code).ok_or_else(|| Error::Cache {
                path: self.file.path().to_path_buf(),
                message: format!("unknown blob type {code}"),
            })?;
            entries.push(PackEntry { id: self.blob_id(&id)?, blob_type, offset, length, raw_length });
        }
        Ok(entries)
    }

    /// Number of index entries (a blob held by two packs counts twice).
    pub fn entry_count(&self) -> Result<u64> {
        self.count("SELECT count(*) FROM blobs")
    }

    fn count(&self, sql: &str) -> Result<u64> {
        self.connection.query_row(sql, [], |row| row.get::<_, i64>(0)).map(|n| n as u64).map_err(|e| self.error(e))
    }

    /// Takes a pack out of the index because it is missing or damaged: `blobs` of it
    /// (all of them when `None`) become unreadable there. Returns those of them that no
    /// other pack holds, now recorded as lost for `reason`.
    pub fn lose(&mut self, pack: &PackId, blobs: Option<&[(BlobId, BlobType)]>, reason: &str) -> Result<Vec<BlobId>> {
        let path = self.file.path().to_path_buf();
        let error = |e: rusqlite::Error| Error::Cache { path: path.clone(), message: e.to_string() };
        let transaction = self.connection.transaction().map_err(error)?;
        let mut affected: Vec<(Vec<u8>, u8)> = Vec::new();
        {
            let mut delete = transaction
                .prepare_cached("DELETE FROM blobs WHERE pack = ?1 AND id = ?2 AND type = ?3")
                .map_err(error)?;
            match blobs {
                Some(blobs) => {
                    for (id, blob_type) in blobs {
                        delete.execute(params![pack.as_bytes(), id.as_bytes(), blob_type.code()]).map_err(error)?;
                        affected.push((id.as_bytes().to_vec(), blob_type.code()));
                    }
                }
                None => {
                    let mut select =
                        transaction.prepare_cached("SELECT id, type FROM blobs WHERE pack = ?1").map_err(error)?;
                    let rows = select
                        .query_map([pack.as_bytes()], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, u8>(1)?)))
                        .map_err(error)?;
                    for row in rows {
                        affected.push(row.map_err(error)?);
                    }
                    transaction.execute("DELETE FROM blobs WHERE pack = ?1", [pack.as_bytes()]).map_err(error)?;
                    transaction.execute("DELETE FROM packs WHERE id = ?1", [pack.as_bytes()]).map_err(error)?;
                }
            }
        }
        let mut lost = Vec::new();
        {
            let mut elsewhere =
                transaction.prepare_cached("SELECT 1 FROM blobs WHERE id = ?1 AND type = ?2 LIMIT 1").map_err(error)?;
            let mut record = transaction
                .prepare_cached("INSERT OR IGNORE INTO lost (id, type, reason) VALUES (?1, ?2, ?3)")
                .map_err(error)?;
            for (id, code) in affected {
                if elsewhere.exists(params![id, code]).map_err(error)? {
                    continue;
                }
                record.execute(params![id, code, reason]).map_err(error)?;
                lost.extend(BlobId::from_slice(&id));
            }
        }
        transaction.commit().map_err(error)?;
        Ok(lost)
    }

    /// Why a blob cannot be read, or `None` if an intact pack holds it.
    pub fn lost_reason(&self, id: &BlobId, blob_type: BlobType) -> Result<Option<String>> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1 AND type = ?2 LIMIT 1")
            .map_err(|e| self.error(e))?;
        if statement.exists(params![id.as_bytes(), blob_type.code()]).map_err(|e| self.error(e))? {
            return Ok(None);
        }
        let reason = self
            .connection
            .query_row(
                "SELECT reason FROM lost WHERE id = ?1 AND type = ?2",
                params![id.as_bytes(), blob_type.code()],
                |row| row.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| self.error(e))?;
        Ok(Some(reason.unwrap_or_else(|| "it is in no index object".to_string())))
    }

    /// Attaches a manifest (an SQLite file verified by its hash) as schema `m` for the
    /// duration of `work`.
    fn with_manifest<T>(&self, manifest: &Path, work: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let attach = |e: rusqlite::Error| Error::Cache {
            path: manifest.to_path_buf(),
            message: format!("cannot attach the manifest: {e}"),
        };
        let path = manifest.to_str().ok_or_else(|| Error::Cache {
            path: manifest.to_path_buf(),
            message: "the cache path is not UTF-8".into(),
        })?;
        self.connection.execute("ATTACH DATABASE ?1 AS m", [path]).map_err(attach)?;
        let result = work(&self.connection);
        self.connection.execute("DETACH DATABASE m", []).map_err(attach)?;
        result.map_err(|e| Error::integrity(format!("manifest {}", manifest.display()), e.to_string()))
    }

    /// For a manifest: how many distinct data blobs it names are not readable, how many
    /// files use them, and the first `limit` of those files' paths in path order.
    pub fn lost_in_manifest(&self, manifest: &Path, limit: usize) -> Result<(u64, u64, Vec<Vec<u8>>)> {
        const UNREADABLE: &str = "NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = c.blob AND b.type = 0)";
        self.with_manifest(manifest, |connection| {
            let blobs: i64 = connection.query_row(
                &format!("SELECT count(DISTINCT c.blob) FROM m.chunks c WHERE {UNREADABLE}"),
                [],
                |row| row.get(0),
            )?;
            if blobs == 0 {
                return Ok((0, 0, Vec::new()));
            }
            let affected = format!(
                "SELECT e.path FROM m.entries e WHERE EXISTS (SELECT 1 FROM m.chunks c WHERE c.entry_id = e.id AND {UNREADABLE})"
            );
            let files: i64 = connection.query_row(&format!("SELECT count(*) FROM ({affected})"), [], |row| row.get(0))?;
            let mut statement = connection.prepare(&format!("{affected} ORDER BY e.path LIMIT ?1"))?;
            let paths =
                statement.query_map([limit as i64], |row| row.get::<_, Vec<u8>>(0))?.collect::<rusqlite::Result<_>>()?;
            Ok((blobs as u64, files as u64, paths))
        })
    }

    /// Records a blob as used by a snapshot.
    pub fn mark_used(&self, id: &BlobId, blob_type: BlobType) -> Result<()> {
        self.connection
            .prepare_cached("INSERT OR IGNORE INTO used (id, type) VALUES (?1, ?2)")
            .and_then(|mut statement| statement.execute(params![id.as_bytes(), blob_type.code()]))
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Records every data blob a manifest names as used.
    pub fn mark_manifest_used(&self, manifest: &Path) -> Result<()> {
        self.with_manifest(manifest, |connection| {
            connection.execute("INSERT OR IGNORE INTO used (id, type) SELECT DISTINCT blob, 0 FROM m.chunks", [])
        })
        .map(drop)
    }

    /// Number of distinct blobs marked used.
    pub fn used_count(&self) -> Result<u64> {
        self.count("SELECT count(*) FROM used")
    }

    /// Used blobs not yet assigned to a pack by `assign`.
    pub fn unassigned_count(&self) -> Result<u64> {
        self.count("SELECT count(*) FROM used WHERE pack IS NULL")
    }

    /// Assigns to `pack` the used blobs it holds that no earlier pack was assigned, and
    /// returns them with the total length of every blob in the pack.
    pub fn assign(&mut self, pack: &PackId) -> Result<(Vec<PackEntry>, u64)> {
        let entries = self.entries(
            "SELECT b.id, b.type, b.offset, b.length, b.raw_length FROM blobs b
             JOIN used u ON u.id = b.id AND u.type = b.type
             WHERE b.pack = ?1 AND u.pack IS NULL ORDER BY b.offset",
            pack,
        )?;
        let total: i64 = self
            .connection
            .query_row("SELECT coalesce(sum(length), 0) FROM blobs WHERE pack = ?1", [pack.as_bytes()], |row| {
                row.get(0)
            })
            .map_err(|e| self.error(e))?;
        let path = self.file.path().to_path_buf();
        let error = |e: rusqlite::Error| Error::Cache { path: path.clone(), message: e.to_string() };
        let transaction = self.connection.transaction().map_err(error)?;
        {
            let mut update =
                transaction.prepare_cached("UPDATE used SET pack = ?1 WHERE id = ?2 AND type = ?3").map_err(error)?;
            for entry in &entries {
                update.execute(params![pack.as_bytes(), entry.id.as_bytes(), entry.blob_type.code()]).map_err(error)?;
            }
        }
        transaction.commit().map_err(error)?;
        Ok((entries, total as u64))
    }

    /// The used blobs assigned to `pack`, in offset order.
    pub fn assigned(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        self.entries(
            "SELECT b.id, b.type, b.offset, b.length, b.raw_length FROM blobs b
             JOIN used u ON u.id = b.id AND u.type = b.type AND u.pack = b.pack
             WHERE b.pack = ?1 ORDER BY b.offset",
            pack,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(byte: u8, offset: u32) -> PackEntry {
        PackEntry { id: BlobId([byte; 32]), blob_type: BlobType::Data, offset, length: 10, raw_length: 8 }
    }

    fn pack(byte: u8, blobs: Vec<PackEntry>) -> IndexedPack {
        IndexedPack { id: PackId([byte; 32]), size: 100, blobs }
    }

    #[test]
    fn superseded_objects_drop_their_packs_but_not_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = ScratchIndex::create(dir.path()).unwrap();
        let old = IndexId([1; 32]);
        let new = IndexId([2; 32]);
        let old_file =
            IndexFile { supersedes: vec![], packs: vec![pack(10, vec![entry(1, 0)]), pack(11, vec![entry(2, 0)])] };
        let new_file = IndexFile { supersedes: vec![old], packs: vec![pack(11, vec![entry(2, 0)])] };
        scratch.add_index_object(&old, &old_file).unwrap();
        scratch.add_index_object(&new, &new_file).unwrap();
        assert_eq!(scratch.drop_superseded().unwrap(), HashSet::from([old]));
        assert_eq!(scratch.packs().unwrap(), vec![(PackId([11; 32]), 100)]);
        assert_eq!(scratch.entry_count().unwrap(), 1);
        assert_eq!(scratch.pack(&PackId([11; 32]), 100).unwrap(), new_file.packs[0]);
    }

    #[test]
    fn a_lost_pack_loses_only_blobs_with_no_other_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = ScratchIndex::create(dir.path()).unwrap();
        let file = IndexFile {
            supersedes: vec![],
            packs: vec![pack(10, vec![entry(1, 0), entry(2, 10)]), pack(11, vec![entry(2, 0)])],
        };
        scratch.add_index_object(&IndexId([1; 32]), &file).unwrap();
        scratch.drop_superseded().unwrap();
        let lost = scratch.lose(&PackId([10; 32]), None, "gone").unwrap();
        assert_eq!(lost, vec![BlobId([1; 32])]);
        assert_eq!(scratch.lost_reason(&BlobId([1; 32]), BlobType::Data).unwrap().as_deref(), Some("gone"));
        assert_eq!(scratch.lost_reason(&BlobId([2; 32]), BlobType::Data).unwrap(), None);
        assert!(scratch.lost_reason(&BlobId([3; 32]), BlobType::Data).unwrap().unwrap().contains("no index object"));
    }

    #[test]
    fn used_blobs_are_assigned_to_the_first_pack_holding_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = ScratchIndex::create(dir.path()).unwrap();
        let file = IndexFile {
            supersedes: vec![],
            packs: vec![pack(10, vec![entry(1, 0), entry(2, 10)]), pack(11, vec![entry(2, 0), entry(3, 10)])],
        };
        scratch.add_index_object(&IndexId([1; 32]), &file).unwrap();
        for byte in [2u8, 3] {
            scratch.mark_used(&BlobId([byte; 32]), BlobType::Data).unwrap();
        }
        assert_eq!(scratch.used_count().unwrap(), 2);
        let (first, total) = scratch.assign(&PackId([10; 32])).unwrap();
        assert_eq!((first, total), (vec![entry(2, 10)], 20));
        let (second, _) = scratch.assign(&PackId([11; 32])).unwrap();
        assert_eq!(second, vec![entry(3, 10)], "blob 2 is already assigned to the first pack");
        assert_eq!(scratch.unassigned_count().unwrap(), 0);
        assert_eq!(scratch.assigned(&PackId([11; 32])).unwrap(), vec![entry(3, 10)]);
    }
}
