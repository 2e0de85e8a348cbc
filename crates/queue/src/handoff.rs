//! The room of one process's delivery worker — its slots, and its attempts in flight per webhook —
//! shared by the claim loop and by the publishers of the same process (`serve`), which lease
//! fresh deliveries to the worker in the publishing statement and hand them over at commit
//! ([`hookrelay_storage::events::Handoff`]). A handed-off delivery skips the NOTIFY, the wake-up
//! and the claim: its HTTP call starts as soon as its publish has committed.
//!
//! Fairness stays the claim's: the worker takes handed-off deliveries only while its last look
//! at the queue found nothing claimable (so nothing waiting is overtaken), only with a free slot,
//! and only below the endpoint's cap as this process counts it. Crash safety stays the lease's:
//! a handed-off job is `running` with a lease like a claimed one, and the rescuer re-queues it
//! if this process dies before recording it.

use hookrelay_storage::events::{HandedOff, Handoff};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

use crate::jobs::{self, ClaimedJob, Record, Work};
use crate::worker::Context;

/// What the claim loop and the local publishers share.
pub(crate) struct Local {
    /// Attempts in flight at once in this process.
    pub slots: Arc<Semaphore>,
    /// To the recorder; taken away at shutdown so the recorder can finish.
    records: Mutex<Option<mpsc::Sender<Record>>>,
    /// Wakes the claim loop.
    pub wake: Arc<Notify>,
    /// An attempt ended: its endpoint has room again.
    pub room_freed: Notify,
    /// Attempts in flight per webhook in this process, claimed or handed off, and the jobs
    /// leased ahead of them.
    endpoints: Mutex<Endpoints>,
    /// The claim loop's last look found no claimable work waiting.
    quiet: AtomicBool,
    /// Webhooks (and their organizations) where an attempt ended since the claim loop last
    /// looked, not counting rate-limited ones: the candidates for a refill.
    freed: Mutex<HashMap<Uuid, Freed>>,
}

/// A webhook where an attempt ended ([`Local::freed`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Freed {
    pub org_id: Uuid,
    /// Its attempts succeeded quickly: the refill may lease ahead.
    pub fast: bool,
    /// It had all its cap in flight here: the general claim can give it no more than a
    /// refill, so a refill serves it even when new work elsewhere calls for a general claim.
    pub at_cap: bool,
}

#[derive(Default)]
struct Endpoints {
    in_flight: HashMap<Uuid, i32>,
    ahead: HashMap<Uuid, VecDeque<Ahead>>,
}

/// A job leased ahead (`jobs::refill`): it waits in this process for one of its webhook's
/// attempts to end, and is sent by the task that ran that attempt, in the same room.
pub(crate) struct Ahead {
    pub work: Work,
    /// After this its lease is too short for a whole attempt: it is given back instead.
    pub send_by: Instant,
}

