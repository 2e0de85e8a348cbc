//! The bench's own webhook receiver: answers 200 to every POST on any path, counts requests and
//! notes when each event (by envelope id) first and last arrived, so phases can time delivery
//! without polling the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

/// What arrived for one event id: one request per webhook it fanned out to, each when it
/// arrived, in order (so a fan-out can tell a slow whole from a long tail).
#[derive(Debug, Clone)]
pub struct Arrivals {
    pub each: Vec<Instant>,
}

impl Arrivals {
    pub fn count(&self) -> u64 {
        self.each.len() as u64
    }

    pub fn first(&self) -> Instant {
        self.each[0]
    }

    pub fn last(&self) -> Instant {
        self.each[self.each.len() - 1]
    }
}

#[derive(Default)]
pub struct Receiver {
    count: AtomicU64,
    events: Mutex<HashMap<Uuid, Arrivals>>,
}

impl Receiver {
    /// Requests received since start, whatever their body.
    pub fn received(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn arrivals(&self, event_id: Uuid) -> Option<Arrivals> {
        self.events.lock().unwrap().get(&event_id).cloned()
    }

    /// When each event id first arrived.
    pub fn first_arrivals(&self) -> HashMap<Uuid, Instant> {
        let events = self.events.lock().unwrap();
        events.iter().map(|(id, a)| (*id, a.first())).collect()
    }

    /// Forgets per-event arrivals (the total count keeps running).
    pub fn forget(&self) {
        self.events.lock().unwrap().clear();
    }

    fn note(&self, body: &[u8]) {
        self.count.fetch_add(1, Ordering::Relaxed);
        #[derive(serde::Deserialize)]
        struct EventId {
            id: Uuid,
        }
        if let Ok(e) = serde_json::from_slice::<EventId>(body) {
            let now = Instant::now();
            self.events
                .lock()
                .unwrap()
                .entry(e.id)
                .or_insert_with(|| Arrivals { each: Vec::new() })
                .each
                .push(now);
        }
    }
}

async fn receive(
    body: actix_web::web::Bytes,
    rx: actix_web::web::Data<Arc<Receiver>>,
) -> actix_web::HttpResponse {
    rx.note(&body);
    actix_web::HttpResponse::Ok().finish()
}

/// Starts the receiver on a free port; returns its base URL (`http://127.0.0.1:port`).
pub fn start() -> anyhow::Result<(String, Arc<Receiver>)> {
    let rx = Arc::new(Receiver::default());
    let data = actix_web::web::Data::new(rx.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .default_service(actix_web::web::to(receive))
    })
    .listen(listener)?
    // One thread: on two cores the receiver must not take a core from the service it measures.
    .workers(1)
    .disable_signals()
    .run();
    tokio::spawn(server);
    Ok((base, rx))
}
