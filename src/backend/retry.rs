//! One retry policy for every request to remote storage: exponential backoff with
//! jitter until a total time budget is spent, and never sooner than a server's
//! `Retry-After` asks.
//!
//! Only transient failures are retried; the backend reports them as
//! `Error::Unreachable` (connection refused or reset, timeouts, bodies cut short, 5xx
//! and 429 answers, `SlowDown`). Everything else (access denied, a missing object,
//! damage) is final at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long and how often failing requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total time from a request's first attempt after which its error is reported.
    pub budget: Duration,
    /// The first pause; each next one doubles, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

/// The documented default budget: long enough to ride out a router reboot or a
/// storage failover in the middle of a nightly backup.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(300);

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            budget: DEFAULT_RETRY_BUDGET,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(20),
        }
    }
}

/// The earliest time a server said it would take requests again (`Retry-After`),
/// shared by every request to it.
#[derive(Debug, Default)]
pub struct RetryAfter {
    until: Mutex<Option<Instant>>,
}

impl RetryAfter {
    /// Records a server's request to wait `delay` before the next attempt.
    pub fn set(&self, delay: Duration) {
        let until = Instant::now() + delay.min(Duration::from_secs(600));
        let mut current = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none_or(|known| known < until) {
            *current = Some(until);
        }
    }

    /// How long is left to wait, if anything.
    fn remaining(&self) -> Duration {
        let current = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        current.map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()))
    }
}

/// True for failures worth another attempt.
pub fn is_transient(error: &Error) -> bool {
    matches!(error, Error::Unreachable { .. })
}

/// Runs `attempt` until it succeeds, fails for good, or the budget is spent; the error
/// then says for how long it was retried. `attempt` gets the attempt number (0 first).
pub fn retry<T>(policy: &RetryPolicy, hint: &RetryAfter, mut attempt: impl FnMut(u32) -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let mut backoff = policy.first_backoff;
    for number in 0.. {
        let error = match attempt(number) {
            Err(error) if is_transient(&error) => error,
            other => return other,
        };
        let left = policy.budget.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(exhausted(error, started.elapsed(), number + 1));
        }
        // A pause that would run past the budget is cut short, for one last attempt
        // when the budget ends.
        std::thread::sleep(jitter(backoff).max(hint.remaining()).min(left));
        backoff = (backoff * 2).min(policy.max_backoff);
    }
    unreachable!("an unbounded range ends only by returning")
}

/// A pause between half and all of `backoff`, so parallel requests do not retry in step.
fn jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + backoff.mul_f64(rand::random::<f64>() * 0.5)
}

fn exhausted(error: Error, spent: Duration, attempts: u32) -> Error {
    match error {
        Error::Unreachable { location, message } => Error::Unreachable {
            location,
            message: format!("{message} (after {attempts} attempts over {} s)", spent.as_secs()),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            budget: Duration::from_millis(budget_ms),
            first_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(10),
        }
    }

    fn down() -> Error {
        Error::Unreachable { location: "s3://b".into(), message: "connection refused".into() }
    }

    #[test]
    fn transient_failures_are_retried_until_they_pass() {
        let mut calls = 0;
        let value = retry(&quick(5_000), &RetryAfter::default(), |_| {
            calls += 1;
            if calls < 5 {
                Err(down())
            } else {
                Ok(42)
            }
        });
        assert_eq!(value.unwrap(), 42);
        assert_eq!(calls, 5);
    }

    #[test]
    fn final_failures_are_not_retried() {
        let mut calls = 0;
        let error = retry(&quick(5_000), &RetryAfter::default(), |_| -> Result<()> {
            calls += 1;
            Err(Error::AccessDenied { location: "s3://b".into(), message: "403".into() })
        });
        assert!(matches!(error, Err(Error::AccessDenied { .. })));
        assert_eq!(calls, 1);
    }

    #[test]
    fn the_budget_ends_the_retries_and_is_named() {
        let started = Instant::now();
        let error = retry(&quick(100), &RetryAfter::default(), |_| -> Result<()> { Err(down()) }).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(error.to_string().contains("attempts over"), "{error}");
    }

    #[test]
    fn the_last_attempt_is_made_when_the_budget_ends() {
        let policy = RetryPolicy {
            budget: Duration::from_millis(300),
            first_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(10),
        };
        let started = Instant::now();
        let mut attempts = Vec::new();
        let _ = retry(&policy, &RetryAfter::default(), |_| -> Result<()> {
            attempts.push(started.elapsed());
            Err(down())
        });
        assert_eq!(attempts.len(), 2, "one attempt, then one more when the budget ends: {attempts:?}");
        assert!(attempts[1] >= Duration::from_millis(290), "{attempts:?}");
    }

    #[test]
    fn retry_after_is_honoured() {
        let hint = RetryAfter::default();
        hint.set(Duration::from_millis(300));
        let started = Instant::now();
        let mut calls = 0;
        retry(&quick(5_000), &hint, |_| {
            calls += 1;
            if calls == 1 {
                Err(down())
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(280));
    }
}
