//! Storage faults on S3 (issue 12), through a fault-injecting proxy
//! (`tests/fault_proxy.py`) between coffer and the suite's s3s-fs server: lost
//! answers, resets, bodies cut short, 503s with Retry-After, and outages. After every
//! test the repository checks clean with --read-data and every snapshot restores
//! identical (read directly, without the proxy).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{random_bytes, Fixture};
use serde_json::{json, Value};

/// A running fault proxy in front of the suite's S3 server.
struct Proxy {
    child: Child,
    port: u16,
    control: u16,
}

impl Proxy {
    /// Starts a proxy, or `None` (with a note) when the suite has no S3 server.
    fn start() -> Option<Proxy> {
        let Ok(upstream) = std::env::var("AWS_ENDPOINT_URL") else {
            assert!(
                std::env::var("COFFER_REQUIRE_S3").is_err(),
                "COFFER_REQUIRE_S3 is set but no S3 server is configured"
            );
            eprintln!("no S3 server configured (run scripts/test.sh); skipping");
            return None;
        };
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fault_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--upstream", &upstream])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the fault proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let mut ports = line.split_whitespace().map(|port| port.parse::<u16>().unwrap());
        Some(Proxy { port: ports.next().unwrap(), control: ports.next().unwrap(), child })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let body = body.to_string();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.control)).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: control\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        read_json(stream)
    }

    fn rules(&self, rules: Value) {
        self.post("/rules", rules);
    }

    /// Requests seen: `[method, path, query, status, action]`.
    fn log(&self) -> Vec<Value> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.control)).unwrap();
        write!(stream, "GET /log HTTP/1.1\r\nHost: control\r\nConnection: close\r\n\r\n").unwrap();
        read_json(stream).as_array().cloned().unwrap_or_default()
    }

    fn count(&self, method: &str, path_part: &str) -> usize {
        self.log()
            .iter()
            .filter(|entry| entry[0] == method && entry[1].as_str().unwrap_or("").contains(path_part))
            .count()
    }
}

