//! Retention policies: which snapshots `forget` keeps, decided by a pure function of
//! their times, hosts, paths, sources and tags, with periods counted in local calendar
//! time.

use std::collections::BTreeMap;
use std::str::FromStr;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::repository::objects::Kind;
use crate::repository::snapshot::{Snapshot, Source};
use crate::repository::{Exclusive, Locked};

/// What to keep; a snapshot is kept if any rule keeps it.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    /// Keep snapshots taken within this span before the group's latest one.
    pub within: Option<Span>,
    /// Keep snapshots carrying any of these tags.
    pub tags: Vec<String>,
    /// How long restores' safety snapshots are kept (`SAFETY_KEPT` if not set). They
    /// form a group of their own, which no other rule counts.
    pub safety: Option<Span>,
}

/// How long safety snapshots are kept unless told otherwise: 30 days.
pub const SAFETY_KEPT_DAYS: i64 = 30;

/// The group safety snapshots form.
pub const SAFETY_GROUP: &str = "safety snapshots of restores";

impl RetentionPolicy {
    /// True if no rule is set: forgetting with it would remove everything.
    pub fn is_empty(&self) -> bool {
        let counts = [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly];
        counts.iter().all(Option::is_none) && self.within.is_none() && self.tags.is_empty()
    }
}

/// Parses a duration such as `7d`, `2w`, `1m` (a month), `1y`, `12h` or `1y6m`.
pub fn parse_duration(text: &str) -> Result<Span> {
    let invalid = || {
        Error::InvalidInput(format!("{text:?} is not a duration: use numbers with y, m, w, d or h, such as 7d or 1y6m"))
    };
    let mut span = Span::new();
    let mut digits = String::new();
    for character in text.trim().chars() {
        if character.is_ascii_digit() {
            digits.push(character);
            continue;
        }
        let count: i64 = digits.parse().ok().filter(|n| *n <= 100_000).ok_or_else(invalid)?;
        digits.clear();
        span = match character {
            'y' => span.try_years(count),
            'm' => span.try_months(count),
            'w' => span.try_weeks(count),
            'd' => span.try_days(count),
            'h' => span.try_hours(count),
            _ => return Err(invalid()),
        }
        .map_err(|_| invalid())?;
    }
    if !digits.is_empty() || span.is_zero() {
        return Err(invalid());
    }
    Ok(span)
}

/// Which facts put snapshots in the same group. `Default` groups nothing apart: one
/// group; [`GroupBy::STANDARD`] is what `forget` uses unless told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    /// The databases and standard-input names a snapshot holds besides its paths, so
    /// that a nightly files-only snapshot never counts against one with a database.
    pub sources: bool,
    pub tags: bool,
}

impl FromStr for GroupBy {
    type Err = Error;

    /// Parses a comma-separated list of `host`, `paths`, `sources` and `tags` (empty:
    /// one group).
    fn from_str(text: &str) -> Result<Self> {
        let mut group = GroupBy::default();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            match part {
                "host" => group.host = true,
                "paths" => group.paths = true,
                "sources" => group.sources = true,
                "tags" => group.tags = true,
                other => {
                    return Err(Error::InvalidInput(format!(
                        "cannot group by {other:?}: use host, paths, sources or tags"
                    )))
                }
            }
        }
        Ok(group)
    }
}

impl GroupBy {
    /// Host, paths and sources.
    pub const STANDARD: GroupBy = GroupBy { host: true, paths: true, sources: true, tags: false };

    /// The group a snapshot falls in.
    fn group_of(&self, snapshot: &Snapshot) -> GroupKey {
        let sorted = |mut items: Vec<String>| {
            items.sort();
            items
        };
        let sources = snapshot.sources.iter().filter_map(|source| match source {
            Source::Files { .. } => None,
            Source::Postgres(postgres) => Some(format!("postgres:{}", postgres.database)),
            Source::Stdin { name } => Some(format!("stdin:{name}")),
        });
        GroupKey {
            host: self.host.then(|| snapshot.host.clone()),
            paths: self.paths.then(|| sorted(snapshot.paths.clone())),
            sources: self.sources.then(|| sorted(sources.collect())),
            tags: self.tags.then(|| sorted(snapshot.tags.clone())),
        }
    }
}

