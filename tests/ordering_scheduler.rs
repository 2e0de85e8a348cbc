//! The per-key scheduler under random interleavings (proptest), driven through the real code on
//! a real database: publishes (`events::publish`), claims (`jobs::claim`, the workers' claim
//! statement), attempt records that succeed, fail for a retry or fail for good (`jobs::record`),
//! crashes (a lease run out, then `maintenance::rescue_expired_leases`), the late records of
//! crashed workers, and manual retries of ended deliveries (`deliveries::requeue`). Properties:
//! a key's delivery is only ever claimed when every delivery that joined the key's queue before
//! it has ended, at most one per key is in flight, deliveries end in the order they joined, and
//! draining at the end finishes everything (no key stalls behind a head that ended).

use chrono::Utc;
use hookrelay_queue::deliver::Outcome;
use hookrelay_queue::jobs::{self, ClaimedJob, HealthPolicy, Next, Record};
use hookrelay_storage::events::{NewEvent, publish};
use hookrelay_storage::{SecretBox, organizations, webhooks};
use hookrelay_tests::TestDb;
use proptest::prelude::*;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use uuid::Uuid;

const KEYS: usize = 3;
const LEASE: Duration = Duration::from_secs(60);
/// Never deactivate: a parked webhook is another test's subject.
const HEALTH: HealthPolicy = HealthPolicy {
    disable_after_failures: i32::MAX,
    max_attempts: 6,
};

#[derive(Debug, Clone)]
enum Op {
    /// Publishes events of these keys in one request, in this order.
    Publish(Vec<usize>),
    Claim(i64),
    /// Ends the attempt of the in-flight job at this index (modulo) as said.
    Finish(usize, End),
    /// The worker holding this in-flight job dies; its lease runs out and is rescued.
    Crash(usize),
    /// A crashed worker's attempt is recorded late: it must be refused.
    Late(usize),
    /// This in-flight job kills every worker that takes it, until its rescues run out and it
    /// fails.
    Poison(usize),
    /// A manual retry of this ended delivery.
    Redeliver(usize),
}

#[derive(Debug, Clone, Copy)]
enum End {
    Sent,
    Retry,
    Failed,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(0..KEYS, 1..5).prop_map(Op::Publish),
        3 => (1i64..6).prop_map(Op::Claim),
        3 => (any::<usize>(), prop_oneof![
                3 => Just(End::Sent), 2 => Just(End::Retry), 1 => Just(End::Failed)])
            .prop_map(|(i, e)| Op::Finish(i, e)),
        1 => any::<usize>().prop_map(Op::Crash),
        1 => any::<usize>().prop_map(Op::Late),
        1 => any::<usize>().prop_map(Op::Poison),
        1 => any::<usize>().prop_map(Op::Redeliver),
    ]
}

struct Harness {
    pool: sqlx::PgPool,
    org_id: Uuid,
    /// What the model expects per key: deliveries not ended yet, in publish order.
    unfinished: HashMap<String, VecDeque<Uuid>>,
    key_of: HashMap<Uuid, String>,
    in_flight: Vec<ClaimedJob>,
    crashed: Vec<ClaimedJob>,
    /// Every delivery that joined a key's queue (published, or redelivered), in that order.
    joined: HashMap<String, Vec<Uuid>>,
    /// Every delivery that ended (sent or failed), per key, in the order they ended.
    ended: HashMap<String, Vec<Uuid>>,
    /// Ended deliveries, which a manual retry may send again.
    finished: Vec<Uuid>,
}

