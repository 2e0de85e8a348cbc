//! Publish pacing (`serve`): the publishes of an organization whose deliveries fall behind take
//! turns, a few at a time, until its deliveries catch up.
//!
//! Why: where CPU is the bound (API, workers and PostgreSQL on one small machine), closed-loop
//! publishing and delivery share it, and publishing takes the larger share: one busy endpoint's
//! backlog then grows for as long as the load lasts (issue 14: seconds behind at c=32). Pacing
//! hands that CPU back to delivering what was already accepted. A paced publish waits *before*
//! its statement, so every 202 still means committed.
//!
//! What counts as behind: this worker's first attempts to endpoints that answered with a success
//! within a second (the rule of leasing ahead) and are not rate limited, started more than
//! [`LATE`] after their delivery was stored (a delivery id is a UUIDv7: its time is the
//! publish's). Failing or slow endpoints pace themselves through retries and their cap and are
//! not counted, so a partner's slow endpoint never holds its organization back. The judgement is
//! per organization and per window of [`WINDOW`]: most attempts late → the organization's
//! publishes in progress are limited (first to [`FIRST_LIMIT`], then by a quarter less each
//! time, down to [`MIN_LIMIT`]); fewer than a quarter late → the limit grows by a quarter, and
//! is lifted past [`LIFTED_AT`]. Another organization's lateness never limits this one: the limits are per
//! organization, and an organization without one (the usual case) pays one map lookup.

use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// A first attempt that starts later than this after its delivery was stored is late: about the
/// time a publish takes under load, so a paced organization's deliveries stay within a few
/// publish times of their events.
pub const LATE: Duration = Duration::from_millis(40);
/// How often an organization's attempts are judged.
pub const WINDOW: Duration = Duration::from_millis(50);
pub const FIRST_LIMIT: usize = 16;
/// Never fewer publishes in progress than this: pacing slows an organization, never stops it,
/// and fewer would leave the group commit too little company (measured: at 2, the sustained
/// bench published at 650–950 ev/s with the CPU as busy as at 1,150–1,280 ev/s with 8).
pub const MIN_LIMIT: usize = 8;
pub const LIFTED_AT: usize = 64;
/// A limit no window has judged for this long is lifted: with no attempts to judge by, it would
/// only hold publishes back for nothing.
pub const STALE: Duration = Duration::from_secs(1);
/// Organizations with no attempt judged for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(10);

pub struct Pace {
    orgs: Mutex<Orgs>,
    /// Publishes that waited for their organization's turn.
    paced: Counter,
}

struct Orgs {
    by_id: HashMap<Uuid, Org>,
    swept_at: Instant,
}

struct Org {
    window_started: Instant,
    counted: u32,
    late: u32,
    judged_at: Instant,
    turns: Option<Arc<Turns>>,
}

/// An organization's limit: permits of a fair (first come, first served) semaphore.
struct Turns {
    semaphore: Arc<Semaphore>,
    limit: AtomicUsize,
    /// Permits still to be taken out of circulation after the limit was lowered while they
    /// were in use.
    owed: AtomicUsize,
}

impl Turns {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            owed: AtomicUsize::new(0),
        })
    }

    fn set_limit(&self, limit: usize) {
        let old = self.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            let mut more = limit - old;
            // Permits still owed are simply not taken.
            while more > 0 {
                let owed = self.owed.load(Ordering::Acquire);
                if owed == 0 {
                    break;
                }
                let cancel = owed.min(more);
                if self
                    .owed
                    .compare_exchange(owed, owed - cancel, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    more -= cancel;
                }
            }
            self.semaphore.add_permits(more);
        } else if limit < old {
            let fewer = old - limit;
            let taken = self.semaphore.forget_permits(fewer);
            self.owed.fetch_add(fewer - taken, Ordering::AcqRel);
        }
    }

    /// Lets every waiting and later publish through (`acquire` fails on a closed semaphore).
    fn lift(&self) {
        self.semaphore.close();
    }
}

/// A publish's turn: held until its statement commits.
pub struct Turn {
    permit: Option<OwnedSemaphorePermit>,
    turns: Arc<Turns>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let repaid = self
            .turns
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                owed.checked_sub(1)
            })
            .is_ok();
        if repaid {
            permit.forget();
        }
    }
}

/// A publish that must wait for its organization's turn.
pub struct Waiting {
    turns: Arc<Turns>,
}

impl Waiting {
    /// `None` once the limit was lifted while waiting: the publish goes ahead unpaced.
    pub async fn turn(self) -> Option<Turn> {
        let permit = self.turns.semaphore.clone().acquire_owned().await.ok()?;
        Some(Turn {
            permit: Some(permit),
            turns: self.turns,
        })
    }
}

impl Pace {
    /// `paced` counts publishes that had to wait; register it where `/metrics` reads.
    pub fn new(paced: Counter) -> Self {
        Self {
            orgs: Mutex::new(Orgs {
                by_id: HashMap::new(),
                swept_at: Instant::now(),
            }),
            paced,
        }
    }