/// What the snapshots of one group share: structured, so that names holding spaces or
/// commas cannot make two groups look like one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    host: Option<String>,
    paths: Option<Vec<String>>,
    sources: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}

/// "host db1, paths /data, sources postgres:clinic", for display.
impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(host) = &self.host {
            parts.push(format!("host {host}"));
        }
        if let Some(paths) = &self.paths {
            parts.push(format!("paths {}", paths.join(" ")));
        }
        match &self.sources {
            Some(sources) if sources.is_empty() => parts.push("sources (files only)".into()),
            Some(sources) => parts.push(format!("sources {}", sources.join(" "))),
            None => {}
        }
        if let Some(tags) = &self.tags {
            parts.push(format!("tags {}", tags.join(",")));
        }
        f.write_str(&parts.join(", "))
    }
}

/// Whether one snapshot stays, and the rules that keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: SnapshotId,
    pub group: String,
    pub time: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Decides, group by group, which snapshots a policy keeps. Periods (hours, days, ISO
/// weeks, months, years) are calendar periods in `zone`; for each period rule the
/// latest snapshot of each of the N latest periods that have one is kept, as restic
/// does. A snapshot whose time cannot be read is kept. Decisions come newest first
/// within each group.
pub fn apply_policy(
    snapshots: &[(SnapshotId, Snapshot)],
    policy: &RetentionPolicy,
    group_by: GroupBy,
    zone: &TimeZone,
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::InvalidInput("no retention policy given: add at least one --keep-* option".into()));
    }
    let mut groups: BTreeMap<GroupKey, Vec<Member<'_>>> = BTreeMap::new();
    let mut decisions = Vec::new();
    let safety_span = policy.safety.unwrap_or_else(|| Span::new().days(SAFETY_KEPT_DAYS));
    let safety_since = Timestamp::now()
        .to_zoned(zone.clone())
        .checked_sub(safety_span)
        .map_err(|e| Error::InvalidInput(format!("--keep-safety reaches beyond the calendar: {e}")))?;
    for (id, snapshot) in snapshots.iter().filter(|(_, snapshot)| snapshot.is_safety()) {
        let zoned = snapshot.time.parse::<Timestamp>().ok().map(|time| time.to_zoned(zone.clone()));
        let keep = zoned.as_ref().is_none_or(|zoned| *zoned >= safety_since);
        let reasons = if keep { vec![format!("safety, younger than {safety_span:#}")] } else { vec![] };
        decisions.push(Decision { id: *id, group: SAFETY_GROUP.into(), time: snapshot.time.clone(), keep, reasons });
    }
    for (id, snapshot) in snapshots.iter().filter(|(_, snapshot)| !snapshot.is_safety()) {
        let group = group_by.group_of(snapshot);
        let zoned = snapshot.time.parse::<Timestamp>().ok().map(|time| time.to_zoned(zone.clone()));
        let decision =
            Decision { id: *id, group: group.to_string(), time: snapshot.time.clone(), keep: false, reasons: vec![] };
        groups.entry(group).or_default().push((decision, zoned, snapshot));
    }
    for (_, mut members) in groups {
        members.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.id.cmp(&a.0.id)));
        decide_group(&mut members, policy)?;
        decisions.extend(members.into_iter().map(|(decision, _, _)| decision));
    }
    Ok(decisions)
}

/// A number naming the calendar day of `zoned`.
fn day_number(zoned: &Zoned) -> i64 {
    zoned.year() as i64 * 10_000 + zoned.month() as i64 * 100 + zoned.day() as i64
}

