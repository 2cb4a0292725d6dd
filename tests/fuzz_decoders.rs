//! Bounded fuzzing of every decoder of repository data (`coffer::fuzzing`), on purely
//! random bytes and on mutations of valid objects taken from a real repository. Sealed
//! objects are also mutated *inside* the seal and sealed again with the repository's
//! key, so the mutations get past authentication and reach the decoders behind it.
//! Nothing may panic.
//!
//! Runs are deterministic for a given corpus (the corpus itself changes with every run,
//! since keys and salts are random). `COFFER_FUZZ_SEED` picks another seed and
//! `COFFER_FUZZ_SCALE` multiplies the iteration counts, for longer runs:
//! `COFFER_FUZZ_SCALE=20 cargo test --release --test fuzz_decoders`. An input that
//! panics is saved in the system's temporary directory and named in the failure.

use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use coffer::backend::{Backend, MemoryBackend};
use coffer::{
    fuzzing, BackupOptions, BackupReport, BlobLocation, BlobType, ChunkerParams, Config, IndexFile, IndexId,
    InitOptions, KdfParams, Manifest, MasterKey, Repository, Snapshot, SnapshotId,
};
use serde_json::Value;

/// Inputs per decoder.
const ITERATIONS: usize = 5000;
/// Inputs that are decrypted for real several times each (AES-GCM is slow unoptimised).
const SEALED_BLOB_ITERATIONS: usize = 1000;
/// Manifest decoding writes a file and opens SQLite on every call.
const MANIFEST_ITERATIONS: usize = 500;
const PASSWORD: &[u8] = b"pw";

fn iterations(base: usize) -> usize {
    let scale = std::env::var("COFFER_FUZZ_SCALE").ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(1);
    base * scale.max(1)
}

// ---------------------------------------------------------------------------------------
// A small deterministic PRNG (xorshift64*).

struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Self {
        let seed = std::env::var("COFFER_FUZZ_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0x00c0_ffee);
        let mut rng = Rng((seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        for _ in 0..8 {
            rng.next();
        }
        rng
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------
// Mutations.

/// Fragments that make textual (JSON) and binary decoders take unusual paths.
const TOKENS: &[&[u8]] = &[
    b"0",
    b"1",
    b"-1",
    b"4294967295",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1e999",
    b"-0.0",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"\"",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b",",
    b":",
    b"{\"version\":1}",
    b"\xff\xfe\xfd",
    b"\0",
    b"SQLite format 3\0",
];

/// Little-endian numbers written over counts, lengths and offsets.
const INTERESTING_U32: &[u32] = &[
    0,
    1,
    2,
    4,
    40,
    41,
    44,
    45,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    16 << 20,
    (16 << 20) + 1,
];

/// One to four byte-level mutations: bit flips, byte sets, truncation, insertion,
/// deletion, overwritten ranges, tokens, interesting numbers and duplicated ranges.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(10) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = if rng.one_in(2) { *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff]) } else { rng.byte() };
            }
            2 => data.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                let count = 1 + rng.below(16);
                let bytes = rng.bytes(count);
                data.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(16)).min(len);
                data.drain(at..end);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                let bytes = rng.bytes(end - at);
                data[at..end].copy_from_slice(&bytes);
            }
            6 => {
                let at = rng.below(len + 1);
                let token = *rng.pick(TOKENS);
                let end = if rng.one_in(2) { (at + token.len()).min(len) } else { at };
                data.splice(at..end, token.iter().copied());
            }
            7 if len >= 4 => {
                let at = rng.below(len - 3);
                let mut value = *rng.pick(INTERESTING_U32);
                if rng.one_in(4) {
                    value = value.swap_bytes();
                }
                data[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            8 if len > 0 => {
                let from = rng.below(len);
                let count = 1 + rng.below((len - from).min(64));
                let piece = data[from..from + count].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, piece);
            }
            _ => {
                let at = rng.below(len + 1);
                let byte = rng.byte();
                data.insert(at, byte);
            }
        }
    }
    data
}

