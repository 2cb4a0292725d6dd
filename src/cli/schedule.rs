//! `coffer schedule install | list | remove`: a systemd timer and service per profile
//! (or a crontab line where systemd does not run). Two runs of one profile never
//! overlap: systemd does not start a service that is still running, and `coffer run`
//! holds a lock of its own against runs started by hand or by cron.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::Result;
use serde_json::json;

use super::args::{Cli, ScheduleCommand, ScheduleInstallArgs};
use super::output::{self, note};
use super::{exit, fail, profile};

/// "02:00" as hours and minutes.
pub fn parse_at(text: &str) -> Option<(u8, u8)> {
    let (hours, minutes) = text.trim().split_once(':')?;
    let (hours, minutes): (u8, u8) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60 && text.trim().len() <= 5).then_some((hours, minutes))
}

/// "30m", "2h", "1d", "45s" (or a number of seconds) as seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Whether systemd manages this machine (as `sd_booted` tells).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn user_mode() -> bool {
    !nix::unistd::geteuid().is_root()
}

fn unit_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    if !user_mode() {
        return Ok(PathBuf::from("/etc/systemd/system"));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")));
    match base {
        Some(base) => Ok(base.join("systemd").join("user")),
        None => fail(exit::USAGE, "no folder for user units: set HOME or give --unit-dir"),
    }
}

/// The unit name of a profile's job: coffer-run-NAME, and coffer-drill-NAME for its
/// drill (distinct prefixes: no profile's name makes one the other's).
fn unit_name(profile: &str, drill: bool) -> Result<String> {
    if profile.is_empty() || !profile.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return fail(
            exit::USAGE,
            format!("profile name {profile:?} cannot name a systemd unit: use letters, digits, '-', '_' and '.'"),
        );
    }
    Ok(if drill { format!("coffer-drill-{profile}") } else { format!("coffer-run-{profile}") })
}

/// Quotes a word for a unit file's ExecStart (systemd's own quoting rules).
fn unit_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.=:,+@".contains(c)) {
        return word.to_string();
    }
    let escaped = word.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%").replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The two unit files, and the crontab line that stands for them without systemd.
struct Units {
    name: String,
    service: String,
    timer: String,
    crontab: String,
}

fn units(cli: &Cli, args: &ScheduleInstallArgs) -> Result<Units> {
    let config = profile::config_path(cli)?;
    let file = profile::load(&config)?;
    let chosen = file.profile(&args.profile)?;
    let config = std::path::absolute(&config).unwrap_or(config);
    let at = args.at.clone().or_else(|| chosen.at.clone()).unwrap_or_else(|| "02:00".into());
    let Some((hours, minutes)) = parse_at(&at) else {
        return fail(exit::USAGE, format!("--at {at:?} is not a time of day (HH:MM, 24-hour clock)"));
    };
    let delay = chosen.randomized_delay.as_deref().and_then(parse_duration).unwrap_or(1800);
    let name = unit_name(&args.profile, args.drill)?;
    let program = std::env::current_exe()
        .map_err(|e| coffer::Error::io("cannot find this program's path", "/proc/self/exe", e))?;
    let program = program.to_string_lossy().into_owned();
    // A line break (or any control character) in a path would start a new line of the
    // unit file or the crontab: such a path is refused, not quoted.
    for (what, path) in
        [("the configuration file's path", config.to_string_lossy()), ("coffer's path", program.as_str().into())]
    {
        if path.chars().any(char::is_control) {
            return fail(
                exit::USAGE,
                format!("{what} {path:?} holds a control character: it cannot go into a unit file"),
            );
        }
    }
    let every = chosen.drill_every.clone().unwrap_or_else(|| "monthly".into());
    let (calendar, cron_days, what) = if args.drill {
        match every.as_str() {
            "daily" => (format!("*-*-* {hours:02}:{minutes:02}:00"), "* * *", "restore drill"),
            "weekly" => (format!("Sun *-*-* {hours:02}:{minutes:02}:00"), "* * 0", "restore drill"),
            _ => (format!("*-*-01 {hours:02}:{minutes:02}:00"), "1 * *", "restore drill"),
        }
    } else {
        (format!("*-*-* {hours:02}:{minutes:02}:00"), "* * *", "nightly job")
    };
    let verb: Vec<String> = if args.drill {
        vec!["--profile".into(), args.profile.clone(), "drill".into()]
    } else {
        vec!["run".into(), args.profile.clone()]
    };
    let mut words = vec![program.clone(), "--config".into(), config.to_string_lossy().into_owned()];
    words.extend(verb.iter().cloned());
    let exec: Vec<String> = words.iter().map(|w| unit_word(w)).collect();
    let service = format!(
        "# Written by coffer schedule install; remove with: coffer schedule remove {profile}{drill_flag}
[Unit]
Description=coffer {what} of profile {profile}
Documentation=man:coffer-run(1)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={exec}
{cache}Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
",
        profile = args.profile,
        drill_flag = if args.drill { " --drill" } else { "" },
        exec = exec.join(" "),
        // A system unit runs without HOME: its cache is made by systemd, and kept.
        cache =
            if user_mode() { "" } else { "CacheDirectory=coffer\nEnvironment=COFFER_CACHE_DIR=/var/cache/coffer\n" },
    );
    let timer = format!(
        "# Written by coffer schedule install
[Unit]
Description=coffer {what} of profile {profile} at {hours:02}:{minutes:02}

[Timer]
OnCalendar={calendar}
RandomizedDelaySec={delay}
Persistent=true
Unit={name}.service

[Install]
WantedBy=timers.target
",
        profile = args.profile,
    );
    let shell: Vec<String> = words.iter().map(|w| shell_word(w)).collect();
    // `coffer run` holds a lock of its own: no flock wrapper (whose lock file in a shared
    // folder another user could take first).
    let crontab = format!("{minutes} {hours} {cron_days} {}", shell.join(" "));
    Ok(Units { name, service, timer, crontab })
}

fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.=:,+@".contains(c)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''")).replace('%', "\\%")
}

fn systemctl(arguments: &[&str]) -> Result<()> {
    let mut command = Process::new("systemctl");
    if user_mode() {
        command.arg("--user");
    }
    let shown = format!("systemctl {}{}", if user_mode() { "--user " } else { "" }, arguments.join(" "));
    match command.args(arguments).status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => fail(exit::FAILURE, format!("{shown} failed ({status})")),
        Err(error) => fail(exit::FAILURE, format!("cannot run {shown}: {error}")),
    }
}

pub fn schedule(cli: &Cli, what: &ScheduleCommand) -> Result<i32> {
    match what {
        ScheduleCommand::Install(args) => install(cli, args),
        ScheduleCommand::List { unit_dir } => list(cli, unit_dir.as_deref()),
        ScheduleCommand::Remove { profile, drill, unit_dir } => remove(cli, profile, *drill, unit_dir.as_deref()),
    }
}

fn install(cli: &Cli, args: &ScheduleInstallArgs) -> Result<i32> {
    let units = units(cli, args)?;
    let dir = unit_dir(args.unit_dir.as_deref())?;
    let service_path = dir.join(format!("{}.service", units.name));
    let timer_path = dir.join(format!("{}.timer", units.name));
    if args.dry_run {
        if cli.json {
            output::json(&json!({"dry_run": true, "service": {"path": service_path, "text": units.service},
                "timer": {"path": timer_path, "text": units.timer}, "crontab": units.crontab}));
        } else {
            output::line(&format!("# {}", service_path.display()));
            output::line(units.service.trim_end());
            output::line("");
            output::line(&format!("# {}", timer_path.display()));
            output::line(units.timer.trim_end());
            output::line("");
            output::line("# without systemd, a crontab line (crontab -e) does the same:");
            output::line(&units.crontab);
        }
        return Ok(exit::SUCCESS);
    }
    if !systemd_running() && args.unit_dir.is_none() {
        if cli.json {
            return fail(
                exit::REFUSED,
                format!("systemd is not running on this machine, so no timer was installed: add this line to the crontab (crontab -e): {}", units.crontab),
            );
        }
        output::line(&units.crontab);
        return fail(
            exit::REFUSED,
            "systemd is not running on this machine, so no timer was installed: add the line above to the crontab (crontab -e)",
        );
    }
    std::fs::create_dir_all(&dir).map_err(|e| coffer::Error::io("cannot make the unit folder", &dir, e))?;
    for (path, text) in [(&service_path, &units.service), (&timer_path, &units.timer)] {
        write_public(path, text)?;
    }
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", &format!("{}.timer", units.name)])?;
        note(cli.quiet || cli.json, &format!("installed and started {}.timer ({})", units.name, timer_path.display()));
    } else {
        note(
            cli.quiet || cli.json,
            &format!(
                "wrote {} and {}; systemd is not running here, so nothing was enabled",
                service_path.display(),
                timer_path.display()
            ),
        );
    }
    if cli.json {
        output::json(&json!({"installed": units.name, "service": service_path, "timer": timer_path,
            "enabled": systemd_running()}));
    }
    Ok(exit::SUCCESS)
}

