//! Configuration profiles: a TOML file with named profiles that say what is backed up
//! where, how long it is kept, how it is checked and drilled, and whom to tell.
//!
//! ```toml
//! [profile.base]
//! repository = "s3://clinic-backups/pacs1"
//! password_file = "/etc/coffer/password"
//!
//! [profile.nightly]
//! include = "base"
//! [profile.nightly.backup]
//! paths = ["/srv/studies", "/etc"]
//! databases = ["host=/run/postgresql dbname=clinic user=backup"]
//! ```
//!
//! Every error of a file is collected with its line and key, so `config check` names
//! them all at once; unknown keys are errors. Options on the command line win over the
//! environment, which wins over the profile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use toml_edit::{Item, Table};

use super::args::{Cli, Command};
use super::{exit, fail};

/// One problem of a configuration file: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.key, self.message)
    }
}

/// When a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Warning,
    Failure,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Warning => "warning",
            Outcome::Failure => "failure",
        }
    }
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS after a plain greeting (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only to a server on this machine.
    None,
}

#[derive(Debug, Clone, Default)]
pub struct Email {
    pub server: String,
    pub port: Option<u16>,
    pub tls: Option<SmtpTls>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    /// A PEM file of certificates to trust besides the system's (a private CA).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct Webhook {
    pub url: String,
    /// A file whose first line is the HMAC-SHA256 key of the `X-Coffer-Signature` header.
    pub secret_file: Option<PathBuf>,
    pub secret_command: Option<String>,
    pub timeout_seconds: Option<u64>,
}

/// Every setting of a profile; `None` or empty where the profile says nothing.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub name: String,
    pub repository: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub connections: Option<usize>,
    pub s3_endpoint: Option<String>,
    pub aws_profile: Option<String>,
    pub aws_shared_credentials_file: Option<PathBuf>,
    pub host: Option<String>,
    // [backup]
    pub paths: Option<Vec<PathBuf>>,
    pub excludes: Option<Vec<String>>,
    pub exclude_files: Option<Vec<PathBuf>>,
    pub exclude_if_present: Option<Vec<String>>,
    pub one_file_system: Option<bool>,
    pub tags: Option<Vec<String>>,
    pub databases: Option<Vec<String>>,
    pub pg_globals: Option<bool>,
    /// A libpq password file (the format of ~/.pgpass) for the databases.
    pub pg_passfile: Option<PathBuf>,
    /// A command printing the databases' password.
    pub pg_password_command: Option<String>,
    // [retention]
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<String>,
    pub keep_tags: Option<Vec<String>>,
    pub keep_safety: Option<String>,
    pub group_by: Option<String>,
    pub prune: Option<bool>,
    pub max_unused: Option<f64>,
    pub max_repack_size: Option<u64>,
    // [check]
    pub read_data_subset: Option<String>,
    pub check_pg: Option<bool>,
    // [notify]
    pub notify_on: Option<Vec<Outcome>>,
    pub email: Option<Email>,
    pub webhook: Option<Webhook>,
    // [schedule]
    pub at: Option<String>,
    pub randomized_delay: Option<String>,
    // [drill]
    pub drill_sample: Option<f64>,
    pub drill_scratch_dir: Option<PathBuf>,
    pub drill_pg_scratch: Option<String>,
    pub drill_every: Option<String>,
    includes: Vec<String>,
}

macro_rules! inherit {
    ($own:expr, $base:expr, $($field:ident),* $(,)?) => {
        $( if $own.$field.is_none() { $own.$field = $base.$field.clone(); } )*
    };
}

impl Profile {
    /// Takes every setting this profile leaves unset from `base`. Two ways of giving one
    /// secret count as one setting: a profile's own `password_command` is not overruled
    /// by a `password_file` it includes.
    fn inherit(&mut self, base: &Profile) {
        let own_password = self.password_file.is_some() || self.password_command.is_some();
        let own_pg_password = self.pg_passfile.is_some() || self.pg_password_command.is_some();
        if !own_password {
            self.password_file = base.password_file.clone();
            self.password_command = base.password_command.clone();
        }
        if !own_pg_password {
            self.pg_passfile = base.pg_passfile.clone();
            self.pg_password_command = base.pg_password_command.clone();
        }
        inherit!(
            self,
            base,
            repository,
            cache_dir,
            connections,
            s3_endpoint,
            aws_profile,
            aws_shared_credentials_file,
            host,
            paths,
            excludes,
            exclude_files,
            exclude_if_present,
            one_file_system,
            tags,
            databases,
            pg_globals,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            keep_tags,
            keep_safety,
            group_by,
            prune,
            max_unused,
            max_repack_size,
            read_data_subset,
            check_pg,
            notify_on,
            email,
            webhook,
            at,
            randomized_delay,
            drill_sample,
            drill_scratch_dir,
            drill_pg_scratch,
            drill_every,
        );
    }

    /// Whether the profile names a retention policy.
    pub fn has_policy(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_hourly.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
            || self.keep_yearly.is_some()
            || self.keep_within.is_some()
            || self.keep_tags.as_ref().is_some_and(|t| !t.is_empty())
    }