/// A JSON value of a kind and size the decoders do not expect.
fn random_json(rng: &mut Rng) -> Value {
    match rng.below(24) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => Value::from(rng.below(4)),
        3 => Value::from(-1),
        4 => Value::from(u32::MAX),
        5 => Value::from(u64::from(u32::MAX) + 1),
        6 => Value::from(u64::MAX),
        7 => Value::from(i64::MIN),
        8 => Value::from(1.5),
        9 => Value::from(1e300),
        10 => Value::from(""),
        11 => Value::from("0".repeat(64)),
        12 => Value::from("zz".repeat(32)),
        13 => Value::from("0".repeat(63)),
        14 => Value::from("a".repeat(10_000)),
        15 => Value::from("\u{0}\u{ffff}é/../\u{202e}"),
        16 => Value::Array(Vec::new()),
        17 => Value::Object(Default::default()),
        18 => serde_json::json!({ "kind": "files", "paths": [] }),
        19 => serde_json::json!({ "kind": "stdin", "name": "" }),
        20 => {
            let mut value = Value::from(1);
            for _ in 0..200 {
                value = Value::Array(vec![value]);
            }
            value
        }
        21 => Value::from(*rng.pick(&[64u64, 256, 1024, 1 << 20, 1 << 32, 22, 23])),
        22 => Value::from(rng.next() as i64),
        _ => {
            let length = 1 + rng.below(40);
            Value::from(hex_string(&rng.bytes(length)))
        }
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(fields) => fields.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Mutates the `n`th node in pre-order; true once done.
fn mutate_nth(rng: &mut Rng, value: &mut Value, n: &mut usize) -> bool {
    if *n == 0 {
        mutate_node(rng, value);
        return true;
    }
    *n -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|item| mutate_nth(rng, item, n)),
        Value::Object(fields) => fields.values_mut().any(|item| mutate_nth(rng, item, n)),
        _ => false,
    }
}

fn mutate_node(rng: &mut Rng, value: &mut Value) {
    let choice = rng.below(4);
    match value {
        Value::Object(fields) if choice == 0 && !fields.is_empty() => {
            let key = fields.keys().nth(rng.below(fields.len())).cloned();
            if let Some(key) = key {
                fields.remove(&key);
            }
        }
        Value::Object(fields) if choice == 1 => {
            let key = *rng.pick(&["version", "extra", "kind", "", "paths", "params"]);
            fields.insert(key.to_string(), random_json(rng));
        }
        Value::Array(items) if choice == 0 && !items.is_empty() => {
            items.remove(rng.below(items.len()));
        }
        Value::Array(items) if choice == 1 => {
            let item = match items.first() {
                Some(first) if rng.one_in(2) => first.clone(),
                _ => random_json(rng),
            };
            items.push(item);
        }
        Value::String(text) if choice == 0 => {
            let mut bytes = mutate(rng, text.as_bytes());
            bytes.retain(|b| b.is_ascii());
            *text = String::from_utf8(bytes).unwrap_or_default();
        }
        other => *other = random_json(rng),
    }
}

/// Structure-aware mutation of JSON: replaces, removes or adds values; falls back to
/// byte mutations when the input is not JSON.
fn mutate_json(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<Value>(input) else {
        return mutate(rng, input);
    };
    for _ in 0..1 + rng.below(3) {
        let mut n = rng.below(count_nodes(&value));
        mutate_nth(rng, &mut value, &mut n);
    }
    let bytes = if rng.one_in(2) { serde_json::to_vec(&value) } else { serde_json::to_vec_pretty(&value) };
    bytes.expect("a JSON value serialises")
}

/// Either kind of mutation, for JSON objects.
fn mutate_any(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    if rng.one_in(2) {
        mutate_json(rng, input)
    } else {
        mutate(rng, input)
    }
}

// ---------------------------------------------------------------------------------------
// The sealed layer, as described in FORMAT.md: `seal(flag || body, "coffer KIND")` with
// flag 0 for a stored body and 1 for a zstd frame.

fn object_associated(kind: &str) -> Vec<u8> {
    format!("coffer {kind}").into_bytes()
}

fn blob_associated(blob_type: BlobType, id: &coffer::BlobId) -> Vec<u8> {
    [&b"coffer blob"[..], &[blob_type.code()], id.as_bytes()].concat()
}

