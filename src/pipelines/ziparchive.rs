//! `dump SNAP:FOLDER --archive zip`: a folder of a snapshot as a ZIP archive written as
//! a stream (to a pipe, which cannot seek back): every entry's sizes and CRC-32 follow
//! its data in a data descriptor, and the central directory comes last. Content is
//! stored as it is (the repository compresses already), each file verified against its
//! SHA-256 on the way out as `dump` of one file is.
//!
//! Every archive is ZIP64 (APPNOTE 6.3.x, section 4.3.9 and 4.5.3), whatever its size:
//! a file over 4 GiB or more than 65,535 entries need no other code path, and readers
//! (Info-ZIP unzip 6, Python's zipfile, 7-Zip, libarchive) read ZIP64 archives of any
//! size. Modes and symlinks are kept as Info-ZIP keeps them (Unix mode in the high 16
//! bits of the external attributes; a symlink's data is its target), and the mtime in
//! the extended timestamp field (0x5455) besides the MS-DOS time (when it fits its 32
//! bits, 1970 to 2038; else the MS-DOS time alone says it, to 2107). Hard links become
//! copies. FIFOs, devices and sockets, which ZIP cannot hold, are left out and counted,
//! and so are names holding a backslash: ZIP names separate folders with `/` only, and
//! an extractor on Windows would read `\` as a separator (`..\..\x` would climb).

use std::io::Write;

use crate::error::{Error, Result};
use crate::repository::manifest::{EntryKind, Manifest};
use crate::Repository;

/// What `dump_zip` wrote.
#[derive(Debug, Default)]
pub struct ZipReport {
    /// Bytes of file content.
    pub bytes: u64,
    /// FIFOs, devices and sockets left out.
    pub left_out: u64,
    /// Entries left out because their name holds a backslash, by path.
    pub backslash_names: Vec<Vec<u8>>,
}

/// Counts what passes through and keeps its CRC-32.
struct Counting<'w> {
    inner: &'w mut dyn Write,
    written: u64,
    crc: crc32fast::Hasher,
    /// Whether written bytes go into the CRC (file data) or not (headers).
    data: bool,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let count = self.inner.write(buf)?;
        self.written += count as u64;
        if self.data {
            self.crc.update(&buf[..count]);
        }
        Ok(count)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One central directory record, kept until the end.
struct Central {
    name: Vec<u8>,
    utf8: bool,
    crc: u32,
    size: u64,
    offset: u64,
    dos_time: u16,
    dos_date: u16,
    mode: u32,
    mtime: i64,
    directory: bool,
}

