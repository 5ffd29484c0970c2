//! Hosts: each daemon registers its host under its lease.

use anyhow::Result;

use super::{
    keys::HOSTS,
    records::{list, HostRecord},
};
use crate::store::{LeaseId, Store};

// ---- hosts ----

/// Registers (or refreshes) a host under `lease`.
pub async fn register_host(store: &dyn Store, host: &HostRecord, lease: LeaseId) -> Result<()> {
    store
        .put(
            &format!("{HOSTS}{}", host.name),
            &serde_json::to_string(host)?,
            Some(lease),
        )
        .await
        .map(|_| ())
}

pub async fn hosts(store: &dyn Store) -> Result<Vec<HostRecord>> {
    list(store, HOSTS).await
}