/// Decrypts and decompresses a sealed object or blob; panics if it is not valid.
fn open_sealed(master: &MasterKey, associated: &[u8], sealed: &[u8]) -> Vec<u8> {
    let payload = master.open(sealed, associated).expect("a stored object decrypts with the repository key");
    match payload.split_first() {
        Some((0, body)) => body.to_vec(),
        Some((1, body)) => zstd::stream::decode_all(body).expect("a stored zstd frame decodes"),
        other => panic!("unknown payload flag {:?}", other.map(|(flag, _)| *flag)),
    }
}

/// Seals `plain` like the library does, but picks the payload form at random (stored,
/// zstd, unknown flag) and sometimes mutates the payload (so the zstd frame) itself.
fn reseal(rng: &mut Rng, master: &MasterKey, associated: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut payload = match rng.below(5) {
        0 | 1 => [&[0u8][..], plain].concat(),
        2 | 3 => {
            let level = *rng.pick(&[1, 3, 19]);
            let frame = zstd::bulk::compress(plain, level).expect("zstd compresses");
            [&[1u8][..], &frame].concat()
        }
        _ => [&[rng.byte()][..], plain].concat(),
    };
    if rng.one_in(3) {
        payload = mutate(rng, &payload);
    }
    if rng.one_in(20) {
        payload.clear();
    }
    master.seal(&payload, associated)
}

/// A pack's blob area and sealed header.
fn split_pack(pack: &[u8]) -> (&[u8], &[u8]) {
    let trailer: [u8; 4] = pack[pack.len() - 4..].try_into().expect("four bytes");
    let start = pack.len() - 4 - u32::from_le_bytes(trailer) as usize;
    (&pack[..start], &pack[start..pack.len() - 4])
}

fn assemble_pack(area: &[u8], sealed_header: &[u8]) -> Vec<u8> {
    [area, sealed_header, &(sealed_header.len() as u32).to_le_bytes()].concat()
}

// ---------------------------------------------------------------------------------------
// Running a decoder.

/// Runs `call` on `input`; if it panics, saves the input and fails with its location.
fn check(decoder: &str, input: &[u8], call: impl FnOnce(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| call(input))).is_ok() {
        return;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut hasher);
    let path = std::env::temp_dir().join(format!("coffer-fuzz-{decoder}-{:016x}.bin", hasher.finish()));
    let saved = std::fs::write(&path, input).is_ok();
    panic!(
        "the {decoder} decoder panicked on a {}-byte input{} (starts with {})",
        input.len(),
        if saved { format!(" saved to {}", path.display()) } else { String::new() },
        hex_string(&input[..input.len().min(64)]),
    );
}

// ---------------------------------------------------------------------------------------
// A real repository with a few snapshots, and the objects stored in it.

struct Fixture {
    repository: Repository,
    backend: Arc<dyn Backend>,
    reports: Vec<BackupReport>,
    config: Vec<u8>,
    key_files: Vec<Vec<u8>>,
    /// Whole pack objects.
    packs: Vec<Vec<u8>>,
    /// Stored index objects and their plaintexts.
    indexes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Stored snapshot records and their plaintexts.
    snapshots: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every blob, sealed as stored, with its location.
    blobs: Vec<(BlobLocation, Vec<u8>)>,
    /// The manifest file of every snapshot.
    manifests: Vec<Vec<u8>>,
    // Dropped last: the repository's cache and the backed-up tree.
    _cache: tempfile::TempDir,
    _source: tempfile::TempDir,
}

fn populate(root: &Path) {
    let text: String = (0..600).map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n")).collect();
    std::fs::write(root.join("a.txt"), &text).unwrap();
    let mut rng = Rng::new(99);
    std::fs::write(root.join("noise.bin"), rng.bytes(40_000)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("tiny"), b"x").unwrap();
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("sub/deeper/b.txt"), text.repeat(3)).unwrap();
    std::fs::write(root.join("sub/\u{e9}t\u{e9} & spaces"), b"accents").unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("tiny"), root.join("tiny-hardlink")).unwrap();
}

fn stored(backend: &dyn Backend, prefix: &str) -> Vec<(String, Vec<u8>)> {
    backend
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|info| {
            let bytes = backend.get(&info.key).unwrap().to_vec();
            (info.key, bytes)
        })
        .collect()
}

