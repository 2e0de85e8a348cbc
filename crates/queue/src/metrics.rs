//! The queue's Prometheus metrics, registered in the process-wide registry `/metrics` serves.

pub use prometheus_client::registry::Registry;

use prometheus_client::metrics::counter::Counter;

#[derive(Clone, Default)]
pub struct QueueMetrics {
    /// Claimed deliveries whose lease ran out (their worker died) and that were re-queued.
    pub leases_rescued: Counter,
    /// Delivery rows removed by retention.
    pub deliveries_pruned: Counter,
}

impl QueueMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "queue_leases_rescued",
            "Claimed deliveries re-queued after their worker's lease expired",
            metrics.leases_rescued.clone(),
        );
        registry.register(
            "deliveries_pruned",
            "Delivery rows removed by retention",
            metrics.deliveries_pruned.clone(),
        );
        metrics
    }
}
