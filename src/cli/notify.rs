//! Notifications: after backup, restore, check, forget, prune, drill and `run`, a
//! profile's email (SMTP) and webhook (HTTP POST of the report as JSON, signed with
//! HMAC-SHA256) are told the outcome. A notification that cannot be delivered is tried
//! again, then said on stderr; it never changes the command's exit code.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::args::{Cli, Command};
use super::exit;
use super::profile::{Email, Outcome, Profile, SmtpTls, Webhook};

/// The report of one command (a step of `run`, or a command run on its own).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Step {
    /// `backup`, `forget`, `check`...
    pub command: String,
    pub exit_code: i32,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_step: Option<String>,
    pub duration_seconds: f64,
    pub snapshot_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The SHA-256 of each dump (and file read from standard input): name and hex.
    pub sha256: Vec<Sha256Of>,
    /// Lines worth reading in the message (a drill's findings, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sha256Of {
    pub name: String,
    pub sha256: String,
}

/// What a notification says: the run, its steps, where and when.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// `backup`, or `run` for a profile's whole job.
    pub command: String,
    pub profile: Option<String>,
    pub host: String,
    pub user: String,
    pub repository: Option<String>,
    pub started: String,
    pub duration_seconds: f64,
    pub outcome: Outcome,
    pub exit_code: i32,
    pub steps: Vec<Step>,
    pub coffer_version: &'static str,
}

/// What an exit code means for a notification.
pub fn outcome_of(code: i32) -> Outcome {
    match code {
        exit::SUCCESS => Outcome::Success,
        exit::INCOMPLETE => Outcome::Warning,
        _ => Outcome::Failure,
    }
}

/// What the person on call does about an exit code.
pub fn next_step(code: i32) -> Option<&'static str> {
    Some(match code {
        exit::SUCCESS => return None,
        exit::INCOMPLETE => "some files could not be read (listed in the command's output); the snapshot holds the rest. Fix their permissions or exclude them",
        exit::USAGE => "fix the command line or the profile (coffer config check names every error)",
        exit::NO_REPOSITORY => "check the profile's repository setting and that its disk or bucket is there",
        exit::LOCKED => "another coffer holds the repository's lock; if none runs, remove a stale lock with coffer unlock",
        exit::WRONG_PASSWORD => "check the profile's password_file or password_command",
        exit::DAMAGED => "run coffer check --read-data to find the damage, then coffer repair (see the README's section on damage)",
        exit::NOT_FOUND => "the named snapshot or path is not in the repository: coffer snapshots lists what is",
        exit::LOCAL_IO => "a local disk failed or is full: see the error for the path",
        exit::UNSUPPORTED_VERSION => "the repository was written by a newer coffer: upgrade coffer on this host",
        exit::UNREACHABLE => "the storage could not be reached in time: check the network and the endpoint; nothing was lost, and the next run retries",
        exit::ACCESS_DENIED => "the storage credentials lack a permission (see docs/COMPLIANCE.md for the policy)",
        exit::POSTGRES => "the database could not be dumped or restored: check the connection string, .pgpass and the server's log",
        exit::REFUSED => "coffer refused to do something unsafe: the error says what, and which option allows it",
        exit::INPUT_COMMAND => "the command whose output was backed up failed: see its error",
        129..=192 => "the command was interrupted (stopped, or the machine shut down); the next run resumes",
        _ => "read the error; coffer check tells whether the repository is sound",
    })
}

/// Lines the command wants in its notification (a drill's findings).
static DETAILS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Adds a line to this command's notification.
pub fn detail(text: &str) {
    DETAILS.lock().unwrap_or_else(|p| p.into_inner()).push(text.to_string());
}

/// The report of the command that just ran in this process.
pub fn step_of(cli: &Cli, code: i32, error: Option<String>, elapsed: Duration) -> Step {
    let (snapshot_ids, bytes, sha256) = super::audit::facts();
    let sha256 = sha256
        .iter()
        .filter_map(|pair| pair.rsplit_once('='))
        .map(|(name, hex)| Sha256Of { name: name.to_string(), sha256: hex.to_string() })
        .collect();
    let mut snapshot_ids = snapshot_ids;
    snapshot_ids.dedup();
    Step {
        command: command_name(&cli.command).unwrap_or("coffer").to_string(),
        exit_code: code,
        outcome: outcome_of(code).name().to_string(),
        error,
        next_step: next_step(code).map(str::to_string),
        duration_seconds: elapsed.as_secs_f64(),
        snapshot_ids,
        bytes,
        sha256,
        details: std::mem::take(&mut *DETAILS.lock().unwrap_or_else(|p| p.into_inner())),
    }
}

/// The commands that notify.
pub fn command_name(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Backup(args) if !args.dry_run => "backup",
        Command::Restore(args) if !args.dry_run => "restore",
        Command::Check(_) => "check",
        Command::Forget(args) if !args.dry_run => "forget",
        Command::Prune(args) if !args.dry_run => "prune",
        Command::Drill(_) => "drill",
        Command::Run(_) => "run",
        _ => return None,
    })
}

