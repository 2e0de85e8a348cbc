//! Group commit for single-event publishes: events from many concurrent requests are written
//! together — one statement per organization, one commit — and each request is answered once
//! that commit is done. One event per request otherwise costs a commit (a WAL flush) and a fan-out
//! statement each, and those, not the HTTP work, cap the publish rate.
//!
//! Groups form by themselves: while `WRITERS` groups are being written, new requests queue, and
//! the next group takes all of them (up to `MAX_GROUP`). A lone request waits for nothing.
//! On Citus ([`Layout::ByOrganization`]) a group is written as one transaction per organization,
//! side by side: one transaction across organizations on several nodes would commit with
//! two-phase commit.

use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::events::{
    HandedOff, Handoff, NewEvent, PublishError, Published, publish_handing_off, publish_in,
};
use crate::{Layout, StorageError};

/// Most events written in one group.
const MAX_GROUP: usize = 128;
/// Groups written at once (each holds one connection while it is written).
const WRITERS: usize = 4;
/// Requests waiting for a group; a full queue makes publishers wait (admission control bounds
/// how many there are).
const QUEUE: usize = 4096;

struct Pending {
    org_id: Uuid,
    event: NewEvent,
    answer: oneshot::Sender<Result<Published, PublishError>>,
}

/// Publishes single events without idempotency keys through shared transactions. Cheap to clone.
#[derive(Clone)]
pub struct GroupPublisher {
    queue: mpsc::Sender<Pending>,
}

impl GroupPublisher {
    /// Starts the grouping task on the current Tokio runtime; it ends when every clone is dropped.
    pub fn spawn(pool: sqlx::PgPool, layout: Layout, max_attempts: i32) -> Self {
        Self::spawn_handing_off(pool, layout, max_attempts, None)
    }

    /// [`GroupPublisher::spawn`] for a process with its own delivery worker: what that worker
    /// has room for is leased to it in the publishing statement and handed over at commit.
    pub fn spawn_handing_off(
        pool: sqlx::PgPool,
        layout: Layout,
        max_attempts: i32,
        handoff: Option<Arc<dyn Handoff>>,
    ) -> Self {
        let (queue, mut waiting) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            let writers = Arc::new(Semaphore::new(WRITERS));
            while let Some(first) = waiting.recv().await {
                let Ok(writer) = writers.clone().acquire_owned().await else {
                    return;
                };
                // Whatever queued while we waited for a writer joins this group.
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match waiting.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let parts = match layout {
                    Layout::Single => vec![group],
                    Layout::ByOrganization => by_organization(group),
                };
                // The writer's permit goes back when its last part is written.
                let writer = Arc::new(writer);
                for part in parts {
                    let (pool, handoff, writer) = (pool.clone(), handoff.clone(), writer.clone());
                    tokio::spawn(async move {
                        write(&pool, layout, part, max_attempts, handoff.as_deref()).await;
                        drop(writer);
                    });
                }
            }
        });
        Self { queue }
    }

    /// Stores and fans out `event`; returns once it is committed.
    pub async fn publish(&self, org_id: Uuid, event: NewEvent) -> Result<Published, PublishError> {
        debug_assert!(
            event.idempotency_key.is_none(),
            "keyed publishes need a transaction of their own"
        );
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending {
                org_id,
                event,
                answer,
            })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// `group` split by organization, each part in arrival order.
fn by_organization(group: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut parts: Vec<Vec<Pending>> = Vec::new();
    for pending in group {
        match parts.iter_mut().find(|p| p[0].org_id == pending.org_id) {
            Some(part) => part.push(pending),
            None => parts.push(vec![pending]),
        }
    }
    parts
}

fn stopped() -> PublishError {
    PublishError::Storage(StorageError::Unavailable(sqlx::Error::PoolClosed))
}

