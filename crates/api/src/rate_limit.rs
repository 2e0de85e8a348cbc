//! Per-organization API rate limits: a token bucket (GCRA, `governor`) of
//! `HOOKRELAY_ORG_RATE_LIMIT` requests per second with a burst of twice that; 0 turns it off.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use uuid::Uuid;

type Limiter =
    RateLimiter<Uuid, DefaultKeyedStateStore<Uuid>, DefaultClock, StateInformationMiddleware>;

pub struct OrgRateLimiter {
    limiter: Option<(Limiter, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Unlimited,
    Allowed {
        limit: u64,
        remaining: u32,
        reset_secs: u64,
    },
    Limited {
        retry_after_secs: u64,
    },
}

impl OrgRateLimiter {
    pub fn new(per_second: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
            let quota = Quota::per_second(rate).allow_burst(burst);
            (
                RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
                per_second,
            )
        });
        Self { limiter }
    }

    pub fn check(&self, org_id: Uuid) -> Decision {
        let Some((limiter, rate)) = &self.limiter else {
            return Decision::Unlimited;
        };
        match limiter.check_key(&org_id) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = snapshot.quota().burst_size().get() - remaining;
                Decision::Allowed {
                    limit: u64::from(*rate),
                    remaining,
                    // Seconds until the bucket is full again.
                    reset_secs: u64::from(used).div_ceil(u64::from(*rate)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Decision::Limited {
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
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
        assert_eq!(
            limiter.check(org),
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        // Another organization has its own bucket.
        assert!(matches!(
            limiter.check(Uuid::now_v7()),
            Decision::Allowed { remaining: 9, .. }
        ));
        assert_eq!(OrgRateLimiter::new(0).check(org), Decision::Unlimited);
    }
}
