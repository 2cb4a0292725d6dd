//! Recreating special entries and applying metadata (owner, mode, extended attributes,
//! times) through open handles, never by a path a symlink could redirect.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::{PlannedEntry, Run};
use crate::repository::manifest::{Entry, EntryKind};
use crate::system::OwnerIds;

/// Creates a symlink, fifo or device under a temporary name, gives it its metadata
/// and renames it over whatever is at its final name (an empty folder included).
pub(super) fn create_special(
    run: &Run<'_>,
    planned: &PlannedEntry,
    owners: Option<&mut OwnerIds>,
    warnings: &mut Vec<String>,
) -> io::Result<()> {
    let (folder, _) = run.target.parent(&planned.relative)?;
    let name = run.temporary_name();
    let entry = &planned.entry;
    let private = Mode::from_bits_truncate(0o600);
    match entry.kind {
        EntryKind::Symlink => {
            let target = OsStr::from_bytes(entry.link_target.as_deref().unwrap_or_default());
            nix::unistd::symlinkat(target, &folder, name.as_os_str())?;
        }
        EntryKind::Fifo => nix::sys::stat::mknodat(&folder, name.as_os_str(), SFlag::S_IFIFO, private, 0)?,
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            let kind = if entry.kind == EntryKind::CharDevice { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
            nix::sys::stat::mknodat(&folder, name.as_os_str(), kind, private, entry.rdev as libc::dev_t)?;
        }
        _ => return Ok(()),
    }
    let applied = match entry.kind {
        EntryKind::Symlink => apply_to_symlink(&folder, &name, planned, owners, warnings),
        _ => apply_to_node(&folder, &name, planned, owners, warnings),
    };
    let place = Place::of(run, planned);
    let placed = applied.and_then(|()| rename_into_place(run, &planned.relative, &name, place));
    if placed.is_err() {
        let _ = nix::unistd::unlinkat(&folder, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    placed
}

/// What a temporary entry may replace when it is renamed to its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// Nothing: the name was free when the plan was made, and whatever was made there
    /// since stays (the entry fails instead).
    New,
    /// A file, a symlink or an empty folder.
    Replace,
    /// Also a folder with content: the plan replaces it, and a safety snapshot holds it.
    ReplaceFolder,
}

impl Place {
    pub(super) fn of(run: &Run<'_>, planned: &PlannedEntry) -> Self {
        match planned.action {
            _ if !planned.existed => Place::New,
            super::Action::Overwrite if run.replace_folders => Place::ReplaceFolder,
            _ => Place::Replace,
        }
    }
}

/// Renames the temporary entry `name` (in the folder of `relative`) to `relative`, as
/// far as `place` allows: an empty folder in the way is removed; a folder with content
/// only with `Place::ReplaceFolder`; nothing at all with `Place::New`.
pub(super) fn rename_into_place(run: &Run<'_>, relative: &[u8], name: &OsStr, place: Place) -> io::Result<()> {
    let (folder, final_name) = run.target.parent(relative)?;
    let renamed = match place {
        Place::New => match nix::fcntl::renameat2(&folder, name, &folder, final_name, RenameFlags::RENAME_NOREPLACE) {
            Err(Errno::EEXIST) => {
                Err(io::Error::other("something was made under this name during the restore; it was left as it is"))?
            }
            // A file system without RENAME_NOREPLACE: look, then rename.
            Err(Errno::EINVAL) => match super::beneath::stat_at(&folder, final_name)? {
                Some(_) => Err(io::Error::other(
                    "something was made under this name during the restore; it was left as it is",
                ))?,
                None => nix::fcntl::renameat(&folder, name, &folder, final_name),
            },
            other => other,
        },
        Place::Replace | Place::ReplaceFolder => match nix::fcntl::renameat(&folder, name, &folder, final_name) {
            Err(Errno::EISDIR) | Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => {
                match nix::unistd::unlinkat(&folder, final_name, UnlinkatFlags::RemoveDir) {
                    Ok(()) => nix::fcntl::renameat(&folder, name, &folder, final_name),
                    Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) if place == Place::ReplaceFolder => {
                        run.target.remove_tree(relative)?;
                        nix::fcntl::renameat(&folder, name, &folder, final_name)
                    }
                    Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => {
                        Err(io::Error::other("a folder that is not empty is in the way"))?
                    }
                    Err(error) => Err(error),
                }
            }
            other => other,
        },
    };
    // Renaming one name of a file over another name of the same file does nothing
    // and succeeds: the temporary name must still go. A rename that refuses to
    // replace anything (a new name) has moved it for sure.
    if place == Place::New && renamed.is_ok() {
        return Ok(renamed?);
    }
    match nix::unistd::unlinkat(&folder, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(error) => return Err(error.into()),
    }
    Ok(renamed?)
}