    /// A publish of `org_id` about to start: `Ok(None)` unpaced, `Ok(Some)` with a turn taken at
    /// once, `Err` when it must wait for one.
    pub fn try_turn(&self, org_id: Uuid) -> Result<Option<Turn>, Waiting> {
        self.try_turn_at(org_id, Instant::now())
    }

    fn try_turn_at(&self, org_id: Uuid, now: Instant) -> Result<Option<Turn>, Waiting> {
        let turns = {
            let mut orgs = self.orgs.lock().expect("not poisoned");
            let Some(org) = orgs.by_id.get_mut(&org_id) else {
                return Ok(None);
            };
            let Some(turns) = org.turns.clone() else {
                return Ok(None);
            };
            if now.saturating_duration_since(org.judged_at) >= STALE {
                turns.lift();
                org.turns = None;
                return Ok(None);
            }
            turns
        };
        match turns.semaphore.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(Turn {
                permit: Some(permit),
                turns,
            })),
            Err(tokio::sync::TryAcquireError::Closed) => Ok(None),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.paced.inc();
                Err(Waiting { turns })
            }
        }
    }

    /// A first attempt of `org_id` to an endpoint that answered with a success within a second
    /// (and is not rate limited), which started `lag` after its delivery was stored.
    pub fn observe(&self, org_id: Uuid, lag: Duration) {
        self.observe_at(org_id, lag, Instant::now());
    }

    fn observe_at(&self, org_id: Uuid, lag: Duration, now: Instant) {
        let mut orgs = self.orgs.lock().expect("not poisoned");
        if now.saturating_duration_since(orgs.swept_at) >= FORGET_AFTER {
            orgs.swept_at = now;
            orgs.by_id.retain(|_, org| {
                let keep = now.saturating_duration_since(org.judged_at) < FORGET_AFTER;
                if !keep && let Some(turns) = &org.turns {
                    turns.lift();
                }
                keep
            });
        }
        let org = orgs.by_id.entry(org_id).or_insert_with(|| Org {
            window_started: now,
            counted: 0,
            late: 0,
            judged_at: now,
            turns: None,
        });
        org.counted += 1;
        if lag > LATE {
            org.late += 1;
        }
        if now.saturating_duration_since(org.window_started) >= WINDOW {
            judge(org, now);
        }
    }

    /// The organization's limit on publishes in progress, if it has one.
    pub fn limit_of(&self, org_id: Uuid) -> Option<usize> {
        let orgs = self.orgs.lock().expect("not poisoned");
        let turns = orgs.by_id.get(&org_id)?.turns.as_ref()?;
        Some(turns.limit.load(Ordering::Acquire))
    }
}

fn judge(org: &mut Org, now: Instant) {
    // Gentle steps both ways: a limit too low starves the group commit of company (fewer events
    // per statement), so publishing would cost more CPU per event, not less.
    let mostly_late = org.late * 2 > org.counted;
    let mostly_on_time = org.late * 4 < org.counted;
    match &org.turns {
        None if mostly_late => org.turns = Some(Turns::new(FIRST_LIMIT)),
        Some(turns) if mostly_late => {
            let limit = turns.limit.load(Ordering::Acquire);
            turns.set_limit((limit - limit / 4).max(MIN_LIMIT));
        }
        Some(turns) if mostly_on_time => {
            let limit = turns.limit.load(Ordering::Acquire);
            let grown = limit + limit / 4 + 1;
            if grown >= LIFTED_AT {
                turns.lift();
                org.turns = None;
            } else {
                turns.set_limit(grown);
            }
        }
        _ => {}
    }
    org.window_started = now;
    org.counted = 0;
    org.late = 0;
    org.judged_at = now;
}