    /// The outcomes that are notified (default: warning and failure).
    pub fn notify_on(&self) -> Vec<Outcome> {
        self.notify_on.clone().unwrap_or_else(|| vec![Outcome::Warning, Outcome::Failure])
    }

    /// The connection strings of the profile's databases, each told where its password is.
    pub fn database_conninfos(&self) -> Result<Vec<String>> {
        let passfile = self.passfile()?;
        Ok(self
            .databases
            .iter()
            .flatten()
            .map(|conninfo| match &passfile {
                Some(path) => with_passfile(conninfo, path),
                None => conninfo.clone(),
            })
            .collect())
    }

    /// The libpq password file for the databases: the profile's, or one written (private,
    /// removed at exit) from the output of `pg_password_command`.
    pub fn passfile(&self) -> Result<Option<PathBuf>> {
        if let Some(path) = &self.pg_passfile {
            return Ok(Some(path.clone()));
        }
        let Some(command) = &self.pg_password_command else { return Ok(None) };
        let password = super::password::run_secret_command(command.as_ref(), "the pg_password_command")?;
        let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
        let file = tempfile::Builder::new()
            .prefix("coffer-pgpass-")
            .tempfile()
            .map_err(|e| coffer::Error::io("cannot write a password file for PostgreSQL", std::env::temp_dir(), e))?;
        let path = file.path().to_path_buf();
        std::io::Write::write_all(&mut file.as_file(), format!("*:*:*:*:{escaped}\n").as_bytes())
            .map_err(|e| coffer::Error::io("cannot write a password file for PostgreSQL", &path, e))?;
        // Kept until the process ends; the temporary file is removed then.
        PASSFILES.lock().unwrap_or_else(|p| p.into_inner()).push(file);
        Ok(Some(path))
    }
}

/// Whether a URL names a user (and a secret) before its host: `scheme://user:secret@host`.
fn has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

/// A URL as it may be shown: scheme, host and port; no user, path or query (a webhook's
/// path or query often is its token).
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "(not a URL)".into() };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}/...")
}

/// Whether a host name is this machine.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Password files written for this run, removed when the process ends normally.
static PASSFILES: std::sync::Mutex<Vec<tempfile::NamedTempFile>> = std::sync::Mutex::new(Vec::new());

/// Removes the password files written for this run.
pub fn remove_temporary_files() {
    PASSFILES.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Adds `passfile` to a connection string that does not name one.
pub fn with_passfile(conninfo: &str, path: &Path) -> String {
    if coffer::pg::ConnInfo::parse(conninfo).is_ok_and(|c| c.has("passfile")) {
        return conninfo.to_string();
    }
    let path = path.to_string_lossy();
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let encoded: String = path
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let separator = if conninfo.contains('?') { '&' } else { '?' };
        format!("{conninfo}{separator}passfile={encoded}")
    } else {
        let quoted = path.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{conninfo} passfile='{quoted}'")
    }
}

/// A parsed configuration file.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub profiles: BTreeMap<String, Profile>,
}

impl ConfigFile {
    /// The profile with every include resolved.
    pub fn profile(&self, name: &str) -> Result<Profile> {
        let Some(own) = self.profiles.get(name) else {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            return fail(
                exit::USAGE,
                format!(
                    "{} has no profile {name:?} (it has: {})",
                    self.path.display(),
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            );
        };
        let mut profile = own.clone();
        // Includes are resolved depth first, each setting from the nearest profile;
        // cycles were refused when the file was read.
        let mut pending: Vec<String> = own.includes.iter().rev().cloned().collect();
        let mut seen = vec![name.to_string()];
        while let Some(next) = pending.pop() {
            if seen.contains(&next) {
                continue;
            }
            seen.push(next.clone());
            if let Some(base) = self.profiles.get(&next) {
                profile.inherit(base);
                pending.extend(base.includes.iter().rev().cloned());
            }
        }
        profile.name = name.to_string();
        Ok(profile)
    }
}

/// The default configuration file: /etc/coffer/coffer.toml for root, else
/// $XDG_CONFIG_HOME/coffer/coffer.toml (~/.config/coffer/coffer.toml).
pub fn default_path() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/etc/coffer/coffer.toml"));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("coffer").join("coffer.toml"))
}

/// The configuration file named by `--config` or `COFFER_CONFIG`, else the default one.
pub fn config_path(cli: &Cli) -> Result<PathBuf> {
    match cli.config.clone().or_else(default_path) {
        Some(path) => Ok(path),
        None => fail(exit::USAGE, "no configuration file given: use --config or set COFFER_CONFIG"),
    }
}