/// Writes the folder `base` (or a single entry) of `manifest` as a ZIP stream to `out`.
pub fn dump_zip(
    repository: &Repository,
    manifest: &Manifest,
    base: &[u8],
    out: &mut (dyn Write + Send),
) -> Result<ZipReport> {
    let (rows, cut) = crate::tarball::archive_rows(manifest, base)?;
    let archivable = |kind: EntryKind| matches!(kind, EntryKind::Dir | EntryKind::File | EntryKind::Symlink);
    if !rows.iter().any(|(_, entry)| archivable(entry.kind)) {
        let shown = String::from_utf8_lossy(base);
        return Err(Error::InvalidInput(format!(
            "{shown} is a FIFO, device or socket, which a zip archive cannot hold (--archive tar can)"
        )));
    }
    let failed = |e: std::io::Error| Error::io("cannot write the zip stream to", "standard output", e);
    let mut report = ZipReport::default();
    let mut stream = Counting { inner: out, written: 0, crc: crc32fast::Hasher::new(), data: false };
    let mut central: Vec<Central> = Vec::new();
    for (_, entry) in rows {
        let mut name = entry.path.get(cut..).unwrap_or_default().to_vec();
        if name.is_empty() {
            continue; // the root folder itself
        }
        let directory = entry.kind == EntryKind::Dir;
        let type_bits = match entry.kind {
            EntryKind::Dir => libc::S_IFDIR,
            EntryKind::File => libc::S_IFREG,
            EntryKind::Symlink => libc::S_IFLNK,
            _ => {
                report.left_out += 1;
                continue;
            }
        };
        if name.contains(&b'\\') {
            report.backslash_names.push(entry.path.clone());
            continue;
        }
        if directory {
            name.push(b'/');
        }
        let seconds = entry.mtime_ns.div_euclid(1_000_000_000);
        let (dos_time, dos_date) = dos_time_date(seconds);
        let utf8 = std::str::from_utf8(&name).is_ok();
        let offset = stream.written;
        local_header(&mut stream, &name, utf8, dos_time, dos_date, seconds).map_err(failed)?;
        stream.crc = crc32fast::Hasher::new();
        stream.data = true;
        let before = stream.written;
        match entry.kind {
            // Named standard output in errors, so that a reader that went away ends the
            // dump quietly, as for tar and single files.
            EntryKind::File => {
                report.bytes += crate::dump_file(repository, manifest, &entry.path, &mut stream, "standard output")?
            }
            EntryKind::Symlink => stream.write_all(entry.link_target.as_deref().unwrap_or_default()).map_err(failed)?,
            _ => {}
        }
        stream.data = false;
        let size = stream.written - before;
        let crc = std::mem::replace(&mut stream.crc, crc32fast::Hasher::new()).finalize();
        // The data descriptor, with ZIP64 (8-byte) sizes.
        let mut descriptor = Vec::with_capacity(24);
        descriptor.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        descriptor.extend_from_slice(&crc.to_le_bytes());
        descriptor.extend_from_slice(&size.to_le_bytes());
        descriptor.extend_from_slice(&size.to_le_bytes());
        stream.write_all(&descriptor).map_err(failed)?;
        central.push(Central {
            name,
            utf8,
            crc,
            size,
            offset,
            dos_time,
            dos_date,
            mode: type_bits | (entry.mode & 0o7777),
            mtime: seconds,
            directory,
        });
    }
    let directory_offset = stream.written;
    for record in &central {
        central_header(&mut stream, record).map_err(failed)?;
    }
    let directory_size = stream.written - directory_offset;
    end_records(&mut stream, central.len() as u64, directory_size, directory_offset).map_err(failed)?;
    stream.flush().map_err(failed)?;
    Ok(report)
}

/// General purpose flags: bit 3, sizes and CRC in a data descriptor; bit 11, UTF-8 name.
fn flags(utf8: bool) -> u16 {
    0x0008 | if utf8 { 0x0800 } else { 0 }
}

/// Version needed to extract: 4.5, ZIP64.
const VERSION_NEEDED: u16 = 45;
/// Version made by: Unix (3), APPNOTE 6.3.
const VERSION_MADE_BY: u16 = (3 << 8) | 63;

/// The extended timestamp extra field (0x5455) with the modification time only, when
/// the time fits its 32 bits as unzip reads them (else unzip would restore a clamped
/// time): none otherwise, and the MS-DOS time says it.
fn timestamp_field(seconds: i64) -> Vec<u8> {
    if !(0..=i64::from(i32::MAX)).contains(&seconds) {
        return Vec::new();
    }
    let mut field = Vec::with_capacity(9);
    field.extend_from_slice(&0x5455u16.to_le_bytes());
    field.extend_from_slice(&5u16.to_le_bytes());
    field.push(1); // the modification time is present
    field.extend_from_slice(&(seconds as i32).to_le_bytes());
    field
}