/// Sets the metadata of a regular file the target already holds with the right
/// content, through a handle on that file (never through a symlink).
pub(super) fn update_in_place(
    run: &Run<'_>,
    planned: &PlannedEntry,
    owners: Option<&mut OwnerIds>,
    warnings: &mut Vec<String>,
) -> io::Result<()> {
    let file = run.target.open(&planned.relative, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?;
    let stat = nix::sys::stat::fstat(&file)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(io::Error::other("it is no longer a regular file"));
    }
    apply_to_handle(&file, planned, owners, warnings);
    Ok(())
}

/// Applies a folder's metadata (after everything inside it was made).
pub(super) fn apply_dir(
    run: &Run<'_>,
    planned: &PlannedEntry,
    inode: Option<u64>,
    owners: Option<&mut OwnerIds>,
    warnings: &mut Vec<String>,
) {
    let shown = planned.target.display();
    let opened = run.target.open(&planned.relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty());
    let folder = match opened {
        Ok(folder) => folder,
        Err(error) => return warnings.push(format!("cannot set metadata of {shown}: {error}")),
    };
    // The folder this restore made or found, not one someone moved into its place.
    if inode.is_some_and(|inode| nix::sys::stat::fstat(&folder).is_ok_and(|stat| stat.st_ino != inode)) {
        return warnings.push(format!("not setting metadata of {shown}: it was replaced during the restore"));
    }
    apply_to_handle(&folder, planned, owners, warnings)
}

/// Sets owner (as root), mode, extended attributes and times of an open file or folder.
pub(super) fn apply_to_handle(
    handle: &OwnedFd,
    planned: &PlannedEntry,
    owners: Option<&mut OwnerIds>,
    warnings: &mut Vec<String>,
) {
    let (entry, shown) = (&planned.entry, planned.target.display());
    if let Some((uid, gid)) = owners.map(|owners| owner_of(entry, owners)) {
        if let Err(error) = nix::unistd::fchown(handle, Some(uid), Some(gid)) {
            warnings.push(format!("cannot set owner of {shown}: {error}"));
        }
    }
    // After the owner: changing the owner clears setuid and setgid bits.
    if let Err(error) = nix::sys::stat::fchmod(handle, Mode::from_bits_truncate(entry.mode & 0o7777)) {
        warnings.push(format!("cannot set mode of {shown}: {error}"));
    }
    for (name, value) in &planned.xattrs {
        if let Err(error) = set_xattr(XattrTarget::Handle(handle.as_fd()), name, value) {
            warnings.push(xattr_warning(name, &shown, error));
        }
    }
    // An entry that was there before may hold attributes the snapshot's lacks.
    if planned.existed {
        remove_other_xattrs(handle, planned, warnings);
    }
    let mtime = mtime_of(entry);
    if let Err(error) = nix::sys::stat::futimens(handle, &mtime, &mtime) {
        warnings.push(format!("cannot set times of {shown}: {error}"));
    }
}

/// Removes the `user.` and `trusted.` extended attributes the snapshot's entry lacks.
fn remove_other_xattrs(handle: &OwnedFd, planned: &PlannedEntry, warnings: &mut Vec<String>) {
    use xattr::FileExt;
    let Ok(file) = handle.try_clone().map(std::fs::File::from) else { return };
    let Ok(names) = file.list_xattr() else { return };
    for name in names {
        let name = name.as_bytes();
        if super::compare::managed_xattr(name) && !planned.xattrs.iter().any(|(kept, _)| kept == name) {
            if let Err(error) = file.remove_xattr(OsStr::from_bytes(name)) {
                warnings.push(format!(
                    "cannot remove extended attribute {} of {}: {error}",
                    String::from_utf8_lossy(name),
                    planned.target.display()
                ));
            }
        }
    }
}

