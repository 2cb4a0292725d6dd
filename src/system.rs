//! Facts about the running system: host, user, owner names, process liveness.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;

/// The host name, or "unknown".
pub fn host_name() -> String {
    nix::unistd::gethostname().ok().and_then(|name| name.into_string().ok()).unwrap_or_else(|| "unknown".to_string())
}

/// The name of the effective user, or its number.
pub fn user_name() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// True if a process with this id exists on this host.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// This process's PID namespace (`pid:[4026531836]`), if `/proc` tells.
pub fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid").ok().map(|link| link.to_string_lossy().into_owned())
}

/// This boot of the machine (a random id the kernel picks at boot), if `/proc` tells.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|text| text.trim().to_string())
}

/// Creates a folder and its missing parents with mode 0700: caches and repositories
/// hold paths, sizes, owners and checksums of private files.
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Takes group and other permissions off a folder this user owns (best effort).
pub fn make_private(path: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(metadata) = std::fs::symlink_metadata(path) else { return };
    if metadata.is_dir() && metadata.uid() == nix::unistd::geteuid().as_raw() && metadata.mode() & 0o077 != 0 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(metadata.mode() & 0o7700));
    }
}

/// This machine (`/etc/machine-id`), if it has one.
pub fn machine_id() -> Option<String> {
    std::fs::read_to_string("/etc/machine-id").ok().map(|text| text.trim().to_string()).filter(|id| !id.is_empty())
}

/// Takes an exclusive `flock` on a file this process writes, so that other runs can
/// tell it from a file a killed process left (see [`remove_unlocked_files`]).
pub fn lock_file(file: &std::fs::File) {
    // SAFETY: flock on a descriptor owned by `file`; closing it releases the lock.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(file), libc::LOCK_EX | libc::LOCK_NB) };
}

/// Removes the files of `folder` whose names start with `prefix`, that are at least
/// `age` old and whose lock no process holds: left by a process that was killed.
pub fn remove_unlocked_files(folder: &std::path::Path, prefix: &str, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let modified = entry.metadata().and_then(|metadata| metadata.modified());
        if !modified.is_ok_and(|time| time.elapsed().is_ok_and(|elapsed| elapsed >= age)) {
            continue;
        }
        if let Some(_unlocked) = lock_if_free(&entry.path()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The file opened and locked, if no other process holds its lock.
pub fn lock_if_free(path: &std::path::Path) -> Option<std::fs::File> {
    let file = std::fs::File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    // SAFETY: flock on a descriptor owned by `file`.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

/// True when running as root, which may set any owner and create devices.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Caches uid/gid to name lookups, which are slow on some systems.
#[derive(Default)]
pub struct OwnerNames {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl OwnerNames {
    pub fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name))
            .clone()
    }

    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name))
            .clone()
    }
}

/// Caches name to local uid/gid lookups for a restore: each one reads /etc/passwd or
/// /etc/group, once per restored entry before.
#[derive(Default)]
pub struct OwnerIds {
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
}

impl OwnerIds {
    /// The local uid of a user name.
    pub fn uid_of(&mut self, name: &str) -> Option<u32> {
        if let Some(known) = self.users.get(name) {
            return *known;
        }
        let uid = nix::unistd::User::from_name(name).ok().flatten().map(|user| user.uid.as_raw());
        self.users.insert(name.to_string(), uid);
        uid
    }

    /// The local gid of a group name.
    pub fn gid_of(&mut self, name: &str) -> Option<u32> {
        if let Some(known) = self.groups.get(name) {
            return *known;
        }
        let gid = nix::unistd::Group::from_name(name).ok().flatten().map(|group| group.gid.as_raw());
        self.groups.insert(name.to_string(), gid);
        gid
    }
}