impl Harness {
    async fn new(pool: &sqlx::PgPool, secrets: &SecretBox) -> Self {
        // What a failed case left (proptest shrinks by running more cases on this database).
        sqlx::query("TRUNCATE delivery_jobs, delivery_key_queues")
            .execute(pool)
            .await
            .unwrap();
        let org = organizations::create(pool, "scheduler").await.unwrap();
        webhooks::create(
            pool,
            secrets,
            org.id,
            &webhooks::NewWebhook {
                url: "http://127.0.0.1:9/never-called".into(),
                events: vec!["*".into()],
                description: None,
                active: true,
                secret: hookrelay_signer::Secret::generate()
                    .unwrap()
                    .as_str()
                    .to_owned(),
                signature_scheme: "hmac-sha256".into(),
                public_key: None,
                metadata: json!({}),
                headers: json!({}),
                filter: None,
                max_batch_size: 1,
                payload_format: "envelope".into(),
                rate_limit_per_second: None,
                ordering: "per_key".into(),
            },
        )
        .await
        .unwrap();
        Self {
            pool: pool.clone(),
            org_id: org.id,
            unfinished: HashMap::new(),
            key_of: HashMap::new(),
            in_flight: Vec::new(),
            crashed: Vec::new(),
            joined: HashMap::new(),
            ended: HashMap::new(),
            finished: Vec::new(),
        }
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Publish(keys) => self.publish(keys).await,
            Op::Claim(limit) => self.claim(*limit).await,
            Op::Finish(i, end) if !self.in_flight.is_empty() => {
                let job = self.in_flight.remove(i % self.in_flight.len());
                self.finish(job, *end).await;
            }
            Op::Crash(i) if !self.in_flight.is_empty() => {
                let job = self.in_flight.remove(i % self.in_flight.len());
                self.crash(job).await;
            }
            Op::Poison(i) if !self.in_flight.is_empty() => {
                let mut job = self.in_flight.remove(i % self.in_flight.len());
                while self.crash(job.clone()).await {
                    // Rescued: it is its key's head again, so the next claim takes it back.
                    self.claim(100).await;
                    let again = self
                        .in_flight
                        .iter()
                        .position(|j| j.delivery_id == job.delivery_id)
                        .expect("a rescued head is claimable again");
                    job = self.in_flight.remove(again);
                }
            }
            Op::Redeliver(i) if !self.finished.is_empty() => self.redeliver(*i).await,
            Op::Late(i) if !self.crashed.is_empty() => {
                let job = self.crashed.remove(i % self.crashed.len());
                let accepted = jobs::record(&self.pool, &[record(&job, End::Sent)], HEALTH)
                    .await
                    .unwrap();
                assert_eq!(accepted, 0, "a crashed worker's late record is refused");
            }
            _ => {}
        }
    }

    async fn publish(&mut self, keys: &[usize]) {
        let events: Vec<NewEvent> = keys
            .iter()
            .map(|k| NewEvent {
                event: "user.updated".into(),
                data: json!({"k": k}),
                idempotency_key: None,
                ordering_key: Some(format!("key-{k}")),
                source_id: None,
            })
            .collect();
        let mut conn = self.pool.acquire().await.unwrap();
        let published = publish(&mut conn, self.org_id, &events, 3).await.unwrap();
        for (event, answer) in events.iter().zip(published) {
            let delivery: Uuid = sqlx::query_scalar(
                "SELECT id FROM webhook_deliveries WHERE org_id = $1 AND event_id = $2",
            )
            .bind(self.org_id)
            .bind(answer.id)
            .fetch_one(&self.pool)
            .await
            .unwrap();
            let key = event.ordering_key.clone().unwrap();
            self.key_of.insert(delivery, key.clone());
            self.unfinished
                .entry(key.clone())
                .or_default()
                .push_back(delivery);
            self.joined.entry(key).or_default().push(delivery);
        }
    }

    async fn claim(&mut self, limit: i64) {
        let claimed = jobs::claim(&self.pool, "prop-worker", limit, LEASE, 16)
            .await
            .unwrap();
        for job in claimed {
            let key = &self.key_of[&job.delivery_id];
            assert_eq!(
                self.unfinished[key].front(),
                Some(&job.delivery_id),
                "{key}: a delivery was claimed while an earlier one of its key had not ended"
            );
            assert!(
                self.in_flight
                    .iter()
                    .all(|j| &self.key_of[&j.delivery_id] != key),
                "{key}: two deliveries in flight"
            );
            self.in_flight.push(job);
        }
    }

    async fn finish(&mut self, job: ClaimedJob, end: End) {
        // The last attempt cannot be retried: it fails.
        let end = match end {
            End::Retry if job.attempt >= job.max_attempts => End::Failed,
            end => end,
        };
        let accepted = jobs::record(&self.pool, &[record(&job, end)], HEALTH)
            .await
            .unwrap();
        assert_eq!(accepted, 1);
        if !matches!(end, End::Retry) {
            self.end(&job);
        }
    }

    /// True when the job was re-queued, false when it failed (rescued too often).
    async fn crash(&mut self, job: ClaimedJob) -> bool {
        sqlx::query(
            "UPDATE delivery_jobs SET lease_expires_at = now() - interval '1 hour'
              WHERE delivery_id = $1",
        )
        .bind(job.delivery_id)
        .execute(&self.pool)
        .await
        .unwrap();
        hookrelay_queue::maintenance::rescue_expired_leases(&self.pool, LEASE)
            .await
            .unwrap();
        let still_queued: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM delivery_jobs WHERE delivery_id = $1)",
        )
        .bind(job.delivery_id)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        if !still_queued {
            // Rescued too often: it failed, and its key moves on.
            self.end(&job);
        }
        self.crashed.push(job);
        still_queued
    }

    /// Claims and delivers until nothing is left; every key must drain.
    async fn drain(&mut self) {
        for job in std::mem::take(&mut self.in_flight) {
            self.finish(job, End::Sent).await;
        }
        for _ in 0..1000 {
            self.claim(100).await;
            if self.in_flight.is_empty() {
                break;
            }
            for job in std::mem::take(&mut self.in_flight) {
                self.finish(job, End::Sent).await;
            }
        }
        let left: Vec<(String, String)> = sqlx::query_as(
            "SELECT ordering_key, state FROM delivery_jobs WHERE org_id = $1 ORDER BY key_seq",
        )
        .bind(self.org_id)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        assert!(left.is_empty(), "stalled: {left:?}");
        let keys: i64 =
            sqlx::query_scalar("SELECT count(*) FROM delivery_key_queues WHERE org_id = $1")
                .bind(self.org_id)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        assert_eq!(keys, 0, "drained keys are forgotten");
        for (key, joined) in &self.joined {
            assert_eq!(
                self.ended.get(key),
                Some(joined),
                "{key}: ended in the order they joined"
            );
        }
    }

    /// The job's delivery ended: it must be its key's head, and the key moves on.
    fn end(&mut self, job: &ClaimedJob) {
        let key = self.key_of[&job.delivery_id].clone();
        let front = self.unfinished.get_mut(&key).unwrap().pop_front();
        assert_eq!(front, Some(job.delivery_id), "{key}: ended out of order");
        self.ended.entry(key).or_default().push(job.delivery_id);
        self.finished.push(job.delivery_id);
    }

    /// A manual retry (`POST /deliveries/{id}/retry`) of an ended delivery: it joins the end of
    /// its key's queue.
    async fn redeliver(&mut self, i: usize) {
        let delivery = self.finished.remove(i % self.finished.len());
        let mut tx = self.pool.begin().await.unwrap();
        let queued = hookrelay_storage::deliveries::requeue(&mut tx, self.org_id, &[delivery])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(queued, 1);
        let key = self.key_of[&delivery].clone();
        self.unfinished.get_mut(&key).unwrap().push_back(delivery);
        self.joined.entry(key).or_default().push(delivery);
    }
}