fn read_json(mut stream: std::net::TcpStream) -> Value {
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("null");
    serde_json::from_str(body).unwrap()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3 repository reached through a proxy, with a local folder for trees.
struct S3Repo {
    fixture: Fixture,
    proxy: Proxy,
    url: String,
}

impl S3Repo {
    /// A new repository (packs of `pack_mib` MiB), or `None` without an S3 server.
    fn new(pack_mib: u32) -> Option<S3Repo> {
        S3Repo::init(&["--pack-size", &pack_mib.to_string()])
    }

    /// A new repository made by `init` with `args`, or `None` without an S3 server.
    fn init(args: &[&str]) -> Option<S3Repo> {
        let proxy = Proxy::start()?;
        let fixture = Fixture::empty();
        let bucket = std::env::var("COFFER_TEST_S3_BUCKET").unwrap();
        let unique = fixture.root.path().file_name().unwrap().to_string_lossy().trim_start_matches('.').to_string();
        let repo = S3Repo { fixture, proxy, url: format!("s3://{bucket}/faults-{unique}") };
        repo.ok(&[&["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"], args].concat());
        Some(repo)
    }

    /// coffer against the repository through the proxy.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .arg("--repo")
            .arg(&self.url)
            .args(args)
            .env("AWS_ENDPOINT_URL", self.proxy.endpoint())
            .env("COFFER_PASSWORD", "correct horse")
            .env("COFFER_CACHE_DIR", self.fixture.path("cache"))
            .env("COFFER_TESTONLY_WEAK_KDF", "1")
            .env_remove("COFFER_S3_RETRY_TIMEOUT")
            .stdin(Stdio::null());
        command
    }

    /// coffer against the repository directly, without the proxy and with no cache.
    fn direct(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        command.env("AWS_ENDPOINT_URL", std::env::var("AWS_ENDPOINT_URL").unwrap()).arg("--no-cache");
        command.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.command(args).output().unwrap();
        assert!(output.status.success(), "coffer {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn tree(&self, files: u64, size: usize) -> PathBuf {
        let source = self.fixture.path("src");
        std::fs::create_dir_all(&source).unwrap();
        for index in 0..files {
            std::fs::write(source.join(format!("scan{index}.dcm")), random_bytes(size, index + 7)).unwrap();
        }
        source
    }

    /// check --read-data is clean and every snapshot restores identical to `source`.
    fn assert_intact(&self, source: &Path) {
        let output = self.direct(&["check", "--read-data"]);
        assert!(output.status.success(), "check: {}", String::from_utf8_lossy(&output.stdout));
        let listed: Value = serde_json::from_slice(&self.direct(&["--json", "snapshots"]).stdout).unwrap();
        for snapshot in listed["snapshots"].as_array().unwrap() {
            let id = snapshot["snapshot_id"].as_str().unwrap();
            let target = self.fixture.path(&format!("restore-{id}"));
            let output = self.direct(&["restore", id, "--target", target.to_str().unwrap(), "--verify"]);
            assert!(output.status.success(), "restore {id}: {}", String::from_utf8_lossy(&output.stderr));
            let restored = target.join(source.strip_prefix("/").unwrap());
            for entry in std::fs::read_dir(&restored).unwrap() {
                let entry = entry.unwrap();
                let original = std::fs::read(source.join(entry.file_name())).unwrap();
                assert!(std::fs::read(entry.path()).unwrap() == original, "{:?} differs", entry.file_name());
            }
        }
    }
}

fn lock_objects(repo: &S3Repo) -> usize {
    let data = std::env::var("COFFER_TEST_S3_DATA").map(PathBuf::from);
    let Ok(data) = data else { return 0 };
    let prefix = repo.url.trim_start_matches("s3://");
    std::fs::read_dir(data.join(prefix).join("locks")).map_or(0, |entries| entries.count())
}

/// Finding 1: a LIST answered with a reset, or with a body cut short, is retried.
#[test]
fn a_listing_reset_or_cut_short_is_retried() {
    let Some(repo) = S3Repo::new(4) else { return };
    let source = repo.tree(4, 100_000);
    repo.ok(&["backup", source.to_str().unwrap()]);
    repo.proxy.rules(json!([
        {"action": "reset", "method": "GET", "query": "list-type", "count": 1},
        {"action": "truncate", "method": "GET", "query": "list-type", "keep": 40, "count": 1},
    ]));
    repo.ok(&["snapshots"]);
    repo.proxy.rules(json!([{"action": "truncate", "method": "GET", "query": "list-type", "keep": 10, "count": 2}]));
    repo.ok(&["backup", source.to_str().unwrap()]);
    assert!(repo.proxy.log().iter().any(|entry| entry[4] == "truncate"));
    repo.assert_intact(&source);
}

/// Findings 3 and 5: the answer to a lock's PUT, or to the snapshot record's PUT, is
/// lost after the server stored it: the backup succeeds, one snapshot is stored, and
/// no lock object is left behind.
#[test]
fn lost_answers_to_create_only_writes_are_settled_by_reading_back() {
    let Some(repo) = S3Repo::new(4) else { return };
    let source = repo.tree(3, 50_000);
    repo.proxy.rules(json!([
        {"action": "drop", "method": "PUT", "path": "/locks/", "count": 1},
        {"action": "drop", "method": "PUT", "path": "/snapshots/", "count": 1},
        {"action": "drop", "method": "PUT", "path": "/index/", "count": 1},
    ]));
    repo.ok(&["backup", source.to_str().unwrap()]);
    let dropped = repo.proxy.log().iter().filter(|entry| entry[4] == "drop").count();
    assert_eq!(dropped, 3, "{:?}", repo.proxy.log());
    let listed: Value = serde_json::from_str(&repo.ok(&["--json", "snapshots"])).unwrap();
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(lock_objects(&repo), 0, "a lock object stayed behind");
    repo.assert_intact(&source);
}

/// Finding 4: the answer to CompleteMultipartUpload is lost: the pack is stored, and
/// the backup says nothing about access.
#[test]
fn a_lost_multipart_completion_is_not_a_failure() {
    let Some(repo) = S3Repo::new(40) else { return };
    let source = repo.tree(1, 38 << 20);
    repo.proxy.rules(json!([{"action": "drop", "method": "POST", "query": "uploadId", "count": 1}]));
    let output = repo.command(&["backup", source.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.to_ascii_lowercase().contains("access denied"), "{stderr}");
    assert!(repo.proxy.log().iter().any(|entry| entry[4] == "drop"));
    repo.assert_intact(&source);
}

/// Findings 4 and 7: when storage stays unreachable beyond the retry budget, the
/// failure is reported as unreachable (17), never as access denied (18) or damage (13).
#[test]
fn a_storage_failure_after_the_budget_is_unreachable_not_damage() {
    let Some(repo) = S3Repo::new(4) else { return };
    let source = repo.tree(6, 1 << 20);
    repo.ok(&["backup", source.to_str().unwrap()]);
    repo.proxy.rules(json!([{"action": "status", "status": 503, "method": "GET", "path": "/data/"}]));
    let target = repo.fixture.path("restore");
    let output = repo
        .command(&["restore", "latest", "--target", target.to_str().unwrap()])
        .env("COFFER_S3_RETRY_TIMEOUT", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(17), "{stderr}");
    assert!(!stderr.contains("damaged"), "{stderr}");
    repo.proxy.rules(json!([{"action": "status", "status": 500, "method": "PUT", "path": "/data/"}]));
    std::fs::write(source.join("new.dcm"), random_bytes(6 << 20, 99)).unwrap();
    let output =
        repo.command(&["backup", source.to_str().unwrap()]).env("COFFER_S3_RETRY_TIMEOUT", "3").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(17), "{stderr}");
    assert!(!stderr.to_ascii_lowercase().contains("access denied"), "{stderr}");
    repo.proxy.rules(json!([]));
    std::fs::remove_file(source.join("new.dcm")).unwrap();
    repo.assert_intact(&source);
}

/// Pack reads cut short are resumed from the byte they stopped at; a 503 SlowDown with
/// Retry-After is waited out.
#[test]
fn bodies_cut_short_resume_and_retry_after_is_honoured() {
    let Some(repo) = S3Repo::new(4) else { return };
    let source = repo.tree(8, 1 << 20);
    repo.proxy.rules(json!([
        {"action": "status", "status": 503, "code": "SlowDown", "retry_after": 2, "method": "PUT", "path": "/index/", "count": 1},
    ]));
    let started = Instant::now();
    repo.ok(&["backup", source.to_str().unwrap()]);
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After was not honoured");
    repo.proxy.rules(json!([{"action": "truncate", "method": "GET", "path": "/data/", "keep": 3000, "count": 4}]));
    let target = repo.fixture.path("restore");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap(), "--verify"]);
    let truncated = repo.proxy.log().iter().filter(|entry| entry[4] == "truncate").count();
    assert_eq!(truncated, 4);
    repo.assert_intact(&source);
}

