//! Command-line flags as clap parses them; validated into library options elsewhere.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The environment variables coffer reads, for `--help`.
const ENVIRONMENT: &str = "\
Environment:
  COFFER_REPOSITORY         the repository (as --repo)
  COFFER_PASSWORD           the password itself (taken out of the environment at start)
  COFFER_PASSWORD_FILE      a file whose first line is the password (as --password-file)
  COFFER_PASSWORD_COMMAND   a shell command that prints the password (as --password-command)
  COFFER_CACHE_DIR          the local cache (as --cache-dir; else $XDG_CACHE_HOME/coffer or ~/.cache/coffer)
  COFFER_CONFIG             the configuration file (as --config)
  COFFER_PROFILE            the profile to use (as --profile)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_DEFAULT_REGION,
  AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL
                            S3 credentials, region and endpoint
  COFFER_S3_RETRY_TIMEOUT   seconds a failing S3 request is retried (default 300)
  COFFER_S3_ALLOW_HTTP=1    allow plain http:// to a host that is not loopback
  COFFER_S3_VIRTUAL_HOSTED=1  address buckets as bucket.host instead of host/bucket
  COFFER_TESTONLY_WEAK_KDF=1  let new keys cost less than the floor (test suites only)

Exit codes: 0 success, 1 failure, 2 usage, 3 incomplete backup, 10 no repository,
11 locked, 12 wrong password, 13 damaged, 14 not found, 15 local I/O, 16 unsupported
version, 17 storage unreachable, 18 access denied, 19 PostgreSQL, 20 refused,
21 input command failed, 130/143 interrupted (see the README).";

/// coffer: encrypted, deduplicated, incremental backups.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about, max_term_width = 100, after_long_help = ENVIRONMENT)]
pub struct Cli {
    /// Repository: a path, file:///path or s3://bucket/prefix.
    #[arg(
        short = 'r',
        long,
        env = "COFFER_REPOSITORY",
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub repo: Option<String>,
    /// Read the password from this file (first line) [env: COFFER_PASSWORD_FILE].
    #[arg(short = 'p', long, global = true, help_heading = "Global options")]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use the first line it prints as the password
    /// [env: COFFER_PASSWORD_COMMAND].
    #[arg(long, value_name = "COMMAND", global = true, help_heading = "Global options")]
    pub password_command: Option<OsString>,
    /// `COFFER_PASSWORD`, taken out of the environment at start (see `password.rs`).
    #[arg(skip)]
    pub password_env: Option<super::password::Secret>,
    /// Local cache directory (default: $XDG_CACHE_HOME/coffer or ~/.cache/coffer).
    #[arg(long, env = "COFFER_CACHE_DIR", hide_env_values = true, global = true, help_heading = "Global options")]
    pub cache_dir: Option<PathBuf>,
    /// Use a temporary cache that is removed at exit.
    #[arg(long, global = true, help_heading = "Global options")]
    pub no_cache: bool,
    /// Requests to the storage in flight at once (S3; default 16).
    #[arg(long, global = true, help_heading = "Global options")]
    pub connections: Option<usize>,
    /// S3 endpoint of a non-AWS server (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, global = true, help_heading = "Global options")]
    pub s3_endpoint: Option<String>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Print only errors.
    #[arg(short, long, global = true, help_heading = "Global options", conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail.
    #[arg(short, long, global = true, help_heading = "Global options", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The configuration file of --profile (default: /etc/coffer/coffer.toml for root,
    /// else ~/.config/coffer/coffer.toml).
    #[arg(long, env = "COFFER_CONFIG", hide_env_values = true, global = true, help_heading = "Global options")]
    pub config: Option<PathBuf>,
    /// Take the repository, password and the command's settings from this profile of the
    /// configuration file; options given here win over it.
    #[arg(long, env = "COFFER_PROFILE", hide_env_values = true, global = true, help_heading = "Global options")]
    pub profile: Option<String>,
    /// The profile `--profile` named, once read (see `profile::apply`).
    #[arg(skip)]
    pub loaded_profile: Option<super::profile::Profile>,
    #[command(subcommand)]
    pub command: Command,
}

