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
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Attempts in flight per webhook in this process, claimed or handed off.
    in_flight: Mutex<HashMap<Uuid, i32>>,
    /// The claim loop's last look found no claimable work waiting.
    quiet: AtomicBool,
    /// Webhooks (and their organizations) where an attempt ended since the claim loop last
    /// looked, not counting rate-limited ones: the candidates for a refill.
    freed: Mutex<HashMap<Uuid, Uuid>>,
}

impl Local {
    pub fn new(concurrency: usize, records: mpsc::Sender<Record>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            records: Mutex::new(Some(records)),
            wake: Arc::new(Notify::new()),
            room_freed: Notify::new(),
            in_flight: Mutex::default(),
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
    pub fn freed(&self, org_id: Uuid, webhook_id: Uuid) {
        self.freed
            .lock()
            .expect("not poisoned")
            .insert(webhook_id, org_id);
    }

    /// The webhooks freed since the last call, as (organization, webhook).
    pub fn take_freed(&self) -> Vec<(Uuid, Uuid)> {
        let mut freed = self.freed.lock().expect("not poisoned");
        freed.drain().map(|(webhook, org)| (org, webhook)).collect()
    }

    /// Stops taking handed-off work and lets the recorder end once attempts in flight are done.
    pub fn close(&self) {
        self.set_quiet(false);
        self.records.lock().expect("not poisoned").take();
    }

    /// Room for an attempt the claim loop claimed (its slot already taken).
    pub fn claimed_room(self: &Arc<Self>, webhook_id: Uuid, permit: OwnedSemaphorePermit) -> Room {
        *self
            .in_flight
            .lock()
            .expect("not poisoned")
            .entry(webhook_id)
            .or_default() += 1;
        Room {
            local: self.clone(),
            webhook_id,
            permit: Some(permit),
        }
    }

    fn leave(&self, webhook_id: Uuid) {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        if let Some(n) = in_flight.get_mut(&webhook_id) {
            *n -= 1;
            if *n <= 0 {
                in_flight.remove(&webhook_id);
            }
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
}

impl Drop for Room {
    fn drop(&mut self) {
        self.local.leave(self.webhook_id);
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
        let mut in_flight = self.local.in_flight.lock().expect("not poisoned");
        let n = in_flight.entry(webhook_id).or_default();
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
