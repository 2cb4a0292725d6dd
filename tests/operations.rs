//! Operations through the real binary: configuration profiles and `config check`,
//! `coffer run`, notifications to a real SMTP server (aiosmtpd, STARTTLS and login,
//! started here from scripts/smtp_server.py) and to a webhook listener, restore
//! drills, systemd timers and the lock that keeps two runs apart.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// A folder with a configuration file; runs coffer with only what the profile says
/// (no --repo, no password in the environment).
struct Setup {
    root: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let setup = Self { root: tempfile::tempdir().unwrap() };
        std::fs::write(setup.path("password"), "correct horse\n").unwrap();
        std::fs::create_dir_all(setup.path("data/study_001")).unwrap();
        std::fs::write(setup.path("data/study_001/scan.dcm"), common::random_bytes(300_000, 1)).unwrap();
        std::fs::write(setup.path("data/notes.txt"), "ward 3\n").unwrap();
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("coffer.toml")
    }

    /// The profile "base" (repository and password) and what is appended.
    fn write_config(&self, more: &str) {
        let text = format!(
            "[profile.base]\nrepository = \"{}\"\npassword_file = \"{}\"\n\n{more}",
            self.path("repo").display(),
            self.path("password").display()
        );
        self.write(&text);
    }

    /// Writes the configuration file, private to its owner as coffer requires whatever
    /// the test's umask.
    fn write(&self, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(self.config(), text).unwrap();
        std::fs::set_permissions(self.config(), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env("COFFER_CACHE_DIR", self.path("cache"))
            .env("COFFER_TESTONLY_WEAK_KDF", "1")
            .env("COFFER_NOTIFY_RETRY_MS", "20")
            .env_remove("COFFER_REPOSITORY")
            .env_remove("COFFER_PASSWORD")
            .env_remove("COFFER_PASSWORD_FILE")
            .env_remove("COFFER_PASSWORD_COMMAND")
            .env_remove("COFFER_PROFILE")
            .env_remove("COFFER_CONFIG")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(output.status.success(), "coffer {args:?} failed ({:?}): {}", output.status.code(), stderr(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        common::last_json(self.ok(&all).as_bytes())
    }

    fn init(&self) {
        self.ok(&["--profile", "base", "init", "--kdf-memory-kib", "64", "--kdf-iterations", "1"]);
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        self.json(&["--profile", "base", "snapshots"])["snapshots"].as_array().unwrap().clone()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A real SMTP server (scripts/smtp_server.py): STARTTLS required, login checked.
struct Smtp {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Smtp {
    /// None (and the test returns) when python3 with aiosmtpd is missing, unless
    /// COFFER_REQUIRE_SMTP (set by scripts/test.sh) demands it.
    fn start(flags: &[&str]) -> Option<Self> {
        let present =
            Command::new("python3").args(["-c", "import aiosmtpd"]).output().is_ok_and(|o| o.status.success());
        if !present {
            assert!(
                std::env::var("COFFER_REQUIRE_SMTP").is_err(),
                "COFFER_REQUIRE_SMTP is set but aiosmtpd is missing"
            );
            eprintln!("python3 with aiosmtpd is missing (scripts/test.sh installs it); skipping");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the SMTP server printed {line:?}"));
        Some(Self { child, dir, port })
    }

    /// The `[profile.X.notify.email]` table for this server.
    fn settings(&self, profile: &str) -> String {
        format!(
            "[profile.{profile}.notify.email]\nserver = \"localhost\"\nport = {}\ntls = \"starttls\"\nusername = \"coffer\"\npassword_file = \"{}\"\nfrom = \"coffer@pacs1.example\"\nto = [\"oncall@clinic.example\", \"it@clinic.example\"]\nca_file = \"{}\"\n",
            self.port,
            self.dir.path().join("password").display(),
            self.dir.path().join("ca.pem").display()
        )
    }

    /// The messages received so far, parsed by Python's email package: headers and the
    /// decoded text.
    fn messages(&self) -> Vec<serde_json::Value> {
        let reader = r#"
import email, email.policy, json, os, sys
folder = os.path.join(sys.argv[1], "mail")
names = sorted((n for n in os.listdir(folder) if n.endswith(".eml")), key=lambda n: int(n.split(".")[0]))
out = []
for name in names:
    message = email.message_from_bytes(open(os.path.join(folder, name), "rb").read(), policy=email.policy.default)
    out.append({"headers": {k: str(v) for k, v in message.items()}, "body": message.get_content()})
print(json.dumps(out))
"#;
        let output = Command::new("python3").args(["-c", reader]).arg(self.dir.path()).output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout).unwrap()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the webhook listener received.
#[derive(Debug, Clone)]
struct Request {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTP listener on loopback answering every POST with `status`.
fn webhook(status: u16) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/coffer", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.trim_end().split_once(':') {
                    headers.push((name.trim().to_string(), value.trim().to_string()));
                }
            }
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            store.lock().unwrap().push(Request { headers, body });
            let _ = write!(stream, "HTTP/1.1 {status} Status\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, received)
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

use common::{pg_server, psql};

#[test]
fn config_check_names_the_line_and_key_of_every_error() {
    let setup = Setup::new();
    let cases: &[(&str, &[&str])] = &[
        ("[profile.a\nrepository = \"/r\"\n", &["line 1", "not valid TOML"]),
        ("[profile.a]\nrepository = \"/r\"\npasword_file = \"/p\"\n", &["line 3: profile.a.pasword_file: unknown key"]),
        ("[profile.a]\npassword = \"hunter2\"\n", &["line 2: profile.a.password: unknown key (a password is never written"]),
        ("[profile.a]\nconnections = \"many\"\n", &["line 2: profile.a.connections: must be a whole number"]),
        ("[profile.a.backup]\npaths = [\"relative/dir\"]\n", &["line 2: profile.a.backup.paths: \"relative/dir\" is not an absolute path"]),
        (
            "[profile.a.backup]\ndatabases = [\"host=db dbname=clinic password=hunter2\"]\n",
            &["line 2: profile.a.backup.databases: holds a password"],
        ),
        ("[profile.a.retention]\nkeep_daily = -1\nkeep_within = \"a week\"\n", &["line 2: profile.a.retention.keep_daily", "line 3: profile.a.retention.keep_within"]),
        ("[profile.a.notify]\non = [\"always\"]\n", &["line 2: profile.a.notify.on: \"always\" is none of"]),
        (
            "[profile.a.notify.email]\nserver = \"smtp\"\nfrom = \"not an address\"\nto = [\"oncall@clinic.example\"]\n",
            &["line 3: profile.a.notify.email.from: \"not an address\" is not an email address"],
        ),
        ("[profile.a.notify.webhook]\nurl = \"ftp://x\"\n", &["line 2: profile.a.notify.webhook.url: \"ftp://x/...\" is not an http"]),
        ("[profile.a.schedule]\nat = \"25:00\"\n", &["line 2: profile.a.schedule.at: \"25:00\" is not a time of day"]),
        ("[profile.a.drill]\nsample = \"lots\"\n", &["line 2: profile.a.drill.sample"]),
        ("[profile.a]\ninclude = \"missing\"\n", &["line 2: profile.a.include: names \"missing\""]),
        ("[profile.a]\ninclude = \"b\"\n[profile.b]\ninclude = \"a\"\n", &["includes lead back"]),
        ("[profiles.a]\n", &["line 1: profiles: unknown key"]),
        ("[profile.a]\nrepository = \"s3://AKIA:hunter2@bucket/p\"\n", &["line 2: profile.a.repository: holds credentials"]),
        ("[profile.a.notify.webhook]\nurl = \"https://u:hunter2@hooks.example/x\"\n", &["line 2: profile.a.notify.webhook.url: holds credentials"]),
        (
            "[profile.a.notify.email]\nserver = \"smtp.example.com\"\ntls = \"none\"\nusername = \"u\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\n",
            &["line 3: profile.a.notify.email.tls: \"none\" would send the SMTP password in clear"],
        ),
        ("[profile.a.notify.email]\nserver = \"s\"\nfrom = \"a@b.example\"\nto = []\n", &["line 4: profile.a.notify.email.to: must name at least one address"]),
        ("[profile.\"a b\"]\nhost = \"h\"\n", &["profile name \"a b\""]),
    ];
    for (text, expected) in cases {
        setup.write(text);
        let output = setup.run(&["config", "check"]);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{text}: {message}");
        for part in *expected {
            assert!(message.contains(part), "{text:?}: expected {part:?} in {message}");
        }
        assert!(!message.contains("hunter2"), "a password was shown: {message}");
        assert!(!message.contains("panicked"), "{message}");
    }
    // A file other users may change is refused: it names commands coffer runs.
    setup.write("[profile.a]\nhost = \"h\"\n");
    std::fs::set_permissions(setup.config(), std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
    let output = setup.run(&["config", "check"]);
    assert_eq!(output.status.code(), Some(20), "{}", stderr(&output));
    assert!(stderr(&output).contains("may be changed by other users (mode 0664)"), "{}", stderr(&output));
    // Every error of one file at once.
    setup.write("[profile.a]\nhost = 1\nrepo = \"/r\"\n[profile.a.check]\npg = \"yes\"\n");
    let message = stderr(&setup.run(&["config", "check"]));
    assert!(message.contains("has 3 errors"), "{message}");
    // A good file, and a missing one.
    setup.write_config("[profile.nightly]\ninclude = \"base\"\n[profile.nightly.backup]\npaths = [\"/srv\"]\n");
    let report = setup.json(&["config", "check"]);
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["profiles"].as_array().unwrap().len(), 2, "{report}");
    let output = setup.run(&["--profile", "nosuch", "snapshots"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("has no profile \"nosuch\" (it has: base, nightly)"), "{}", stderr(&output));
    std::fs::remove_file(setup.config()).unwrap();
    let output = setup.run(&["config", "check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("does not exist"), "{}", stderr(&output));
}

#[test]
fn a_profile_gives_repository_password_and_paths_and_the_command_line_wins() {
    let setup = Setup::new();
    let data = setup.path("data");
    setup.write_config(&format!(
        "[profile.nightly]\ninclude = \"base\"\n[profile.nightly.backup]\npaths = [\"{}\"]\ntags = [\"nightly\"]\nexcludes = [\"*.txt\"]\n",
        data.display()
    ));
    setup.init();
    let summary = setup.json(&["--profile", "nightly", "backup"]);
    assert_eq!(summary["summary"]["files"], 1, "the profile's exclude left notes.txt out: {summary}");
    let snapshots = setup.snapshots();
    assert_eq!(snapshots[0]["paths"][0], data.to_str().unwrap());
    assert_eq!(snapshots[0]["tags"][0], "nightly");
    // Options given on the command line win: another path, another tag.
    let other = setup.path("data/study_001");
    setup.ok(&["--profile", "nightly", "backup", other.to_str().unwrap(), "--tag", "manual"]);
    let snapshots = setup.snapshots();
    let latest = snapshots.last().unwrap();
    assert_eq!(latest["paths"][0], other.to_str().unwrap());
    assert_eq!(latest["tags"], serde_json::json!(["manual"]));
    // A wrong password in the profile is the usual exit code 12.
    std::fs::write(setup.path("password"), "wrong\n").unwrap();
    let output = setup.run(&["--profile", "nightly", "snapshots"]);
    assert_eq!(output.status.code(), Some(12), "{}", stderr(&output));
}

#[test]
fn run_backs_up_files_and_a_database_applies_retention_and_notifies_each_time() {
    if !pg_server() {
        return;
    }
    let Some(smtp) = Smtp::start(&[]) else { return };
    let (url, hooks) = webhook(200);
    let setup = Setup::new();
    std::fs::write(setup.path("hook.key"), "hook secret\n").unwrap();
    let database = "coffer_ops_run";
    psql("postgres", &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
    psql("postgres", &format!("CREATE DATABASE {database}"));
    psql(database, "CREATE TABLE visits (id serial PRIMARY KEY, note text); INSERT INTO visits (note) SELECT 'v' || g FROM generate_series(1, 500) g");
    let data = setup.path("data");
    setup.write_config(&format!(
        "[profile.nightly]
include = \"base\"
[profile.nightly.backup]
paths = [\"{}\"]
databases = [\"dbname={database}\"]
[profile.nightly.retention]
keep_last = 2
prune = true
[profile.nightly.check]
read_data_subset = \"50%\"
[profile.nightly.notify]
on = [\"success\", \"warning\", \"failure\"]
[profile.nightly.notify.webhook]
url = \"{url}\"
secret_file = \"{}\"
{}",
        data.display(),
        setup.path("hook.key").display(),
        smtp.settings("nightly")
    ));
    setup.init();
    for night in 0..3 {
        std::fs::write(setup.path(&format!("data/night_{night}.txt")), format!("night {night}\n")).unwrap();
        psql(database, &format!("INSERT INTO visits (note) VALUES ('night {night}')"));
        let report = setup.json(&["run", "nightly"]);
        assert_eq!(report["exit_code"], 0, "{report}");
        let steps: Vec<&str> =
            report["steps"].as_array().unwrap().iter().map(|s| s["command"].as_str().unwrap()).collect();
        assert_eq!(steps, ["backup", "forget", "check"], "{report}");
    }
    let snapshots = setup.snapshots();
    assert_eq!(snapshots.len(), 2, "keep_last = 2 kept {} snapshots", snapshots.len());
    let latest = snapshots.last().unwrap();
    let id = latest["snapshot_id"].as_str().unwrap();
    let dump = latest["sources"].as_array().unwrap().iter().find(|s| s["kind"] == "postgres").expect("a dump");
    let dump_sha = dump["sha256"].as_str().unwrap();
    // One email per run, with what ran, where, the snapshot and the dump's hash.
    let messages = smtp.messages();
    assert_eq!(messages.len(), 3, "{messages:?}");
    let last = &messages[2];
    let subject = last["headers"]["Subject"].as_str().unwrap();
    assert!(subject.starts_with("[coffer] run nightly on ") && subject.ends_with(" succeeded"), "{subject}");
    assert_eq!(last["headers"]["From"], "coffer@pacs1.example");
    assert_eq!(last["headers"]["To"], "oncall@clinic.example, it@clinic.example");
    let body = last["body"].as_str().unwrap();
    let expected = [
        format!("snapshot {id}"),
        format!("sha256 {dump_sha}"),
        "Profile:     nightly".into(),
        "forget: success".into(),
    ];
    for part in expected {
        assert!(body.contains(&part), "{part:?} not in the email:\n{body}");
    }
    // One webhook call per run, signed with the key.
    let hooks = hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 3);
    let request = &hooks[2];
    let signature = request.header("x-coffer-signature").expect("a signature header");
    assert_eq!(signature, format!("sha256={}", hmac_hex(b"hook secret", &request.body)));
    let sent: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(sent["outcome"], "success");
    assert_eq!(sent["steps"][0]["snapshot_ids"][0], id);
    assert_eq!(sent["steps"][0]["sha256"][0]["sha256"], dump_sha);
    // Every step left its own audit record.
    let audit = setup.json(&["--profile", "base", "audit"]);
    let commands: Vec<&str> =
        audit["records"].as_array().unwrap().iter().map(|r| r["record"]["command"].as_str().unwrap()).collect();
    assert_eq!(commands.iter().filter(|c| **c == "backup").count(), 3, "{commands:?}");
    psql("postgres", &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
}

#[test]
fn a_refusing_or_unreachable_mail_server_leaves_the_backup_and_its_exit_code_alone() {
    let Some(refusing) = Smtp::start(&["--refuse-login"]) else { return };
    let setup = Setup::new();
    let data = setup.path("data");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable =
        refusing.settings("down").replace(&format!("port = {}", refusing.port), &format!("port = {closed}"));
    setup.write_config(&format!(
        "[profile.refused]\ninclude = \"base\"\n[profile.refused.backup]\npaths = [\"{0}\"]\n[profile.refused.notify]\non = [\"success\"]\n{1}\n[profile.down]\ninclude = \"base\"\n[profile.down.backup]\npaths = [\"{0}\"]\n[profile.down.notify]\non = [\"success\"]\n{2}",
        data.display(),
        refusing.settings("refused"),
        unreachable
    ));
    setup.init();
    for (profile, said) in [("refused", "refused"), ("down", "tried 3 times")] {
        let output = setup.run(&["--profile", profile, "backup"]);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{profile}: {message}");
        assert!(
            message.contains("the email notification to oncall@clinic.example, it@clinic.example could not be sent"),
            "{message}"
        );
        assert!(message.contains(said), "{profile}: {message}");
        assert!(!message.contains("s3cret-smtp"), "the SMTP password was shown: {message}");
    }
    assert_eq!(setup.snapshots().len(), 2);
    assert!(refusing.messages().is_empty());
}

#[test]
fn a_webhook_answering_500_is_tried_three_times_and_the_backup_stands() {
    let (url, hooks) = webhook(500);
    let setup = Setup::new();
    setup.write_config(&format!(
        "[profile.n]\ninclude = \"base\"\n[profile.n.backup]\npaths = [\"{}\"]\n[profile.n.notify]\non = [\"success\", \"failure\"]\n[profile.n.notify.webhook]\nurl = \"{url}\"\n",
        setup.path("data").display()
    ));
    setup.init();
    let output = setup.run(&["--profile", "n", "backup"]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{message}");
    assert!(message.contains("could not be delivered: tried 3 times: the webhook answered 500"), "{message}");
    assert_eq!(hooks.lock().unwrap().len(), 3);
    assert!(hooks.lock().unwrap()[0].header("x-coffer-signature").is_none(), "no key, no signature");
    // A failure is told too: the repository is gone.
    std::fs::rename(setup.path("repo"), setup.path("moved")).unwrap();
    let output = setup.run(&["--profile", "n", "backup"]);
    assert_eq!(output.status.code(), Some(10), "{}", stderr(&output));
    let last: serde_json::Value = serde_json::from_slice(&hooks.lock().unwrap().last().unwrap().body).unwrap();
    assert_eq!(last["outcome"], "failure");
    assert_eq!(last["exit_code"], 10);
    assert!(last["steps"][0]["next_step"].as_str().unwrap().contains("repository"), "{last}");
}

#[test]
fn a_drill_proves_a_sample_and_names_the_file_behind_a_flipped_byte() {
    let setup = Setup::new();
    setup.write_config(&format!(
        "[profile.n]\ninclude = \"base\"\n[profile.n.backup]\npaths = [\"{}\"]\n[profile.n.drill]\nsample = \"100%\"\nscratch_dir = \"{}\"\n",
        setup.path("data").display(),
        setup.path("scratch").display()
    ));
    setup.init();
    setup.ok(&["--profile", "n", "backup"]);
    let report = setup.json(&["--profile", "n", "drill"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["files_verified"], 2, "{report}");
    assert_eq!(report["files_total"], 2, "{report}");
    assert!(report["rto_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(std::fs::read_dir(setup.path("scratch")).unwrap().count(), 0, "the scratch folder stayed");
    // Flip one byte in the middle of the largest pack: the scan's data.
    let mut packs: Vec<PathBuf> = walk(&setup.path("repo/data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let pack = packs.last().unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(pack, bytes).unwrap();
    let output = setup.run(&["--profile", "n", "drill"]);
    let (out, message) = (String::from_utf8_lossy(&output.stdout).into_owned(), stderr(&output));
    assert_eq!(output.status.code(), Some(13), "{out}{message}");
    let scan = setup.path("data/study_001/scan.dcm");
    assert!(out.contains(&format!("FAILED: {}", scan.display())), "the damaged file is not named: {out}");
    assert!(message.contains("the drill of snapshot"), "{message}");
}

#[test]
fn a_drill_restores_each_dump_into_a_scratch_database_and_drops_it() {
    if !pg_server() {
        return;
    }
    let setup = Setup::new();
    let database = "coffer_ops_drill";
    psql("postgres", &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
    psql("postgres", &format!("CREATE DATABASE {database}"));
    psql(database, "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 1234); CREATE TABLE b (t text); INSERT INTO b VALUES ('x')");
    setup.write_config(&format!(
        "[profile.n]\ninclude = \"base\"\n[profile.n.backup]\ndatabases = [\"dbname={database}\"]\n[profile.n.drill]\npg_scratch = \"dbname=postgres\"\n"
    ));
    setup.init();
    setup.ok(&["--profile", "n", "backup"]);
    let report = setup.json(&["--profile", "n", "drill"]);
    assert_eq!(report["ok"], true, "{report}");
    let result = report["databases"][0]["result"].as_str().unwrap();
    assert!(
        result.contains("all 2 table(s), 1235 row(s), match the row counts and checksums recorded at backup"),
        "{result}"
    );
    assert_eq!(psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'coffer_drill_%'"), "0");
    // A scratch role that may only create databases, with its password in the string:
    // the password reaches pg_restore too, and the tables the dump's owner owned restore.
    psql("postgres", "DROP ROLE IF EXISTS coffer_ops_scratch");
    psql("postgres", "CREATE ROLE coffer_ops_scratch LOGIN CREATEDB PASSWORD 'scratch-pw-7'");
    let host = std::env::var("PGHOST").unwrap();
    let port = std::env::var("PGPORT").unwrap();
    let scratch = format!("host={host} port={port} dbname=postgres user=coffer_ops_scratch password=scratch-pw-7");
    let report = setup.json(&["--profile", "n", "drill", "--pg-scratch", &scratch]);
    assert_eq!(report["ok"], true, "{report}");
    let audit = setup.ok(&["--json", "--profile", "n", "audit"]);
    assert!(!audit.contains("scratch-pw-7"), "the scratch password is in the audit trail");
    psql("postgres", "DROP ROLE IF EXISTS coffer_ops_scratch");
    // A scratch database that cannot be created: one sentence, and exit 19 (PostgreSQL),
    // not 13: that says nothing about the repository.
    let output = setup.run(&["--profile", "n", "drill", "--pg-scratch", "dbname=postgres user=nobody_here"]);
    assert_eq!(output.status.code(), Some(19), "{}", stderr(&output));
    assert!(stderr(&output).contains("proves nothing about the repository"), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("cannot create the scratch database"));
    psql("postgres", &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

#[test]
fn schedule_writes_a_timer_and_service_that_systemd_accepts() {
    let setup = Setup::new();
    setup.write_config(&format!(
        "[profile.nightly]\ninclude = \"base\"\n[profile.nightly.backup]\npaths = [\"{}\"]\n[profile.nightly.schedule]\nrandomized_delay = \"20m\"\n",
        setup.path("data").display()
    ));
    let shown = setup.json(&["schedule", "install", "nightly", "--at", "03:15", "--dry-run"]);
    let timer = shown["timer"]["text"].as_str().unwrap();
    let service = shown["service"]["text"].as_str().unwrap();
    for line in ["OnCalendar=*-*-* 03:15:00", "RandomizedDelaySec=1200", "Persistent=true", "WantedBy=timers.target"] {
        assert!(timer.lines().any(|l| l == line), "{line} not in\n{timer}");
    }
    assert!(service.contains("Type=oneshot"), "{service}");
    assert!(service.contains(&format!("--config {} run nightly", setup.config().display())), "{service}");
    assert!(shown["crontab"].as_str().unwrap().starts_with("15 3 * * * "), "{shown}");
    let units = setup.path("units");
    setup.ok(&["schedule", "install", "nightly", "--unit-dir", units.to_str().unwrap()]);
    setup.ok(&["schedule", "install", "nightly", "--drill", "--unit-dir", units.to_str().unwrap()]);
    let drill_timer = std::fs::read_to_string(units.join("coffer-drill-nightly.timer")).unwrap();
    assert!(drill_timer.contains("OnCalendar=*-*-01 02:00:00"), "{drill_timer}");
    let listed = setup.ok(&["schedule", "list", "--unit-dir", units.to_str().unwrap()]);
    assert!(listed.contains("coffer-run-nightly") && listed.contains("coffer-drill-nightly"), "{listed}");
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_ok_and(|o| o.status.success()) {
        let output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(units.join("coffer-run-nightly.service"))
            .arg(units.join("coffer-run-nightly.timer"))
            .output()
            .unwrap();
        // verify exits 0 even when it ignores a line it cannot parse: it must say nothing.
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), stderr(&output));
        assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    } else {
        eprintln!("systemd-analyze is missing; the units were not verified by systemd");
    }
    setup.ok(&["schedule", "remove", "nightly", "--unit-dir", units.to_str().unwrap()]);
    assert!(!units.join("coffer-run-nightly.timer").exists());
    let output = setup.run(&["schedule", "remove", "nightly", "--unit-dir", units.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(14), "{}", stderr(&output));
    if !Path::new("/run/systemd/system").is_dir() {
        // Without systemd: the crontab line, and nothing installed.
        let output = setup.run(&["schedule", "install", "nightly"]);
        assert_eq!(output.status.code(), Some(20), "{}", stderr(&output));
        assert!(stderr(&output).contains("systemd is not running on this machine"), "{}", stderr(&output));
        assert!(String::from_utf8_lossy(&output.stdout).contains("run nightly"));
    }
}

#[test]
fn the_profile_prune_settings_are_applied() {
    let setup = Setup::new();
    let data = setup.path("data");
    setup.write_config(&format!(
        "[profile.n]\ninclude = \"base\"\n[profile.n.backup]\npaths = [\"{}\"]\n[profile.n.retention]\nkeep_last = 1\nmax_unused = 90\n",
        data.display()
    ));
    setup.init();
    // Two scans of the same size in one pack; then one goes, and half the pack is unused.
    std::fs::write(data.join("study_001/second.dcm"), common::random_bytes(300_000, 2)).unwrap();
    setup.ok(&["--profile", "n", "backup"]);
    std::fs::remove_file(data.join("study_001/scan.dcm")).unwrap();
    setup.ok(&["--profile", "n", "backup"]);
    setup.ok(&["--profile", "n", "forget"]);
    // The profile's 90% leaves the half-used pack alone; the default 5% would repack it.
    let plan = setup.json(&["--profile", "n", "prune", "--dry-run"]);
    assert_eq!(plan["packs_repacked"], 0, "{plan}");
    let plan = setup.json(&["--profile", "n", "prune", "--dry-run", "--max-unused", "5.5"]);
    assert!(plan["packs_repacked"].as_u64().unwrap() > 0, "{plan}");
}

#[test]
fn two_runs_of_one_profile_never_overlap() {
    let setup = Setup::new();
    // The first run's backup step waits 3 s for its password: the run holds its lock.
    setup.write_config(&format!(
        "[profile.nightly]\nrepository = \"{}\"\npassword_command = \"sleep 3; cat {}\"\n[profile.nightly.backup]\npaths = [\"{}\"]\n",
        setup.path("repo").display(),
        setup.path("password").display(),
        setup.path("data").display()
    ));
    setup.init();
    // Without HOME, as a systemd timer runs it: the lock does not depend on it.
    let first = setup.command(&["run", "nightly", "-q"]).env_remove("HOME").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let output = setup.run(&["run", "nightly"]);
    assert_eq!(output.status.code(), Some(11), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("another coffer run of profile \"nightly\" is in progress"),
        "{}",
        stderr(&output)
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    // Once it is done, the next run goes ahead.
    let report = setup.json(&["run", "nightly"]);
    assert_eq!(report["exit_code"], 0, "{report}");
    assert_eq!(setup.snapshots().len(), 2);
}

#[test]
fn the_readme_nightly_profile_is_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme.find("## Profiles, nightly runs").expect("the README's profile section")..];
    let start = section.find("```toml\n").expect("a TOML block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let setup = Setup::new();
    setup.write(block);
    let report = setup.json(&["config", "check"]);
    assert_eq!(report["valid"], true, "{report}");
    let nightly = report["profiles"].as_array().unwrap().iter().find(|p| p["name"] == "nightly").unwrap().clone();
    assert_eq!(nightly["databases"], 1, "{nightly}");
    assert_eq!(nightly["retention"], true, "{nightly}");
    assert_eq!(nightly["notify"]["email"], true, "{nightly}");
    assert_eq!(nightly["notify"]["webhook"], true, "{nightly}");
    assert_eq!(nightly["drill"], "monthly", "{nightly}");
    let units = setup.json(&["schedule", "install", "nightly", "--dry-run"]);
    assert!(
        units["timer"]["text"].as_str().unwrap().contains("OnCalendar=*-*-* 01:30:00\nRandomizedDelaySec=900\n"),
        "{units}"
    );
}