impl Fixture {
    fn new() -> Self {
        let source = tempfile::tempdir().unwrap();
        populate(source.path());
        let cache = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let options = InitOptions {
            kdf: KdfParams::QUICK,
            // Small chunks and packs, so files span several blobs and there are several packs.
            chunker: ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16 * 1024 },
            pack_size: 16 * 1024,
            ..Default::default()
        };
        let repository = Repository::init(backend.clone(), PASSWORD, &options, Some(cache.path())).unwrap();
        let first = coffer::backup(
            &repository,
            BackupOptions {
                paths: vec![source.path().to_path_buf()],
                stdin: None,
                tags: vec![],
                host: None,
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::write(source.path().join("sub/new"), b"added later").unwrap();
        let second = coffer::backup(
            &repository,
            BackupOptions {
                paths: vec![source.path().join("sub")],
                stdin: Some((Box::new(std::io::Cursor::new(b"CREATE TABLE t (x);\n".repeat(500))), "dump.sql".into())),
                tags: vec!["nightly".into(), "fuzz".into()],
                host: Some("fuzz-host".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let reports = vec![first, second];

        let config = backend.get("config").unwrap().to_vec();
        let key_files = stored(&*backend, "keys/").into_iter().map(|(_, bytes)| bytes).collect();
        let packs: Vec<(String, Vec<u8>)> = stored(&*backend, "data/");
        let mut indexes = Vec::new();
        let mut blobs = Vec::new();
        for (key, sealed) in stored(&*backend, "index/") {
            let id: IndexId = key["index/".len()..].parse().unwrap();
            let file = repository.load_index(&id).unwrap();
            for pack in &file.packs {
                let name = coffer::pack_key(&pack.id);
                let (_, bytes) = packs.iter().find(|(key, _)| *key == name).unwrap();
                for entry in &pack.blobs {
                    let range = entry.offset as usize..(entry.offset + entry.length) as usize;
                    let location = BlobLocation { pack: pack.id, entry: *entry };
                    blobs.push((location, bytes[range].to_vec()));
                }
            }
            indexes.push((sealed, file.encode()));
        }
        let snapshots = stored(&*backend, "snapshots/")
            .into_iter()
            .map(|(key, sealed)| {
                let id: SnapshotId = key["snapshots/".len()..].parse().unwrap();
                (sealed, repository.load_snapshot(&id).unwrap().encode())
            })
            .collect();
        let manifests =
            reports.iter().map(|report| std::fs::read(repository.manifest_cache_path(&report.id)).unwrap()).collect();
        Self {
            repository,
            backend,
            reports,
            config,
            key_files,
            packs: packs.into_iter().map(|(_, bytes)| bytes).collect(),
            indexes,
            snapshots,
            blobs,
            manifests,
            _cache: cache,
            _source: source,
        }
    }

    fn master(&self) -> &MasterKey {
        self.repository.master()
    }
}

// ---------------------------------------------------------------------------------------
// The corpus is valid.

#[test]
fn corpus_objects_are_valid() {
    let fixture = Fixture::new();
    let master = fixture.master();

    let config = Config::decode(&fixture.config).unwrap();
    assert_eq!(&config, fixture.repository.config());
    let reopened = Repository::open(fixture.backend.clone(), PASSWORD, None).unwrap();
    assert_eq!(reopened.config(), fixture.repository.config());
    assert_eq!(fixture.key_files.len(), 1);

    assert!(fixture.packs.len() >= 3, "{} packs", fixture.packs.len());
    assert!(fixture.indexes.len() >= 2);
    assert!(fixture.blobs.len() >= 10, "{} blobs", fixture.blobs.len());
    assert!(fixture.blobs.iter().any(|(l, _)| l.entry.blob_type == BlobType::Data));
    assert!(fixture.blobs.iter().any(|(l, _)| l.entry.blob_type == BlobType::Metadata));

    for (sealed, plain) in &fixture.indexes {
        assert_eq!(&open_sealed(master, &object_associated("index"), sealed), plain);
        assert_eq!(&IndexFile::decode(plain, "index").unwrap().encode(), plain);
    }
    // Each pack's header is the documented encoding of its index entries.
    let files: Vec<IndexFile> =
        fixture.indexes.iter().map(|(_, plain)| IndexFile::decode(plain, "index").unwrap()).collect();
    for pack in &fixture.packs {
        let id = coffer::PackId(*blake3::hash(pack).as_bytes());
        let listed = files.iter().flat_map(|file| &file.packs).find(|p| p.id == id).expect("every pack is in an index");
        assert_eq!(listed.size, pack.len() as u64);
        let (area, sealed_header) = split_pack(pack);
        let header = open_sealed(master, &object_associated("pack-header"), sealed_header);
        let mut expected = (listed.blobs.len() as u32).to_le_bytes().to_vec();
        let mut offset = 0;
        for entry in &listed.blobs {
            assert_eq!(entry.offset, offset);
            offset += entry.length;
            expected.push(entry.blob_type.code());
            expected.extend_from_slice(&entry.length.to_le_bytes());
            expected.extend_from_slice(&entry.raw_length.to_le_bytes());
            expected.extend_from_slice(entry.id.as_bytes());
        }
        assert_eq!(offset as usize, area.len());
        assert_eq!(header, expected);
    }
    for (location, sealed) in &fixture.blobs {
        let data = fixture.repository.open_sealed_blob(location, sealed).unwrap();
        assert_eq!(master.blob_id(&data), location.entry.id);
        assert_eq!(data.len(), location.entry.raw_length as usize);
        let associated = blob_associated(location.entry.blob_type, &location.entry.id);
        assert_eq!(open_sealed(master, &associated, sealed), data);
    }

    assert_eq!(fixture.snapshots.len(), 2);
    for (sealed, plain) in &fixture.snapshots {
        assert_eq!(&open_sealed(master, &object_associated("snapshot"), sealed), plain);
        let snapshot = Snapshot::decode(plain, "snapshot").unwrap();
        assert!(fixture.reports.iter().any(|r| r.snapshot == snapshot));
    }

    for (report, bytes) in fixture.reports.iter().zip(&fixture.manifests) {
        assert_eq!(blake3::hash(bytes).to_hex().as_str(), report.snapshot.manifest.blake3);
        let manifest = Manifest::open(&fixture.repository.manifest_cache_path(&report.id)).unwrap();
        let entries = manifest.entries_under(b"/").unwrap();
        assert_eq!(entries.len() as u64, manifest.len().unwrap());
        assert!(entries.len() >= 5);
        let chunked = entries.iter().filter(|(id, _)| manifest.chunks(*id).unwrap().len() > 1).count();
        assert!(chunked >= 1, "some file spans several blobs");
    }

    // And the entry points accept every valid object without panicking.
    fuzzing::config(&fixture.config);
    for bytes in &fixture.key_files {
        fuzzing::key_file(bytes);
    }
    for pack in &fixture.packs {
        fuzzing::pack(master, pack);
    }
    for (sealed, plain) in &fixture.indexes {
        fuzzing::index(master, sealed);
        fuzzing::index(master, plain);
    }
    for (_, plain) in &fixture.snapshots {
        fuzzing::snapshot(plain);
    }
    for (location, sealed) in &fixture.blobs {
        fuzzing::blob(master, &[&location.entry.id.as_bytes()[..], sealed].concat());
    }
    for bytes in &fixture.manifests {
        fuzzing::manifest(bytes);
    }
}

// ---------------------------------------------------------------------------------------
// Random bytes.

fn random_input(rng: &mut Rng, prefixes: &[&[u8]]) -> Vec<u8> {
    let length = match rng.below(4) {
        0 => rng.below(16),
        1 => rng.below(128),
        2 => rng.below(1024),
        _ => rng.below(8192),
    };
    let mut input = rng.bytes(length);
    if !prefixes.is_empty() && rng.one_in(2) {
        let prefix = *rng.pick(prefixes);
        input.splice(0..0, prefix.iter().copied());
    }
    input
}

#[test]
fn random_bytes_never_panic() {
    let key = fuzzing::fuzz_key();
    let mut rng = Rng::new(1);
    let json: &[&[u8]] = &[b"{", b"{\"version\":1,", b"[", b"\""];
    for _ in 0..iterations(ITERATIONS) {
        let input = random_input(&mut rng, json);
        check("config", &input, fuzzing::config);
        let input = random_input(&mut rng, json);
        check("key_file", &input, fuzzing::key_file);
        let input = random_input(&mut rng, json);
        check("snapshot", &input, fuzzing::snapshot);
        let input = random_input(&mut rng, &[]);
        check("pack", &input, |b| fuzzing::pack(&key, b));
        let input = random_input(&mut rng, &[&[1], &[1, 0, 0, 0, 0], &[1, 0, 0, 0, 0, 1, 0, 0, 0]]);
        check("index", &input, |b| fuzzing::index(&key, b));
        let input = random_input(&mut rng, &[]);
        check("blob", &input, |b| fuzzing::blob(&key, b));
    }
    for _ in 0..iterations(MANIFEST_ITERATIONS) {
        let input = random_input(&mut rng, &[b"SQLite format 3\0"]);
        check("manifest", &input, fuzzing::manifest);
    }
}

// ---------------------------------------------------------------------------------------
// Mutations of valid objects.

#[test]
fn mutated_configs_never_panic() {
    let fixture = Fixture::new();
    let mut rng = Rng::new(2);
    for _ in 0..iterations(ITERATIONS) {
        let input = mutate_any(&mut rng, &fixture.config);
        check("config", &input, fuzzing::config);
    }
}

#[test]
fn mutated_key_files_never_panic() {
    let fixture = Fixture::new();
    let mut rng = Rng::new(3);
    for _ in 0..iterations(ITERATIONS) {
        let key_file = rng.pick(&fixture.key_files);
        let input = mutate_any(&mut rng, key_file);
        check("key_file", &input, fuzzing::key_file);
    }
}

#[test]
fn mutated_snapshots_never_panic() {
    let fixture = Fixture::new();
    let mut rng = Rng::new(4);
    for _ in 0..iterations(ITERATIONS) {
        let (_, plain) = rng.pick(&fixture.snapshots);
        let input = mutate_any(&mut rng, plain);
        check("snapshot", &input, fuzzing::snapshot);
    }
}

#[test]
fn mutated_indexes_never_panic() {
    let fixture = Fixture::new();
    let master = fixture.master();
    let associated = object_associated("index");
    let mut rng = Rng::new(5);
    for _ in 0..iterations(ITERATIONS) {
        let (sealed, plain) = rng.pick(&fixture.indexes);
        let input = match rng.below(5) {
            // The stored object: any change fails authentication.
            0 => mutate(&mut rng, sealed),
            // The plaintext, which the entry point also decodes directly.
            1 | 2 => mutate(&mut rng, plain),
            // Mutated plaintext sealed again: reaches decompression and decoding.
            3 => {
                let changed = mutate(&mut rng, plain);
                reseal(&mut rng, master, &associated, &changed)
            }
            // Valid plaintext in a sometimes damaged payload.
            _ => reseal(&mut rng, master, &associated, plain),
        };
        check("index", &input, |b| fuzzing::index(master, b));
    }
}

#[test]
fn mutated_packs_never_panic() {
    let fixture = Fixture::new();
    let master = fixture.master();
    let associated = object_associated("pack-header");
    let mut rng = Rng::new(6);
    for _ in 0..iterations(ITERATIONS) {
        let pack = rng.pick(&fixture.packs);
        let (area, sealed_header) = split_pack(pack);
        let input = match rng.below(6) {
            0 => mutate(&mut rng, pack),
            // Damage near the end, where the header and its length are.
            1 => {
                let keep = pack.len().saturating_sub(sealed_header.len() + 4 + rng.below(64));
                let tail = mutate(&mut rng, &pack[keep..]);
                [&pack[..keep], &tail[..]].concat()
            }
            // A mutated header plaintext, sealed again.
            2 | 3 => {
                let header = open_sealed(master, &associated, sealed_header);
                let changed = mutate(&mut rng, &header);
                assemble_pack(area, &reseal(&mut rng, master, &associated, &changed))
            }
            // A blob area of another size under a valid header.
            4 => {
                let changed = mutate(&mut rng, area);
                assemble_pack(&changed, sealed_header)
            }
            // A wrong header length.
            _ => {
                let mut bytes = pack.clone();
                let at = bytes.len() - 4;
                let value = if rng.one_in(2) {
                    *rng.pick(INTERESTING_U32)
                } else {
                    (sealed_header.len() as u32).wrapping_add(rng.below(9) as u32).wrapping_sub(4)
                };
                bytes[at..].copy_from_slice(&value.to_le_bytes());
                bytes
            }
        };
        check("pack", &input, |b| fuzzing::pack(master, b));
    }
}

#[test]
fn mutated_blobs_never_panic() {
    let fixture = Fixture::new();
    let master = fixture.master();
    let mut rng = Rng::new(7);
    for _ in 0..iterations(ITERATIONS) {
        let (location, sealed) = rng.pick(&fixture.blobs);
        let named = [&location.entry.id.as_bytes()[..], sealed].concat();
        let input = mutate(&mut rng, &named);
        check("blob", &input, |b| fuzzing::blob(master, b));
    }
}

/// Mutated payloads sealed under the right names reach decompression and verification,
/// both through `Repository::open_sealed_blob` and through `fuzzing::blob`.
#[test]
fn mutated_blob_payloads_never_panic() {
    let fixture = Fixture::new();
    let master = fixture.master();
    let mut rng = Rng::new(8);
    for _ in 0..iterations(SEALED_BLOB_ITERATIONS) {
        let (location, sealed) = rng.pick(&fixture.blobs);
        let mut location = *location;
        let data = open_sealed(master, &blob_associated(location.entry.blob_type, &location.entry.id), sealed);
        match rng.below(6) {
            0 => location.entry.raw_length = *rng.pick(INTERESTING_U32),
            1 => {
                location.entry.raw_length = location.entry.raw_length.wrapping_add(rng.below(5) as u32).wrapping_sub(2)
            }
            2 => {
                location.entry.blob_type = match location.entry.blob_type {
                    BlobType::Data => BlobType::Metadata,
                    BlobType::Metadata => BlobType::Data,
                }
            }
            _ => {}
        }
        let associated = blob_associated(location.entry.blob_type, &location.entry.id);
        let input = match rng.below(4) {
            0 => mutate(&mut rng, sealed),
            1 => {
                let changed = mutate(&mut rng, &data);
                reseal(&mut rng, master, &associated, &changed)
            }
            _ => reseal(&mut rng, master, &associated, &data),
        };
        check("open_sealed_blob", &input, |b| {
            let _ = fixture.repository.open_sealed_blob(&location, b);
        });
        let named = [&location.entry.id.as_bytes()[..], &input[..]].concat();
        check("blob", &named, |b| fuzzing::blob(master, b));
    }
}

#[test]
fn mutated_manifests_never_panic() {
    let fixture = Fixture::new();
    let mut rng = Rng::new(9);
    for _ in 0..iterations(MANIFEST_ITERATIONS) {
        let manifest = rng.pick(&fixture.manifests);
        let input = match rng.below(3) {
            0 => mutate(&mut rng, manifest),
            // Bit flips and overwritten numbers in the file header and the page headers.
            1 => {
                let mut bytes = manifest.clone();
                for _ in 0..1 + rng.below(4) {
                    let page = rng.below(bytes.len() / 4096);
                    let at = if page == 0 && rng.one_in(2) {
                        rng.below(100)
                    } else {
                        page * 4096 + if page == 0 { 100 } else { 0 } + rng.below(12)
                    };
                    if rng.one_in(2) {
                        bytes[at] ^= 1 << rng.below(8);
                    } else {
                        bytes[at] = rng.byte();
                    }
                }
                bytes
            }
            // Scattered damage.
            _ => {
                let mut bytes = manifest.clone();
                for _ in 0..1 + rng.below(16) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                bytes
            }
        };
        check("manifest", &input, fuzzing::manifest);
    }
}

/// Well-formed SQLite files that are not what coffer writes: wrong types in every
/// column (the tables are not STRICT), missing tables, views instead of tables.
#[test]
fn hostile_manifests_never_panic() {
    const LOOSE: &str = "
        CREATE TABLE meta (key, value);
        CREATE TABLE entries (id INTEGER PRIMARY KEY, path, kind, mode, uid, gid, user, grp,
            mtime_ns, ctime_ns, inode, device, nlink, size, rdev, sha256, link_target, hardlink_group);
        CREATE TABLE xattrs (entry_id, name, value);
        CREATE TABLE chunks (entry_id, seq, blob, offset, length);
        INSERT INTO meta VALUES ('schema_version', 1);";
    const GOOD_ROW: &str = "INSERT INTO entries VALUES (1, CAST('/a' AS BLOB), 'file', 420, 0, 0,
        'u', 'g', 0, 0, 1, 1, 1, 3, 0, zeroblob(32), NULL, NULL);";
    let cases: Vec<String> = vec![
        String::new(),
        "CREATE TABLE meta (key, value);".into(),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', '1');".into(),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', x'01');".into(),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', 1.0);".into(),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', -1);".into(),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', NULL);".into(),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', 2), ('schema_version', 1);".into(),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', 1);".into(),
        format!("{LOOSE} {GOOD_ROW}"),
        format!(
            "{LOOSE} INSERT INTO entries VALUES (1, '/a', 'file', -1, 4294967296, 'x', x'ff', 3,
            1.5, 'ctime', -1, 9223372036854775807, NULL, x'00', 0, x'0102', 'text', 'grp');"
        ),
        format!(
            "{LOOSE} INSERT INTO entries VALUES (1, NULL, x'66696c65', 1e300, -1, -1, 1, 2,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, zeroblob(31), x'', 9223372036854775807);"
        ),
        format!(
            "{LOOSE} INSERT INTO entries VALUES (9223372036854775807, 5, 'dir', 0, 0, 0,
            NULL, NULL, -9223372036854775808, 0, -1, -1, -1, -1, -1, NULL, NULL, -1);
            INSERT INTO entries VALUES (-9223372036854775808, x'2f00', 'nonsense', 0, 0, 0,
            NULL, NULL, 0, 0, 0, 0, 0, 0, 0, '', 1, 'x');
            INSERT INTO entries VALUES (3, '', 'symlink', 0, 0, 0,
            NULL, NULL, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL);"
        ),
        format!(
            "{LOOSE} {GOOD_ROW}
            INSERT INTO chunks VALUES (1, 0, zeroblob(31), 0, 1), (1, 1, NULL, -1, -1),
                (1, 2, zeroblob(32), 0, 4294967296), ('a', NULL, 'text', 'x', 1.5),
                (1, 3, zeroblob(33), 9223372036854775807, 0);
            INSERT INTO xattrs VALUES (1, NULL, 1.5), (1, 'user.x', NULL), ('a', x'00', x'00');"
        ),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', 1);
         CREATE VIEW entries AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000)
            SELECT x AS id, CAST('/' || x AS BLOB) AS path, 'file' AS kind, 420 AS mode, 0 AS uid,
            0 AS gid, NULL AS user, NULL AS grp, 0 AS mtime_ns, 0 AS ctime_ns, x AS inode,
            1 AS device, 1 AS nlink, 0 AS size, 0 AS rdev, NULL AS sha256, NULL AS link_target,
            NULL AS hardlink_group FROM c;
         CREATE VIEW chunks AS SELECT 1 AS entry_id, 0 AS seq, zeroblob(32) AS blob,
            0 AS offset, 0 AS length;
         CREATE VIEW xattrs AS SELECT 1 AS entry_id, 'n' AS name, 'v' AS value;"
            .into(),
        "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('schema_version', 1);
         CREATE TABLE entries (x);"
            .into(),
    ];
    let directory = tempfile::tempdir().unwrap();
    for (number, sql) in cases.iter().enumerate() {
        let path = directory.path().join(format!("hostile-{number}.sqlite"));
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection.execute_batch(sql).unwrap();
        connection.close().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        check("manifest", &bytes, fuzzing::manifest);
        check("manifest", &bytes, |_| {
            if let Ok(manifest) = Manifest::open(&path) {
                let _ = manifest.entry(b"/a");
                let _ = manifest.entries_under(b"/a");
                let _ = manifest.is_empty();
            }
        });
    }
}