/// Reads and checks a configuration file; every problem is in the error, one per line.
/// A file another user may change is refused: it names commands coffer runs (password
/// commands) and where the secrets are.
pub fn load(path: &Path) -> Result<ConfigFile> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return fail(exit::USAGE, format!("configuration file {} does not exist", path.display()))
        }
        Err(error) => return fail(exit::USAGE, format!("cannot read configuration file {}: {error}", path.display())),
    };
    // The metadata of the file read, not of whatever its name points at later.
    let metadata = file.metadata().map_err(|e| coffer::Error::io("cannot read", path, e))?;
    let owner = metadata.uid();
    if owner != nix::unistd::geteuid().as_raw() && owner != 0 {
        return fail(
            exit::REFUSED,
            format!(
                "configuration file {} belongs to another user (uid {owner}): it names commands coffer runs",
                path.display()
            ),
        );
    }
    if metadata.mode() & 0o022 != 0 {
        return fail(
            exit::REFUSED,
            format!(
                "configuration file {} may be changed by other users (mode {:04o}): it names commands coffer runs; chmod go-w it",
                path.display(),
                metadata.mode() & 0o7777
            ),
        );
    }
    let mut text = String::new();
    if let Err(error) = file.read_to_string(&mut text) {
        return fail(exit::USAGE, format!("cannot read configuration file {}: {error}", path.display()));
    }
    match parse(&text) {
        Ok(profiles) => Ok(ConfigFile { path: path.to_path_buf(), profiles }),
        Err(problems) => {
            let count = problems.len();
            let listed: Vec<String> = problems.iter().map(|p| format!("{}: {p}", path.display())).collect();
            fail(
                exit::USAGE,
                format!(
                    "configuration file {} has {count} error{}:\n{}",
                    path.display(),
                    if count == 1 { "" } else { "s" },
                    listed.join("\n")
                ),
            )
        }
    }
}

/// Parses the text of a configuration file into its profiles, or lists every problem.
pub fn parse(text: &str) -> std::result::Result<BTreeMap<String, Profile>, Vec<Problem>> {
    let document = match toml_edit::Document::parse(text.to_string()) {
        Ok(document) => document,
        Err(error) => {
            let line = error.span().map(|span| line_of(text, span.start)).unwrap_or(1);
            let message = error.message().trim().to_string();
            return Err(vec![Problem { line, key: "(syntax)".into(), message: format!("not valid TOML: {message}") }]);
        }
    };
    let mut reader = Reader { text, problems: Vec::new() };
    let mut profiles = BTreeMap::new();
    let root = document.as_table();
    for (key, _) in root.iter() {
        if key != "profile" {
            reader.problem(root, key, key, "unknown key (profiles are [profile.NAME] tables)".into());
        }
    }
    match root.get("profile") {
        None => {}
        Some(Item::Table(table)) => {
            for (name, item) in table.iter() {
                let path = format!("profile.{name}");
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    let message = format!("profile name {name:?}: use letters, digits, '-', '_' and '.'");
                    reader.problem(table, name, &path, message);
                    continue;
                }
                match item.as_table() {
                    Some(section) => {
                        let profile = reader.profile(name, section, &path);
                        profiles.insert(name.to_string(), profile);
                    }
                    None => reader.problem(table, name, &path, "a profile is a table ([profile.NAME])".into()),
                }
            }
        }
        Some(_) => reader.problem(root, "profile", "profile", "must be a table of profiles".into()),
    }
    // Every include names a profile, and none leads back to itself.
    for (name, profile) in &profiles {
        for include in &profile.includes {
            if !profiles.contains_key(include) {
                reader.problem_at(
                    profile_line(&document, text, name, "include"),
                    &format!("profile.{name}.include"),
                    format!("names {include:?}, which is no profile of this file"),
                );
            }
        }
        if includes_itself(&profiles, name) {
            reader.problem_at(
                profile_line(&document, text, name, "include"),
                &format!("profile.{name}.include"),
                "includes lead back to this profile".into(),
            );
        }
    }
    if reader.problems.is_empty() {
        Ok(profiles)
    } else {
        reader.problems.sort_by_key(|p| p.line);
        Err(reader.problems)
    }
}

fn includes_itself(profiles: &BTreeMap<String, Profile>, name: &str) -> bool {
    let mut pending: Vec<&String> = profiles.get(name).map(|p| p.includes.iter().collect()).unwrap_or_default();
    let mut seen: Vec<&String> = Vec::new();
    while let Some(next) = pending.pop() {
        if next == name {
            return true;
        }
        if seen.contains(&next) {
            continue;
        }
        seen.push(next);
        pending.extend(profiles.get(next).into_iter().flat_map(|p| p.includes.iter()));
    }
    false
}

fn profile_line(document: &toml_edit::Document<String>, text: &str, name: &str, key: &str) -> usize {
    document
        .get("profile")
        .and_then(|p| p.as_table())
        .and_then(|p| p.get(name))
        .and_then(|p| p.as_table())
        .and_then(|t| t.key(key))
        .and_then(|k| k.span())
        .map(|span| line_of(text, span.start))
        .unwrap_or(1)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Reads typed values out of tables, collecting problems instead of stopping.
struct Reader<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

/// The keys a section knows; any other is reported.
struct Section<'a> {
    table: &'a Table,
    path: String,
    known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn new(table: &'a Table, path: &str) -> Self {
        Self { table, path: path.to_string(), known: Vec::new() }
    }
}