/// Builds the report of a run from its steps.
pub fn report(command: &str, profile: &Profile, started: jiff::Timestamp, steps: Vec<Step>) -> Report {
    let exit_code = worst(steps.iter().map(|s| s.exit_code));
    Report {
        schema_version: 1,
        command: command.to_string(),
        profile: Some(profile.name.clone()),
        host: profile.host.clone().unwrap_or_else(coffer::host_name),
        user: coffer::user_name(),
        repository: profile.repository.clone(),
        started: started.to_string(),
        duration_seconds: (jiff::Timestamp::now() - started).total(jiff::Unit::Second).unwrap_or(0.0),
        outcome: outcome_of(exit_code),
        exit_code,
        steps,
        coffer_version: env!("CARGO_PKG_VERSION"),
    }
}

/// The worst of several exit codes: any failure over a warning over success.
pub fn worst(codes: impl Iterator<Item = i32>) -> i32 {
    codes.max_by_key(|&code| (outcome_of(code), code != exit::SUCCESS)).unwrap_or(exit::SUCCESS)
}

/// Sends the report to the profile's targets if its outcome is one they want; a target
/// that cannot be reached after retries is said on stderr.
pub fn send(profile: &Profile, report: &Report) {
    if !profile.notify_on().contains(&report.outcome) {
        return;
    }
    if let Some(email) = &profile.email {
        if let Err(error) = retry(|| send_email(email, report)) {
            eprintln!("warning: the email notification to {} could not be sent: {error:#}", email.to.join(", "));
        }
    }
    if let Some(webhook) = &profile.webhook {
        if let Err(error) = retry(|| post_webhook(webhook, report)) {
            let url = super::profile::shown_url(&webhook.url);
            eprintln!("warning: the webhook notification to {url} could not be delivered: {error:#}");
        }
    }
}

/// Delivery errors that trying again cannot fix (a refused login, a 4xx answer).
#[derive(Debug)]
struct Permanent(anyhow::Error);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Permanent {}

