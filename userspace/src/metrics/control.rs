//! Control-plane measurements the daemon records as things happen (reconciles, watch
//! batches), kept between scrapes. Clones share the same series.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
};

/// What a reconcile covered: everything, or the routes of changed blocks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Scope {
    pub scope: &'static str,
}

/// Seconds: from 1 ms (one block's routes) to 10 s (a store with many thousands of
/// hosts, or a stalled write).
fn seconds_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

#[derive(Clone)]
pub struct ControlMetrics {
    /// How long reconciles take, by scope.
    pub reconcile_seconds: Family<Scope, Histogram, fn() -> Histogram>,
    /// From a store change's arrival at the daemon to the maps holding it (the batch's
    /// first event to the end of its reconcile).
    pub watch_lag_seconds: Histogram,
    /// The store revision whose changes the maps hold last.
    pub watch_revision: Gauge,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self {
            reconcile_seconds: Family::new_with_constructor(seconds_buckets),
            watch_lag_seconds: seconds_buckets(),
            watch_revision: Gauge::default(),
        }
    }
}

impl ControlMetrics {
    pub fn reconciled(&self, scope: &'static str, took: std::time::Duration) {
        self.reconcile_seconds
            .get_or_create(&Scope { scope })
            .observe(took.as_secs_f64());
    }
}