impl Local {
    pub fn new(concurrency: usize, records: mpsc::Sender<Record>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            records: Mutex::new(Some(records)),
            wake: Arc::new(Notify::new()),
            room_freed: Notify::new(),
            endpoints: Mutex::default(),
            quiet: AtomicBool::new(false),
            freed: Mutex::default(),
        }
    }

    pub fn set_quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::Relaxed);
    }

    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }

    pub fn records(&self) -> Option<mpsc::Sender<Record>> {
        self.records.lock().expect("not poisoned").clone()
    }

    /// An attempt to this webhook ended: it may refill the room.
    pub fn freed(&self, webhook_id: Uuid, what: Freed) {
        let mut freed = self.freed.lock().expect("not poisoned");
        let entry = freed.entry(webhook_id).or_insert(what);
        // One slow or failed attempt is enough to stop leasing ahead for this look.
        entry.fast &= what.fast;
        entry.at_cap |= what.at_cap;
    }

    /// How many webhooks were freed since the last [`Local::take_freed`].
    pub fn freed_len(&self) -> usize {
        self.freed.lock().expect("not poisoned").len()
    }

    /// The webhooks freed since the last call (only those that were at their cap, if
    /// `at_cap_only`), as (webhook, what).
    pub fn take_freed(&self, at_cap_only: bool) -> Vec<(Uuid, Freed)> {
        let mut freed = self.freed.lock().expect("not poisoned");
        if at_cap_only {
            let at_cap: Vec<Uuid> = freed
                .iter()
                .filter(|(_, f)| f.at_cap)
                .map(|(w, _)| *w)
                .collect();
            at_cap
                .into_iter()
                .filter_map(|w| freed.remove(&w).map(|f| (w, f)))
                .collect()
        } else {
            freed.drain().collect()
        }
    }

    /// Room for a refilled job: a free slot and a place under the endpoint's `cap`. Without
    /// one, the job waits ahead if an attempt of its webhook is in flight here (that attempt's
    /// task sends it when it ends); otherwise it is handed back to be sent once a slot frees.
    pub fn room_or_ahead(
        self: &Arc<Self>,
        ahead: Ahead,
        cap: i32,
    ) -> Result<Option<(Work, Room)>, Box<Ahead>> {
        let webhook_id = ahead.work.job.webhook_id;
        let mut endpoints = self.endpoints.lock().expect("not poisoned");
        let in_flight = endpoints.in_flight.get(&webhook_id).copied().unwrap_or(0);
        if in_flight < cap
            && let Ok(permit) = self.slots.clone().try_acquire_owned()
        {
            *endpoints.in_flight.entry(webhook_id).or_default() += 1;
            let room = Room {
                local: self.clone(),
                webhook_id,
                permit: Some(permit),
                left: false,
            };
            return Ok(Some((ahead.work, room)));
        }
        if in_flight > 0 {
            endpoints
                .ahead
                .entry(webhook_id)
                .or_default()
                .push_back(ahead);
            return Ok(None);
        }
        Err(Box::new(ahead))
    }

    /// Every job leased ahead of `webhook_id`, taken back (its endpoint failed or slowed down).
    pub fn take_ahead_of(&self, webhook_id: Uuid) -> Vec<Ahead> {
        let mut endpoints = self.endpoints.lock().expect("not poisoned");
        endpoints
            .ahead
            .remove(&webhook_id)
            .map(Vec::from)
            .unwrap_or_default()
    }

    /// Every job leased ahead, taken back (shutting down).
    pub fn take_all_ahead(&self) -> Vec<Ahead> {
        let mut endpoints = self.endpoints.lock().expect("not poisoned");
        endpoints.ahead.drain().flat_map(|(_, q)| q).collect()
    }

    /// Stops taking handed-off work and lets the recorder end once attempts in flight are done.
    pub fn close(&self) {
        self.set_quiet(false);
        self.records.lock().expect("not poisoned").take();
    }

    /// Room for an attempt the claim loop claimed (its slot already taken).
    pub fn claimed_room(self: &Arc<Self>, webhook_id: Uuid, permit: OwnedSemaphorePermit) -> Room {
        *self
            .endpoints
            .lock()
            .expect("not poisoned")
            .in_flight
            .entry(webhook_id)
            .or_default() += 1;
        Room {
            local: self.clone(),
            webhook_id,
            permit: Some(permit),
            left: false,
        }
    }

    fn leave(&self, webhook_id: Uuid) {
        leave(
            &mut self.endpoints.lock().expect("not poisoned"),
            webhook_id,
        );
    }
}

fn leave(endpoints: &mut Endpoints, webhook_id: Uuid) {
    if let Some(n) = endpoints.in_flight.get_mut(&webhook_id) {
        *n -= 1;
        if *n <= 0 {
            endpoints.in_flight.remove(&webhook_id);
        }
    }
}

/// One attempt's share of the worker: its slot and its place under its endpoint's cap, both
/// given back when the attempt is over (dropped).
pub(crate) struct Room {
    local: Arc<Local>,
    webhook_id: Uuid,
    /// `None` for a handed-off attempt, whose slot was taken (and forgotten) at reservation.
    permit: Option<OwnedSemaphorePermit>,
    /// Its place under the cap is already given up ([`Room::next_ahead`]).
    left: bool,
}

