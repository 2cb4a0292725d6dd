//! Ransomware-proof repositories against moto, a real S3 implementation with Object
//! Lock and IAM: `init --object-lock` locks every object (a versioned delete is
//! refused by the server), forget and prune leave locked objects alone and say until
//! when; a bucket without Object Lock is refused in one sentence; and the delete-less
//! IAM policy of docs/COMPLIANCE.md lets backups run while forget, prune and key
//! changes stop before removing anything.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The shared moto server of scripts/test.sh, or `None` (skipped) without one.
fn moto() -> Option<String> {
    match std::env::var("COFFER_TEST_MOTO_ENDPOINT") {
        Ok(endpoint) => Some(endpoint),
        Err(_) => {
            assert!(std::env::var("COFFER_REQUIRE_S3").is_err(), "COFFER_REQUIRE_S3 is set but moto is not running");
            eprintln!("skipped: COFFER_TEST_MOTO_ENDPOINT is not set (scripts/test.sh starts moto)");
            None
        }
    }
}

/// Runs a Python snippet with boto3 against `endpoint`; returns its stdout.
fn python(endpoint: &str, keys: (&str, &str), script: &str) -> String {
    let prelude = format!(
        "import boto3, json, sys\n\
         s3 = boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1')\n\
         iam = boto3.client('iam', endpoint_url='{endpoint}', region_name='us-east-1')\n"
    );
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .env("AWS_ACCESS_KEY_ID", keys.0)
        .env("AWS_SECRET_ACCESS_KEY", keys.1)
        .output()
        .unwrap();
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

struct Repo<'a> {
    endpoint: &'a str,
    url: String,
    cache: &'a Path,
}

impl Repo<'_> {
    fn run(&self, keys: (&str, &str), args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["--repo", &self.url])
            .args(args)
            .env("AWS_ENDPOINT_URL", self.endpoint)
            .env("AWS_ACCESS_KEY_ID", keys.0)
            .env("AWS_SECRET_ACCESS_KEY", keys.1)
            .env("AWS_REGION", "us-east-1")
            .env("COFFER_PASSWORD", "correct horse")
            .env("COFFER_CACHE_DIR", self.cache)
            .env("COFFER_TESTONLY_WEAK_KDF", "1")
            .env("COFFER_S3_RETRY_TIMEOUT", "5")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, keys: (&str, &str), args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.run(keys, &all);
        assert!(output.status.success(), "coffer {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8_lossy(&output.stdout);
        let last = text.lines().rfind(|line| !line.trim().is_empty()).unwrap_or("null");
        serde_json::from_str(last).unwrap()
    }
}

const ANY: (&str, &str) = ("moto", "moto");

fn write_tree(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed).collect();
    std::fs::write(dir.join("scan.dcm"), bytes).unwrap();
}

