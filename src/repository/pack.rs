//! Blobs and packs: compression, sealing and verification of blobs, and the pack layout.
//!
//! A pack is `blob... || sealed header || header length (u32 LE)`. Its id is the
//! BLAKE3 hash of all its bytes, so its integrity can be checked without a key.

use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::repository::crypto::MasterKey;

/// What a blob holds; data and metadata blobs go to separate packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobType {
    /// File or database dump content.
    Data,
    /// Manifest content.
    Metadata,
}

impl BlobType {
    /// The byte stored for this type.
    pub fn code(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Metadata => 1,
        }
    }

    /// The type of a stored byte.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Metadata),
            _ => None,
        }
    }
}

/// Largest plaintext a blob may have (the chunker's maximum is 16 MiB).
pub const MAX_BLOB_LENGTH: u32 = 16 * 1024 * 1024;
/// Largest decoded size of a sealed object (index, snapshot, header).
const MAX_OBJECT_LENGTH: u64 = 1 << 30;
const UNCOMPRESSED: u8 = 0;
const ZSTD: u8 = 1;

/// Where a blob lies inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackEntry {
    pub id: BlobId,
    pub blob_type: BlobType,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub length: u32,
    /// Length of the blob's plaintext.
    pub raw_length: u32,
}

/// A blob ready to be appended to a pack.
#[derive(Debug, Clone)]
pub struct SealedBlob {
    pub id: BlobId,
    pub blob_type: BlobType,
    pub raw_length: u32,
    pub bytes: Vec<u8>,
}

fn blob_associated(blob_type: BlobType, id: &BlobId) -> [u8; 44] {
    let mut associated = [0u8; 44];
    associated[..11].copy_from_slice(b"coffer blob");
    associated[11] = blob_type.code();
    associated[12..].copy_from_slice(id.as_bytes());
    associated
}

thread_local! {
    // One zstd context per thread and level, reused: a new context per blob spent about
    // 5% of a backup's instructions clearing its tables.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    // Per-thread buffers for blobs that are only looked at (verified, hashed, written
    // out) and for compressed payloads on their way into a sealed blob. Fresh buffers
    // for every blob made a first backup of 1 GiB take a million page faults.
    static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new(Scratch::new()) };
}

/// Scratch buffers larger than this are given back after use rather than kept.
const SCRATCH_RETAINED: usize = 2 << 20;

struct Scratch {
    /// A decrypted payload, at the front; its length is the longest so far.
    payload: Vec<u8>,
    /// A decompressed blob.
    decoded: Vec<u8>,
    /// A compressed blob on its way into a sealed one.
    compressed: Vec<u8>,
}

impl Scratch {
    const fn new() -> Self {
        Self { payload: Vec::new(), decoded: Vec::new(), compressed: Vec::new() }
    }

    fn trim(&mut self) {
        for buffer in [&mut self.payload, &mut self.decoded, &mut self.compressed] {
            if buffer.capacity() > SCRATCH_RETAINED {
                *buffer = Vec::new();
            }
        }
    }
}

/// Runs `work` with this thread's scratch buffers, or with fresh ones if they are in
/// use further up the stack.
fn with_scratch<R>(work: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let result = work(&mut scratch);
            scratch.trim();
            result
        }
        Err(_) => work(&mut Scratch::new()),
    })
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut output = Vec::new();
    compress_into(data, level, &mut output).then_some(output)
}

/// Compresses `data` into `output` (replacing what it held); false if zstd fails.
fn compress_into(data: &[u8], level: i32, output: &mut Vec<u8>) -> bool {
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(current, _)| *current != level) {
            let Ok(compressor) = zstd::bulk::Compressor::new(level) else {
                return false;
            };
            *slot = Some((level, compressor));
        }
        let Some((_, compressor)) = slot.as_mut() else {
            return false;
        };
        output.clear();
        output.reserve(zstd::zstd_safe::compress_bound(data.len()));
        compressor.compress_to_buffer(data, output).is_ok()
    })
}