impl Room {
    /// The attempt in this room has ended: the next job leased ahead of its webhook, to be
    /// sent in the same room, if `may_chain`; otherwise, or with none waiting, the room's place
    /// under the cap is given up at once, under the same lock a refill holds to leave a job
    /// ahead, so no job is left waiting with no attempt in flight to take it: the last attempt
    /// to leave takes the jobs still waiting with it, to be given back.
    pub fn next_ahead(&mut self, may_chain: bool, cap: i32) -> AheadNext {
        let mut endpoints = self.local.endpoints.lock().expect("not poisoned");
        if may_chain
            && let Some(queue) = endpoints.ahead.get_mut(&self.webhook_id)
            && let Some(next) = queue.pop_front()
        {
            if queue.is_empty() {
                endpoints.ahead.remove(&self.webhook_id);
            }
            return AheadNext::Send(next);
        }
        let at_cap = endpoints
            .in_flight
            .get(&self.webhook_id)
            .copied()
            .unwrap_or(0)
            >= cap;
        if !self.left {
            self.left = true;
            leave(&mut endpoints, self.webhook_id);
        }
        let orphaned = if endpoints.in_flight.contains_key(&self.webhook_id) {
            Vec::new()
        } else {
            endpoints
                .ahead
                .remove(&self.webhook_id)
                .map(Vec::from)
                .unwrap_or_default()
        };
        AheadNext::Done { orphaned, at_cap }
    }
}

/// What follows an attempt in its room ([`Room::next_ahead`]).
// Matched at once where it is made, never stored: boxing the job would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum AheadNext {
    Send(Ahead),
    /// The room is given up; `orphaned`: jobs ahead that no attempt in flight will take;
    /// `at_cap`: the webhook had its whole cap in flight here until then.
    Done {
        orphaned: Vec<Ahead>,
        at_cap: bool,
    },
}

impl Drop for Room {
    fn drop(&mut self) {
        if !self.left {
            self.local.leave(self.webhook_id);
        }
        if self.permit.take().is_none() {
            self.local.slots.add_permits(1);
        }
    }
}