/// A snapshot's decision, its local time (if readable) and the record.
type Member<'a> = (Decision, Option<Zoned>, &'a Snapshot);
/// A period rule: its name, its count, and the period a time falls in.
type Rule = (&'static str, Option<u32>, fn(&Zoned) -> i64);

fn keep(decision: &mut Decision, reason: &str) {
    decision.keep = true;
    decision.reasons.push(reason.to_string());
}

/// Applies every rule to one group, sorted newest first.
fn decide_group(members: &mut [Member<'_>], policy: &RetentionPolicy) -> Result<()> {
    let rules: [Rule; 6] = [
        ("last", policy.last, |_| 0),
        ("hourly", policy.hourly, |z| day_number(z) * 100 + z.hour() as i64),
        ("daily", policy.daily, day_number),
        ("weekly", policy.weekly, |z| {
            let week = z.date().iso_week_date();
            week.year() as i64 * 100 + week.week() as i64
        }),
        ("monthly", policy.monthly, |z| z.year() as i64 * 100 + z.month() as i64),
        ("yearly", policy.yearly, |z| z.year() as i64),
    ];
    for (name, count, period) in rules {
        let Some(mut remaining) = count else { continue };
        let mut previous = None;
        for (index, (decision, zoned, _)) in members.iter_mut().enumerate() {
            let Some(zoned) = zoned else { continue };
            // keep-last counts snapshots, not periods: each is its own "period".
            let current = if name == "last" { index as i64 } else { period(zoned) };
            if remaining > 0 && previous != Some(current) {
                keep(decision, name);
                remaining -= 1;
            }
            previous = Some(current);
        }
    }
    keep_within_and_tagged(members, policy)
}

fn keep_within_and_tagged(members: &mut [Member<'_>], policy: &RetentionPolicy) -> Result<()> {
    let newest = members.iter().find_map(|(_, zoned, _)| zoned.clone());
    let threshold = match (&policy.within, newest) {
        (Some(span), Some(newest)) => Some(
            newest
                .checked_sub(*span)
                .map_err(|e| Error::InvalidInput(format!("--keep-within reaches beyond the calendar: {e}")))?,
        ),
        _ => None,
    };
    for (decision, zoned, snapshot) in members.iter_mut() {
        let Some(zoned) = zoned else {
            keep(decision, "time unreadable");
            continue;
        };
        if threshold.as_ref().is_some_and(|threshold| *zoned >= *threshold) {
            keep(decision, "within");
        }
        for tag in policy.tags.iter().filter(|tag| snapshot.tags.contains(tag)) {
            keep(decision, &format!("tag {tag}"));
        }
    }
    Ok(())
}

/// The groups of which the decisions keep no snapshot, with how many each holds, in
/// the order of the decisions. Forgetting a whole group is rarely what was meant (a
/// `--keep-last 0`, a `--keep-tag` no snapshot of the group carries), so the CLI asks
/// for an explicit override.
pub fn emptied_groups(decisions: &[Decision]) -> Vec<(String, usize)> {
    let mut groups: Vec<(String, usize, bool)> = Vec::new();
    for decision in decisions {
        match groups.iter_mut().find(|(group, _, _)| *group == decision.group) {
            Some((_, count, kept)) => {
                *count += 1;
                *kept |= decision.keep;
            }
            None => groups.push((decision.group.clone(), 1, decision.keep)),
        }
    }
    groups
        .into_iter()
        .filter(|(group, _, kept)| !kept && group != SAFETY_GROUP)
        .map(|(group, count, _)| (group, count))
        .collect()
}

/// What [`remove_snapshots`] did.
#[derive(Debug, Default)]
pub struct Removal {
    pub removed: Vec<SnapshotId>,
    /// Snapshots under S3 Object Lock, with when their lock ends: they stay.
    pub locked: Vec<(SnapshotId, jiff::Timestamp)>,
}

/// Deletes the snapshot records of the decisions that do not keep them, and their
/// cached manifests, except records still under Object Lock. The caller holds an
/// exclusive lock. Refuses before removing anything when the storage credentials may
/// not delete.
pub fn remove_snapshots(repository: &Locked<'_, Exclusive>, decisions: &[Decision]) -> Result<Removal> {
    let mut removal = Removal::default();
    repository.ensure_held()?;
    let doomed: Vec<&Decision> = decisions.iter().filter(|decision| !decision.keep).collect();
    if doomed.is_empty() {
        return Ok(removal);
    }
    repository.ensure_may_delete(Kind::Snapshot, "forget")?;
    let clock = repository.lock_clock();
    let written: std::collections::HashMap<SnapshotId, Option<std::time::SystemTime>> = match clock.retention() {
        Some(_) => Kind::Snapshot
            .list_with_info::<SnapshotId>(&**repository.backend())?
            .into_iter()
            .map(|(id, info)| (id, info.modified))
            .collect(),
        None => Default::default(),
    };
    for decision in doomed {
        if let Some(until) = written.get(&decision.id).and_then(|modified| clock.locked_until(*modified)) {
            removal.locked.push((decision.id, until));
            continue;
        }
        Kind::Snapshot.delete(&**repository.backend(), &decision.id)?;
        let _ = std::fs::remove_file(repository.manifest_cache_path(&decision.id));
        removal.removed.push(decision.id);
    }
    repository.backend().sync()?;
    Ok(removal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::snapshot::{ManifestRef, Source, Summary};

    fn snapshot(time: &str, host: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            version: 1,
            time: time.into(),
            host: host.into(),
            user: "u".into(),
            uid: 0,
            gid: 0,
            paths: vec!["/d".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            parent: None,
            complete: true,
            sources: vec![Source::Files { paths: vec!["/d".into()] }],
            summary: Summary::default(),
            program_version: "t".into(),
            manifest: ManifestRef { blobs: vec![], size: 0, blake3: String::new() },
        }
    }

    /// Snapshots at the given UTC times, ids numbered in order.
    fn list(times: &[&str]) -> Vec<(SnapshotId, Snapshot)> {
        times.iter().enumerate().map(|(n, time)| (SnapshotId([n as u8; 32]), snapshot(time, "h", &[]))).collect()
    }

    fn kept(decisions: &[Decision]) -> Vec<u8> {
        let mut kept: Vec<u8> = decisions.iter().filter(|d| d.keep).map(|d| d.id.0[0]).collect();
        kept.sort();
        kept
    }

    fn by_host() -> GroupBy {
        "host,paths".parse().unwrap()
    }

    #[test]
    fn safety_snapshots_are_kept_for_their_own_span_and_count_in_no_group() {
        let now = Timestamp::now();
        let ago = |days: i64| now.checked_sub(Span::new().hours(days * 24)).unwrap().to_string();
        let (old, young, backup) = (ago(40), ago(10), ago(50));
        let snapshots = vec![
            (SnapshotId([0; 32]), snapshot(&old, "h", &["safety"])),
            (SnapshotId([1; 32]), snapshot(&young, "h", &["safety"])),
            (SnapshotId([2; 32]), snapshot(&backup, "h", &[])),
        ];
        let policy = RetentionPolicy { last: Some(1), ..Default::default() };
        let decisions = apply_policy(&snapshots, &policy, by_host(), &TimeZone::UTC).unwrap();
        // 30 days by default: the 40-day-old one goes, the 10-day-old one stays, and
        // keep-last 1 still keeps the backup (safety snapshots are not "last").
        assert_eq!(kept(&decisions), vec![1, 2]);
        assert!(emptied_groups(&decisions).is_empty(), "the safety group emptying is no refusal");
        let week = RetentionPolicy { last: Some(1), safety: Some(parse_duration("7d").unwrap()), ..Default::default() };
        assert_eq!(kept(&apply_policy(&snapshots, &week, by_host(), &TimeZone::UTC).unwrap()), vec![2]);
    }

    #[test]
    fn daily_keeps_the_latest_of_each_of_the_last_days() {
        let mut times = Vec::new();
        for day in 1..=10 {
            times.push(format!("2026-03-{day:02}T02:00:00Z"));
            times.push(format!("2026-03-{day:02}T14:00:00Z"));
        }
        let times: Vec<&str> = times.iter().map(String::as_str).collect();
        let policy = RetentionPolicy { daily: Some(7), ..Default::default() };
        let decisions = apply_policy(&list(&times), &policy, by_host(), &TimeZone::UTC).unwrap();
        // The 14:00 snapshot of days 4 to 10 is at index 2 * day - 1.
        assert_eq!(kept(&decisions), vec![7, 9, 11, 13, 15, 17, 19]);
        assert!(decisions.iter().filter(|d| d.keep).all(|d| d.reasons == ["daily"]));
    }

    #[test]
    fn days_are_local_calendar_days() {
        let times = ["2026-03-01T22:30:00Z", "2026-03-02T01:30:00Z", "2026-03-02T23:30:00Z"];
        let policy = RetentionPolicy { daily: Some(5), ..Default::default() };
        let utc = apply_policy(&list(&times), &policy, by_host(), &TimeZone::UTC).unwrap();
        assert_eq!(kept(&utc), vec![0, 2]);
        // At UTC+3 the first two fall on 2 March and the last on 3 March.
        let east = TimeZone::fixed(jiff::tz::offset(3));
        let local = apply_policy(&list(&times), &policy, by_host(), &east).unwrap();
        assert_eq!(kept(&local), vec![1, 2]);
    }

    #[test]
    fn rules_combine_and_name_themselves() {
        let times = ["2025-12-31T10:00:00Z", "2026-01-15T10:00:00Z", "2026-02-10T10:00:00Z", "2026-02-20T10:00:00Z"];
        let policy = RetentionPolicy { last: Some(1), monthly: Some(2), yearly: Some(5), ..Default::default() };
        let decisions = apply_policy(&list(&times), &policy, by_host(), &TimeZone::UTC).unwrap();
        assert_eq!(kept(&decisions), vec![0, 1, 3]);
        let newest = decisions.iter().find(|d| d.id.0[0] == 3).unwrap();
        assert_eq!(newest.reasons, ["last", "monthly", "yearly"]);
        let january = decisions.iter().find(|d| d.id.0[0] == 1).unwrap();
        assert_eq!(january.reasons, ["monthly"]);
    }

    #[test]
    fn weekly_uses_iso_weeks() {
        // Sunday 2026-03-08 and Monday 2026-03-09 are in different ISO weeks.
        let times = ["2026-03-02T10:00:00Z", "2026-03-08T10:00:00Z", "2026-03-09T10:00:00Z"];
        let policy = RetentionPolicy { weekly: Some(2), ..Default::default() };
        let decisions = apply_policy(&list(&times), &policy, by_host(), &TimeZone::UTC).unwrap();
        assert_eq!(kept(&decisions), vec![1, 2]);
    }

    #[test]
    fn within_counts_back_from_the_latest_and_tags_keep() {
        let times = ["2026-01-01T00:00:00Z", "2026-02-20T00:00:00Z", "2026-03-01T00:00:00Z"];
        let mut snapshots = list(&times);
        snapshots[0].1.tags = vec!["audit".into()];
        let policy = RetentionPolicy {
            within: Some(parse_duration("2w").unwrap()),
            tags: vec!["audit".into()],
            ..Default::default()
        };
        let decisions = apply_policy(&snapshots, &policy, by_host(), &TimeZone::UTC).unwrap();
        assert_eq!(kept(&decisions), vec![0, 1, 2]);
        assert_eq!(decisions.iter().find(|d| d.id.0[0] == 0).unwrap().reasons, ["tag audit"]);
        let narrow = RetentionPolicy { within: Some(parse_duration("5d").unwrap()), ..Default::default() };
        assert_eq!(kept(&apply_policy(&snapshots, &narrow, by_host(), &TimeZone::UTC).unwrap()), vec![2]);
    }

    #[test]
    fn groups_are_decided_separately() {
        let snapshots = vec![
            (SnapshotId([0; 32]), snapshot("2026-03-01T00:00:00Z", "a", &[])),
            (SnapshotId([1; 32]), snapshot("2026-03-02T00:00:00Z", "a", &[])),
            (SnapshotId([2; 32]), snapshot("2026-03-01T00:00:00Z", "b", &[])),
        ];
        let policy = RetentionPolicy { last: Some(1), ..Default::default() };
        assert_eq!(kept(&apply_policy(&snapshots, &policy, by_host(), &TimeZone::UTC).unwrap()), vec![1, 2]);
        let one_group = "".parse().unwrap();
        assert_eq!(kept(&apply_policy(&snapshots, &policy, one_group, &TimeZone::UTC).unwrap()), vec![1]);
    }

    #[test]
    fn sources_keep_a_database_snapshot_out_of_a_files_only_group() {
        let with_database = |time: &str| {
            let mut record = snapshot(time, "h", &[]);
            record.sources.push(Source::Postgres(crate::repository::snapshot::PostgresSource {
                database: "clinic".into(),
                path: "/postgres/clinic.dump".into(),
                server_version: "16".into(),
                pg_dump_version: "16".into(),
                format: "custom".into(),
                size: 1,
                sha256: "0".repeat(64),
                migrations: vec![],
                schema_query: None,
                globals_path: None,
                tables: None,
            }));
            record
        };
        let snapshots = vec![
            (SnapshotId([0; 32]), with_database("2026-03-01T00:00:00Z")),
            (SnapshotId([1; 32]), snapshot("2026-03-02T00:00:00Z", "h", &[])),
            (SnapshotId([2; 32]), snapshot("2026-03-03T00:00:00Z", "h", &[])),
        ];
        let policy = RetentionPolicy { last: Some(1), ..Default::default() };
        let decisions = apply_policy(&snapshots, &policy, GroupBy::STANDARD, &TimeZone::UTC).unwrap();
        assert_eq!(kept(&decisions), vec![0, 2]);
        let groups: Vec<&str> = decisions.iter().map(|d| d.group.as_str()).collect();
        assert!(groups.contains(&"host h, paths /d, sources postgres:clinic"), "{groups:?}");
        assert!(groups.contains(&"host h, paths /d, sources (files only)"), "{groups:?}");
        assert_eq!(kept(&apply_policy(&snapshots, &policy, by_host(), &TimeZone::UTC).unwrap()), vec![2]);
    }

    #[test]
    fn names_with_separators_do_not_merge_groups() {
        let mut one = snapshot("2026-03-01T00:00:00Z", "h", &[]);
        one.paths = vec!["/a /b".into()];
        let mut two = snapshot("2026-03-02T00:00:00Z", "h", &[]);
        two.paths = vec!["/a".into(), "/b".into()];
        let snapshots = vec![(SnapshotId([0; 32]), one), (SnapshotId([1; 32]), two)];
        let policy = RetentionPolicy { last: Some(1), ..Default::default() };
        assert_eq!(kept(&apply_policy(&snapshots, &policy, by_host(), &TimeZone::UTC).unwrap()), vec![0, 1]);
    }

    #[test]
    fn groups_left_empty_are_named() {
        let snapshots = vec![
            (SnapshotId([0; 32]), snapshot("2026-03-01T00:00:00Z", "a", &[])),
            (SnapshotId([1; 32]), snapshot("2026-03-02T00:00:00Z", "a", &["audit"])),
            (SnapshotId([2; 32]), snapshot("2026-03-01T00:00:00Z", "b", &[])),
        ];
        let nothing = RetentionPolicy { last: Some(0), ..Default::default() };
        let decisions = apply_policy(&snapshots, &nothing, by_host(), &TimeZone::UTC).unwrap();
        assert_eq!(
            emptied_groups(&decisions),
            [("host a, paths /d".to_string(), 2), ("host b, paths /d".to_string(), 1)]
        );
        let tagged = RetentionPolicy { tags: vec!["audit".into()], ..Default::default() };
        let decisions = apply_policy(&snapshots, &tagged, by_host(), &TimeZone::UTC).unwrap();
        assert_eq!(emptied_groups(&decisions), [("host b, paths /d".to_string(), 1)]);
        let last = RetentionPolicy { last: Some(1), ..Default::default() };
        assert!(emptied_groups(&apply_policy(&snapshots, &last, by_host(), &TimeZone::UTC).unwrap()).is_empty());
    }

    #[test]
    fn no_policy_is_refused_and_durations_parse() {
        let error =
            apply_policy(&list(&["2026-03-01T00:00:00Z"]), &RetentionPolicy::default(), by_host(), &TimeZone::UTC);
        assert!(matches!(error, Err(Error::InvalidInput(_))));
        assert_eq!(parse_duration("1y6m").unwrap().get_years(), 1);
        assert_eq!(parse_duration("1y6m").unwrap().get_months(), 6);
        assert_eq!(parse_duration("12h").unwrap().get_hours(), 12);
        for bad in ["", "7", "d", "7x", "0d", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!("host,colour".parse::<GroupBy>().is_err());
        assert_eq!("host, paths,sources".parse::<GroupBy>().unwrap(), GroupBy::STANDARD);
    }
}
