//! The restore target as an open directory: every path below it is resolved without
//! following a symlink, so nothing outside the target is created, replaced or changed,
//! whatever a local user plants in it.
//!
//! Paths are relative byte strings (`a/b/c`, empty for the target itself) whose
//! components were validated when the manifest was read. They are opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`; where the kernel or a seccomp
//! filter refuses openat2, one component at a time with `O_NOFOLLOW`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// Names of temporary files of a restore start with this.
pub(super) const TEMPORARY_PREFIX: &str = ".coffer-restore-";

/// An open restore target.
pub(super) struct TargetDir {
    root: OwnedFd,
    path: PathBuf,
    /// Cleared once openat2 turned out to be unavailable.
    openat2: AtomicBool,
}

/// The outcome of [`TargetDir::lock`]; the lock is held while the value lives.
pub(super) enum TargetLock {
    Held(#[allow(dead_code)] OwnedFd),
    Unsupported,
    Busy,
}

/// A folder made (or found) by [`TargetDir::make_dir`].
#[derive(Debug, Clone, Copy)]
pub(super) struct MadeDir {
    pub existed: bool,
    /// Its inode: its metadata is later set only on this folder, not on one a local
    /// user put in its place.
    pub inode: u64,
}

/// What an entry of the target is, as far as a restore cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Missing,
    Dir,
    Other,
}

impl TargetDir {
    /// Opens the target folder, creating it (and its parents) if needed. The target
    /// path itself is the user's choice, so symlinks in it are followed.
    pub fn create(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        Self::open_dir(path)
    }

    /// Opens the target folder if it exists.
    pub fn open_existing(path: &Path) -> io::Result<Option<Self>> {
        match Self::open_dir(path) {
            Ok(target) => Ok(Some(target)),
            // Missing, or below a file: execute will say it cannot be created.
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Opens an existing target folder without following any symlink on its path: for a
    /// path that was resolved earlier (a rollback's), so a symlink put in place of
    /// any of its folders since is refused (ELOOP), not followed.
    pub fn open_strict(path: &Path) -> io::Result<Self> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        let how = OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        let root = match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how) {
            Err(Errno::ENOSYS) | Err(Errno::EPERM) => {
                let walk = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let mut current = nix::fcntl::open("/", walk, Mode::empty())?;
                let names: Vec<_> = path
                    .components()
                    .filter_map(|c| match c {
                        std::path::Component::Normal(name) => Some(name),
                        _ => None,
                    })
                    .collect();
                for (index, name) in names.iter().enumerate() {
                    let last = index + 1 == names.len();
                    current = nix::fcntl::openat(&current, *name, if last { flags } else { walk }, Mode::empty())?;
                }
                current
            }
            other => other?,
        };
        Ok(Self { root, path: path.to_path_buf(), openat2: AtomicBool::new(true) })
    }