/// Decompresses a blob body of known size into `output` (replacing what it held).
fn decompress_into(body: &[u8], raw_length: usize, output: &mut Vec<u8>) -> bool {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        let Some(decompressor) = slot.as_mut() else {
            return false;
        };
        output.clear();
        output.reserve_exact(raw_length);
        // The output is bounded by its capacity, at least the expected size; the caller
        // checks the length, so a body that decodes to more is refused either way.
        decompressor.decompress_to_buffer(body, output).is_ok()
    })
}

/// Decompresses into a new buffer of `limit` bytes: the frame may not record its size,
/// and a body that decodes to more fails, which is what the limit asks.
fn decompress(body: &[u8], limit: u64) -> Option<Vec<u8>> {
    let mut output = Vec::new();
    decompress_into(body, usize::try_from(limit).ok()?, &mut output).then_some(output)
}

/// Bytes in each of the three samples `looks_incompressible` compresses.
const SAMPLE: usize = 16 * 1024;

/// True if three samples of a large blob (start, middle, end) each shrink by less than
/// 2% under zstd: the blob is stored as it is without compressing all of it. On a
/// gigabyte of half random, half text-like files this saved a fifth of a first backup's
/// time; a blob any sample of which compresses is compressed whole.
fn looks_incompressible(data: &[u8], level: i32) -> bool {
    if data.len() < 16 * SAMPLE {
        return false;
    }
    let middle = data.len() / 2 - SAMPLE / 2;
    [0, middle, data.len() - SAMPLE].iter().all(|&start| {
        let sample = &data[start..start + SAMPLE];
        compress(sample, level).is_none_or(|compressed| compressed.len() * 100 >= sample.len() * 98)
    })
}

fn encode_payload(data: &[u8], level: i32) -> Vec<u8> {
    if level > 0 && data.len() > 64 && !looks_incompressible(data, level) {
        if let Some(compressed) = compress(data, level) {
            if compressed.len() + 1 < data.len() {
                let mut payload = Vec::with_capacity(compressed.len() + 1);
                payload.push(ZSTD);
                payload.extend_from_slice(&compressed);
                return payload;
            }
        }
    }
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(UNCOMPRESSED);
    payload.extend_from_slice(data);
    payload
}

/// Decodes a payload; a stored one is returned in its own buffer, shifted, not copied.
fn decode_payload(mut payload: Vec<u8>, limit: u64) -> Option<Vec<u8>> {
    let (&flag, body) = payload.split_first()?;
    match flag {
        UNCOMPRESSED => {
            payload.remove(0);
            Some(payload)
        }
        // Blobs (at most a maximum chunk) into a buffer of their known size.
        ZSTD if limit <= 64 << 20 => decompress(body, limit).filter(|data| data.len() as u64 <= limit),
        ZSTD => {
            let decoder = zstd::stream::read::Decoder::new(body).ok()?;
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(decoder, limit + 1), &mut data).ok()?;
            (data.len() as u64 <= limit).then_some(data)
        }
        _ => None,
    }
}

/// Compresses (when it shrinks), seals and then verifies a blob by opening it again,
/// so a compressor or memory fault is caught before anything is stored.
pub fn seal_blob(master: &MasterKey, blob_type: BlobType, id: BlobId, data: &[u8], level: i32) -> Result<SealedBlob> {
    let associated = blob_associated(blob_type, &id);
    let bytes = with_scratch(|scratch| {
        let compressed = level > 0
            && data.len() > 64
            && !looks_incompressible(data, level)
            && compress_into(data, level, &mut scratch.compressed)
            && scratch.compressed.len() + 1 < data.len();
        match compressed {
            true => master.seal_parts(&[&[ZSTD], &scratch.compressed], &associated),
            false => master.seal_parts(&[&[UNCOMPRESSED], data], &associated),
        }
    });
    let raw_length = data.len() as u32;
    if !verify_blob(master, blob_type, id, &bytes, raw_length) {
        return Err(Error::integrity(
            format!("blob {id}"),
            "it did not verify after sealing (memory or compressor fault)",
        ));
    }
    Ok(SealedBlob { id, blob_type, raw_length, bytes })
}