/// Writes a group and answers each of its requests.
async fn write(
    pool: &sqlx::PgPool,
    layout: Layout,
    group: Vec<Pending>,
    max_attempts: i32,
    handoff: Option<&dyn Handoff>,
) {
    match store(pool, layout, &group, max_attempts, handoff).await {
        Ok(answers) => {
            for (pending, answer) in group.into_iter().zip(answers) {
                let _ = pending.answer.send(Ok(answer));
            }
        }
        // One event the database refuses (say a value PostgreSQL cannot store) must not fail
        // the others: each is written alone, so only its own request gets the error.
        Err(err) if group.len() > 1 && !is_transient(&err) => {
            tracing::debug!(error = %err, events = group.len(), "group publish refused; publishing one by one");
            for pending in group {
                let alone = async {
                    let mut conn = pool.acquire().await?;
                    let mut published = publish_in(
                        layout,
                        &mut conn,
                        pending.org_id,
                        std::slice::from_ref(&pending.event),
                        max_attempts,
                    )
                    .await?;
                    Ok(published.remove(0))
                };
                let _ = pending.answer.send(alone.await);
            }
        }
        Err(err) => {
            let text = err.to_string();
            for pending in group {
                let _ = pending
                    .answer
                    .send(Err(PublishError::Storage(StorageError::Unavailable(
                        sqlx::Error::Protocol(text.clone()),
                    ))));
            }
        }
    }
}

fn is_transient(err: &PublishError) -> bool {
    matches!(err, PublishError::Storage(e) if e.is_transient())
}

/// One statement per organization; a group of several organizations commits once for all.
/// What was leased to the local worker is handed over once committed, and given back if not.
async fn store(
    pool: &sqlx::PgPool,
    layout: Layout,
    group: &[Pending],
    max_attempts: i32,
    handoff: Option<&dyn Handoff>,
) -> Result<Vec<Published>, PublishError> {
    let mut handed: Vec<HandedOff> = Vec::new();
    let stored = store_leasing(pool, layout, group, max_attempts, handoff, &mut handed).await;
    if let Some(h) = handoff {
        match &stored {
            Ok(_) => h.take(handed),
            Err(_) => h.release(&handed),
        }
    }
    stored
}

async fn store_leasing(
    pool: &sqlx::PgPool,
    layout: Layout,
    group: &[Pending],
    max_attempts: i32,
    handoff: Option<&dyn Handoff>,
    handed: &mut Vec<HandedOff>,
) -> Result<Vec<Published>, PublishError> {
    let mut orgs: Vec<Uuid> = Vec::new();
    for p in group {
        if !orgs.contains(&p.org_id) {
            orgs.push(p.org_id);
        }
    }
    // Always the same order: each organization's publish locks its ordering keys' rows until
    // the commit, so two groups taking them in opposite orders could deadlock.
    orgs.sort_unstable();
    let mut answers: Vec<Option<Published>> = vec![None; group.len()];
    let mut publish_org = async |conn: &mut sqlx::PgConnection, org_id: Uuid| {
        let (places, events): (Vec<usize>, Vec<NewEvent>) = group
            .iter()
            .enumerate()
            .filter(|(_, p)| p.org_id == org_id)
            .map(|(i, p)| (i, p.event.clone()))
            .unzip();
        let published = match handoff {
            Some(h) => {
                let (published, leased) =
                    publish_handing_off(layout, conn, org_id, &events, max_attempts, h).await?;
                handed.extend(leased);
                published
            }
            None => publish_in(layout, conn, org_id, &events, max_attempts).await?,
        };
        for (place, answer) in places.into_iter().zip(published) {
            answers[place] = Some(answer);
        }
        Ok::<_, PublishError>(())
    };
    if let [org_id] = orgs[..] {
        // One statement is atomic by itself: no transaction round trips (a routed publish
        // opens its own).
        let mut conn = pool.acquire().await?;
        publish_org(&mut conn, org_id).await?;
    } else {
        let mut tx = pool.begin().await?;
        for &org_id in &orgs {
            publish_org(&mut tx, org_id).await?;
        }
        tx.commit().await?;
    }
    Ok(answers
        .into_iter()
        .map(|a| a.expect("every event of the group answered"))
        .collect())
}
