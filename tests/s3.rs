//! S3 against a real S3-compatible server (s3s-fs, started by scripts/test.sh):
//! backend conformance, errors, a server killed mid-backup, and what a restore costs.
//! Without a server these tests say so and pass only if COFFER_REQUIRE_S3 is unset.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coffer::backend::{open_s3, Backend, LocalBackend, MemoryBackend, S3Options};
use common::{random_bytes, Fixture};

/// The test bucket's settings, or `None` (with a note) when no server was started.
fn s3_settings() -> Option<S3Options> {
    let configured = std::env::var("AWS_ENDPOINT_URL").is_ok() && std::env::var("COFFER_TEST_S3_BUCKET").is_ok();
    if !configured {
        assert!(std::env::var("COFFER_REQUIRE_S3").is_err(), "COFFER_REQUIRE_S3 is set but no S3 server is configured");
        eprintln!("no S3 server configured (run scripts/test.sh); skipping");
        return None;
    }
    let bucket = std::env::var("COFFER_TEST_S3_BUCKET").unwrap();
    let prefix = format!("conformance-{}", coffer::LockId::random().short());
    Some(S3Options::from_url(&format!("s3://{bucket}/{prefix}")).unwrap())
}

/// The same sequence every backend must pass.
fn conformance(backend: &dyn Backend, large: bool) {
    assert!(backend.list("index/").unwrap().is_empty());
    backend.put("index/aa", Bytes::from_static(b"first")).unwrap();
    backend.put("index/aa", Bytes::from_static(b"second")).unwrap();
    assert_eq!(&backend.get("index/aa").unwrap()[..], b"second");
    assert!(backend.put_new("snapshots/bb", Bytes::from_static(b"once")).unwrap());
    assert!(
        !backend.put_new("snapshots/bb", Bytes::from_static(b"twice")).unwrap(),
        "create-only write replaced an object"
    );
    assert_eq!(&backend.get("snapshots/bb").unwrap()[..], b"once");
    backend.put("data/cc/cc1", Bytes::from_static(b"0123456789")).unwrap();
    assert_eq!(&backend.get_range("data/cc/cc1", 2..5).unwrap()[..], b"234");
    let mut listed: Vec<(String, u64)> = backend.list("data/").unwrap().into_iter().map(|i| (i.key, i.size)).collect();
    listed.sort();
    assert_eq!(listed, vec![("data/cc/cc1".to_string(), 10)]);
    assert!(matches!(backend.get("index/missing"), Err(coffer::Error::MissingObject { .. })));
    backend.delete("index/aa").unwrap();
    backend.delete("index/aa").unwrap();
    assert!(matches!(backend.get("index/aa"), Err(coffer::Error::MissingObject { .. })));
    let staging = backend.staging_dir().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&staging).unwrap();
    let sizes: &[usize] = if large { &[1000, 40 << 20] } else { &[1000] };
    for (number, &size) in sizes.iter().enumerate() {
        let content = random_bytes(size, 10 + number as u64);
        let mut file = tempfile::NamedTempFile::new_in(&staging).unwrap();
        std::io::Write::write_all(&mut file, &content).unwrap();
        let key = format!("data/ee/file{number}");
        backend.put_file(&key, file).unwrap();
        assert!(backend.get(&key).unwrap() == content, "put_file of {size} bytes changed the object");
        assert!(backend.list("data/ee/").unwrap().iter().any(|info| info.key == key && info.size == size as u64));
        backend.delete(&key).unwrap();
    }
    if large {
        let big = Bytes::from(random_bytes(40 << 20, 3));
        backend.put("data/dd/big", big.clone()).unwrap();
        assert!(backend.get("data/dd/big").unwrap() == big, "multipart upload changed the object");
        assert!(
            backend.get_range("data/dd/big", (20 << 20)..(20 << 20) + 100).unwrap()
                == big.slice((20 << 20)..(20 << 20) + 100)
        );
    }
}

