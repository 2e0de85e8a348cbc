//! The queue's Prometheus metrics, registered in the process-wide registry `/metrics` serves.

pub use prometheus_client::registry::Registry;

pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::AtomicU64;

use crate::deliver::Outcome;
use crate::jobs::Next;

type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub struct QueueMetrics {
    /// Attempts by what followed them (sent, retrying, failed) and response class.
    pub attempts: Family<Labels, Counter>,
    pub attempt_seconds: Histogram,
    /// Due deliveries waiting to be claimed.
    pub queue_depth: Gauge,
    /// Seconds the oldest due delivery has waited.
    pub queue_lag_seconds: Gauge<f64, AtomicU64>,
    /// Claimed deliveries whose lease ran out (their worker died) and that were re-queued.
    pub leases_rescued: Counter,
    /// Delivery rows removed by retention.
    pub deliveries_pruned: Counter,
    /// Deliveries leased to this process's worker at publish, never claimed (`serve`).
    pub handed_off: Counter,
    /// Publishes that waited for their organization's turn while its deliveries were behind.
    pub publishes_paced: Counter,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        Self {
            attempts: Family::default(),
            attempt_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            queue_depth: Gauge::default(),
            queue_lag_seconds: Gauge::default(),
            leases_rescued: Counter::default(),
            deliveries_pruned: Counter::default(),
            handed_off: Counter::default(),
            publishes_paced: Counter::default(),
        }
    }
}

impl QueueMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by outcome and response class",
            m.attempts.clone(),
        );
        registry.register(
            "delivery_attempt_seconds",
            "Latency of delivery attempts",
            m.attempt_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Due deliveries waiting to be claimed",
            m.queue_depth.clone(),
        );
        registry.register(
            "queue_lag_seconds",
            "Seconds the oldest due delivery has waited",
            m.queue_lag_seconds.clone(),
        );
        registry.register(
            "queue_leases_rescued",
            "Claimed deliveries re-queued after their worker's lease expired",
            m.leases_rescued.clone(),
        );
        registry.register(
            "deliveries_pruned",
            "Delivery rows removed by retention",
            m.deliveries_pruned.clone(),
        );
        registry.register(
            "deliveries_handed_off",
            "Deliveries leased to this process's worker by the publish that created them (serve)",
            m.handed_off.clone(),
        );
        registry.register(
            "publishes_paced",
            "Publishes that waited for their organization's turn while its deliveries were behind (serve)",
            m.publishes_paced.clone(),
        );
        m
    }

    pub fn observe(&self, outcome: &Outcome, next: Next) {
        let class = match outcome.status {
            Some(s) => format!("{}xx", s / 100),
            None => "error".to_owned(),
        };
        self.attempts
            .get_or_create(&vec![
                ("outcome".into(), next.status().into()),
                ("status_class".into(), class),
            ])
            .inc();
        self.attempt_seconds.observe(outcome.latency.as_secs_f64());
    }
}