/// The worker's side of [`Handoff`].
pub struct LocalHandoff {
    pub(crate) ctx: Arc<Context>,
    pub(crate) local: Arc<Local>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Handoff for LocalHandoff {
    fn lease(&self) -> (&str, std::time::Duration) {
        (&self.ctx.worker_id, self.ctx.settings.lease)
    }

    fn reserve(&self, _org_id: Uuid, webhook_id: Uuid) -> bool {
        if !self.local.is_quiet() {
            return false;
        }
        let cap = self.ctx.settings.endpoint_concurrency;
        let mut endpoints = self.local.endpoints.lock().expect("not poisoned");
        let n = endpoints.in_flight.entry(webhook_id).or_default();
        if *n >= cap {
            return false;
        }
        match self.local.slots.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        *n += 1;
        true
    }

    fn release(&self, jobs: &[HandedOff]) {
        for job in jobs {
            self.local.leave(job.webhook_id);
            self.local.slots.add_permits(1);
        }
    }

    fn take(&self, jobs: Vec<HandedOff>) {
        if jobs.is_empty() {
            return;
        }
        self.ctx.metrics.handed_off.inc_by(jobs.len() as u64);
        let (ctx, local) = (self.ctx.clone(), self.local.clone());
        self.runtime.spawn(async move {
            let mut rooms: HashMap<Uuid, Room> = jobs
                .iter()
                .map(|j| {
                    let room = Room {
                        local: local.clone(),
                        webhook_id: j.webhook_id,
                        permit: None,
                        left: false,
                    };
                    (j.delivery_id, room)
                })
                .collect();
            // The publishing statement returned what sending needs; a load is the fallback.
            let (ready, unloaded): (Vec<_>, Vec<_>) =
                jobs.into_iter().partition(|j| j.sendable.is_some());
            let mut work: Vec<Work> = ready
                .into_iter()
                .map(|j| Work {
                    job: claimed_job(j.delivery_id, j.org_id, j.webhook_id, j.max_attempts),
                    sendable: j.sendable.expect("partitioned on it"),
                })
                .collect();
            if !unloaded.is_empty() {
                let claimed: Vec<ClaimedJob> = unloaded
                    .into_iter()
                    .map(|j| claimed_job(j.delivery_id, j.org_id, j.webhook_id, j.max_attempts))
                    .collect();
                match jobs::load_in(ctx.settings.layout, &ctx.pool, &claimed).await {
                    Ok(loaded) => work.extend(loaded),
                    // Leased to us: the rescuer re-queues them when the lease runs out.
                    Err(err) => {
                        tracing::warn!(error = %err, "loading handed-off deliveries failed")
                    }
                }
            }
            let with_room = work
                .into_iter()
                .filter_map(|w| rooms.remove(&w.job.delivery_id).map(|room| (w, room)))
                .collect();
            crate::worker::dispatch_with_room(&ctx, &local, with_room).await;
        });
    }
}

/// A handed-off delivery as a claim of attempt 1.
fn claimed_job(delivery_id: Uuid, org_id: Uuid, webhook_id: Uuid, max_attempts: i32) -> ClaimedJob {
    ClaimedJob {
        delivery_id,
        org_id,
        webhook_id,
        attempt: 1,
        max_attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookrelay_storage::events::Sendable;
    use sqlx::types::Json;
    use std::time::Duration;

    fn local(slots: usize) -> Arc<Local> {
        let (records, _) = mpsc::channel(1);
        Arc::new(Local::new(slots, records))
    }

    fn ahead(webhook_id: Uuid) -> Ahead {
        let job = claimed_job(Uuid::now_v7(), Uuid::now_v7(), webhook_id, 6);
        let sendable = Sendable {
            event: "user.created".into(),
            payload: Json(serde_json::json!({})),
            url: "http://127.0.0.1:9/".into(),
            sealed_url: None,
            headers: Json(serde_json::json!({})),
            sealed_headers: None,
            payload_format: "envelope".into(),
            active: true,
            secret: "whsec_x".into(),
            previous_secret: None,
            rate_limited: false,
        };
        Ahead {
            work: Work { job, sendable },
            send_by: Instant::now() + Duration::from_secs(60),
        }
    }

    fn room(local: &Arc<Local>, webhook_id: Uuid, cap: i32) -> Room {
        match local.room_or_ahead(ahead(webhook_id), cap) {
            Ok(Some((_, room))) => room,
            _ => panic!("expected room under the cap"),
        }
    }

    /// The cap counts attempts in flight; a job beyond it waits for one of its webhook's
    /// attempts, and the last attempt to leave takes whatever still waits (to be given back),
    /// so no job waits with nothing in flight to send it.
    #[test]
    fn jobs_ahead_wait_for_their_webhooks_attempts_and_never_outlive_the_last() {
        let (local, hook, cap) = (local(8), Uuid::now_v7(), 2);
        let mut first = room(&local, hook, cap);
        let mut second = room(&local, hook, cap);
        assert!(matches!(local.room_or_ahead(ahead(hook), cap), Ok(None)));
        // The first attempt ends: the waiting job goes next, in the same room.
        assert!(matches!(first.next_ahead(true, cap), AheadNext::Send(_)));
        // It ends too, with nothing waiting: the room is given up, at the cap until then.
        assert!(matches!(
            first.next_ahead(true, cap),
            AheadNext::Done { ref orphaned, at_cap: true } if orphaned.is_empty()
        ));
        drop(first);
        let mut third = room(&local, hook, cap);
        assert!(matches!(local.room_or_ahead(ahead(hook), cap), Ok(None)));
        // Every slot taken elsewhere: no chaining, the job waits for the other attempt.
        assert!(matches!(
            second.next_ahead(false, cap),
            AheadNext::Done { ref orphaned, at_cap: true } if orphaned.is_empty()
        ));
        drop(second);
        // The last attempt of the webhook leaves without chaining: it takes the job with it.
        assert!(matches!(
            third.next_ahead(false, cap),
            AheadNext::Done { ref orphaned, at_cap: false } if orphaned.len() == 1
        ));
        drop(third);
        assert_eq!(local.slots.available_permits(), 8, "every slot given back");
        assert!(local.take_all_ahead().is_empty());
    }

    /// Without a free slot and with nothing of its webhook in flight, a job cannot wait ahead:
    /// it is handed back to wait for a slot.
    #[test]
    fn a_job_with_no_slot_and_nothing_in_flight_waits_for_a_slot() {
        let local = local(1);
        let busy = room(&local, Uuid::now_v7(), 16);
        assert!(local.room_or_ahead(ahead(Uuid::now_v7()), 16).is_err());
        drop(busy);
        let _ = room(&local, Uuid::now_v7(), 16);
    }
}