#[test]
fn every_backend_passes_the_same_conformance_sequence() {
    conformance(&MemoryBackend::new(), false);
    let directory = tempfile::tempdir().unwrap();
    conformance(&LocalBackend::open(directory.path(), true).unwrap(), true);
    if let Some(settings) = s3_settings() {
        conformance(&open_s3(&settings).unwrap(), true);
    }
    if let Ok(endpoint) = std::env::var("COFFER_TEST_MOTO_ENDPOINT") {
        let prefix = format!("conformance-{}", coffer::LockId::random().short());
        let mut settings = S3Options::from_url(&format!("s3://coffer-moto/{prefix}")).unwrap();
        settings.endpoint = Some(endpoint);
        conformance(&open_s3(&settings).unwrap(), true);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn coffer(repo: &str, cache: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
    command
        .args(["--repo", repo])
        .args(args)
        .env("COFFER_PASSWORD", "pw")
        .env("COFFER_CACHE_DIR", cache)
        .env("COFFER_TESTONLY_WEAK_KDF", "1")
        .env("COFFER_S3_RETRY_TIMEOUT", "2")
        .stdin(Stdio::null());
    command
}

fn exit_and_stderr(mut command: Command) -> (Option<i32>, String) {
    let output = command.output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn storage_errors_are_one_clear_sentence_with_their_exit_code() {
    let Some(_) = s3_settings() else { return };
    let cache = tempfile::tempdir().unwrap();
    let mut unreachable = coffer("s3://coffer-test/x", cache.path(), &["snapshots"]);
    unreachable.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", free_port()));
    let started = Instant::now();
    let (code, stderr) = exit_and_stderr(unreachable);
    assert_eq!(code, Some(17), "{stderr}");
    assert!(stderr.contains("cannot reach") && stderr.trim().lines().count() == 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let (code, stderr) =
        exit_and_stderr(coffer("s3://no-such-bucket/x", cache.path(), &["init", "--kdf-memory-kib", "64"]));
    assert_eq!(code, Some(10), "{stderr}");
    assert!(stderr.contains("bucket does not exist"), "{stderr}");
    let mut wrong = coffer("s3://coffer-test/x", cache.path(), &["snapshots"]);
    wrong.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let (code, stderr) = exit_and_stderr(wrong);
    assert_eq!(code, Some(18), "{stderr}");
    assert!(stderr.contains("access denied"), "{stderr}");
    let mut plain = coffer("s3://coffer-test/x", cache.path(), &["snapshots"]);
    plain.env("AWS_ENDPOINT_URL", "http://192.0.2.1:9000");
    let (code, stderr) = exit_and_stderr(plain);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("plain HTTP"), "{stderr}");
}

/// A private s3s-fs on its own port and data directory, killed and restarted at will.
struct PrivateServer {
    binary: String,
    port: u16,
    data: std::path::PathBuf,
    child: Option<Child>,
}

impl PrivateServer {
    fn start(data: &Path) -> Self {
        let binary = std::env::var("COFFER_TEST_S3S_BIN").expect("COFFER_TEST_S3S_BIN names the s3s-fs binary");
        std::fs::create_dir_all(data.join("bucket")).unwrap();
        let mut server = Self { binary, port: free_port(), data: data.to_path_buf(), child: None };
        server.restart();
        server
    }

    fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", "coffer-test-key", "--secret-key", "coffer-test-secret"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_server_killed_mid_backup_leaves_a_consistent_repository() {
    let Some(_) = s3_settings() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut server = PrivateServer::start(&work.path().join("server"));
    let source = work.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    for index in 0..24u64 {
        std::fs::write(source.join(format!("scan_{index}.dcm")), random_bytes(2 << 20, index)).unwrap();
    }
    let cache = work.path().join("cache");
    let repo = "s3://bucket/clinic";
    let endpoint = server.endpoint();
    let with_server = |mut command: Command| {
        command.env("AWS_ENDPOINT_URL", &endpoint);
        command
    };
    assert!(with_server(coffer(repo, &cache, &["init", "--kdf-memory-kib", "64", "--pack-size", "2"]))
        .status()
        .unwrap()
        .success());
    let mut backup = with_server(coffer(repo, &cache, &["backup", source.to_str().unwrap()]));
    let running = backup.stderr(Stdio::piped()).spawn().unwrap();
    let packs = work.path().join("server/bucket/clinic/data");
    let deadline = Instant::now() + Duration::from_secs(60);
    while walkdir::WalkDir::new(&packs).into_iter().filter_map(|e| e.ok()).filter(|e| e.file_type().is_file()).count()
        < 4
    {
        assert!(Instant::now() < deadline, "the backup wrote no packs");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let output = running.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(17), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(
        !work.path().join("server/bucket/clinic/snapshots").exists()
            || std::fs::read_dir(work.path().join("server/bucket/clinic/snapshots")).unwrap().next().is_none()
    );
    server.restart();
    let rerun = with_server(coffer(repo, &cache, &["backup", source.to_str().unwrap()])).output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    let target = work.path().join("restored");
    let spec = format!("latest:{}", source.display());
    let restore =
        with_server(coffer(repo, &cache, &["restore", &spec, "--target", target.to_str().unwrap(), "--verify"]))
            .output()
            .unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    common::assert_same_tree(&source, &target);
}

/// Issue 12: the server killed and started again a few seconds later, in the middle
/// of a backup, is ridden out within the retry budget.
#[test]
fn a_server_restarted_mid_backup_is_ridden_out() {
    let Some(_) = s3_settings() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut server = PrivateServer::start(&work.path().join("server"));
    let source = work.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    for index in 0..24u64 {
        std::fs::write(source.join(format!("scan_{index}.dcm")), random_bytes(2 << 20, index)).unwrap();
    }
    let cache = work.path().join("cache");
    let repo = "s3://bucket/clinic";
    let endpoint = server.endpoint();
    let with_server = |mut command: Command| {
        command.env("AWS_ENDPOINT_URL", &endpoint).env("COFFER_S3_RETRY_TIMEOUT", "120");
        command
    };
    assert!(with_server(coffer(repo, &cache, &["init", "--kdf-memory-kib", "64", "--pack-size", "2"]))
        .status()
        .unwrap()
        .success());
    let running = with_server(coffer(repo, &cache, &["backup", source.to_str().unwrap()]))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let packs = work.path().join("server/bucket/clinic/data");
    let deadline = Instant::now() + Duration::from_secs(60);
    while walkdir::WalkDir::new(&packs).into_iter().filter_map(|e| e.ok()).filter(|e| e.file_type().is_file()).count()
        < 4
    {
        assert!(Instant::now() < deadline, "the backup wrote no packs");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    std::thread::sleep(Duration::from_secs(5));
    server.restart();
    let output = running.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let target = work.path().join("restored");
    let spec = format!("latest:{}", source.display());
    let restore =
        with_server(coffer(repo, &cache, &["restore", &spec, "--target", target.to_str().unwrap(), "--verify"]))
            .output()
            .unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    common::assert_same_tree(&source, &target);
    let check = with_server(coffer(repo, &cache, &["check", "--read-data"])).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}

/// Issue 12: unfinished multipart uploads (parts left by a crash) are listed and
/// aborted; prune does so for those older than a day. Against moto: s3s-fs does not
/// implement ListMultipartUploads (prune then notes that it could not look).
#[test]
fn unfinished_uploads_are_found_and_aborted() {
    let Some(_) = s3_settings() else { return };
    let Ok(endpoint) = std::env::var("COFFER_TEST_MOTO_ENDPOINT") else {
        assert!(std::env::var("COFFER_REQUIRE_S3").is_err(), "COFFER_REQUIRE_S3 is set but moto is not running");
        return;
    };
    let mut settings =
        S3Options::from_url(&format!("s3://coffer-moto/uploads-{}", coffer::LockId::random().short())).unwrap();
    settings.endpoint = Some(endpoint);
    use object_store::multipart::MultipartStore;
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&settings.bucket)
        .with_region("us-east-1")
        .with_endpoint(settings.endpoint.clone().unwrap())
        .with_allow_http(true)
        .with_access_key_id(settings.access_key_id.clone().unwrap())
        .with_secret_access_key(settings.secret_access_key.clone().unwrap())
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let key = object_store::path::Path::from(format!("{}/data/ab/abandoned", settings.prefix));
    let id = runtime.block_on(raw.create_multipart(&key)).unwrap();
    runtime.block_on(raw.put_part(&key, &id, 0, bytes::Bytes::from(vec![7u8; 5 << 20]).into())).unwrap();
    let backend = open_s3(&settings).unwrap();
    // moto dates every upload 2010-11-10, so the age rule is a unit test (uploads.rs).
    assert_eq!(backend.abort_stale_uploads(Duration::ZERO).unwrap(), 1);
    assert_eq!(backend.abort_stale_uploads(Duration::ZERO).unwrap(), 0, "the upload is gone");
    assert!(runtime.block_on(raw.complete_multipart(&key, &id, Vec::new())).is_err());
}

#[test]
fn a_folder_restore_fetches_little_more_than_the_folder() {
    if s3_settings().is_none() {
        return;
    }
    let fixture = Fixture::empty();
    let bucket = std::env::var("COFFER_TEST_S3_BUCKET").unwrap();
    let repo = format!("s3://{bucket}/cost-{}", coffer::LockId::random().short());
    let cache = fixture.path("cache");
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = coffer(&repo, &cache, &all).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        common::last_json(&output.stdout)
    };
    json(&["init", "--kdf-memory-kib", "64"]);
    let source = fixture.path("studies");
    for study in 0..8u64 {
        let folder = source.join(format!("study_{study}"));
        std::fs::create_dir_all(&folder).unwrap();
        for image in 0..4u64 {
            std::fs::write(folder.join(format!("{image}.dcm")), random_bytes(1_500_000, study * 10 + image)).unwrap();
        }
    }
    let first = json(&["backup", source.to_str().unwrap()]);
    let unchanged = json(&["backup", source.to_str().unwrap()]);
    let spec = format!("latest:{}/study_5", source.display());
    let restore = json(&["restore", &spec, "--target", fixture.path("one").to_str().unwrap()]);
    let fetched = restore["bytes_downloaded"].as_u64().unwrap();
    let folder_bytes = 4 * 1_500_000u64;
    eprintln!(
        "S3 costs: first backup {} requests, unchanged backup {} requests; one-folder restore fetched {} bytes for a {} byte folder in {} requests",
        first["storage"]["requests"], unchanged["storage"]["requests"], fetched, folder_bytes, restore["requests"]
    );
    assert!(
        fetched >= folder_bytes && fetched < folder_bytes + folder_bytes / 10,
        "fetched {fetched} for {folder_bytes}"
    );
    assert!(unchanged["storage"]["bytes_uploaded"].as_u64().unwrap() < 100_000, "{unchanged}");
    common::assert_same_tree(&source.join("study_5"), &fixture.path("one"));
}

/// Check, forget, prune and repair through the real binary on a real S3 server: a
/// clean repository checks clean after pruning, a flipped byte and a deleted pack are
/// found and named, and repair brings back a repository where every kept snapshot
/// restores.
#[test]
fn check_prune_and_repair_on_s3() {
    if s3_settings().is_none() {
        return;
    }
    let fixture = Fixture::empty();
    let bucket = std::env::var("COFFER_TEST_S3_BUCKET").unwrap();
    let prefix = format!("maintenance-{}", coffer::LockId::random().short());
    let repo = format!("s3://{bucket}/{prefix}");
    let cache = fixture.path("cache");
    let run = |args: &[&str]| -> (Option<i32>, serde_json::Value, String) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = coffer(&repo, &cache, &all).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let value = if output.stdout.is_empty() { serde_json::Value::Null } else { common::last_json(&output.stdout) };
        (output.status.code(), value, stderr)
    };
    let ok = |args: &[&str]| -> serde_json::Value {
        let (code, value, stderr) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        value
    };
    ok(&["init", "--kdf-memory-kib", "64", "--pack-size", "1"]);
    let source = fixture.path("studies");
    for version in 0..3u64 {
        for study in 0..4u64 {
            let folder = source.join(format!("study_{study}"));
            std::fs::create_dir_all(&folder).unwrap();
            let seed = if study == 0 { 100 + version } else { study };
            std::fs::write(folder.join("image.dcm"), random_bytes(700_000, seed)).unwrap();
        }
        ok(&["backup", source.to_str().unwrap()]);
    }
    assert_eq!(ok(&["check", "--read-data"])["ok"], true);
    let pruned = ok(&["forget", "--keep-last", "2", "--prune"]);
    assert_eq!(pruned["prune"]["packs_deleted"].as_u64().map(|n| n > 0), Some(true), "{pruned}");
    let checked = ok(&["check", "--read-data"]);
    assert!(checked["ok"] == true && checked["warnings"].as_array().unwrap().is_empty(), "{checked}");

    // A flipped byte in one pack of the latest version of study_0.
    let backend = open_s3(&S3Options::from_url(&repo).unwrap()).unwrap();
    let mut packs = backend.list("data/").unwrap();
    packs.sort_by_key(|info| info.key.clone());
    let victim = packs.iter().find(|info| info.size > 600_000).unwrap().key.clone();
    let mut bytes = backend.get(&victim).unwrap().to_vec();
    bytes[1000] ^= 0x40;
    backend.put(&victim, Bytes::from(bytes)).unwrap();
    let (code, report, stderr) = run(&["check", "--read-data"]);
    assert_eq!(code, Some(13), "{stderr}");
    assert_eq!(report["damage"][0]["object"], victim.as_str(), "{report}");
    assert!(!report["affected"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(run(&["check"]).0, Some(0), "a structure check does not read packs");

    // A deleted pack as well; then drop what lost data and rebuild the index.
    let other = packs.iter().rev().find(|info| info.key != victim && info.size > 600_000).unwrap().key.clone();
    backend.delete(&other).unwrap();
    let (code, report, _) = run(&["check"]);
    assert_eq!(code, Some(13));
    assert!(report["damage"].as_array().unwrap().iter().any(|d| d["object"] == other.as_str()), "{report}");
    // --read-data: the flipped byte is only seen by reading the packs.
    ok(&["repair", "snapshots", "--read-data", "--apply", "--forget"]);
    ok(&["repair", "index"]);
    ok(&["prune"]);
    let (code, report, stderr) = run(&["check", "--read-data"]);
    assert_eq!(code, Some(0), "{report} {stderr}");
    for snapshot in ok(&["snapshots"])["snapshots"].as_array().unwrap() {
        let id = snapshot["snapshot_id"].as_str().unwrap();
        let target = fixture.path(&format!("restored-{id}"));
        ok(&["restore", &format!("{id}:{}", source.display()), "--target", target.to_str().unwrap(), "--verify"]);
        for study in 1..4 {
            let file = format!("study_{study}/image.dcm");
            assert_eq!(std::fs::read(target.join(&file)).unwrap(), random_bytes(700_000, study), "{id} {file}");
        }
    }
}