/// Waits until the proxy has seen `count` requests of a kind, then cuts the storage
/// off for `seconds`; returns when the outage began.
fn outage_after(repo: &S3Repo, method: &str, path: &str, count: usize, seconds: u64, child: &mut Child) -> bool {
    while repo.proxy.count(method, path) < count {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    repo.proxy.post("/outage", json!({"seconds": seconds}));
    true
}

/// Finding 2: a 60 s outage in the middle of a backup, a restore and a check is ridden
/// out (the default budget is 300 s).
#[test]
fn a_sixty_second_outage_is_ridden_out() {
    let Some(repo) = S3Repo::new(4) else { return };
    let source = repo.tree(24, 2 << 20);
    let mut backup = repo.command(&["backup", source.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap();
    assert!(outage_after(&repo, "PUT", "/data/", 3, 60, &mut backup), "the backup ended before the outage");
    let started = Instant::now();
    let output = backup.wait_with_output().unwrap();
    assert!(output.status.success(), "backup: {}", String::from_utf8_lossy(&output.stderr));
    assert!(started.elapsed() >= Duration::from_secs(55), "the outage did not hit the backup");
    eprintln!("backup finished {:.0} s after a 60 s outage began", started.elapsed().as_secs_f64());

    let target = repo.fixture.path("restore");
    let mut restore = repo
        .command(&["restore", "latest", "--target", target.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ranges_before = repo.proxy.count("GET", "/data/");
    if outage_after(&repo, "GET", "/data/", ranges_before + 2, 60, &mut restore) {
        let output = restore.wait_with_output().unwrap();
        assert!(output.status.success(), "restore: {}", String::from_utf8_lossy(&output.stderr));
    }
    let mut check = repo.command(&["check", "--read-data"]).stderr(Stdio::piped()).spawn().unwrap();
    let reads_before = repo.proxy.count("GET", "/data/");
    if outage_after(&repo, "GET", "/data/", reads_before + 2, 60, &mut check) {
        let output = check.wait_with_output().unwrap();
        assert!(output.status.success(), "check: {}", String::from_utf8_lossy(&output.stderr));
    }
    repo.assert_intact(&source);
}

/// Finding 6: a backup that fails at about 80% (storage gone for longer than the
/// budget) indexes the packs it finished, so the next run re-sends little.
#[test]
fn a_failed_backup_keeps_what_it_uploaded() {
    let Some(repo) = S3Repo::new(4) else { return };
    let source = repo.tree(20, 4 << 20);
    // About 21 packs of 4 MiB: the proxy cuts the storage off at the 17th, however
    // fast the backup goes (polling the count from here raced a fast backup).
    repo.proxy.rules(json!([
        {"action": "outage", "method": "PUT", "path": "/data/", "skip": 16, "count": 1},
    ]));
    let output = repo
        .command(&["--json", "backup", source.to_str().unwrap()])
        .env("COFFER_S3_RETRY_TIMEOUT", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(repo.proxy.log().iter().any(|entry| entry[4] == "outage"), "the backup ended first: {stderr}");
    assert_eq!(output.status.code(), Some(17), "{stderr}");
    repo.proxy.rules(json!([]));
    repo.proxy.post("/resume", json!({}));
    let output = repo.command(&["--json", "backup", source.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = common::last_json(&output.stdout);
    let added = summary["summary"]["bytes_added"].as_u64().unwrap();
    let total = 20 * (4u64 << 20);
    eprintln!("after a failure at 80%, the next backup added {added} of {total} bytes");
    assert!(added < total / 3, "the next backup uploaded {added} of {total} bytes again");
    repo.assert_intact(&source);
}

/// Issue 13: check goes on past a pack that storage will not serve, names it, and
/// exits 17 (not verified), not 13 (nothing is known to be damaged).
#[test]
fn check_goes_on_past_a_pack_storage_will_not_serve() {
    let Some(repo) = S3Repo::new(1) else { return };
    let source = repo.tree(6, 1 << 20);
    repo.ok(&["backup", source.to_str().unwrap()]);
    let pack = repo
        .proxy
        .log()
        .iter()
        .filter(|entry| entry[0] == "PUT" && entry[1].as_str().unwrap().contains("/data/"))
        .map(|entry| entry[1].as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .next()
        .unwrap();
    repo.proxy.rules(json!([{"action": "status", "status": 503, "method": "GET", "path": pack}]));
    let output =
        repo.command(&["--json", "check", "--read-data"]).env("COFFER_S3_RETRY_TIMEOUT", "2").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(17), "{stderr}");
    let report = common::last_json(&output.stdout);
    assert_eq!(report["unreadable"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["unreadable"][0]["object"].as_str().unwrap().contains(&pack));
    assert!(report["packs_read"].as_u64().unwrap() >= 5, "the other packs were not read: {report}");
    assert!(report["damage"].as_array().unwrap().is_empty());
    repo.proxy.rules(json!([]));
    repo.assert_intact(&source);
}

/// Issue 17: with the default pack size on S3, every pack goes in one PUT (no multipart
/// upload: a create, parts and a complete cost six requests and a server-side pass
/// per pack), and bodies to a loopback endpoint are not signed (the server would hash
/// every byte again); the repository is whole.
#[test]
fn default_s3_packs_go_in_one_unsigned_request() {
    let Some(repo) = S3Repo::init(&[]) else { return };
    let source = repo.tree(12, 4 << 20);
    repo.ok(&["backup", source.to_str().unwrap()]);
    let log = repo.proxy.log();
    let multipart: Vec<&Value> =
        log.iter().filter(|entry| entry[2].as_str().unwrap_or("").contains("upload")).collect();
    assert!(multipart.is_empty(), "multipart requests with the default pack size: {multipart:?}");
    let packs: Vec<&Value> =
        log.iter().filter(|entry| entry[0] == "PUT" && entry[1].as_str().unwrap_or("").contains("/data/")).collect();
    assert!(packs.len() >= 2, "48 MiB went in {} pack uploads: {log:?}", packs.len());
    for pack in &packs {
        assert_eq!(pack[5], "UNSIGNED-PAYLOAD", "a pack upload to loopback was signed: {pack:?}");
    }
    repo.assert_intact(&source);
}
