//! The shared store through which hosts find each other and share networks and address
//! blocks. Two implementations behind one trait, with the same semantics (revisions,
//! compare-and-set, leases, watch), checked by one test suite (`tests/tests/store.rs`):
//!
//! - [`etcd::EtcdStore`]: a real etcd v3 cluster, for many machines;
//! - [`embedded::EmbeddedStore`]: a file under /run shared by the daemons of one
//!   machine, needing no server (the default, and what the namespace demo uses).
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use tokio::sync::mpsc;

pub mod embedded;
pub mod etcd;
#[cfg(test)]
pub mod faulty;

/// A store-wide, monotonically increasing version; every write gets a new one.
pub type Revision = i64;
/// A lease: keys attached to it vanish when it is not kept alive.
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
    /// 0 when the key has no lease.
    pub lease: LeaseId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// A delete, an expired lease's key included.
    Delete {
        key: String,
        revision: Revision,
    },
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// The store's word that a lease is gone (expired or revoked), as opposed to a store
/// that could not be asked: only this makes a host register again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseExpired(pub LeaseId);

impl std::fmt::Display for LeaseExpired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease {} has expired; its keys are gone", self.0)
    }
}

impl std::error::Error for LeaseExpired {}

/// Whether `e` is the store saying the lease is gone.
pub fn is_lease_expired(e: &anyhow::Error) -> bool {
    e.downcast_ref::<LeaseExpired>().is_some()
}

/// What a watch delivers: events in revision order, or an error after which the
/// watcher must list again (e.g. it fell behind a compaction).
pub type WatchItem = Result<WatchEvent>;

#[async_trait]
pub trait Store: Send + Sync {
    /// Every key under `prefix` and the revision the listing reflects.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Writes unconditionally; returns the new revision.
    async fn put(&self, key: &str, value: &str, lease: Option<LeaseId>) -> Result<Revision>;

    /// Writes only if the key's `mod_revision` is `expected` (0: the key must not
    /// exist). `Ok(None)` when the comparison failed; else the new revision.
    async fn compare_and_put(
        &self,
        key: &str,
        expected: Revision,
        value: &str,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>>;

    /// Deletes only if the key's `mod_revision` is `expected`; false when it was not.
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool>;

    /// Deletes; false when there was no such key.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// A new lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease. [`LeaseExpired`] when the store says it is gone (its keys with
    /// it); any other error means the store could not be asked.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Ends a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Events for keys under `prefix` with revisions after `after`, in order.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchItem>>;
}

/// The store the config names: etcd when it lists endpoints, else the embedded one.
pub async fn connect(config: &crate::config::StoreConfig) -> Result<std::sync::Arc<dyn Store>> {
    Ok(if config.etcd_endpoints.is_empty() {
        std::sync::Arc::new(embedded::EmbeddedStore::new(&config.path)?)
    } else {
        std::sync::Arc::new(etcd::EtcdStore::connect(&config.etcd_endpoints).await?)
    })
}