/// How long ago a delivery was stored, from its UUIDv7 id (zero for another kind of id, or a
/// time ahead of this clock).
pub fn since_stored(delivery_id: Uuid) -> Duration {
    let Some(stamp) = delivery_id.get_timestamp() else {
        return Duration::ZERO;
    };
    let (seconds, nanos) = stamp.to_unix();
    let stored = SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos);
    SystemTime::now()
        .duration_since(stored)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON_TIME: Duration = Duration::from_millis(2);
    const BEHIND: Duration = Duration::from_millis(500);

    fn pace() -> Pace {
        Pace::new(Counter::default())
    }

    /// One window of `n` attempts of `org`, `lag` each, judged at its end.
    fn window(pace: &Pace, org: Uuid, lag: Duration, n: u32, start: Instant, i: u32) -> Instant {
        let at = start + WINDOW * i;
        for _ in 0..n {
            pace.observe_at(org, lag, at);
        }
        at
    }

    #[test]
    fn an_organization_on_time_is_never_limited() {
        let (pace, org, start) = (pace(), Uuid::now_v7(), Instant::now());
        for i in 0..10 {
            window(&pace, org, ON_TIME, 20, start, i);
        }
        assert_eq!(pace.limit_of(org), None);
        assert!(matches!(pace.try_turn(org), Ok(None)));
    }

    #[test]
    fn late_windows_halve_the_limit_down_to_the_minimum_and_on_time_ones_lift_it() {
        let (pace, org, start) = (pace(), Uuid::now_v7(), Instant::now());
        let mut i = 0;
        let mut limits = Vec::new();
        for _ in 0..6 {
            i += 1;
            window(&pace, org, BEHIND, 10, start, i);
            limits.push(pace.limit_of(org));
        }
        assert_eq!(
            limits,
            [None, Some(16), Some(12), Some(9), Some(8), Some(8)],
            "the first window opens the org's record, each later one judges the one before"
        );
        // A window with some late attempts but not most holds the limit.
        i += 1;
        window(&pace, org, ON_TIME, 6, start, i);
        window(&pace, org, BEHIND, 4, start, i);
        i += 1;
        window(&pace, org, ON_TIME, 1, start, i);
        assert_eq!(pace.limit_of(org), Some(MIN_LIMIT));
        let mut grew = Vec::new();
        while pace.limit_of(org).is_some() {
            i += 1;
            window(&pace, org, ON_TIME, 10, start, i);
            grew.push(pace.limit_of(org));
            assert!(grew.len() < 30, "the limit is lifted in the end");
        }
        assert_eq!(grew[0], Some(MIN_LIMIT + MIN_LIMIT / 4 + 1));
        assert!(grew.windows(2).all(|w| w[1].is_none() || w[1] > w[0]));
    }

    #[tokio::test]
    async fn a_limited_organization_takes_turns_and_another_does_not_wait() {
        let (pace, late, other, start) = (pace(), Uuid::now_v7(), Uuid::now_v7(), Instant::now());
        for i in 0..5 {
            window(&pace, late, BEHIND, 10, start, i);
            window(&pace, other, ON_TIME, 10, start, i);
        }
        let now = start + WINDOW * 5;
        assert_eq!(pace.limit_of(late), Some(MIN_LIMIT));
        assert_eq!(pace.limit_of(other), None);
        let mut turns: Vec<Turn> = (0..MIN_LIMIT)
            .map(|_| pace.try_turn_at(late, now).ok().flatten().expect("a turn"))
            .collect();
        let Err(waiting) = pace.try_turn_at(late, now) else {
            panic!("one publish more than the limit waits");
        };
        for _ in 0..100 {
            assert!(matches!(pace.try_turn_at(other, now), Ok(None)));
        }
        let waiter = tokio::spawn(waiting.turn());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        turns.pop();
        let given_back = waiter.await.unwrap().expect("the turn given back");
        drop((turns, given_back));
        assert_eq!(pace.paced.get(), 1);
    }

    #[tokio::test]
    async fn lowering_the_limit_while_turns_are_out_takes_effect_as_they_come_back() {
        let turns = Turns::new(4);
        let pace_of = |turns: &Arc<Turns>| Turn {
            permit: Some(turns.semaphore.clone().try_acquire_owned().unwrap()),
            turns: turns.clone(),
        };
        let out: Vec<Turn> = (0..4).map(|_| pace_of(&turns)).collect();
        turns.set_limit(2);
        drop(out);
        assert_eq!(turns.semaphore.available_permits(), 2);
        turns.set_limit(3);
        assert_eq!(turns.semaphore.available_permits(), 3);
        let out: Vec<Turn> = (0..3).map(|_| pace_of(&turns)).collect();
        turns.set_limit(1);
        turns.set_limit(2);
        drop(out);
        assert_eq!(turns.semaphore.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_lifted_or_stale_limit_lets_waiting_publishes_through() {
        let (pace, org, start) = (pace(), Uuid::now_v7(), Instant::now());
        for i in 0..5 {
            window(&pace, org, BEHIND, 10, start, i);
        }
        let now = start + WINDOW * 5;
        let held: Vec<_> = (0..MIN_LIMIT)
            .map(|_| pace.try_turn_at(org, now).ok().flatten().unwrap())
            .collect();
        let Err(waiting) = pace.try_turn_at(org, now) else {
            panic!("waits");
        };
        let waiter = tokio::spawn(waiting.turn());
        // Deliveries stopped: nothing judges the limit any more.
        assert!(matches!(pace.try_turn_at(org, now + STALE), Ok(None)));
        assert!(waiter.await.unwrap().is_none(), "let through unpaced");
        assert_eq!(pace.limit_of(org), None);
        drop(held);
    }

    #[test]
    fn a_delivery_id_tells_when_it_was_stored() {
        let lag = since_stored(Uuid::now_v7());
        assert!(lag < Duration::from_secs(1), "{lag:?}");
        assert_eq!(since_stored(Uuid::new_v4()), Duration::ZERO);
    }
}