/// Opens a sealed blob and checks its content against its id; `None` if anything is off.
pub fn open_blob(
    master: &MasterKey,
    blob_type: BlobType,
    id: BlobId,
    sealed: &[u8],
    raw_length: u32,
) -> Option<Vec<u8>> {
    visit_blob(master, blob_type, id, sealed, raw_length, <[u8]>::to_vec)
}

/// True if a sealed blob opens and its content matches its id.
pub fn verify_blob(master: &MasterKey, blob_type: BlobType, id: BlobId, sealed: &[u8], raw_length: u32) -> bool {
    visit_blob(master, blob_type, id, sealed, raw_length, |_| ()).is_some()
}

/// Opens a sealed blob into this thread's scratch buffers, checks its content against
/// its id and hands it to `visit`; `None` (and no call) if anything is off.
pub fn visit_blob<R>(
    master: &MasterKey,
    blob_type: BlobType,
    id: BlobId,
    sealed: &[u8],
    raw_length: u32,
    visit: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    if raw_length > MAX_BLOB_LENGTH {
        return None;
    }
    with_scratch(|Scratch { payload, decoded, .. }| {
        let length = master.open_into(sealed, &blob_associated(blob_type, &id), payload)?;
        let (&flag, body) = payload[..length].split_first()?;
        let data: &[u8] = match flag {
            UNCOMPRESSED => body,
            ZSTD if decompress_into(body, raw_length as usize, decoded) => decoded,
            _ => return None,
        };
        (data.len() == raw_length as usize && master.blob_id(data) == id).then(|| visit(data))
    })
}

fn object_associated(kind: &str) -> Vec<u8> {
    format!("coffer {kind}").into_bytes()
}

/// Compresses and seals a repository object (index, snapshot, pack header, lock).
pub fn seal_object(master: &MasterKey, kind: &str, data: &[u8]) -> Vec<u8> {
    master.seal(&encode_payload(data, 3), &object_associated(kind))
}

/// Opens an object sealed by `seal_object`; `name` is used in the error.
pub fn open_object(master: &MasterKey, kind: &str, sealed: &[u8], name: &str) -> Result<Vec<u8>> {
    let payload = master
        .open(sealed, &object_associated(kind))
        .ok_or_else(|| Error::integrity(name, "it does not decrypt (damaged, truncated or not a coffer object)"))?;
    decode_payload(payload, MAX_OBJECT_LENGTH).ok_or_else(|| Error::integrity(name, "its content does not decompress"))
}

/// Collects sealed blobs into one pack, written to `sink` as they come (a temporary file
/// for the packs of a run, so a pack is never held in memory whole; a vector in tests)
/// and hashed as they are written.
#[derive(Debug)]
pub struct PackWriter<W> {
    sink: W,
    hasher: blake3::Hasher,
    length: u64,
    entries: Vec<PackEntry>,
}

/// A finished pack: its id, where its bytes went, its size and what it holds.
#[derive(Debug)]
pub struct FinishedPack<W> {
    pub id: PackId,
    pub sink: W,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

impl<W: std::io::Write> PackWriter<W> {
    pub fn new(sink: W) -> Self {
        Self { sink, hasher: blake3::Hasher::new(), length: 0, entries: Vec::new() }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.length
    }

    /// True when no blob has been added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a sealed blob.
    pub fn add(&mut self, blob: &SealedBlob) -> std::io::Result<()> {
        let offset = u32::try_from(self.length).map_err(|_| std::io::Error::other("a pack reached 4 GiB"))?;
        self.write(&blob.bytes)?;
        self.entries.push(PackEntry {
            id: blob.id,
            blob_type: blob.blob_type,
            offset,
            length: blob.bytes.len() as u32,
            raw_length: blob.raw_length,
        });
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sink.write_all(bytes)?;
        self.hasher.update(bytes);
        self.length += bytes.len() as u64;
        Ok(())
    }

