//! Comparing what the target holds with a snapshot's entry: the kind, then the
//! content (size and mtime, then the SHA-256 of the file against the manifest's), then
//! the metadata a restore sets (mode, times, and owner as root).

use std::io::Read;

use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};
use sha2::{Digest, Sha256};

use super::beneath::TargetDir;
use crate::repository::manifest::{Entry, EntryKind};

/// Extended attributes: names and values.
pub(super) type Xattrs = [(Vec<u8>, Vec<u8>)];

/// How an existing entry differs from the snapshot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Difference {
    None,
    /// Same kind and content; mode, times or owner differ.
    Metadata,
    Content,
    Kind,
}

/// The kind of entry a status describes.
pub(super) fn kind_of(stat: &FileStat) -> EntryKind {
    match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => EntryKind::Dir,
        SFlag::S_IFLNK => EntryKind::Symlink,
        SFlag::S_IFIFO => EntryKind::Fifo,
        SFlag::S_IFCHR => EntryKind::CharDevice,
        SFlag::S_IFBLK => EntryKind::BlockDevice,
        SFlag::S_IFSOCK => EntryKind::Socket,
        _ => EntryKind::File,
    }
}

/// The modification time of a status, in nanoseconds.
pub(super) fn mtime_ns(stat: &FileStat) -> i64 {
    stat.st_mtime.saturating_mul(1_000_000_000).saturating_add(stat.st_mtime_nsec)
}

/// Compares the entry at `relative` (whose status is `stat`) with `entry` and its
/// extended attributes. A regular file of the same size but another mtime is read and
/// hashed (with `checksum`, also one of the same mtime); `hashed` counts the bytes read.
pub(super) fn compare(
    target: &TargetDir,
    relative: &[u8],
    stat: &FileStat,
    (entry, xattrs): (&Entry, &Xattrs),
    checksum: bool,
    hashed: &mut u64,
) -> Difference {
    if kind_of(stat) != entry.kind {
        return Difference::Kind;
    }
    let content_same = match entry.kind {
        EntryKind::File => {
            stat.st_size as u64 == entry.size
                && ((mtime_ns(stat) == entry.mtime_ns && !checksum) || same_content(target, relative, entry, hashed))
        }
        EntryKind::Symlink => target.read_link(relative).ok().as_deref() == entry.link_target.as_deref(),
        EntryKind::CharDevice | EntryKind::BlockDevice => stat.st_rdev == entry.rdev,
        _ => true,
    };
    if !content_same {
        return Difference::Content;
    }
    // A symlink's own mode and times are not kept by every file system: its target is
    // what matters.
    if entry.kind == EntryKind::Symlink {
        return Difference::None;
    }
    let mode_same = stat.st_mode & 0o7777 == entry.mode & 0o7777;
    let owner_same = !crate::system::is_root() || (stat.st_uid == entry.uid && stat.st_gid == entry.gid);
    // A folder's mtime changes whenever its content does; the restore sets it again.
    let time_same = entry.kind == EntryKind::Dir || mtime_ns(stat) == entry.mtime_ns;
    if mode_same && owner_same && time_same && same_xattrs(target, relative, entry.kind, xattrs) {
        Difference::None
    } else {
        Difference::Metadata
    }
}

/// The extended attributes a restore sets and removes (`user.` and `trusted.`; the
/// `security.` and `system.` ones belong to the system).
pub(super) fn managed_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name.starts_with(b"trusted.")
}

/// True if the entry's managed extended attributes are exactly `xattrs`'.
fn same_xattrs(target: &TargetDir, relative: &[u8], kind: EntryKind, xattrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use xattr::FileExt;
    if !matches!(kind, EntryKind::File | EntryKind::Dir) {
        return true;
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
    let file = match target.open(relative, flags, Mode::empty()) {
        Ok(fd) => std::fs::File::from(fd),
        // A file this user may not open (mode 000) cannot be compared, nor changed in
        // place: taken as the same rather than planned as an update bound to fail.
        Err(error) if error.raw_os_error() == Some(libc::EACCES) => return true,
        Err(_) => return false,
    };
    let Ok(names) = file.list_xattr() else { return xattrs.is_empty() };
    let mut present: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for name in names.filter(|name| managed_xattr(name.as_bytes())) {
        match file.get_xattr(&name) {
            Ok(Some(value)) => present.push((name.as_bytes().to_vec(), value)),
            _ => return false,
        }
    }
    let mut wanted: Vec<(Vec<u8>, Vec<u8>)> = xattrs.iter().filter(|(name, _)| managed_xattr(name)).cloned().collect();
    present.sort();
    wanted.sort();
    present == wanted
}

/// True if the file at `relative` hashes to the entry's SHA-256.
fn same_content(target: &TargetDir, relative: &[u8], entry: &Entry, hashed: &mut u64) -> bool {
    let Some(expected) = entry.sha256 else { return false };
    let Ok(fd) = target.open(relative, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()) else { return false };
    let mut file = std::fs::File::from(fd);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                hasher.update(&buffer[..read]);
                *hashed += read as u64;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    hasher.finalize().as_slice() == expected
}