    fn open_dir(path: &Path) -> io::Result<Self> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open(path, flags, Mode::empty())?;
        Ok(Self { root, path: path.to_path_buf(), openat2: AtomicBool::new(true) })
    }

    /// The target's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry, for messages.
    pub fn display(&self, relative: &[u8]) -> PathBuf {
        if relative.is_empty() {
            self.path.clone()
        } else {
            self.path.join(OsStr::from_bytes(relative))
        }
    }

    /// Opens `relative` below the target; a symlink anywhere on the way (the last
    /// component included, unless `O_PATH` asks for the link itself) fails with ELOOP
    /// or ENOTDIR, and `..` or an absolute path with EINVAL.
    pub fn open(&self, relative: &[u8], flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let components = components(relative)?;
        if components.is_empty() {
            return Ok(nix::fcntl::openat(self.root.as_fd(), ".", flags & !OFlag::O_NOFOLLOW, mode)?);
        }
        if self.openat2.load(Ordering::Relaxed) {
            let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
            let how = OpenHow::new().flags(flags).mode(mode).resolve(resolve);
            match nix::fcntl::openat2(self.root.as_fd(), OsStr::from_bytes(relative), how) {
                // ENOSYS: kernel before 5.6; EPERM: a seccomp filter (some containers).
                Err(Errno::ENOSYS) | Err(Errno::EPERM) => self.openat2.store(false, Ordering::Relaxed),
                other => return Ok(other?),
            }
        }
        self.open_by_components(&components, flags, mode)
    }

    fn open_by_components(&self, components: &[&[u8]], flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let walk = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut current: Option<OwnedFd> = None;
        let (last, folders) = components.split_last().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        for name in folders {
            let at = current.as_ref().map_or(self.root.as_fd(), AsFd::as_fd);
            current = Some(nix::fcntl::openat(at, OsStr::from_bytes(name), walk, Mode::empty())?);
        }
        let at = current.as_ref().map_or(self.root.as_fd(), AsFd::as_fd);
        Ok(nix::fcntl::openat(at, OsStr::from_bytes(last), flags, mode)?)
    }

    /// The folder holding `relative` (opened `O_PATH`, for the `*at` calls) and the
    /// entry's name in it. The target itself has no parent here.
    pub fn parent<'p>(&self, relative: &'p [u8]) -> io::Result<(OwnedFd, &'p OsStr)> {
        let (folder, name) = split_last(relative).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = self.open(folder, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?;
        Ok((fd, OsStr::from_bytes(name)))
    }

    /// What is at `relative` now, without following a symlink.
    pub fn find(&self, relative: &[u8]) -> io::Result<Found> {
        if relative.is_empty() {
            return Ok(Found::Dir);
        }
        Ok(match self.lookup(relative)? {
            None => Found::Missing,
            Some(stat) if is_dir(&stat) => Found::Dir,
            Some(_) => Found::Other,
        })
    }

    /// The status of the entry at `relative` (the target itself for an empty path),
    /// not following a symlink; `None` if nothing is there, or if a symlink or a file
    /// stands where a folder on the way should be (the entry will be made after it
    /// is replaced).
    pub fn lookup(&self, relative: &[u8]) -> io::Result<Option<FileStat>> {
        if relative.is_empty() {
            return Ok(Some(nix::sys::stat::fstat(&self.root)?));
        }
        let (folder, name) = match self.parent(relative) {
            Ok(found) => found,
            Err(error)
                if matches!(error.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)) =>
            {
                return Ok(None)
            }
            Err(error) => return Err(error),
        };
        stat_at(&folder, name)
    }

    /// The target of the symlink at `relative`.
    pub fn read_link(&self, relative: &[u8]) -> io::Result<Vec<u8>> {
        let (folder, name) = self.parent(relative)?;
        Ok(nix::fcntl::readlinkat(&folder, name)?.into_vec())
    }

    /// Adds owner read, write and search permission to the folder at `relative`.
    pub fn make_writable(&self, relative: &[u8]) -> io::Result<()> {
        let folder = self.open(relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
        let mode = nix::sys::stat::fstat(&folder)?.st_mode & 0o7777;
        Ok(nix::sys::stat::fchmod(&folder, Mode::from_bits_truncate(mode | 0o700))?)
    }

    /// Sets the mode of the folder at `relative`.
    pub fn set_mode(&self, relative: &[u8], mode: u32) -> io::Result<()> {
        let folder = self.open(relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
        Ok(nix::sys::stat::fchmod(&folder, Mode::from_bits_truncate(mode))?)
    }

    /// Removes the empty folder at `relative`.
    pub fn remove_empty_dir(&self, relative: &[u8]) -> io::Result<()> {
        let (folder, name) = self.parent(relative)?;
        Ok(nix::unistd::unlinkat(&folder, name, nix::unistd::UnlinkatFlags::RemoveDir)?)
    }

    /// Removes the entry at `relative` and, for a folder, everything in it, never
    /// following a symlink. Missing entries are not an error.
    pub fn remove_tree(&self, relative: &[u8]) -> io::Result<()> {
        let (folder, name) = self.parent(relative)?;
        remove_at(&folder, name)
    }

    /// Makes `relative` a folder: made (mode 0700 until its metadata is set) if
    /// missing, and whatever else is there (a file, a symlink) replaced. Returns true
    /// if a folder was there already.
    pub fn make_dir(&self, relative: &[u8]) -> io::Result<MadeDir> {
        if relative.is_empty() {
            let inode = nix::sys::stat::fstat(&self.root)?.st_ino;
            return Ok(MadeDir { existed: true, inode });
        }
        let (folder, name) = self.parent(relative)?;
        let existed = match stat_at(&folder, name)? {
            Some(stat) if is_dir(&stat) => return Ok(MadeDir { existed: true, inode: stat.st_ino }),
            Some(_) => {
                nix::unistd::unlinkat(&folder, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
                false
            }
            None => false,
        };
        let existed = match nix::sys::stat::mkdirat(&folder, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => existed,
            Err(Errno::EEXIST) => true,
            Err(error) => return Err(error.into()),
        };
        match stat_at(&folder, name)? {
            Some(stat) if is_dir(&stat) => Ok(MadeDir { existed, inode: stat.st_ino }),
            _ => Err(io::Error::other("the new folder was replaced by something else")),
        }
    }

    /// Makes every missing folder of `relative` (mode 0700), replacing nothing.
    pub fn make_dirs(&self, relative: &[u8]) -> io::Result<()> {
        let mut end = 0;
        for component in components(relative)? {
            end += component.len();
            let prefix = &relative[..end];
            end += 1;
            let (folder, name) = self.parent(prefix)?;
            match nix::sys::stat::mkdirat(&folder, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Removes what an earlier, killed restore left in a folder: files named
    /// `.coffer-restore-*` that are not this run's.
    pub fn remove_stale_temporaries(&self, relative: &[u8], this_run: &str) -> io::Result<usize> {
        let fd = self.open(relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
        let mut folder = nix::dir::Dir::from_fd(fd)?;
        let mut stale = Vec::new();
        for entry in folder.iter() {
            let name = entry?.file_name().to_bytes().to_vec();
            if is_temporary_name(&name) && !name.starts_with(this_run.as_bytes()) {
                stale.push(name);
            }
        }
        for name in &stale {
            match nix::unistd::unlinkat(&folder, OsStr::from_bytes(name), nix::unistd::UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(stale.len())
    }

    /// Takes an advisory lock on the target folder, so two restores never write into
    /// one target at once (and a restore may remove the temporary files it finds). A
    /// file system without `flock` (some network ones) is not locked.
    pub fn lock(&self) -> io::Result<TargetLock> {
        let fd = nix::fcntl::openat(self.root.as_fd(), ".", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        // SAFETY: flock on a descriptor this function owns; closing it releases the lock.
        match unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } {
            0 => Ok(TargetLock::Held(fd)),
            _ => match Errno::last() {
                Errno::EWOULDBLOCK => Ok(TargetLock::Busy),
                Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::EINVAL => Ok(TargetLock::Unsupported),
                error => Err(error.into()),
            },
        }
    }

    /// Flushes the target's whole file system to disk (`syncfs`): one call for every
    /// file, folder and rename the restore made.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: syncfs on a descriptor this value owns.
        match unsafe { libc::syncfs(self.root.as_raw_fd()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Checks that the target takes new files, with a file that has no name.
    pub fn probe(&self) -> io::Result<()> {
        let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(self.root.as_fd(), ".", flags, Mode::from_bits_truncate(0o600)) {
            Ok(_) | Err(Errno::EOPNOTSUPP) | Err(Errno::EISDIR) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// True for exactly the names restores give temporary entries,
/// `.coffer-restore-<12 hex>-<counter>`: a file of the user's that merely starts the
/// same way is not one.
pub(super) fn is_temporary_name(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(TEMPORARY_PREFIX.as_bytes()) else { return false };
    let (token, counter) = match rest.get(12) {
        Some(b'-') => (&rest[..12], &rest[13..]),
        _ => return false,
    };
    token.iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && !counter.is_empty()
        && counter.iter().all(u8::is_ascii_digit)
}

/// Removes `name` in `folder` and everything below it, without following symlinks.
fn remove_at(folder: &OwnedFd, name: &OsStr) -> io::Result<()> {
    use nix::unistd::UnlinkatFlags;
    match stat_at(folder, name)? {
        None => Ok(()),
        Some(stat) if is_dir(&stat) => {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let inner = nix::fcntl::openat(folder, name, flags, Mode::empty())?;
            let mut listing = nix::dir::Dir::from_fd(inner.try_clone()?)?;
            let mut names = Vec::new();
            for item in listing.iter() {
                let item_name = item?.file_name().to_bytes().to_vec();
                if item_name != b"." && item_name != b".." {
                    names.push(item_name);
                }
            }
            for child in names {
                remove_at(&inner, OsStr::from_bytes(&child))?;
            }
            match nix::unistd::unlinkat(folder, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(error) => Err(error.into()),
            }
        }
        Some(_) => match nix::unistd::unlinkat(folder, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(error) => Err(error.into()),
        },
    }
}

/// The components of a relative path; empty, `.` and `..` components are refused.
fn components(relative: &[u8]) -> io::Result<Vec<&[u8]>> {
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&[u8]> = relative.split(|&b| b == b'/').collect();
    if parts.iter().any(|part| part.is_empty() || *part == b"." || *part == b".." || part.contains(&0)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a path component is empty, . or .."));
    }
    Ok(parts)
}

/// Splits `a/b/c` into `a/b` and `c`.
pub(super) fn split_last(relative: &[u8]) -> Option<(&[u8], &[u8])> {
    if relative.is_empty() {
        return None;
    }
    Some(match relative.iter().rposition(|&b| b == b'/') {
        Some(at) => (&relative[..at], &relative[at + 1..]),
        None => (&b""[..], relative),
    })
}

/// The status of `name` in `folder`, not following a symlink; `None` if it is missing.
pub(super) fn stat_at(folder: &impl AsFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match nix::sys::stat::fstatat(folder, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

pub(super) fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// `/proc/self/fd/N[/name]`: a path naming exactly an open descriptor (and an entry
/// in it), for the calls that have no descriptor form (xattrs of a symlink, chmod of
/// a device).
pub(super) fn proc_path(fd: BorrowedFd<'_>, name: Option<&OsStr>) -> PathBuf {
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    match name {
        Some(name) => path.join(name),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_on_the_way_is_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a")).unwrap();
        let target = TargetDir::create(root.path()).unwrap();
        let error = target.open(b"a/file", OFlag::O_CREAT | OFlag::O_WRONLY, Mode::from_bits_truncate(0o600));
        assert!(error.is_err());
        assert!(target.make_dirs(b"a/b").is_err());
        assert_eq!(target.find(b"a/file").unwrap(), Found::Missing);
        assert_eq!(target.find(b"a").unwrap(), Found::Other);
        assert!(!target.make_dir(b"a").unwrap().existed, "the symlink is replaced by a folder");
        assert!(root.path().join("a").symlink_metadata().unwrap().is_dir());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn only_names_of_restore_temporaries_count_as_such() {
        assert!(is_temporary_name(b".coffer-restore-0123456789ab-0"));
        assert!(is_temporary_name(b".coffer-restore-0123456789ab-4711"));
        for other in [
            &b".coffer-restore-mine"[..],
            b".coffer-restore-0123456789ab-",
            b".coffer-restore-0123456789AB-1",
            b".coffer-restore-0123456789ab-1x",
        ] {
            assert!(!is_temporary_name(other), "{other:?}");
        }
    }

    #[test]
    fn dot_dot_and_empty_components_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let target = TargetDir::create(&root.path().join("t")).unwrap();
        for bad in [&b"../x"[..], b"a//b", b"./a", b"/etc"] {
            assert!(target.open(bad, OFlag::O_RDONLY, Mode::empty()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_fallback_walk_refuses_symlinks_too() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("f")).unwrap();
        let target = TargetDir::create(root.path()).unwrap();
        target.openat2.store(false, Ordering::Relaxed);
        assert!(target.open(b"a/secret", OFlag::O_RDONLY, Mode::empty()).is_err());
        assert!(target.open(b"f", OFlag::O_WRONLY, Mode::empty()).is_err());
        std::fs::create_dir(root.path().join("d")).unwrap();
        assert!(target.open(b"d", OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).is_ok());
    }
}