/// Unit files are readable by all (systemd reads them); coffer's umask makes files private.
fn write_public(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(|e| coffer::Error::io("cannot write the unit file", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| coffer::Error::io("cannot make the unit file readable", path, e))?;
    Ok(())
}

/// The timers coffer wrote, with their schedule and (under systemd) their next run.
fn list(cli: &Cli, given: Option<&Path>) -> Result<i32> {
    let dir = unit_dir(given)?;
    let mut timers = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !((name.starts_with("coffer-run-") || name.starts_with("coffer-drill-")) && name.ends_with(".timer")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let calendar = text.lines().find_map(|l| l.strip_prefix("OnCalendar=")).unwrap_or("").to_string();
            timers.push((name.trim_end_matches(".timer").to_string(), calendar));
        }
    }
    timers.sort();
    let next = |unit: &str| -> Option<String> {
        if !systemd_running() {
            return None;
        }
        let mut command = Process::new("systemctl");
        if user_mode() {
            command.arg("--user");
        }
        let shown = command
            .args(["show", "--property=NextElapseUSecRealtime", "--value", &format!("{unit}.timer")])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&shown.stdout).trim().to_string()).filter(|s| !s.is_empty())
    };
    if cli.json {
        let listed: Vec<_> = timers
            .iter()
            .map(|(unit, calendar)| json!({"unit": unit, "on_calendar": calendar, "next": next(unit)}))
            .collect();
        output::json(&json!({"unit_dir": dir, "timers": listed}));
        return Ok(exit::SUCCESS);
    }
    if timers.is_empty() {
        note(cli.quiet, &format!("no coffer timers in {}", dir.display()));
    }
    for (unit, calendar) in &timers {
        let next = next(unit).map(|n| format!("  next {n}")).unwrap_or_default();
        output::line(&format!("{unit:<32} {calendar}{next}"));
    }
    Ok(exit::SUCCESS)
}

fn remove(cli: &Cli, profile: &str, drill: bool, given: Option<&Path>) -> Result<i32> {
    let name = unit_name(profile, drill)?;
    let dir = unit_dir(given)?;
    let timer = dir.join(format!("{name}.timer"));
    let service = dir.join(format!("{name}.service"));
    if !timer.exists() && !service.exists() {
        return fail(exit::NOT_FOUND, format!("no timer {name}.timer in {}", dir.display()));
    }
    if systemd_running() {
        systemctl(&["disable", "--now", &format!("{name}.timer")])?;
    }
    for path in [&timer, &service] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(coffer::Error::io("cannot remove the unit file", path, error).into()),
        }
    }
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
    }
    note(cli.quiet || cli.json, &format!("removed {name}.timer and {name}.service"));
    if cli.json {
        output::json(&json!({"removed": name}));
    }
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(parse_at("02:00"), Some((2, 0)));
        assert_eq!(parse_at("23:59"), Some((23, 59)));
        assert_eq!(parse_at("24:00"), None);
        assert_eq!(parse_at("2am"), None);
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn unit_words_are_quoted_for_systemd() {
        assert_eq!(unit_word("/usr/bin/coffer"), "/usr/bin/coffer");
        assert_eq!(unit_word("/etc/my config.toml"), "\"/etc/my config.toml\"");
        assert_eq!(unit_word("100%"), "\"100%%\"");
    }
}