    /// Appends the sealed header and its length, and names the pack by its hash.
    pub fn finish(mut self, master: &MasterKey) -> std::io::Result<FinishedPack<W>> {
        let header =
            seal_object(master, crate::repository::objects::Kind::Pack.seal_label(), &encode_header(&self.entries));
        self.write(&header)?;
        self.write(&(header.len() as u32).to_le_bytes())?;
        self.sink.flush()?;
        let id = PackId(*self.hasher.finalize().as_bytes());
        Ok(FinishedPack { id, sink: self.sink, size: self.length, entries: self.entries })
    }
}

const HEADER_ENTRY_LENGTH: usize = 1 + 4 + 4 + 32;

fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut header = Vec::with_capacity(4 + entries.len() * HEADER_ENTRY_LENGTH);
    header.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        header.push(entry.blob_type.code());
        header.extend_from_slice(&entry.length.to_le_bytes());
        header.extend_from_slice(&entry.raw_length.to_le_bytes());
        header.extend_from_slice(entry.id.as_bytes());
    }
    header
}

/// Decodes a pack header's plaintext; offsets follow from the lengths. `blob_area` is
/// the size of the pack before the header, which the blobs must fill exactly.
pub fn decode_header(plain: &[u8], blob_area: u64, name: &str) -> Result<Vec<PackEntry>> {
    let bad = |reason: &str| Error::integrity(name, format!("its header {reason}"));
    let count = plain.get(..4).ok_or_else(|| bad("is empty"))?;
    let count = u32::from_le_bytes(count.try_into().map_err(|_| bad("is empty"))?) as usize;
    let body = &plain[4..];
    if body.len() != count.checked_mul(HEADER_ENTRY_LENGTH).ok_or_else(|| bad("is too long"))? {
        return Err(bad("has the wrong length for its entry count"));
    }
    let mut offset = 0u64;
    let mut entries = Vec::with_capacity(count);
    for raw in body.chunks_exact(HEADER_ENTRY_LENGTH) {
        let blob_type = BlobType::from_code(raw[0]).ok_or_else(|| bad("names an unknown blob type"))?;
        let length = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
        let raw_length = u32::from_le_bytes([raw[5], raw[6], raw[7], raw[8]]);
        let id = BlobId::from_slice(&raw[9..41]).ok_or_else(|| bad("is malformed"))?;
        let offset32 = u32::try_from(offset).map_err(|_| bad("has offsets beyond 4 GiB"))?;
        entries.push(PackEntry { id, blob_type, offset: offset32, length, raw_length });
        offset += length as u64;
    }
    if offset != blob_area {
        return Err(bad("does not cover the pack's blobs exactly"));
    }
    Ok(entries)
}

/// Reads the entries of a whole pack held in memory, checking its hash against `expected`.
#[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
pub fn read_pack(master: &MasterKey, bytes: &[u8], expected: Option<PackId>, name: &str) -> Result<Vec<PackEntry>> {
    if let Some(expected) = expected {
        if *blake3::hash(bytes).as_bytes() != expected.0 {
            return Err(Error::integrity(name, "its content does not match its name (hash mismatch)"));
        }
    }
    let (header_start, header_length) =
        header_bounds(bytes.get(bytes.len().saturating_sub(4)..).unwrap_or(&[]), bytes.len() as u64, name)?;
    let sealed = &bytes[header_start as usize..(header_start + header_length) as usize];
    let plain = open_object(master, crate::repository::objects::Kind::Pack.seal_label(), sealed, name)?;
    decode_header(&plain, header_start, name)
}

