//! `dump SNAP:FOLDER --archive tar`: a folder of a snapshot as a tar stream (GNU
//! format, so long names and owners' names fit; a POSIX extended header carries an
//! mtime with nanoseconds or before 1970), every file's
//! content verified against its SHA-256 on the way out, as `dump` of one file does.
//! Names are relative to the folder's parent (`/srv/studies` gives `studies/...`),
//! as `tar -C /srv -c studies` would write them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};
use crate::repository::manifest::{EntryKind, Manifest};
use crate::Repository;

/// Writes the folder `base` (or a single entry) of `manifest` as a tar stream to `out`;
/// returns the bytes of file content written. Sockets, which tar cannot hold, are left
/// out; a hard link whose first name is inside the folder becomes a link entry.
pub fn dump_tar(
    repository: &Repository,
    manifest: &Manifest,
    base: &[u8],
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let (rows, cut) = archive_rows(manifest, base)?;
    let mut builder = tar::Builder::new(out);
    let mut first_names: HashMap<i64, Vec<u8>> = HashMap::new();
    let mut written = 0;
    let failed = |e: std::io::Error| Error::io("cannot write the tar stream to", "standard output", e);
    for (row, entry) in rows {
        let name = OsStr::from_bytes(entry.path.get(cut..).unwrap_or_default());
        if name.is_empty() {
            continue; // the root folder itself
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid as u64);
        header.set_gid(entry.gid as u64);
        header.set_mtime(entry.mtime_ns.max(0) as u64 / 1_000_000_000);
        if let Some(user) = &entry.user {
            let _ = header.set_username(user);
        }
        if let Some(group) = &entry.group {
            let _ = header.set_groupname(group);
        }
        header.set_size(0);
        if entry.kind != EntryKind::Socket {
            pax_mtime(&mut builder, entry.mtime_ns).map_err(failed)?;
        }
        let leader = entry.hardlink_group.and_then(|group| first_names.get(&group).cloned());
        match entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut header, name, std::io::empty()).map_err(failed)?;
            }
            EntryKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                // The target exactly as stored (`a//b` and `x/.` mean something), in a
                // GNU long-link record first when it does not fit the header.
                let target = entry.link_target.as_deref().unwrap_or_default();
                if target.len() > 100 {
                    let mut long = tar::Header::new_gnu();
                    long.set_entry_type(tar::EntryType::GNULongLink);
                    if let Some(gnu) = long.as_gnu_mut() {
                        gnu.name[..13].copy_from_slice(b"././@LongLink");
                    }
                    long.set_mode(0o644);
                    long.set_size(target.len() as u64 + 1);
                    long.set_cksum();
                    builder.append(&long, [target, b"\0"].concat().as_slice()).map_err(failed)?;
                }
                header.set_link_name_literal(&target[..target.len().min(100)]).map_err(failed)?;
                builder.append_data(&mut header, name, std::io::empty()).map_err(failed)?;
            }
            EntryKind::File if leader.is_some() => {
                header.set_entry_type(tar::EntryType::Link);
                let target = leader.unwrap_or_default();
                builder.append_link(&mut header, name, OsStr::from_bytes(&target)).map_err(failed)?;
            }
            EntryKind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size);
                written += append_file(repository, manifest, &entry.path, &mut builder, &mut header, name)?;
                if let Some(group) = entry.hardlink_group.filter(|&group| group == row) {
                    first_names.insert(group, entry.path.get(cut..).unwrap_or_default().to_vec());
                }
            }
            EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => {
                header.set_entry_type(match entry.kind {
                    EntryKind::Fifo => tar::EntryType::Fifo,
                    EntryKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                let _ = header.set_device_major(libc::major(entry.rdev) as u32);
                let _ = header.set_device_minor(libc::minor(entry.rdev) as u32);
                builder.append_data(&mut header, name, std::io::empty()).map_err(failed)?;
            }
            EntryKind::Socket => {}
        }
    }
    builder.into_inner().map_err(failed)?.flush().map_err(failed)?;
    Ok(written)
}