/// `forget --group-by` when not given.
pub const DEFAULT_GROUP_BY: &str = "host,paths,sources";
/// `prune --max-unused` when not given.
pub const DEFAULT_MAX_UNUSED: f64 = 5.0;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up files and directories (or standard input) into a new snapshot.
    #[command(after_long_help = "Examples:
  coffer backup /srv/studies /etc --tag nightly
  coffer backup /srv/studies --pg 'host=db1 dbname=clinic user=backup' --exclude '*.tmp'
  pg_dumpall | coffer backup --stdin --stdin-name all.sql
  coffer backup --dry-run -v /srv/studies        # what would be stored, and why")]
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List past restores into folders: their safety snapshot and outcome.
    Restores,
    /// Show what was added, removed and modified between two snapshots.
    Diff(DiffArgs),
    /// Find files and folders by name or path across snapshots.
    Find(FindArgs),
    /// Sizes of a snapshot, or of the whole repository: logical, after deduplication, stored.
    Stats(StatsArgs),
    /// List the audit trail (who did what, when, with which result), or verify its chain.
    Audit(AuditArgs),
    /// List the entries of a snapshot, or of one folder of it (SNAP:PATH).
    Ls(LsArgs),
    /// Restore a snapshot, or one folder or file of it (SNAP:PATH), into a directory.
    #[command(after_long_help = "Examples:
  coffer restore latest --target /srv/restore
  coffer restore latest:/srv/studies/study_001 --target /          # one folder, back in place
  coffer restore --at '2026-11-20 02:00' --host pacs1 --target /srv/restore
  coffer restore latest --target /srv/studies --delete --dry-run   # what would change
  coffer restore --rollback 3f0a1b2c                               # undo that restore
  coffer restore latest --pg-target 'dbname=clinic_scratch' --pg-table patients")]
    Restore(RestoreArgs),
    /// Write a file of a snapshot to standard output (a folder as a tar stream, or a database dump).
    Dump(DumpArgs),
    /// Remove stale locks (all locks with --remove-all).
    Unlock(UnlockArgs),
    /// Verify the repository: index, packs, snapshots, manifests (and data on request).
    #[command(after_long_help = "Examples:
  coffer check                                  # structure: index, packs, snapshots, manifests
  coffer check --read-data-subset \"$(date +%u)/7\"  # a seventh of the data each night
  coffer check --read-data --jobs 4             # every byte
  coffer check --pg                             # restore each dump into pg_restore --list")]
    Check(CheckArgs),
    /// Remove snapshots according to a retention policy.
    #[command(after_long_help = "Examples:
  coffer forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --prune
  coffer forget --keep-within 90d --keep-tag legal-hold --dry-run
  coffer forget 3f0a1b2c                        # one snapshot by id")]
    Forget(ForgetArgs),
    /// Remove data no snapshot uses and repack mostly-unused packs.
    Prune(PruneArgs),
    /// Rebuild damaged repository structures.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Manage the passwords (key files) that open the repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print one repository object as JSON, decrypted (for support and debugging).
    #[command(after_long_help = "Examples:
  coffer cat config
  coffer cat snapshot latest
  coffer cat index 3f0a          # an id prefix
  coffer cat audit 12")]
    Cat {
        /// What: config, key, snapshot, index, lock, restore or audit.
        #[arg(value_parser = ["config", "key", "snapshot", "index", "lock", "restore", "audit"])]
        kind: String,
        /// Its id (or unique prefix; "latest" for a snapshot; the number of an audit record).
        id: Option<String>,
    },
    /// Run a profile's whole nightly job: backup, forget, prune, a check of part of the data.
    #[command(after_long_help = "The steps, in this order, each only if the profile asks for it:
  1. backup    the profile's paths and databases, into one snapshot
  2. forget    with the profile's [retention] policy (and prune, with prune = true)
  3. check     --read-data-subset as [check] says (a share verified longest ago first)
The exit code is the worst step's; one notification tells all steps.