impl Reader<'_> {
    fn line(&self, table: &Table, key: &str) -> usize {
        table
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| table.get(key).and_then(Item::span))
            .or_else(|| table.span())
            .map(|span| line_of(self.text, span.start))
            .unwrap_or(1)
    }

    fn problem(&mut self, table: &Table, key: &str, path: &str, message: String) {
        let line = self.line(table, key);
        self.problem_at(line, path, message);
    }

    fn problem_at(&mut self, line: usize, path: &str, message: String) {
        self.problems.push(Problem { line, key: path.to_string(), message });
    }

    /// The item of a known key, if present.
    fn item<'s>(&mut self, section: &mut Section<'s>, key: &'static str) -> Option<&'s Item> {
        section.known.push(key);
        section.table.get(key).filter(|item| !item.is_none())
    }

    fn string(&mut self, section: &mut Section<'_>, key: &'static str) -> Option<String> {
        let item = self.item(section, key)?;
        match item.as_str() {
            Some(text) if !text.is_empty() => Some(text.to_string()),
            Some(_) => {
                self.problem(section.table, key, &format!("{}.{key}", section.path), "must not be empty".into());
                None
            }
            None => {
                self.problem(section.table, key, &format!("{}.{key}", section.path), "must be a string".into());
                None
            }
        }
    }

    fn path(&mut self, section: &mut Section<'_>, key: &'static str) -> Option<PathBuf> {
        let text = self.string(section, key)?;
        let path = PathBuf::from(&text);
        if !path.is_absolute() {
            let at = format!("{}.{key}", section.path);
            self.problem(section.table, key, &at, format!("{text:?} is not an absolute path"));
            return None;
        }
        Some(path)
    }

    fn bool(&mut self, section: &mut Section<'_>, key: &'static str) -> Option<bool> {
        let item = self.item(section, key)?;
        let value = item.as_bool();
        if value.is_none() {
            self.problem(section.table, key, &format!("{}.{key}", section.path), "must be true or false".into());
        }
        value
    }

    fn integer(
        &mut self,
        section: &mut Section<'_>,
        key: &'static str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        let item = self.item(section, key)?;
        match item.as_integer() {
            Some(value) if range.contains(&value) => Some(value),
            _ => {
                let (low, high) = (range.start(), range.end());
                let at = format!("{}.{key}", section.path);
                self.problem(section.table, key, &at, format!("must be a whole number from {low} to {high}"));
                None
            }
        }
    }

    fn strings(&mut self, section: &mut Section<'_>, key: &'static str) -> Option<Vec<String>> {
        let item = self.item(section, key)?;
        let at = format!("{}.{key}", section.path);
        if let Some(text) = item.as_str() {
            return Some(vec![text.to_string()]);
        }
        let Some(array) = item.as_array() else {
            self.problem(section.table, key, &at, "must be a string or a list of strings".into());
            return None;
        };
        let mut values = Vec::new();
        for value in array.iter() {
            match value.as_str() {
                Some(text) if !text.is_empty() => values.push(text.to_string()),
                _ => {
                    let line =
                        value.span().map(|s| line_of(self.text, s.start)).unwrap_or(self.line(section.table, key));
                    self.problem_at(line, &at, "must hold only non-empty strings".into());
                    return None;
                }
            }
        }
        Some(values)
    }

    fn paths(&mut self, section: &mut Section<'_>, key: &'static str) -> Option<Vec<PathBuf>> {
        let values = self.strings(section, key)?;
        let at = format!("{}.{key}", section.path);
        let mut paths = Vec::new();
        for value in values {
            let path = PathBuf::from(&value);
            if !path.is_absolute() {
                self.problem(section.table, key, &at, format!("{value:?} is not an absolute path"));
                return None;
            }
            paths.push(path);
        }
        Some(paths)
    }

    fn table<'s>(&mut self, section: &mut Section<'s>, key: &'static str) -> Option<&'s Table> {
        let item = self.item(section, key)?;
        match item.as_table() {
            Some(table) => Some(table),
            None => {
                let at = format!("{}.{key}", section.path);
                self.problem(section.table, key, &at, format!("must be a table ([{at}])"));
                None
            }
        }
    }

    /// Reports the keys of `section` that nothing asked for.
    fn finish(&mut self, section: Section<'_>) {
        for (key, _) in section.table.iter() {
            if !section.known.contains(&key) {
                let hint = match key {
                    "password" => " (a password is never written in this file: use password_file or password_command)",
                    _ => "",
                };
                let at = format!("{}.{key}", section.path);
                let message = format!("unknown key{hint}; known here: {}", section.known.join(", "));
                self.problem(section.table, key, &at, message);
            }
        }
    }

    fn profile(&mut self, name: &str, table: &Table, path: &str) -> Profile {
        let mut section = Section::new(table, path);
        let mut profile = Profile { name: name.to_string(), ..Profile::default() };
        profile.includes = self.strings(&mut section, "include").unwrap_or_default();
        profile.repository = self.string(&mut section, "repository");
        for (key, value) in [("repository", &profile.repository), ("s3_endpoint", &profile.s3_endpoint)] {
            if value.as_deref().is_some_and(has_credentials) {
                let message = "holds credentials (user:secret@), which are never written in this file: use aws_shared_credentials_file";
                self.problem(table, key, &format!("{path}.{key}"), message.into());
            }
        }
        if let Some(repository) = &profile.repository {
            let remote = repository.starts_with("s3://") || repository.starts_with("file://");
            if !remote && !Path::new(repository).is_absolute() {
                let message =
                    format!("{repository:?} is neither an absolute path, file:///path nor s3://bucket/prefix");
                self.problem(table, "repository", &format!("{path}.repository"), message);
            }
        }
        profile.password_file = self.path(&mut section, "password_file");
        profile.password_command = self.string(&mut section, "password_command");
        if profile.password_file.is_some() && profile.password_command.is_some() {
            let message = "give password_file or password_command, not both".into();
            self.problem(table, "password_command", &format!("{path}.password_command"), message);
        }
        profile.cache_dir = self.path(&mut section, "cache_dir");
        profile.connections = self.integer(&mut section, "connections", 1..=256).map(|n| n as usize);
        profile.s3_endpoint = self.string(&mut section, "s3_endpoint");
        profile.aws_profile = self.string(&mut section, "aws_profile");
        profile.aws_shared_credentials_file = self.path(&mut section, "aws_shared_credentials_file");
        profile.host = self.string(&mut section, "host");
        if let Some(backup) = self.table(&mut section, "backup") {
            self.backup(&mut profile, backup, &format!("{path}.backup"));
        }
        if let Some(retention) = self.table(&mut section, "retention") {
            self.retention(&mut profile, retention, &format!("{path}.retention"));
        }
        if let Some(check) = self.table(&mut section, "check") {
            let mut check = Section::new(check, &format!("{path}.check"));
            profile.read_data_subset = self.string(&mut check, "read_data_subset");
            if let Some(subset) = &profile.read_data_subset {
                if let Err(error) = subset.parse::<coffer::ReadSubset>() {
                    let at = format!("{}.read_data_subset", check.path);
                    self.problem(check.table, "read_data_subset", &at, error.to_string());
                }
            }
            profile.check_pg = self.bool(&mut check, "pg");
            self.finish(check);
        }
        if let Some(notify) = self.table(&mut section, "notify") {
            self.notify(&mut profile, notify, &format!("{path}.notify"));
        }
        if let Some(schedule) = self.table(&mut section, "schedule") {
            let mut schedule = Section::new(schedule, &format!("{path}.schedule"));
            profile.at = self.string(&mut schedule, "at");
            if let Some(at) = &profile.at {
                if super::schedule::parse_at(at).is_none() {
                    let message = format!("{at:?} is not a time of day (HH:MM, 24-hour clock)");
                    self.problem(schedule.table, "at", &format!("{}.at", schedule.path), message);
                }
            }
            profile.randomized_delay = self.duration(&mut schedule, "randomized_delay");
            self.finish(schedule);
        }
        if let Some(drill) = self.table(&mut section, "drill") {
            let mut drill = Section::new(drill, &format!("{path}.drill"));
            if let Some(sample) = self.string(&mut drill, "sample") {
                match super::drill::parse_sample(&sample) {
                    Some(share) => profile.drill_sample = Some(share),
                    None => {
                        let message = format!("{sample:?} is not a share of files such as \"5%\"");
                        self.problem(drill.table, "sample", &format!("{}.sample", drill.path), message);
                    }
                }
            }
            profile.drill_scratch_dir = self.path(&mut drill, "scratch_dir");
            profile.drill_pg_scratch = self.conninfo(&mut drill, "pg_scratch");
            profile.drill_every = self.string(&mut drill, "every");
            if let Some(every) = &profile.drill_every {
                if !["daily", "weekly", "monthly"].contains(&every.as_str()) {
                    let message = format!("{every:?} is none of daily, weekly, monthly");
                    self.problem(drill.table, "every", &format!("{}.every", drill.path), message);
                }
            }
            self.finish(drill);
        }
        self.finish(section);
        profile
    }

    fn duration(&mut self, section: &mut Section<'_>, key: &'static str) -> Option<String> {
        let text = self.string(section, key)?;
        if super::schedule::parse_duration(&text).is_none() {
            let at = format!("{}.{key}", section.path);
            self.problem(section.table, key, &at, format!("{text:?} is not a duration such as 30m, 2h or 1d"));
            return None;
        }
        Some(text)
    }

    fn conninfo(&mut self, section: &mut Section<'_>, key: &'static str) -> Option<String> {
        let text = self.string(section, key)?;
        self.check_conninfo(section.table, key, &format!("{}.{key}", section.path), &text).then_some(text)
    }

    fn check_conninfo(&mut self, table: &Table, key: &str, at: &str, text: &str) -> bool {
        match coffer::pg::ConnInfo::parse(text) {
            Ok(conninfo) if conninfo.password().is_some() => {
                let message = "holds a password, which is never written in this file: use .pgpass, pg_passfile or pg_password_command";
                self.problem(table, key, at, message.into());
                false
            }
            Ok(_) => true,
            Err(error) => {
                self.problem(table, key, at, error.to_string());
                false
            }
        }
    }

    fn backup(&mut self, profile: &mut Profile, table: &Table, path: &str) {
        let mut section = Section::new(table, path);
        profile.paths = self.paths(&mut section, "paths");
        profile.excludes = self.strings(&mut section, "excludes");
        profile.exclude_files = self.paths(&mut section, "exclude_files");
        profile.exclude_if_present = self.strings(&mut section, "exclude_if_present");
        profile.one_file_system = self.bool(&mut section, "one_file_system");
        profile.tags = self.strings(&mut section, "tags");
        profile.databases = self.strings(&mut section, "databases");
        if let Some(databases) = profile.databases.clone() {
            let at = format!("{path}.databases");
            if !databases.iter().all(|db| self.check_conninfo(table, "databases", &at, db)) {
                profile.databases = None;
            }
        }
        profile.pg_globals = self.bool(&mut section, "pg_globals");
        profile.pg_passfile = self.path(&mut section, "pg_passfile");
        profile.pg_password_command = self.string(&mut section, "pg_password_command");
        self.finish(section);
    }

    fn retention(&mut self, profile: &mut Profile, table: &Table, path: &str) {
        let mut section = Section::new(table, path);
        let count = |reader: &mut Self, section: &mut Section<'_>, key| {
            reader.integer(section, key, 0..=i64::from(u32::MAX)).map(|n| n as u32)
        };
        profile.keep_last = count(self, &mut section, "keep_last");
        profile.keep_hourly = count(self, &mut section, "keep_hourly");
        profile.keep_daily = count(self, &mut section, "keep_daily");
        profile.keep_weekly = count(self, &mut section, "keep_weekly");
        profile.keep_monthly = count(self, &mut section, "keep_monthly");
        profile.keep_yearly = count(self, &mut section, "keep_yearly");
        for (key, slot) in [("keep_within", &mut profile.keep_within), ("keep_safety", &mut profile.keep_safety)] {
            let value = self.string(&mut section, key);
            if let Some(text) = &value {
                if let Err(error) = coffer::parse_duration(text) {
                    self.problem(table, key, &format!("{path}.{key}"), error.to_string());
                    continue;
                }
            }
            *slot = value;
        }
        profile.keep_tags = self.strings(&mut section, "keep_tags");
        profile.group_by = self.item(&mut section, "group_by").and_then(|item| {
            let value = item.as_str().map(str::to_string);
            if value.is_none() {
                self.problem(table, "group_by", &format!("{path}.group_by"), "must be a string".into());
            }
            value
        });
        profile.prune = self.bool(&mut section, "prune");
        profile.max_unused = self.item(&mut section, "max_unused").and_then(|item| {
            let value = item.as_float().or_else(|| item.as_integer().map(|n| n as f64));
            match value {
                Some(value) if (0.0..=100.0).contains(&value) => Some(value),
                _ => {
                    let message = "must be a percentage from 0 to 100".into();
                    self.problem(table, "max_unused", &format!("{path}.max_unused"), message);
                    None
                }
            }
        });
        profile.max_repack_size = self.integer(&mut section, "max_repack_size", 1..=i64::MAX).map(|n| n as u64);
        self.finish(section);
    }

    fn notify(&mut self, profile: &mut Profile, table: &Table, path: &str) {
        let mut section = Section::new(table, path);
        if let Some(on) = self.strings(&mut section, "on") {
            let mut outcomes = Vec::new();
            for value in on {
                match value.as_str() {
                    "success" => outcomes.push(Outcome::Success),
                    "warning" => outcomes.push(Outcome::Warning),
                    "failure" => outcomes.push(Outcome::Failure),
                    _ => {
                        let message = format!("{value:?} is none of success, warning, failure");
                        self.problem(table, "on", &format!("{path}.on"), message);
                    }
                }
            }
            profile.notify_on = Some(outcomes);
        }
        if let Some(email) = self.table(&mut section, "email") {
            let mut email = Section::new(email, &format!("{path}.email"));
            let mut settings = Email::default();
            let required = |reader: &mut Self, section: &mut Section<'_>, key| {
                let value = reader.string(section, key);
                if value.is_none() && !section.table.contains_key(key) {
                    let at = format!("{}.{key}", section.path);
                    reader.problem(section.table, key, &at, "is required".into());
                }
                value.unwrap_or_default()
            };
            settings.server = required(self, &mut email, "server");
            settings.port = self.integer(&mut email, "port", 1..=65535).map(|n| n as u16);
            settings.tls = self.string(&mut email, "tls").and_then(|tls| match tls.as_str() {
                "starttls" => Some(SmtpTls::StartTls),
                "tls" => Some(SmtpTls::Tls),
                "none" => Some(SmtpTls::None),
                _ => {
                    let message = format!("{tls:?} is none of starttls, tls, none");
                    self.problem(email.table, "tls", &format!("{}.tls", email.path), message);
                    None
                }
            });
            settings.username = self.string(&mut email, "username");
            settings.password_file = self.path(&mut email, "password_file");
            settings.password_command = self.string(&mut email, "password_command");
            settings.from = required(self, &mut email, "from");
            settings.to = self.strings(&mut email, "to").unwrap_or_default();
            if settings.to.is_empty() {
                self.problem(email.table, "to", &format!("{}.to", email.path), "must name at least one address".into());
            }
            for (key, address) in std::iter::once(("from", &settings.from)).chain(settings.to.iter().map(|a| ("to", a)))
            {
                if !address.is_empty() && address.parse::<lettre::message::Mailbox>().is_err() {
                    let at = format!("{}.{key}", email.path);
                    self.problem(email.table, key, &at, format!("{address:?} is not an email address"));
                }
            }
            settings.ca_file = self.path(&mut email, "ca_file");
            if settings.tls == Some(SmtpTls::None) && settings.username.is_some() && !is_loopback(&settings.server) {
                let message = format!(
                    "\"none\" would send the SMTP password in clear to {}: use starttls or tls (none is for a server on this machine)",
                    settings.server
                );
                self.problem(email.table, "tls", &format!("{}.tls", email.path), message);
            }
            self.finish(email);
            profile.email = Some(settings);
        }
        if let Some(webhook) = self.table(&mut section, "webhook") {
            let mut webhook = Section::new(webhook, &format!("{path}.webhook"));
            let mut settings =
                Webhook { url: self.string(&mut webhook, "url").unwrap_or_default(), ..Webhook::default() };
            let at = format!("{}.url", webhook.path);
            if settings.url.is_empty() {
                if !webhook.table.contains_key("url") {
                    self.problem(webhook.table, "url", &at, "is required".into());
                }
            } else if !(settings.url.starts_with("https://") || settings.url.starts_with("http://")) {
                self.problem(
                    webhook.table,
                    "url",
                    &at,
                    format!("{:?} is not an http:// or https:// URL", shown_url(&settings.url)),
                );
            } else if has_credentials(&settings.url) {
                let message = "holds credentials (user:secret@), which are never written in this file: use secret_file";
                self.problem(webhook.table, "url", &at, message.into());
            }
            settings.secret_file = self.path(&mut webhook, "secret_file");
            settings.secret_command = self.string(&mut webhook, "secret_command");
            settings.timeout_seconds = self.integer(&mut webhook, "timeout_seconds", 1..=600).map(|n| n as u64);
            self.finish(webhook);
            profile.webhook = Some(settings);
        }
        self.finish(section);
    }
}