fn local_header(
    out: &mut dyn Write,
    name: &[u8],
    utf8: bool,
    time: u16,
    date: u16,
    seconds: i64,
) -> std::io::Result<()> {
    // ZIP64 extra field with sizes 0: the real ones follow in the data descriptor.
    let mut extra = Vec::with_capacity(29);
    extra.extend_from_slice(&0x0001u16.to_le_bytes());
    extra.extend_from_slice(&16u16.to_le_bytes());
    extra.extend_from_slice(&0u64.to_le_bytes());
    extra.extend_from_slice(&0u64.to_le_bytes());
    extra.extend_from_slice(&timestamp_field(seconds));
    let mut header = Vec::with_capacity(30 + name.len() + extra.len());
    header.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    header.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
    header.extend_from_slice(&flags(utf8).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // stored
    header.extend_from_slice(&time.to_le_bytes());
    header.extend_from_slice(&date.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // CRC-32: in the descriptor
    header.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes()); // sizes: in ZIP64 fields
    header.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    header.extend_from_slice(&(name.len() as u16).to_le_bytes());
    header.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    header.extend_from_slice(name);
    header.extend_from_slice(&extra);
    out.write_all(&header)
}

fn central_header(out: &mut dyn Write, record: &Central) -> std::io::Result<()> {
    let mut extra = Vec::with_capacity(37);
    extra.extend_from_slice(&0x0001u16.to_le_bytes());
    extra.extend_from_slice(&24u16.to_le_bytes());
    extra.extend_from_slice(&record.size.to_le_bytes()); // uncompressed
    extra.extend_from_slice(&record.size.to_le_bytes()); // compressed
    extra.extend_from_slice(&record.offset.to_le_bytes());
    extra.extend_from_slice(&timestamp_field(record.mtime));
    let dos_attributes: u32 = if record.directory { 0x10 } else { 0 };
    let mut header = Vec::with_capacity(46 + record.name.len() + extra.len());
    header.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    header.extend_from_slice(&VERSION_MADE_BY.to_le_bytes());
    header.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
    header.extend_from_slice(&flags(record.utf8).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&record.dos_time.to_le_bytes());
    header.extend_from_slice(&record.dos_date.to_le_bytes());
    header.extend_from_slice(&record.crc.to_le_bytes());
    header.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    header.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    header.extend_from_slice(&(record.name.len() as u16).to_le_bytes());
    header.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // comment
    header.extend_from_slice(&0u16.to_le_bytes()); // disk
    header.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    header.extend_from_slice(&((record.mode << 16) | dos_attributes).to_le_bytes());
    header.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes()); // offset: in the ZIP64 field
    header.extend_from_slice(&record.name);
    header.extend_from_slice(&extra);
    out.write_all(&header)
}

/// The ZIP64 end of central directory record and its locator, then the classic end
/// record whose fields all say "see ZIP64".
fn end_records(out: &mut Counting<'_>, entries: u64, size: u64, offset: u64) -> std::io::Result<()> {
    let zip64_end = out.written;
    let mut end = Vec::with_capacity(56 + 20 + 22);
    end.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    end.extend_from_slice(&44u64.to_le_bytes()); // size of the rest of this record
    end.extend_from_slice(&VERSION_MADE_BY.to_le_bytes());
    end.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
    end.extend_from_slice(&0u32.to_le_bytes()); // this disk
    end.extend_from_slice(&0u32.to_le_bytes()); // disk of the directory
    end.extend_from_slice(&entries.to_le_bytes());
    end.extend_from_slice(&entries.to_le_bytes());
    end.extend_from_slice(&size.to_le_bytes());
    end.extend_from_slice(&offset.to_le_bytes());
    end.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    end.extend_from_slice(&0u32.to_le_bytes());
    end.extend_from_slice(&zip64_end.to_le_bytes());
    end.extend_from_slice(&1u32.to_le_bytes()); // disks
    end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    end.extend_from_slice(&0xFFFFu16.to_le_bytes());
    end.extend_from_slice(&0xFFFFu16.to_le_bytes());
    end.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    end.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes()); // comment
    out.write_all(&end)
}

/// MS-DOS time and date (UTC, two-second steps, 1980 to 2107; clamped to those years).
fn dos_time_date(seconds: i64) -> (u16, u16) {
    let Ok(time) = jiff::Timestamp::from_second(seconds) else { return (0, 0x21) };
    let civil = time.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    if civil.year() < 1980 {
        return (0, (1 << 5) | 1); // 1980-01-01 00:00
    }
    if civil.year() > 2107 {
        return ((23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31);
    }
    let time = ((civil.hour() as u16) << 11) | ((civil.minute() as u16) << 5) | (civil.second() as u16 / 2);
    let date = (((civil.year() - 1980) as u16) << 9) | ((civil.month() as u16) << 5) | civil.day() as u16;
    (time, date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_times() {
        // 2026-12-03 23:17:45 UTC.
        let (time, date) = dos_time_date(1_796_339_865);
        assert_eq!((time >> 11, (time >> 5) & 63, (time & 31) * 2), (23, 17, 44));
        assert_eq!(((date >> 9) + 1980, (date >> 5) & 15, date & 31), (2026, 12, 3));
        assert_eq!(dos_time_date(-305_121_600), (0, (1 << 5) | 1));
    }
}