#[test]
fn locked_objects_stay_through_forget_and_prune() {
    let Some(endpoint) = moto() else { return };
    let work = tempfile::tempdir().unwrap();
    let unique = coffer::LockId::random().short();
    let (locked, plain) = (format!("locked-{unique}"), format!("plain-{unique}"));
    python(
        &endpoint,
        ANY,
        &format!(
            "s3.create_bucket(Bucket='{locked}', ObjectLockEnabledForBucket=True)\ns3.create_bucket(Bucket='{plain}')"
        ),
    );
    let cache = work.path().join("cache");

    // A bucket without Object Lock, or a local folder: one sentence, exit 20.
    let refused = Repo { endpoint: &endpoint, url: format!("s3://{plain}/repo"), cache: &cache }
        .run(ANY, &["init", "--object-lock", "2", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
    assert_eq!(refused.status.code(), Some(20));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("created without Object Lock"), "{message}");
    let local = work.path().join("local");
    let refused = Repo { endpoint: &endpoint, url: local.display().to_string(), cache: &cache }
        .run(ANY, &["init", "--object-lock", "2", "--kdf-memory-kib", "64"]);
    assert_eq!(refused.status.code(), Some(20));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not support S3 Object Lock"));

    let repo = Repo { endpoint: &endpoint, url: format!("s3://{locked}/repo"), cache: &cache };
    let init = repo.ok(
        ANY,
        &[
            "init",
            "--object-lock",
            "2",
            "--object-lock-mode",
            "compliance",
            "--kdf-memory-kib",
            "64",
            "--kdf-iterations",
            "1",
        ],
    );
    assert_eq!(init["object_lock"], serde_json::json!({"mode": "compliance", "days": 2}));
    let data = work.path().join("data");
    write_tree(&data, 1);
    let first = repo.ok(ANY, &["backup", data.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string();
    write_tree(&data, 2);
    repo.ok(ANY, &["backup", data.to_str().unwrap()]);

    // Every object is locked in compliance mode, and the server refuses to delete a
    // version of one: config, keys, packs, index, snapshots and audit records alike.
    let report = python(
        &endpoint,
        ANY,
        &format!(
            "keys = [o['Key'] for o in s3.list_objects_v2(Bucket='{locked}', Prefix='repo/')['Contents']]\n\
             modes = set(s3.head_object(Bucket='{locked}', Key=k).get('ObjectLockMode') for k in keys if '/locks/' not in k)\n\
             pack = [k for k in keys if '/data/' in k][0]\n\
             version = s3.list_object_versions(Bucket='{locked}', Prefix=pack)['Versions'][0]['VersionId']\n\
             try:\n    s3.delete_object(Bucket='{locked}', Key=pack, VersionId=version); refused = False\n\
             except Exception:\n    refused = True\n\
             print(json.dumps({{'modes': sorted(m or 'none' for m in modes), 'refused': refused, 'count': len(keys)}}))"
        ),
    );
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["modes"], serde_json::json!(["COMPLIANCE"]), "{report}");
    assert_eq!(report["refused"], true, "a locked version could be deleted");

    // Forget keeps the locked snapshot and says until when; prune deletes nothing.
    let forget = repo.ok(ANY, &["forget", &first]);
    assert_eq!(forget["removed"], 0, "{forget}");
    assert_eq!(forget["locked"][0]["snapshot_id"], first);
    let until: jiff::Timestamp = forget["locked"][0]["locked_until"].as_str().unwrap().parse().unwrap();
    let in_two_days = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(48);
    assert!(until > in_two_days && until < in_two_days + jiff::SignedDuration::from_hours(2), "{until}");
    let listed = repo.ok(ANY, &["snapshots"]);
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 2);
    let objects_before = python(
        &endpoint,
        ANY,
        &format!("print(s3.list_objects_v2(Bucket='{locked}', Prefix='repo/data/')['KeyCount'])"),
    );
    let prune = repo.ok(ANY, &["prune"]);
    assert_eq!(prune["packs_deleted"], 0, "{prune}");
    let objects_after = python(
        &endpoint,
        ANY,
        &format!("print(s3.list_objects_v2(Bucket='{locked}', Prefix='repo/data/')['KeyCount'])"),
    );
    assert_eq!(objects_before, objects_after);
    repo.ok(ANY, &["check", "--read-data"]);
    let verify = repo.run(ANY, &["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

/// Starts moto's server with its IAM policy checks on but its signature check off:
/// moto recomputes SigV4 from the query string after decoding it, so it rejects every
/// correctly signed listing whose prefix holds an encoded `/` (object_store encodes it,
/// boto does not). Signatures are checked by s3s-fs in tests/s3.rs; this test is about
/// what a credential may do.
const MOTO_WITHOUT_SIGNATURE_CHECK: &str = "\
import sys
from moto.iam import access_control
access_control.IAMRequestBase.check_signature = lambda self: None
from moto.server import main
sys.exit(main(sys.argv[1:]))
";

/// A moto server of this test's own: IAM enforcement is global to a server.
struct PrivateMoto {
    child: Child,
    endpoint: String,
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn private_moto() -> PrivateMoto {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("python3")
        .args(["-c", MOTO_WITHOUT_SIGNATURE_CHECK, "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs moto's server (moto[server] is installed by scripts/s3_server.sh)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    PrivateMoto { child, endpoint: format!("http://127.0.0.1:{port}") }
}

/// The delete-less policy exactly as docs/COMPLIANCE.md gives it, for BUCKET/PREFIX.
fn documented_policy(bucket: &str, prefix: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/COMPLIANCE.md")).unwrap();
    let section = &doc[doc.find("### Delete-less credentials").expect("the section exists")..];
    let start = section.find("```json\n").unwrap() + "```json\n".len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].replace("BUCKET", bucket).replace("PREFIX", prefix)
}

#[test]
fn delete_less_credentials_back_up_but_cannot_forget_or_prune() {
    if moto().is_none() {
        return;
    }
    let server = private_moto();
    let endpoint = server.endpoint.as_str();
    let policy = documented_policy("clinic", "nightly");
    let created = python(
        endpoint,
        ANY,
        &format!(
            "s3.create_bucket(Bucket='clinic')\n\
             keys = {{}}\n\
             for user, document in [('admin', json.dumps({{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}}]}})), ('backup', {policy:?})]:\n\
             \x20   iam.create_user(UserName=user)\n\
             \x20   iam.put_user_policy(UserName=user, PolicyName='coffer', PolicyDocument=document)\n\
             \x20   key = iam.create_access_key(UserName=user)['AccessKey']\n\
             \x20   keys[user] = [key['AccessKeyId'], key['SecretAccessKey']]\n\
             print(json.dumps(keys))"
        ),
    );
    let keys: serde_json::Value = serde_json::from_str(created.trim()).unwrap();
    let key = |user: &str| (keys[user][0].as_str().unwrap().to_string(), keys[user][1].as_str().unwrap().to_string());
    let (admin_id, admin_secret) = key("admin");
    let (backup_id, backup_secret) = key("backup");
    let admin = (admin_id.as_str(), admin_secret.as_str());
    let backup = (backup_id.as_str(), backup_secret.as_str());
    // From here on moto checks every request against the users' policies.
    python(
        endpoint,
        ANY,
        &format!("import urllib.request\nurllib.request.urlopen(urllib.request.Request('{endpoint}/moto-api/reset-auth', data=b'0', method='POST', headers={{'Content-Type': 'application/json'}}))"),
    );

    let work = tempfile::tempdir().unwrap();
    let repo = Repo { endpoint, url: "s3://clinic/nightly".into(), cache: &work.path().join("cache") };
    let unknown = repo.run(("AKIAUNKNOWN", "nope"), &["init", "--kdf-memory-kib", "64"]);
    assert_eq!(unknown.status.code(), Some(18), "moto enforces IAM: {}", String::from_utf8_lossy(&unknown.stderr));
    repo.ok(admin, &["init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
    let data = work.path().join("data");
    write_tree(&data, 3);
    let first = repo.ok(backup, &["backup", data.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string();
    write_tree(&data, 4);
    repo.ok(backup, &["backup", data.to_str().unwrap()]);
    // Everything but removal works with the backup host's credentials.
    repo.ok(backup, &["check", "--read-data"]);
    repo.ok(backup, &["restore", &first, "--target", work.path().join("out").to_str().unwrap()]);
    repo.ok(backup, &["audit"]);
    repo.ok(backup, &["snapshots"]);

    let count = |prefix: &str| -> u64 {
        python(
            endpoint,
            admin,
            &format!("print(s3.list_objects_v2(Bucket='clinic', Prefix='nightly/{prefix}')['KeyCount'])"),
        )
        .trim()
        .parse()
        .unwrap()
    };
    let (snapshots, packs, indexes) = (count("snapshots/"), count("data/"), count("index/"));
    let refuse = |args: &[&str]| {
        let output = repo.run(backup, args);
        let message = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(18), "{args:?}: {message}");
        assert!(message.contains("may not delete") && message.lines().count() == 1, "{args:?}: {message}");
    };
    refuse(&["forget", &first]);
    refuse(&["forget", "--keep-last", "1"]);
    let new_password = work.path().join("new-password");
    std::fs::write(&new_password, "another one\n").unwrap();
    refuse(&["key", "passwd", "--new-password-file", new_password.to_str().unwrap()]);
    let keys = repo.ok(backup, &["key", "list"]);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "key passwd added no key: {keys}");
    assert_eq!(count("snapshots/"), snapshots, "forget removed nothing");
    // An administration host forgets; the backup host's prune still removes nothing.
    repo.ok(admin, &["forget", &first]);
    refuse(&["prune"]);
    assert_eq!((count("data/"), count("index/")), (packs, indexes), "prune removed nothing");
    let pruned = repo.ok(admin, &["prune"]);
    assert!(pruned["packs_deleted"].as_u64().unwrap() > 0, "{pruned}");
    repo.ok(backup, &["check"]);
    let verify = repo.run(backup, &["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}
