//! Shared test helpers: a repository fixture driving the real binary, and a stat walk
//! that compares two trees in content and metadata.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// A temporary directory with a repository, a cache and room for trees.
pub struct Fixture {
    pub root: tempfile::TempDir,
}

impl Fixture {
    /// A fixture with an initialised repository.
    pub fn new() -> Self {
        let fixture = Self::empty();
        let output = fixture.run(&["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
        assert!(output.status.success(), "init failed: {}", String::from_utf8_lossy(&output.stderr));
        fixture
    }

    /// A fixture without a repository.
    pub fn empty() -> Self {
        Self { root: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// True when the suite runs against S3 (`COFFER_TEST_BACKEND=s3`, set by scripts/test.sh).
    pub fn on_s3() -> bool {
        std::env::var("COFFER_TEST_BACKEND").is_ok_and(|kind| kind == "s3")
    }

    /// The repository location: a local directory, or a fresh prefix in the test bucket.
    pub fn repo_spec(&self) -> String {
        if !Self::on_s3() {
            return self.repo().display().to_string();
        }
        let bucket = std::env::var("COFFER_TEST_S3_BUCKET").expect("COFFER_TEST_S3_BUCKET names the test bucket");
        let unique = self.root.path().file_name().unwrap().to_string_lossy().trim_start_matches('.').to_string();
        format!("s3://{bucket}/{unique}")
    }

    /// Runs coffer against the fixture's repository.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        // COFFER_TEST_BIN runs the suite against another binary (a release build, or an
        // older version to show that a test catches a bug).
        let binary = std::env::var_os("COFFER_TEST_BIN")
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_coffer").into());
        let mut command = Command::new(binary);
        command
            .arg("--repo")
            .arg(self.repo_spec())
            .args(args)
            .env("COFFER_PASSWORD", "correct horse")
            .env("COFFER_CACHE_DIR", self.path("cache"))
            .env("COFFER_TESTONLY_WEAK_KDF", "1")
            .env_remove("COFFER_REPOSITORY")
            .env_remove("COFFER_PASSWORD_FILE")
            .env_remove("COFFER_PASSWORD_COMMAND")
            .stdin(std::process::Stdio::null());
        command
    }

    /// Runs coffer and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "coffer {args:?} failed ({:?}): {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs coffer with --json and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        last_json(self.ok(&all).as_bytes())
    }

    /// The snapshots, as `snapshots --json` lists them.
    pub fn snapshots(&self) -> serde_json::Value {
        self.json(&["snapshots"])["snapshots"].clone()
    }

    /// Backs up a path, returning the JSON summary.
    pub fn backup(&self, path: &Path) -> serde_json::Value {
        self.json(&["backup", path.to_str().unwrap()])
    }
}

/// The last line of a `--json` command's stdout: its document. A backup writes JSON
/// progress lines before it.
pub fn last_json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().rfind(|line| !line.trim().is_empty()).unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{last:?} is not JSON: {e}"))
}

/// Writes `length` pseudo-random bytes (xorshift, seeded).
pub fn random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// Everything a faithful restore must reproduce about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub rdev: u64,
    pub link_target: Option<Vec<u8>>,
    pub sha256: Option<[u8; 32]>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Walks a tree with lstat; keys are paths relative to `root`, as bytes.
pub fn stat_walk(root: &Path) -> BTreeMap<Vec<u8>, (Stat, u64, u64)> {
    let mut found = BTreeMap::new();
    for item in walkdir::WalkDir::new(root).follow_links(false) {
        let item = item.unwrap();
        let metadata = std::fs::symlink_metadata(item.path()).unwrap();
        let relative = item.path().strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        found.insert(relative, (stat_of(item.path(), &metadata), metadata.ino(), metadata.blocks()));
    }
    found
}

fn stat_of(path: &Path, metadata: &std::fs::Metadata) -> Stat {
    let file_type = metadata.file_type();
    let kind = if file_type.is_file() {
        "file"
    } else if file_type.is_dir() {
        "dir"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_char_device() {
        "chardev"
    } else {
        "other"
    };
    let sha256 = file_type.is_file().then(|| Sha256::digest(std::fs::read(path).unwrap()).into());
    let link_target = file_type.is_symlink().then(|| std::fs::read_link(path).unwrap().as_os_str().as_bytes().to_vec());
    let mut xattrs = BTreeMap::new();
    for name in xattr::list(path).into_iter().flatten() {
        if let Ok(Some(value)) = xattr::get(path, &name) {
            xattrs.insert(name.as_bytes().to_vec(), value);
        }
    }
    Stat {
        kind,
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        size: if file_type.is_file() { metadata.size() } else { 0 },
        mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        rdev: metadata.rdev(),
        link_target,
        sha256,
        xattrs,
    }
}

/// Groups of relative paths that share an inode (hard links).
pub fn link_groups(walk: &BTreeMap<Vec<u8>, (Stat, u64, u64)>) -> BTreeSet<BTreeSet<Vec<u8>>> {
    let mut by_inode: BTreeMap<u64, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (path, (stat, inode, _)) in walk {
        if stat.kind == "file" {
            by_inode.entry(*inode).or_default().insert(path.clone());
        }
    }
    by_inode.into_values().filter(|group| group.len() > 1).collect()
}

/// Asserts two trees are identical in content and metadata, entry by entry.
pub fn assert_same_tree(source: &Path, restored: &Path) {
    let expected = stat_walk(source);
    let actual = stat_walk(restored);
    let expected_paths: Vec<_> = expected.keys().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    let actual_paths: Vec<_> = actual.keys().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    assert_eq!(expected_paths, actual_paths, "the restored tree has different entries");
    for (path, (stat, _, _)) in &expected {
        let shown = OsStr::from_bytes(path).to_string_lossy();
        assert_eq!(&actual[path].0, stat, "entry {shown:?} differs");
    }
    assert_eq!(link_groups(&expected), link_groups(&actual), "hard-link groups differ");
}

/// Sets a path's mtime (and atime) without following symlinks.
pub fn set_mtime(path: &Path, seconds: i64, nanoseconds: i64) {
    let time = nix::sys::time::TimeSpec::new(seconds, nanoseconds);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Finished objects in a folder of a local repository: names of 64 hex digits. The local
/// backend writes a staging file `<name>#<n>` first, which does not count.
pub fn finished_objects(folder: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(folder) else { return 0 };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .count()
}

/// Pack files left in a local repository's `tmp/` (packs being written).
pub fn staged_pack_files(repo: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(repo.join("tmp")) else { return Vec::new() };
    let names = entries.filter_map(|entry| entry.ok()).map(|entry| entry.file_name().to_string_lossy().into_owned());
    // An object file of a killed writer is removed only once 10 seconds old (its
    // writer locks it a moment after creating it).
    names.filter(|name| !name.starts_with("object-")).collect()
}

/// True when a PostgreSQL test server is configured (scripts/test.sh starts one);
/// without one a test says so and returns, unless COFFER_REQUIRE_PG demands it.
pub fn pg_server() -> bool {
    if std::env::var("COFFER_TEST_PG").is_ok() {
        return true;
    }
    assert!(
        std::env::var("COFFER_REQUIRE_PG").is_err(),
        "COFFER_REQUIRE_PG is set but no PostgreSQL server is configured"
    );
    eprintln!("no PostgreSQL test server configured (run scripts/test.sh); skipping");
    false
}

/// Runs SQL with psql against the test server; returns its unaligned output.
pub fn psql(database: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql])
        .output()
        .unwrap();
    assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
