//! Recreating special entries and applying metadata: owner, mode, extended attributes, times.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::{Action, PlannedEntry};
use crate::error::{Error, Result};
use crate::manifest::EntryKind;

fn remove_existing(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Creates symlinks, fifos and devices; files and directories are made elsewhere.
pub(super) fn create_special(planned: &PlannedEntry) -> Result<()> {
    let path = &planned.target;
    let entry = &planned.entry;
    let mode = Mode::from_bits_truncate(entry.mode & 0o777);
    let made = match entry.kind {
        EntryKind::Symlink => {
            remove_existing(path);
            let target = OsStr::from_bytes(entry.link_target.as_deref().unwrap_or_default());
            std::os::unix::fs::symlink(target, path)
        }
        EntryKind::Fifo => {
            remove_existing(path);
            nix::unistd::mkfifo(path, mode).map_err(std::io::Error::from)
        }
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            remove_existing(path);
            let kind = if entry.kind == EntryKind::CharDevice { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
            nix::sys::stat::mknod(path, kind, mode, entry.rdev as libc::dev_t).map_err(std::io::Error::from)
        }
        _ => Ok(()),
    };
    made.map_err(|e| Error::io("cannot create", path, e))
}

/// Applies metadata to everything restored: other entries first, then directories from
/// the deepest up, so creating entries does not disturb a directory's times afterwards.
pub(super) fn apply_all(entries: &[&PlannedEntry], warnings: &mut Vec<String>) {
    let mut owners = crate::system::is_root().then(crate::system::OwnerIds::default);
    for planned in entries.iter().filter(|p| p.entry.kind != EntryKind::Dir && p.action != Action::HardLink) {
        apply(planned, owners.as_mut(), warnings);
    }
    for planned in entries.iter().rev().filter(|p| p.entry.kind == EntryKind::Dir) {
        apply(planned, owners.as_mut(), warnings);
    }
}

/// Sets owner (when `owners` is given: running as root), mode, xattrs and times.
fn apply(planned: &PlannedEntry, owners: Option<&mut crate::system::OwnerIds>, warnings: &mut Vec<String>) {
    let (entry, path) = (&planned.entry, planned.target.as_path());
    if let Some(owners) = owners {
        let uid = entry.user.as_deref().and_then(|name| owners.uid_of(name)).unwrap_or(entry.uid);
        let gid = entry.group.as_deref().and_then(|name| owners.gid_of(name)).unwrap_or(entry.gid);
        let owned = nix::unistd::fchownat(
            AT_FDCWD,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Err(error) = owned {
            warnings.push(format!("cannot set owner of {}: {error}", path.display()));
        }
    }
    if entry.kind != EntryKind::Symlink {
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(entry.mode)) {
            warnings.push(format!("cannot set mode of {}: {error}", path.display()));
        }
    }
    apply_xattrs(&planned.xattrs, path, warnings);
    let mtime = TimeSpec::new(entry.mtime_ns.div_euclid(1_000_000_000), entry.mtime_ns.rem_euclid(1_000_000_000));
    if let Err(error) = nix::sys::stat::utimensat(AT_FDCWD, path, &mtime, &mtime, UtimensatFlags::NoFollowSymlink) {
        warnings.push(format!("cannot set times of {}: {error}", path.display()));
    }
}

fn apply_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)], path: &Path, warnings: &mut Vec<String>) {
    for (name, value) in xattrs {
        if let Err(error) = xattr::set(path, OsStr::from_bytes(name), value) {
            warnings.push(format!(
                "cannot set extended attribute {} of {}: {error}",
                String::from_utf8_lossy(name),
                path.display()
            ));
        }
    }
}