/// Three tries, 1 and 3 seconds apart (COFFER_NOTIFY_RETRY_MS sets the first pause, for tests).
fn retry(mut attempt: impl FnMut() -> Result<()>) -> Result<()> {
    let first = std::env::var("COFFER_NOTIFY_RETRY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000u64);
    let mut pauses = [first, first * 3].into_iter();
    loop {
        match attempt() {
            Ok(()) => return Ok(()),
            Err(error) if error.downcast_ref::<Permanent>().is_some() => return Err(error),
            Err(error) => match pauses.next() {
                Some(pause) => std::thread::sleep(Duration::from_millis(pause)),
                None => return Err(error.context("tried 3 times")),
            },
        }
    }
}

/// The subject line: what, where, how it went.
pub fn subject(report: &Report) -> String {
    let what = match &report.profile {
        Some(profile) if report.command == "run" => format!("run {profile}"),
        _ => report.command.clone(),
    };
    let outcome = match report.outcome {
        Outcome::Success => "succeeded".to_string(),
        Outcome::Warning => "finished with warnings".to_string(),
        Outcome::Failure => format!("FAILED (exit code {})", report.exit_code),
    };
    format!("[coffer] {what} on {} {outcome}", report.host)
}

/// The text of the email: every step with its result, sizes, snapshot and dump hashes,
/// and for a failure the error and what to do next.
pub fn body(report: &Report) -> String {
    let mut text = String::new();
    let mut line = |s: String| {
        text.push_str(&s);
        text.push('\n');
    };
    line(subject(report).trim_start_matches("[coffer] ").to_string());
    line(String::new());
    line(format!("Host:        {}", report.host));
    line(format!("User:        {}", report.user));
    if let Some(profile) = &report.profile {
        line(format!("Profile:     {profile}"));
    }
    if let Some(repository) = &report.repository {
        line(format!("Repository:  {repository}"));
    }
    line(format!("Started:     {}", report.started));
    line(format!("Duration:    {:.1} s", report.duration_seconds));
    line(format!("Result:      {} (exit code {})", report.outcome.name(), report.exit_code));
    for step in &report.steps {
        line(String::new());
        line(format!(
            "{}: {} (exit code {}, {:.1} s)",
            step.command, step.outcome, step.exit_code, step.duration_seconds
        ));
        // Lines stay under 78 characters (a hash fits), so mail stays plain 7-bit text.
        // forget names the snapshots it removed; the others the one they made or read.
        let label = if step.command == "forget" { "removed " } else { "snapshot" };
        for id in &step.snapshot_ids {
            line(format!("  {label} {id}"));
        }
        if let Some(bytes) = step.bytes {
            line(format!("  bytes    {bytes} ({})", super::output::size(bytes)));
        }
        for dump in &step.sha256 {
            line(format!("  dump     {}", dump.name));
            line(format!("    sha256 {}", dump.sha256));
        }
        for detail in &step.details {
            line(format!("  {detail}"));
        }
        if let Some(error) = &step.error {
            line(format!("  error:   {error}"));
        }
        if let Some(next) = &step.next_step {
            line(format!("  next:    {next}"));
        }
    }
    line(String::new());
    line(format!("coffer {}", report.coffer_version));
    text
}

fn send_email(settings: &Email, report: &Report) -> Result<()> {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};

    let permanent = |e: anyhow::Error| anyhow::Error::new(Permanent(e));
    let mut message = Message::builder()
        .from(settings.from.parse::<Mailbox>().map_err(|e| permanent(anyhow::anyhow!("from address: {e}")))?)
        .subject(subject(report))
        .header(ContentType::TEXT_PLAIN);
    for to in &settings.to {
        message = message.to(to.parse::<Mailbox>().map_err(|e| permanent(anyhow::anyhow!("address {to:?}: {e}")))?);
    }
    let message = message.body(body(report)).map_err(|e| permanent(e.into()))?;
    let tls_mode = settings.tls.unwrap_or(SmtpTls::StartTls);
    if tls_mode == SmtpTls::None && settings.username.is_some() && !super::profile::is_loopback(&settings.server) {
        return Err(permanent(anyhow::anyhow!(
            "tls = \"none\" would send the SMTP password in clear to {}: refused",
            settings.server
        )));
    }
    let port = settings.port.unwrap_or(match tls_mode {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    let tls = || -> Result<TlsParameters> {
        let mut parameters = TlsParameters::builder(settings.server.clone());
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| permanent(anyhow::anyhow!("cannot read ca_file {}: {e}", path.display())))?;
            let certificate = Certificate::from_pem(&pem)
                .map_err(|e| permanent(anyhow::anyhow!("ca_file {} holds no certificate: {e}", path.display())))?;
            parameters = parameters.add_root_certificate(certificate);
        }
        parameters.build().map_err(|e| permanent(e.into()))
    };
    let mut transport = SmtpTransport::builder_dangerous(&settings.server)
        .port(port)
        .timeout(Some(Duration::from_secs(20)))
        .tls(match tls_mode {
            SmtpTls::StartTls => Tls::Required(tls()?),
            SmtpTls::Tls => Tls::Wrapper(tls()?),
            SmtpTls::None => Tls::None,
        });
    if let Some(username) = &settings.username {
        let password = super::password::read_secret(
            settings.password_file.as_deref(),
            settings.password_command.as_deref(),
            "SMTP password",
        )
        .map_err(permanent)?
        .unwrap_or_default();
        transport = transport.credentials(Credentials::new(username.clone(), password));
    }
    let server = format!("{}:{port}", settings.server);
    match transport.build().send(&message) {
        Ok(_) => Ok(()),
        Err(error) if error.is_permanent() => {
            Err(permanent(anyhow::anyhow!("the SMTP server {server} refused: {}", describe_smtp(&error))))
        }
        Err(error) => Err(anyhow::anyhow!("SMTP server {server}: {}", describe_smtp(&error))),
    }
}

/// lettre's error and its causes in one line.
fn describe_smtp(error: &lettre::transport::smtp::Error) -> String {
    coffer::backend::chain_text(error)
}

/// The `X-Coffer-Signature` of a body: `sha256=` and the hex HMAC-SHA256 under the key.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn post_webhook(settings: &Webhook, report: &Report) -> Result<()> {
    let permanent = |e: anyhow::Error| anyhow::Error::new(Permanent(e));
    let body = serde_json::to_vec(report)?;
    let key = super::password::read_secret(
        settings.secret_file.as_deref(),
        settings.secret_command.as_deref(),
        "webhook secret",
    )
    .map_err(permanent)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let timeout = Duration::from_secs(settings.timeout_seconds.unwrap_or(30));
    let status = runtime.block_on(async {
        // A redirect is not followed: the signed report goes only where the profile says.
        let client = reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none()).build()?;
        let mut request = client
            .post(&settings.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("coffer/", env!("CARGO_PKG_VERSION")));
        if let Some(key) = &key {
            request = request.header("x-coffer-signature", signature(key.as_bytes(), &body));
        }
        anyhow::Ok(request.body(body).send().await?.status())
    })?;
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        Err(permanent(anyhow::anyhow!(
            "the webhook answered {status} (redirects are not followed: give the final URL)"
        )))
    } else if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
        Err(permanent(anyhow::anyhow!("the webhook answered {status}")))
    } else {
        Err(anyhow::anyhow!("the webhook answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_exit_code_wins() {
        assert_eq!(worst([0, 3, 0].into_iter()), 3);
        assert_eq!(worst([3, 17, 0].into_iter()), 17);
        assert_eq!(worst([0, 0].into_iter()), 0);
    }

    #[test]
    fn the_signature_is_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
