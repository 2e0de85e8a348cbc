//! When to try again: a pure function of the schedule, the attempt that just failed, the
//! receiver's `Retry-After` and a jitter draw, so it is tested without sleeping or a clock.
//!
//! Attempt 1 is immediate; after attempt n fails the wait is `schedule[n-1]` ±10 %. A
//! `Retry-After` on 429/503 is honoured within bounds: clamped to [step, 2 × step]. When the
//! schedule is exhausted the delivery has failed.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// The jitter band: ±10 %.
pub const JITTER: f64 = 0.10;

/// The wait before the next attempt, or `None` when `failed_attempt` was the last one.
/// `jitter` is a draw from [-1, 1] (0 in tests that want the exact step).
pub fn next_delay(
    schedule: &[Duration],
    failed_attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let index = usize::try_from(failed_attempt).ok()?.checked_sub(1)?;
    let step = *schedule.get(index)?;
    if let Some(asked) = retry_after {
        return Some(asked.clamp(step, step * 2));
    }
    let factor = 1.0 + JITTER * jitter.clamp(-1.0, 1.0);
    Some(step.mul_f64(factor))
}

/// Attempts in all: the first plus one per schedule step.
pub fn max_attempts(schedule: &[Duration]) -> i32 {
    i32::try_from(schedule.len()).unwrap_or(i32::MAX - 1) + 1
}

/// Parses `Retry-After`: delay-seconds or an HTTP date, relative to `now`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((date - now).to_std().unwrap_or(Duration::ZERO))
}

/// A jitter draw in [-1, 1] from the system's randomness.
pub fn random_jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(bytes) as f64 / u64::MAX as f64) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_schedule() -> Vec<Duration> {
        [60, 300, 900, 3600, 7200].map(Duration::from_secs).to_vec()
    }

    #[test]
    fn follows_the_seed_schedule_then_gives_up() {
        let s = seed_schedule();
        let waits: Vec<_> = (1..=6).map(|n| next_delay(&s, n, None, 0.0)).collect();
        assert_eq!(
            waits,
            vec![
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(300)),
                Some(Duration::from_secs(900)),
                Some(Duration::from_secs(3600)),
                Some(Duration::from_secs(7200)),
                None
            ]
        );
        assert_eq!(max_attempts(&s), 6);
        assert_eq!(next_delay(&s, 0, None, 0.0), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let s = seed_schedule();
        assert_eq!(next_delay(&s, 1, None, 1.0), Some(Duration::from_secs(66)));
        assert_eq!(next_delay(&s, 1, None, -1.0), Some(Duration::from_secs(54)));
        assert_eq!(
            next_delay(&s, 1, None, 7.0),
            Some(Duration::from_secs(66)),
            "clamped draw"
        );
        for _ in 0..1000 {
            let d = next_delay(&s, 2, None, random_jitter()).unwrap();
            assert!(
                d >= Duration::from_secs(270) && d <= Duration::from_secs(330),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_clamped_to_one_or_two_steps() {
        let s = seed_schedule();
        let ask = |secs| next_delay(&s, 1, Some(Duration::from_secs(secs)), 0.5);
        assert_eq!(ask(5), Some(Duration::from_secs(60)));
        assert_eq!(ask(90), Some(Duration::from_secs(90)));
        assert_eq!(ask(100_000), Some(Duration::from_secs(120)));
        assert_eq!(next_delay(&s, 6, Some(Duration::from_secs(1)), 0.0), None);
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