Example:
  coffer run nightly --config /etc/coffer/coffer.toml")]
    Run(RunArgs),
    /// Restore a random sample of the latest snapshot into a scratch folder (and each
    /// database into a scratch database), verify every byte, and estimate a full restore's time.
    #[command(after_long_help = "Examples:
  coffer --profile nightly drill --sample 5%
  coffer drill --sample 100% --scratch-dir /var/tmp/drill --pg-scratch 'host=/run/postgresql dbname=postgres'")]
    Drill(DrillArgs),
    /// Check a configuration file and list its profiles.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Install, list or remove systemd timers that run a profile.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Print coffer's version and the repository format versions it reads and writes.
    Version,
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    #[command(after_long_help = "Install:
  coffer completions bash > /etc/bash_completion.d/coffer
  coffer completions zsh > /usr/local/share/zsh/site-functions/_coffer
  coffer completions fish > ~/.config/fish/completions/coffer.fish")]
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), or write coffer.1 and a page per command into DIR.
    #[command(after_long_help = "Install:
  sudo coffer man /usr/local/share/man/man1 && man coffer-restore")]
    Man {
        /// Write every page into this folder instead of printing coffer.1.
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The profile to run (as --profile).
    pub profile: String,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Share of the snapshot's files to restore and verify, such as 5% (default: the
    /// profile's [drill] sample, else 5%).
    #[arg(long, value_name = "PERCENT")]
    pub sample: Option<String>,
    /// The snapshot to drill (default: the latest).
    #[arg(long, value_name = "SNAP")]
    pub snapshot: Option<String>,
    /// Folder under which the scratch folder is made (default: the system's temporary folder).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// A database to connect to for creating (and dropping) the scratch database into
    /// which each dump is restored; without it, dumps are only read and checked.
    #[arg(long, value_name = "CONNINFO")]
    pub pg_scratch: Option<String>,
    /// Keep the scratch folder (to look at it); it is removed otherwise.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read the configuration file (--config), name every error with its line and key.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Write and enable a systemd timer and service that run `coffer run PROFILE`.
    #[command(after_long_help = "Examples:
  sudo coffer schedule install nightly --at 02:00
  coffer schedule install nightly --at 02:00 --dry-run     # show the unit files
  sudo coffer schedule install nightly --drill             # its monthly restore drill")]
    Install(ScheduleInstallArgs),
    /// List the timers coffer installed, with their next run.
    List {
        /// Folder of the unit files (as for install).
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
    },
    /// Disable and remove the timer and service of a profile.
    Remove {
        /// The profile whose timer is removed.
        profile: String,
        /// Remove the drill timer instead.
        #[arg(long)]
        drill: bool,
        /// Folder of the unit files (as for install).
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ScheduleInstallArgs {
    /// The profile to run.
    pub profile: String,
    /// Time of day (HH:MM, local time; default: the profile's [schedule] at, else 02:00).
    #[arg(long, value_name = "HH:MM")]
    pub at: Option<String>,
    /// Schedule the profile's restore drill (`coffer drill`) instead, as [drill] every says
    /// (default monthly).
    #[arg(long)]
    pub drill: bool,
    /// Print the unit files (or the crontab line) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Folder for the unit files (default /etc/systemd/system, or
    /// ~/.config/systemd/user when not root).
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
}

/// The Argon2id cost of a new key file. New keys need at least 19456 KiB and 2 passes.
#[derive(Debug, Clone, Copy, Args)]
pub struct KdfArgs {
    /// Argon2id memory in KiB for the new key (at least 19456).
    #[arg(long, default_value_t = 32768, value_name = "KIB")]
    pub kdf_memory_kib: u32,
    /// Argon2id passes for the new key (at least 2).
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub kdf_iterations: u32,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the key files: id, who made each, when, on which host, its Argon2id cost.
    List,
    /// Add a key file for another password (read with --new-password-file or a prompt).
    Add {
        #[command(flatten)]
        new_password: NewPasswordArgs,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove a key file by id (or unique prefix). The last key is never removed.
    Remove {
        /// The key's id or a unique prefix of it.
        id: String,
        /// Remove the key that the given password opened (with --other-password-file).
        #[arg(long)]
        force: bool,
        /// A file holding the password of another key, which proves that a key which
        /// opens the repository stays when the key in use is removed.
        #[arg(long, value_name = "FILE")]
        other_password_file: Option<PathBuf>,
    },
    /// Change the password of the key in use (a new key file replaces it).
    Passwd {
        #[command(flatten)]
        new_password: NewPasswordArgs,
        #[command(flatten)]
        kdf: KdfArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct NewPasswordArgs {
    /// Read the new password from this file (first line); otherwise it is asked twice.
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Target pack size in MiB (default 16 on local disk, 24 on S3).
    #[arg(long)]
    pub pack_size: Option<u64>,
    /// zstd level for stored blobs (0 stores them uncompressed; 2, the default, was the
    /// fastest level with a repository at most 7% larger than level 3's in docs/BENCHMARKS.md).
    #[arg(long, default_value_t = coffer::DEFAULT_COMPRESSION, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub compression: i32,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// S3 only: lock every object coffer writes for DAYS with S3 Object Lock (the
    /// bucket must have been created with Object Lock enabled).
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub object_lock: Option<u32>,
    /// Object Lock mode: governance (users with a special permission may lift it) or
    /// compliance (no one can, not even the account's root user).
    #[arg(long, value_name = "MODE", default_value = "governance", requires = "object_lock",
          value_parser = ["governance", "compliance"])]
    pub object_lock_mode: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("stdin_source").args(["stdin", "stdin_from_command"])))]
pub struct BackupArgs {
    /// Files and directories to back up (with --profile: the profile's, if none are given).
    pub paths: Vec<PathBuf>,
    /// Dump this PostgreSQL database into the snapshot (a libpq connection string or URI; repeatable).
    #[arg(long = "pg", value_name = "CONNINFO")]
    pub pg: Vec<String>,
    /// Query whose rows record the schema-migration state (instead of the detected tables).
    #[arg(long, value_name = "SQL", requires = "pg")]
    pub pg_schema_query: Option<String>,
    /// Also store roles and tablespaces (pg_dumpall --globals-only).
    #[arg(long, requires = "pg")]
    pub pg_globals: bool,
    /// Read the content of one file from standard input.
    #[arg(long)]
    pub stdin: bool,
    /// Run this shell command and store its output as one file; if it exits non-zero,
    /// the backup fails and saves no snapshot (e.g. 'pg_dump -Fc app').
    #[arg(long, value_name = "COMMAND")]
    pub stdin_from_command: Option<String>,
    /// Name of the file read from standard input or from the command.
    #[arg(long, default_value = "stdin", requires = "stdin_source")]
    pub stdin_name: String,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record instead of this machine's.
    #[arg(long)]
    pub host: Option<String>,
    /// Compare with this snapshot (default: the latest of the same host and paths).
    #[arg(long, value_name = "SNAP")]
    pub parent: Option<String>,
    /// Read every file, even those unchanged since the parent snapshot.
    #[arg(long)]
    pub force: bool,
    /// Do not compare inode numbers when looking for changes (network, FUSE file systems).
    #[arg(long)]
    pub ignore_inode: bool,
    /// Do not compare ctimes when looking for changes.
    #[arg(long)]
    pub ignore_ctime: bool,
    /// Leave out paths matching this glob (repeatable; without `/` it matches a name at any depth).
    #[arg(short = 'e', long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Read exclude globs from this file, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Leave out directories that hold a file of this name (e.g. .nobackup).
    #[arg(long, value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Stay on the file system of each backup path.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// List the files that would be read (new or changed) and their size; store nothing.
    #[arg(long, conflicts_with_all = ["stdin", "stdin_from_command", "pg"])]
    pub dry_run: bool,
    /// Show no progress (otherwise a line on a terminal, or JSON lines on stdout with --json).
    #[arg(long)]
    pub no_progress: bool,
    /// Write a checkpoint index after this many packs (default 32, or every 5 minutes).
    #[arg(long, value_name = "N", hide = true)]
    pub checkpoint_packs: Option<usize>,
}

/// Which snapshots `latest` names (and `snapshots` lists).
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// With latest: the newest snapshot taken at or before TIME ("2026-11-20 02:00" in
    /// local time, a date alone for the end of that day, or RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Consider only snapshots of this host (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Consider only snapshots with this tag (repeatable: any of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Consider only snapshots of this backup path (repeatable: all of them).
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: Option<AuditAction>,
    /// Only records at or after this time ("2026-11-20 02:00", a date, or RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only records at or before this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only records of this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only records of this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only records of this command (backup, restore, forget...).
    #[arg(long)]
    pub command: Option<String>,
    /// Only records naming this snapshot (id or prefix).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Comma-separated values, one record per line, for an auditor's spreadsheet.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Check the whole chain and print its head hash.
    Verify {
        /// Fail unless the chain passes through this head hash (written down earlier):
        /// proves nothing was cut off its end since.
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older snapshot (id, unique prefix or "latest").
    pub old: String,
    /// The newer snapshot.
    pub new: String,
    /// Only entries at or below this path of the snapshots.
    pub path: Option<OsString>,
    /// Also list entries whose only change is metadata (mode, owner, mtime, xattrs).
    #[arg(long)]
    pub metadata: bool,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// Globs: without a '/' a name at any depth ('*.dcm'), with one a whole path
    /// ('/data/study_0*/notes.txt'); '*' stays within one name, '**' crosses folders.
    #[arg(required = true)]
    pub patterns: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// A snapshot (id, unique prefix or "latest"); without one, the whole repository.
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// SNAP or SNAP:PATH; SNAP is an id, a unique id prefix or "latest".
    pub snapshot: OsString,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Show mode, owner, size and time.
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// SNAP or SNAP:PATH (with --at, "latest" may be left out).
    #[arg(required_unless_present_any = ["rollback", "at"])]
    pub snapshot: Option<OsString>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Directory to restore into (created if missing).
    #[arg(short, long, required_unless_present_any = ["pg_target", "rollback"])]
    pub target: Option<PathBuf>,
    /// Undo the restore with this id (or id prefix): remove what it created and put
    /// back what it replaced or deleted, from its safety snapshot.
    #[arg(long, value_name = "RESTORE_ID", conflicts_with_all = ["snapshot", "target", "dry_run"])]
    pub rollback: Option<String>,
    /// What to do with entries the target already holds: always, if-changed (replace
    /// what differs, leave identical entries alone), if-newer, never.
    #[arg(long, default_value = "if-changed", value_name = "RULE",
          value_parser = ["always", "if-changed", "if-newer", "never"])]
    pub overwrite: String,
    /// Remove entries of the target that the snapshot (or its restored folder) does not
    /// hold; refused for / and for a target other than the restored folder, unless --force.
    #[arg(long)]
    pub delete: bool,
    /// Hash existing files of the same size and mtime too before leaving them alone
    /// (by default those are taken as identical, as rsync does).
    #[arg(long)]
    pub checksum: bool,
    /// Do not take a safety snapshot of what the restore replaces or deletes (it then
    /// cannot be rolled back).
    #[arg(long)]
    pub no_safety: bool,
    /// Restore the snapshot's database dump into this database (libpq connection string).
    #[arg(long, value_name = "CONNINFO", conflicts_with = "target")]
    pub pg_target: Option<String>,
    /// Which dumped database to restore, when the snapshot holds several.
    #[arg(long, value_name = "NAME")]
    pub pg_database: Option<String>,
    /// Restore only this table (repeatable).
    #[arg(long = "pg-table", value_name = "TABLE")]
    pub pg_tables: Vec<String>,
    /// Create the database named in the dump; --pg-target then names a maintenance database.
    #[arg(long)]
    pub pg_create: bool,
    /// Drop the target's objects before recreating them.
    #[arg(long)]
    pub pg_clean: bool,
    /// Parallel pg_restore jobs (the dump is first written to a temporary file).
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Restore a dump even if its schema migrations are newer than the target's; allow
    /// --delete into / or into another folder than the restored one; roll back a
    /// restore that completed.
    #[arg(long)]
    pub force: bool,
    /// Restore only what matches these globs (repeatable).
    #[arg(short, long)]
    pub include: Vec<String>,
    /// Skip what matches these globs (repeatable).
    #[arg(short, long)]
    pub exclude: Vec<String>,
    /// Show what would be restored and fetched, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Re-read every restored file and check it against the manifest's SHA-256.
    #[arg(long)]
    pub verify: bool,
    /// Do not wait until the restored files are on disk (by default the restore
    /// reports success only once a power cut can no longer lose them).
    #[arg(long)]
    pub no_sync: bool,
    /// Show no progress (otherwise a line on a terminal, or JSON lines on stdout with --json).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Snapshot id, unique prefix or "latest" (or SNAP:PATH).
    pub snapshot: OsString,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Absolute path of the file in the snapshot (or of a folder, with --archive).
    pub path: Option<OsString>,
    /// Write the dump of this database instead (for pg_restore by hand).
    #[arg(long = "pg", value_name = "DATABASE", conflicts_with = "path")]
    pub pg: Option<String>,
    /// Write the folder (or file) as an archive in this format: tar (GNU, with POSIX
    /// extended headers for exact times) or zip (ZIP64, stored, written as a stream).
    #[arg(long, value_name = "FORMAT", value_parser = ["tar", "zip"])]
    pub archive: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove every lock, not only stale ones.
    #[arg(long)]
    pub remove_all: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Download every pack and verify its hash and every blob in it.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Download and verify a subset of the packs: N/M (part N of M), or P% or SIZE (such
    /// as 500M) of the packs verified longest ago on this machine (never-verified first).
    #[arg(long, value_name = "N/M|P%|SIZE")]
    pub read_data_subset: Option<String>,
    /// Packs downloaded at once [default: 2 per core on a local disk, --connections on S3].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    /// Also test the newest dump of each database with pg_restore (--list, then a full
    /// read); fails when no snapshot holds a dump.
    #[arg(long)]
    pub pg: bool,
    /// Show no progress (otherwise a line on a terminal, or JSON lines with --json).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args, Default)]
pub struct ForgetArgs {
    /// Remove these snapshots (ids or unique prefixes) instead of applying a policy.
    #[arg(value_name = "SNAP")]
    pub snapshots: Vec<String>,
    /// Keep the N latest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the latest snapshot of each of the N latest hours (local time).
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the latest snapshot of each of the N latest days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the latest snapshot of each of the N latest ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the latest snapshot of each of the N latest months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the latest snapshot of each of the N latest years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot taken within this duration of the group's latest (e.g. 7d, 2w, 1m, 1y, 12h, 1y6m).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Keep restores' safety snapshots this long (default 30d); they count in no other rule.
    #[arg(long, value_name = "DURATION")]
    pub keep_safety: Option<String>,
    /// Apply the policy per group of snapshots with the same host, paths, sources
    /// (databases and standard-input names) and/or tags; '' for one group.
    #[arg(long, default_value = DEFAULT_GROUP_BY, value_name = "host,paths,sources,tags")]
    pub group_by: String,
    /// Show what would be kept and removed, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Let the policy remove every snapshot of a group (refused otherwise).
    #[arg(long)]
    pub allow_empty_groups: bool,
    /// Run prune after removing snapshots.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_options: PruneOptionsArgs,
}

#[derive(Debug, Args, Default)]
pub struct PruneOptionsArgs {
    /// Repack packs of which more than this share (percent) is unused.
    #[arg(long, default_value_t = DEFAULT_MAX_UNUSED, value_name = "PERCENT")]
    pub max_unused: f64,
    /// Repack at most this many MiB of packs per run.
    #[arg(long, value_name = "MiB")]
    pub max_repack_size: Option<u64>,
    /// Delete packs that no index names only once they are this many minutes old
    /// (younger ones may belong to a backup still running or just failed).
    #[arg(long, default_value_t = 60, value_name = "MINUTES")]
    pub unindexed_age: u64,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be deleted and repacked, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub options: PruneOptionsArgs,
}

#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers, replacing every index object.
    Index(RepairIndexArgs),
    /// Mark (or with --forget, drop) the snapshots that lost data; a dry run unless --apply.
    Snapshots(RepairSnapshotsArgs),
}

#[derive(Debug, Args)]
pub struct RepairSnapshotsArgs {
    /// Carry out the repair; without it, only show what would be done.
    #[arg(long)]
    pub apply: bool,
    /// Drop the damaged snapshots instead of marking them (tag `damaged`, incomplete).
    #[arg(long)]
    pub forget: bool,
    /// Read every pack to find damaged blobs, not only missing ones.
    #[arg(long)]
    pub read_data: bool,
    /// Packs downloaded at once with --read-data.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
}

#[derive(Debug, Args)]
pub struct RepairIndexArgs {
    /// Read the pack headers and report, but write and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Pack headers read at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
}