/// Applies `--profile`: fills in every option the command line and the environment
/// left unset. Runs before any thread starts (it may set AWS_PROFILE and
/// AWS_SHARED_CREDENTIALS_FILE for the storage).
pub fn apply(cli: &mut Cli) -> Result<Option<Profile>> {
    let Some(name) = cli.profile.clone() else { return Ok(None) };
    let file = load(&config_path(cli)?)?;
    let profile = file.profile(&name)?;
    cli.repo = cli.repo.take().or_else(|| profile.repository.clone());
    if cli.password_file.is_none() && cli.password_command.is_none() && cli.password_env.is_none() {
        cli.password_file = profile.password_file.clone();
        cli.password_command = profile.password_command.clone().map(Into::into);
    }
    cli.cache_dir = cli.cache_dir.take().or_else(|| profile.cache_dir.clone());
    cli.connections = cli.connections.or(profile.connections);
    cli.s3_endpoint = cli.s3_endpoint.take().or_else(|| profile.s3_endpoint.clone());
    for (variable, value) in [
        ("AWS_PROFILE", profile.aws_profile.as_ref().map(Into::into)),
        ("AWS_SHARED_CREDENTIALS_FILE", profile.aws_shared_credentials_file.as_ref().map(|p| p.as_os_str().to_owned())),
    ] {
        if let (Some(value), None) = (value, std::env::var_os(variable)) {
            // Sound: no other thread runs yet (called from main before the command).
            std::env::set_var(variable, value as std::ffi::OsString);
        }
    }
    match &mut cli.command {
        Command::Backup(args) => {
            let nothing_named =
                args.paths.is_empty() && args.pg.is_empty() && !args.stdin && args.stdin_from_command.is_none();
            if nothing_named {
                args.paths = profile.paths.clone().unwrap_or_default();
                args.pg = profile.database_conninfos()?;
                args.pg_globals |= profile.pg_globals.unwrap_or(false) && !args.pg.is_empty();
                if args.paths.is_empty() && args.pg.is_empty() {
                    return fail(exit::USAGE, format!("profile {name:?} names no paths and no databases to back up"));
                }
            }
            fill(&mut args.excludes, &profile.excludes);
            fill(&mut args.exclude_file, &profile.exclude_files);
            fill(&mut args.exclude_if_present, &profile.exclude_if_present);
            fill(&mut args.tags, &profile.tags);
            args.one_file_system |= profile.one_file_system.unwrap_or(false);
            args.host = args.host.take().or_else(|| profile.host.clone());
        }
        Command::Forget(args) => {
            let policy_given = !args.snapshots.is_empty()
                || args.keep_last.is_some()
                || args.keep_hourly.is_some()
                || args.keep_daily.is_some()
                || args.keep_weekly.is_some()
                || args.keep_monthly.is_some()
                || args.keep_yearly.is_some()
                || args.keep_within.is_some()
                || !args.keep_tags.is_empty();
            if !policy_given {
                args.keep_last = profile.keep_last;
                args.keep_hourly = profile.keep_hourly;
                args.keep_daily = profile.keep_daily;
                args.keep_weekly = profile.keep_weekly;
                args.keep_monthly = profile.keep_monthly;
                args.keep_yearly = profile.keep_yearly;
                args.keep_within = profile.keep_within.clone();
                args.keep_tags = profile.keep_tags.clone().unwrap_or_default();
                args.prune |= profile.prune.unwrap_or(false);
            }
            args.keep_safety = args.keep_safety.take().or_else(|| profile.keep_safety.clone());
            if let Some(group_by) = &profile.group_by {
                if args.group_by == super::args::DEFAULT_GROUP_BY {
                    args.group_by = group_by.clone();
                }
            }
            prune_options(&mut args.prune_options, &profile);
        }
        Command::Prune(args) => prune_options(&mut args.options, &profile),
        // `latest` means the latest of the profile's host, when the profile names one:
        // restoring another host's snapshot over this one's folders is never meant.
        Command::Restore(super::args::RestoreArgs { filter, .. })
        | Command::Dump(super::args::DumpArgs { filter, .. })
        | Command::Ls(super::args::LsArgs { filter, .. }) => {
            if let (true, Some(host)) = (filter.hosts.is_empty(), &profile.host) {
                filter.hosts.push(host.clone());
            }
        }
        _ => {}
    }
    Ok(Some(profile))
}