/// From a pack's last four bytes and its size, the start and length of its sealed header.
pub fn header_bounds(last_four: &[u8], pack_size: u64, name: &str) -> Result<(u64, u64)> {
    let length: [u8; 4] = last_four.try_into().map_err(|_| Error::integrity(name, "it is too short to be a pack"))?;
    let length = u32::from_le_bytes(length) as u64;
    let start = pack_size
        .checked_sub(4 + length)
        .ok_or_else(|| Error::integrity(name, "its header length points before its start"))?;
    Ok((start, length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(length: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn large_incompressible_blobs_skip_compression_and_any_compressible_sample_keeps_it() {
        let random = noise(1 << 20, 7);
        assert_eq!(encode_payload(&random, 3)[0], UNCOMPRESSED);
        let mut text = b"blood pressure 120/80, heart rate 64\n".repeat(30_000);
        text.truncate(1 << 20);
        assert_eq!(encode_payload(&text, 3)[0], ZSTD);
        // Random except for a compressible middle: the middle sample sees it.
        let mut mixed = random.clone();
        let middle = mixed.len() / 2 - 64 * 1024;
        mixed[middle..middle + 128 * 1024].copy_from_slice(&text[..128 * 1024]);
        let payload = encode_payload(&mixed, 3);
        assert_eq!(payload[0], ZSTD);
        assert_eq!(decode_payload(payload.clone(), mixed.len() as u64).unwrap(), mixed);
    }

    proptest! {
        #[test]
        fn pack_round_trip(blobs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..3000), any::<bool>()), 0..20)) {
            let master = MasterKey::generate();
            let mut writer = PackWriter::new(Vec::new());
            for (data, metadata) in &blobs {
                let blob_type = if *metadata { BlobType::Metadata } else { BlobType::Data };
                let sealed = seal_blob(&master, blob_type, master.blob_id(data), data, 3).unwrap();
                writer.add(&sealed).unwrap();
            }
            let pack = writer.finish(&master).unwrap();
            prop_assert_eq!(pack.size, pack.sink.len() as u64);
            let entries = read_pack(&master, &pack.sink, Some(pack.id), "pack").unwrap();
            prop_assert_eq!(&entries, &pack.entries);
            for (entry, (data, _)) in entries.iter().zip(&blobs) {
                let sealed = &pack.sink[entry.offset as usize..(entry.offset + entry.length) as usize];
                let opened = open_blob(&master, entry.blob_type, entry.id, sealed, entry.raw_length);
                prop_assert_eq!(opened.as_ref(), Some(data));
            }
        }

        #[test]
        fn header_decoding_never_panics(plain in proptest::collection::vec(any::<u8>(), 0..200), area in any::<u64>()) {
            let _ = decode_header(&plain, area, "pack");
        }
    }

    #[test]
    fn compressible_blobs_shrink_and_random_ones_are_stored() {
        let master = MasterKey::generate();
        let text = vec![b'a'; 100_000];
        let sealed = seal_blob(&master, BlobType::Data, master.blob_id(&text), &text, 3).unwrap();
        assert!(sealed.bytes.len() < 1000);
        let noise: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let sealed = seal_blob(&master, BlobType::Data, master.blob_id(&noise), &noise, 3).unwrap();
        assert!(sealed.bytes.len() <= noise.len() + 1 + crate::repository::crypto::SEAL_OVERHEAD);
    }

    #[test]
    fn relabelled_blob_is_rejected() {
        let master = MasterKey::generate();
        let sealed = seal_blob(&master, BlobType::Data, master.blob_id(b"x"), b"x", 3).unwrap();
        assert!(open_blob(&master, BlobType::Metadata, sealed.id, &sealed.bytes, 1).is_none());
        assert!(open_blob(&master, BlobType::Data, master.blob_id(b"y"), &sealed.bytes, 1).is_none());
    }

    #[test]
    fn damaged_pack_is_named() {
        let master = MasterKey::generate();
        let mut writer = PackWriter::new(Vec::new());
        writer.add(&seal_blob(&master, BlobType::Data, master.blob_id(b"x"), b"x", 3).unwrap()).unwrap();
        let pack = writer.finish(&master).unwrap();
        let mut bytes = pack.sink;
        bytes[3] ^= 1;
        let error = read_pack(&master, &bytes, Some(pack.id), "data/ab/abc").unwrap_err();
        assert!(error.to_string().contains("data/ab/abc"), "{error}");
    }
}