/// A symlink's metadata, through its folder's handle and without following it.
fn apply_to_symlink(
    folder: &OwnedFd,
    name: &OsStr,
    planned: &PlannedEntry,
    owners: Option<&mut OwnerIds>,
    warnings: &mut Vec<String>,
) -> io::Result<()> {
    let entry = &planned.entry;
    let shown = planned.target.display();
    if let Some((uid, gid)) = owners.map(|owners| owner_of(entry, owners)) {
        if let Err(error) = nix::unistd::fchownat(folder, name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW) {
            warnings.push(format!("cannot set owner of {shown}: {error}"));
        }
    }
    let path = super::beneath::proc_path(folder.as_fd(), Some(name));
    for (attribute, value) in &planned.xattrs {
        if let Err(error) = set_xattr(XattrTarget::Link(&path), attribute, value) {
            warnings.push(xattr_warning(attribute, &shown, error));
        }
    }
    let mtime = mtime_of(entry);
    nix::sys::stat::utimensat(folder, name, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
        .unwrap_or_else(|error| warnings.push(format!("cannot set times of {shown}: {error}")));
    Ok(())
}

/// A fifo's or device's metadata, through an `O_PATH` handle of exactly the node this
/// run made (opening a device could have side effects).
fn apply_to_node(
    folder: &OwnedFd,
    name: &OsStr,
    planned: &PlannedEntry,
    owners: Option<&mut OwnerIds>,
    warnings: &mut Vec<String>,
) -> io::Result<()> {
    let entry = &planned.entry;
    let shown = planned.target.display();
    let node = nix::fcntl::openat(folder, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
    let stat = nix::sys::stat::fstat(&node)?;
    let expected = match entry.kind {
        EntryKind::Fifo => SFlag::S_IFIFO,
        EntryKind::CharDevice => SFlag::S_IFCHR,
        _ => SFlag::S_IFBLK,
    };
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != expected {
        return Err(io::Error::other("the new entry was replaced by another kind of file"));
    }
    if let Some((uid, gid)) = owners.map(|owners| owner_of(entry, owners)) {
        if let Err(error) = nix::unistd::fchownat(&node, "", Some(uid), Some(gid), AtFlags::AT_EMPTY_PATH) {
            warnings.push(format!("cannot set owner of {shown}: {error}"));
        }
    }
    // `/proc/self/fd/N` names exactly this node; following it cannot lead elsewhere.
    let path = super::beneath::proc_path(node.as_fd(), None);
    let mode = Mode::from_bits_truncate(entry.mode & 0o7777);
    if let Err(error) =
        nix::sys::stat::fchmodat(nix::fcntl::AT_FDCWD, &path, mode, nix::sys::stat::FchmodatFlags::FollowSymlink)
    {
        warnings.push(format!("cannot set mode of {shown}: {error}"));
    }
    for (attribute, value) in &planned.xattrs {
        if let Err(error) = set_xattr(XattrTarget::Path(&path), attribute, value) {
            warnings.push(xattr_warning(attribute, &shown, error));
        }
    }
    let mtime = mtime_of(entry);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &path, &mtime, &mtime, UtimensatFlags::FollowSymlink)
        .unwrap_or_else(|error| warnings.push(format!("cannot set times of {shown}: {error}")));
    Ok(())
}

/// The local owner of an entry: by name where the name exists here, else by number.
fn owner_of(entry: &Entry, owners: &mut OwnerIds) -> (Uid, Gid) {
    let uid = entry.user.as_deref().and_then(|name| owners.uid_of(name)).unwrap_or(entry.uid);
    let gid = entry.group.as_deref().and_then(|name| owners.gid_of(name)).unwrap_or(entry.gid);
    (Uid::from_raw(uid), Gid::from_raw(gid))
}

fn mtime_of(entry: &Entry) -> TimeSpec {
    TimeSpec::new(entry.mtime_ns.div_euclid(1_000_000_000), entry.mtime_ns.rem_euclid(1_000_000_000))
}

fn xattr_warning(name: &[u8], shown: &std::path::Display<'_>, error: io::Error) -> String {
    format!("cannot set extended attribute {} of {shown}: {error}", String::from_utf8_lossy(name))
}

/// What an extended attribute is set on.
enum XattrTarget<'a> {
    /// An open file or folder.
    Handle(std::os::fd::BorrowedFd<'a>),
    /// A path whose last component is not followed (a symlink).
    Link(&'a std::path::Path),
    /// A `/proc/self/fd/N` path, followed to exactly that node.
    Path(&'a std::path::Path),
}

fn set_xattr(target: XattrTarget<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let (data, size) = (value.as_ptr().cast::<libc::c_void>(), value.len());
    let path_of = |path: &std::path::Path| {
        CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    // SAFETY: every pointer is to a live, NUL-terminated string or to `value`'s bytes.
    let result = match target {
        XattrTarget::Handle(fd) => unsafe {
            libc::fsetxattr(std::os::fd::AsRawFd::as_raw_fd(&fd), name.as_ptr(), data, size, 0)
        },
        XattrTarget::Link(path) => unsafe { libc::lsetxattr(path_of(path)?.as_ptr(), name.as_ptr(), data, size, 0) },
        XattrTarget::Path(path) => unsafe { libc::setxattr(path_of(path)?.as_ptr(), name.as_ptr(), data, size, 0) },
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