fn record(job: &ClaimedJob, end: End) -> Record {
    let ok = matches!(end, End::Sent);
    Record {
        job: job.clone(),
        url: "http://127.0.0.1:9/never-called".into(),
        started_at: Utc::now(),
        outcome: Outcome {
            status: Some(if ok { 200 } else { 500 }),
            body_excerpt: None,
            error: None,
            latency: Duration::from_millis(1),
            retry_after: None,
        },
        next: match end {
            End::Sent => Next::Sent,
            // Due at once, so the property needs no waiting.
            End::Retry => Next::RetryAt(Utc::now() - chrono::Duration::seconds(1)),
            End::Failed => Next::Failed,
        },
    }
}

#[test]
fn the_per_key_scheduler_keeps_order_and_never_stalls_under_random_interleavings() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(TestDb::new());
    let secrets = SecretBox::from_base64(&SecretBox::generate_key()).unwrap();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    proptest!(ProptestConfig::with_cases(cases), |(ops in prop::collection::vec(op(), 1..40))| {
        runtime.block_on(async {
            // A webhook of its own per case: the claim sees nothing of the cases before.
            let mut harness = Harness::new(&db.pool, &secrets).await;
            for op in &ops {
                harness.apply(op).await;
            }
            harness.drain().await;
        });
    });
}
