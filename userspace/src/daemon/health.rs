//! Whether the store answers, kept apart from the daemon's state (and its lock) so that
//! `oxlay status` answers at once, and logged once per outage.
use std::sync::{Arc, Mutex};

use log::{info, warn};

use super::lease::LeaseEvents;

#[derive(Default)]
pub(crate) struct StoreHealth {
    pub(crate) down_since: Option<std::time::SystemTime>,
    pub(crate) last_error: Option<String>,
    /// When the host's lease was last renewed (None: not since the start).
    pub(crate) lease_renewed: Option<std::time::Instant>,
    /// Leases that expired since the start (the store dropped this host meanwhile).
    pub(crate) lease_expiries: u64,
}

pub(crate) type Health = Arc<Mutex<StoreHealth>>;

/// The health of a host that registered just now: the store answered, the lease is
/// fresh.
pub(crate) fn registered_now() -> Health {
    Arc::new(Mutex::new(StoreHealth {
        lease_renewed: Some(std::time::Instant::now()),
        ..Default::default()
    }))
}

/// A store call failed: the outage starts (and is logged) unless it is on already.
pub(crate) fn store_failed(health: &Mutex<StoreHealth>, what: &str, e: &anyhow::Error) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if h.down_since.is_none() {
        warn!("store unreachable ({what}: {e:#}); forwarding continues on the routes already in the maps");
        h.down_since = Some(std::time::SystemTime::now());
    }
    h.last_error = Some(format!("{what}: {e:#}"));
}

/// A store call succeeded: an outage, if any, is over.
pub(crate) fn store_ok(health: &Mutex<StoreHealth>) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(since) = h.down_since.take() {
        let secs = since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
        info!("store reachable again after {secs:.1} s; reconciling");
    }
}

impl LeaseEvents for Mutex<StoreHealth> {
    fn renewed(&self) {
        store_ok(self);
        let mut h = self.lock().unwrap_or_else(|p| p.into_inner());
        h.lease_renewed = Some(std::time::Instant::now());
    }
    fn failed(&self, what: &str, e: &anyhow::Error) {
        store_failed(self, what, e);
    }
    fn expired(&self) {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .lease_expiries += 1;
    }
}
