//! S3 Object Lock as the repository sees it: the retention recorded in `config` at
//! `init --object-lock` (or found on the bucket), when a listed object's lock runs
//! out, and whether the storage credentials may delete at all. Forget, prune and key
//! changes use these to leave locked objects alone and to refuse before changing
//! anything when deleting is not allowed (FORMAT.md section 3).

use std::time::SystemTime;

use super::*;
use crate::backend::{ObjectLock, ObjectLockMode};
use crate::error::{Error, Result};
use crate::repository::objects::Kind;

/// Extra time a lock is assumed to last beyond its write time plus the retention:
/// clocks differ, and a multipart upload's time is when it started.
const MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// Longest retention `init --object-lock` takes, and `config` may hold: 100 years.
pub const MAX_LOCK_DAYS: u32 = 36500;

/// The Object Lock retention of a repository (`config.object_lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLockSetting {
    pub mode: ObjectLockMode,
    pub days: u32,
}

/// When objects written at a given time stop being locked.
#[derive(Debug, Clone, Copy)]
pub struct LockClock {
    retention: Option<ObjectLockSetting>,
    now: jiff::Timestamp,
}

impl LockClock {
    /// No object is locked (a repository without Object Lock).
    pub fn none() -> Self {
        Self { retention: None, now: jiff::Timestamp::now() }
    }

    /// Until when an object written at `modified` stays locked, if it still is. An
    /// object whose write time the storage does not give counts as locked for a full
    /// retention from now.
    pub fn locked_until(&self, modified: Option<SystemTime>) -> Option<jiff::Timestamp> {
        let retention = self.retention?;
        let written = modified.and_then(|time| jiff::Timestamp::try_from(time).ok()).unwrap_or(self.now);
        // A retention past the end of time locks for ever, never for no time.
        let until = written
            .checked_add(jiff::SignedDuration::from_hours(24 * retention.days as i64))
            .and_then(|until| until.checked_add(MARGIN))
            .unwrap_or(jiff::Timestamp::MAX);
        (until > self.now).then_some(until)
    }

    pub fn retention(&self) -> Option<ObjectLockSetting> {
        self.retention
    }
}

impl Repository {
    /// The clock of this repository's Object Lock: the longer of the retention in
    /// `config` and the bucket's default retention. `config` is not authenticated, so
    /// the bucket is asked too; where it cannot be asked (no permission, no support),
    /// `config` alone decides.
    pub fn lock_clock(&self) -> LockClock {
        let recorded = self.config.object_lock;
        let bucket = match self.backend.object_lock() {
            Ok(ObjectLock::Enabled(Some((mode, days)))) => Some(ObjectLockSetting { mode, days }),
            _ => None,
        };
        let retention = match (recorded, bucket) {
            (Some(a), Some(b)) => Some(if b.days > a.days { b } else { a }),
            (a, b) => a.or(b),
        };
        LockClock { retention, now: jiff::Timestamp::now() }
    }

    /// Refuses, before anything is changed, when the storage credentials may not
    /// delete objects of `kind` (an append-only credential on a backup host): deletes
    /// an object of that kind that does not exist, which storage allows exactly when
    /// it allows deleting.
    pub fn ensure_may_delete(&self, kind: Kind, command: &str) -> Result<()> {
        let probe = kind.key(&crate::id::IndexId::random());
        match self.backend.delete(&probe) {
            Err(Error::AccessDenied { location, .. }) => Err(Error::AccessDenied {
                location,
                message: format!(
                    "these storage credentials may not delete (probed with {probe}), so {command} cannot run with them; \
                     run it from a host whose credentials may delete (docs/COMPLIANCE.md)"
                ),
            }),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_lasts_its_retention_from_the_write_plus_a_margin() {
        let now: jiff::Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let clock =
            LockClock { retention: Some(ObjectLockSetting { mode: ObjectLockMode::Compliance, days: 30 }), now };
        let at = |text: &str| Some(SystemTime::from(text.parse::<jiff::Timestamp>().unwrap()));
        // Written 10 days ago: locked for 20 more days and the margin.
        assert_eq!(clock.locked_until(at("2026-11-23T12:00:00Z")), Some("2026-12-23T13:00:00Z".parse().unwrap()));
        // Written 30 days ago: still inside the margin; 31 days ago: free.
        assert!(clock.locked_until(at("2026-11-03T12:30:00Z")).is_some());
        assert_eq!(clock.locked_until(at("2026-11-02T12:00:00Z")), None);
        // No write time: a full retention from now.
        assert_eq!(clock.locked_until(None), Some("2027-01-02T13:00:00Z".parse().unwrap()));
        // A retention too long to add is for ever, not for no time.
        let endless =
            LockClock { retention: Some(ObjectLockSetting { mode: ObjectLockMode::Governance, days: u32::MAX }), now };
        assert_eq!(endless.locked_until(at("2026-11-02T12:00:00Z")), Some(jiff::Timestamp::MAX));
        // Without Object Lock nothing is locked.
        assert_eq!(LockClock { retention: None, now }.locked_until(at("2026-12-03T11:00:00Z")), None);
    }
}
