//! Per-organization API rate limits: a token bucket (GCRA, `governor`) of
//! `HOOKRELAY_ORG_RATE_LIMIT` requests per second with a burst of twice that; 0 turns it off.
//! What a caller is told: `X-RateLimit-Limit` is the bucket's size (the burst), so
//! `X-RateLimit-Remaining` never exceeds it, and `X-RateLimit-Reset` is the seconds until the
//! bucket is full again (rounded up) — so a client that waits that long has the whole burst.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use uuid::Uuid;

type Limiter =
    RateLimiter<Uuid, DefaultKeyedStateStore<Uuid>, DefaultClock, StateInformationMiddleware>;

pub struct OrgRateLimiter {
    limiter: Option<Limiter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Unlimited,
    Allowed {
        /// The bucket's size.
        limit: u32,
        remaining: u32,
        /// Seconds until the bucket is full again.
        reset_secs: u64,
    },
    Limited {
        limit: u32,
        retry_after_secs: u64,
        reset_secs: u64,
    },
}

fn whole_seconds(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl OrgRateLimiter {
    pub fn new(per_second: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
            let quota = Quota::per_second(rate).allow_burst(burst);
            RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
        });
        Self { limiter }
    }

    pub fn check(&self, org_id: Uuid) -> Decision {
        let Some(limiter) = &self.limiter else {
            return Decision::Unlimited;
        };
        match limiter.check_key(&org_id) {
            Ok(snapshot) => {
                let quota = snapshot.quota();
                let limit = quota.burst_size().get();
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                let used = limit - remaining;
                Decision::Allowed {
                    limit,
                    remaining,
                    reset_secs: whole_seconds(quota.replenish_interval() * used),
                }
            }
            Err(not_until) => {
                let quota = not_until.quota();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Decision::Limited {
                    limit: quota.burst_size().get(),
                    retry_after_secs: whole_seconds(wait).max(1),
                    // Empty now: one cell after `wait`, the rest at the refill rate.
                    reset_secs: whole_seconds(
                        wait + quota.replenish_interval() * (quota.burst_size().get() - 1),
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_of_twice_the_rate_then_limited() {
        let limiter = OrgRateLimiter::new(5);
        let org = Uuid::now_v7();
        for i in 0..10 {
            assert!(
                matches!(limiter.check(org), Decision::Allowed { .. }),
                "request {i}"
            );
        }
        assert!(matches!(
            limiter.check(org),
            Decision::Limited {
                limit: 10,
                retry_after_secs: 1,
                reset_secs: 2,
            }
        ));
        // Another organization has its own bucket, whose size is the limit shown.
        assert!(matches!(
            limiter.check(Uuid::now_v7()),
            Decision::Allowed {
                limit: 10,
                remaining: 9,
                reset_secs: 1,
            }
        ));
        assert_eq!(OrgRateLimiter::new(0).check(org), Decision::Unlimited);
    }
}
