//! Whether the store answers, kept apart from the daemon's state so that `oxlay status`
//! answers even while a store call holds the state.
use std::sync::Arc;

use log::{info, warn};

#[allow(unused_imports)]
use super::*;

/// Whether the store answers; kept apart from `State` so that `oxlay status` answers
/// even while a store call holds the state.
#[derive(Default)]
pub(crate) struct StoreHealth {
    pub(crate) down_since: Option<std::time::SystemTime>,
    pub(crate) last_error: Option<String>,
}

pub(crate) type Health = Arc<std::sync::Mutex<StoreHealth>>;

pub(crate) fn store_failed(health: &Health, what: &str, e: &anyhow::Error) {
    store_failed_inner(health, what, e)
}

pub(crate) fn store_failed_inner(
    health: &std::sync::Mutex<StoreHealth>,
    what: &str,
    e: &anyhow::Error,
) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if h.down_since.is_none() {
        warn!("store unreachable ({what}: {e:#}); forwarding continues on the routes already in the maps");
        h.down_since = Some(std::time::SystemTime::now());
    }
    h.last_error = Some(format!("{what}: {e:#}"));
}

pub(crate) fn store_ok(health: &Health) {
    store_ok_inner(health)
}

pub(crate) fn store_ok_inner(health: &std::sync::Mutex<StoreHealth>) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(since) = h.down_since.take() {
        let secs = since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
        info!("store reachable again after {secs:.1} s; reconciling");
    }
}

impl lease::LeaseEvents for std::sync::Mutex<StoreHealth> {
    fn renewed(&self) {
        store_ok_inner(self);
    }
    fn failed(&self, what: &str, e: &anyhow::Error) {
        store_failed_inner(self, what, e);
    }
}