/// The profile's `max_unused` and `max_repack_size`, where the command line gave none.
fn prune_options(options: &mut super::args::PruneOptionsArgs, profile: &Profile) {
    if options.max_unused == super::args::DEFAULT_MAX_UNUSED {
        options.max_unused = profile.max_unused.unwrap_or(options.max_unused);
    }
    options.max_repack_size = options.max_repack_size.or(profile.max_repack_size);
}

fn fill<T: Clone>(values: &mut Vec<T>, from: &Option<Vec<T>>) {
    if values.is_empty() {
        values.extend(from.iter().flatten().cloned());
    }
}

/// `coffer config check`: reads the file and lists every problem, or each profile.
pub fn check(cli: &Cli) -> Result<i32> {
    let path = config_path(cli)?;
    let file = load(&path)?;
    let mut listed = Vec::new();
    for name in file.profiles.keys() {
        let profile = file.profile(name)?;
        listed.push(serde_json::json!({
            "name": name,
            "repository": profile.repository,
            "paths": profile.paths.clone().unwrap_or_default(),
            "databases": profile.databases.as_ref().map_or(0, Vec::len),
            "retention": profile.has_policy(),
            "notify": {
                "email": profile.email.is_some(),
                "webhook": profile.webhook.is_some(),
                "on": profile.notify_on().iter().map(|o| o.name()).collect::<Vec<_>>(),
            },
            "schedule": profile.at,
            "drill": profile.drill_every,
        }));
    }
    if cli.json {
        super::output::json(&serde_json::json!({"config": path, "valid": true, "profiles": listed}));
        return Ok(exit::SUCCESS);
    }
    super::output::line(&format!("{}: valid, {} profile(s)", path.display(), listed.len()));
    for profile in &listed {
        let repository = profile["repository"].as_str().unwrap_or("(no repository)");
        super::output::line(&format!("  {:<16} {repository}", profile["name"].as_str().unwrap_or("")));
    }
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_named_with_its_line() {
        let text = "[profile.a]\nrepository = 3\npasword_file = \"/x\"\n[profile.a.backup]\npaths = [\"rel\"]\n[profile.a.notify]\non = [\"always\"]\n";
        let problems = parse(text).unwrap_err();
        let lines: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            lines,
            vec![
                (2, "profile.a.repository"),
                (3, "profile.a.pasword_file"),
                (5, "profile.a.backup.paths"),
                (7, "profile.a.notify.on")
            ]
        );
    }

    #[test]
    fn includes_fill_what_a_profile_leaves_unset() {
        let text =
            "[profile.base]\nrepository = \"/r\"\nhost = \"h\"\n[profile.n]\ninclude = \"base\"\nhost = \"mine\"\n";
        let profiles = parse(text).unwrap();
        let file = ConfigFile { path: "/c".into(), profiles };
        let profile = file.profile("n").unwrap();
        assert_eq!(profile.repository.as_deref(), Some("/r"));
        assert_eq!(profile.host.as_deref(), Some("mine"));
        let cycle = "[profile.a]\ninclude = \"b\"\n[profile.b]\ninclude = \"a\"\n";
        assert!(parse(cycle).unwrap_err().iter().any(|p| p.message.contains("lead back")));
    }

    #[test]
    fn a_password_in_a_connection_string_is_refused() {
        let text = "[profile.a.backup]\ndatabases = [\"host=db password=secret\"]\n";
        let problems = parse(text).unwrap_err();
        assert!(problems[0].message.contains("holds a password"), "{problems:?}");
        assert!(!problems[0].to_string().contains("secret"));
    }

    #[test]
    fn passfile_is_added_to_both_forms() {
        let path = Path::new("/etc/coffer/pg pass");
        assert_eq!(with_passfile("dbname=x", path), "dbname=x passfile='/etc/coffer/pg pass'");
        assert_eq!(with_passfile("postgresql://h/x", path), "postgresql://h/x?passfile=/etc/coffer/pg%20pass");
    }
}