/// The entries of `base` in tree order, a folder's whole content right after it (the
/// manifest's byte order puts `b-x` between `b` and `b/y`): an archiver sets a folder's
/// time once it is done with it, and a hard link's first name must come before the
/// others. With them, where names start: after the parent's slash (`/srv/studies/x`
/// becomes `studies/x`; `/` gives `srv/...`).
pub(crate) fn archive_rows(manifest: &Manifest, base: &[u8]) -> Result<(Vec<(i64, crate::Entry)>, usize)> {
    let base = if base.len() > 1 { base.strip_suffix(b"/").unwrap_or(base) } else { base };
    let mut rows = manifest.entries_under(base)?;
    rows.sort_by(|(_, a), (_, b)| a.path.split(|&c| c == b'/').cmp(b.path.split(|&c| c == b'/')));
    if rows.is_empty() {
        return Err(Error::NotFound { what: format!("path {} in the snapshot", String::from_utf8_lossy(base)) });
    }
    let cut = base.iter().rposition(|&b| b == b'/').map_or(0, |slash| slash + 1);
    Ok((rows, cut))
}

/// A POSIX extended header (`x`) with the exact mtime, before an entry whose time has
/// nanoseconds or lies before 1970: the GNU header holds whole seconds from 1970 only.
/// GNU tar, bsdtar and Python's tarfile read it, in a GNU archive too.
fn pax_mtime<W: Write>(builder: &mut tar::Builder<W>, mtime_ns: i64) -> std::io::Result<()> {
    if mtime_ns >= 0 && mtime_ns % 1_000_000_000 == 0 {
        return Ok(());
    }
    let sign = if mtime_ns < 0 { "-" } else { "" };
    let magnitude = mtime_ns.unsigned_abs();
    let body = format!(" mtime={sign}{}.{:09}\n", magnitude / 1_000_000_000, magnitude % 1_000_000_000);
    // The record starts with its own length in decimal, digits included.
    let mut length = body.len() + 1;
    while length != body.len() + length.to_string().len() {
        length = body.len() + length.to_string().len();
    }
    let record = format!("{length}{body}");
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_path("././@PaxHeader")?;
    header.set_mode(0o644);
    header.set_size(record.len() as u64);
    header.set_cksum();
    builder.append(&header, record.as_bytes())
}

/// Files up to this size are verified into memory and appended whole: a thread and a
/// pipe per file would cost more than the file on a tree of many small files.
const IN_MEMORY: u64 = 4 * 1024 * 1024;

/// Streams one file's verified content into the archive: `dump_file` writes into a
/// pipe on this thread (the manifest stays here) while the tar builder reads it on
/// another. A damaged blob stops the stream with the error.
fn append_file(
    repository: &Repository,
    manifest: &Manifest,
    path: &[u8],
    builder: &mut tar::Builder<&mut (dyn Write + Send)>,
    header: &mut tar::Header,
    name: &OsStr,
) -> Result<u64> {
    let failed = |e: std::io::Error| Error::io("cannot write the tar stream to", "standard output", e);
    if header.size().unwrap_or(u64::MAX) <= IN_MEMORY {
        let mut content = Vec::new();
        let bytes = crate::dump_file(repository, manifest, path, &mut content, "the tar stream")?;
        builder.append_data(header, name, content.as_slice()).map_err(failed)?;
        return Ok(bytes);
    }
    let (reader, writer) = nix::unistd::pipe().map_err(|errno| failed(errno.into()))?;
    let (reader, mut writer) = (std::fs::File::from(reader), std::fs::File::from(writer));
    std::thread::scope(|scope| {
        let appending = scope.spawn(move || builder.append_data(header, name, reader));
        let dumped = crate::dump_file(repository, manifest, path, &mut writer, "the tar stream");
        drop(writer);
        let appended = appending.join().unwrap_or_else(|_| Err(std::io::Error::other("the tar writer stopped")));
        // A writer that failed (stdout closed) is the cause of the pipe breaking under
        // the dump; otherwise the dump's own error (damage) is.
        match (dumped, appended) {
            (_, Err(error)) => Err(failed(error)),
            (dumped, Ok(())) => dumped,
        }
    })
}
