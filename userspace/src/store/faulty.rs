//! A store wrapper for unit tests that makes chosen writes or reads fail, to test what
//! the code does when a step in the middle of a change fails.
use std::{sync::Mutex, time::Duration};

use anyhow::{bail, Result};
use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{KeyValue, LeaseId, Revision, Store, WatchItem};

/// Which calls fail: writes (put, compare-and-put) or reads (get, list) of keys under a
/// prefix, the next `times` times.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    pub writes_under: Option<String>,
    pub reads_under: Option<String>,
    pub times: usize,
}

pub struct FaultyStore<S> {
    inner: S,
    fault: Mutex<Fault>,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fault: Mutex::new(Fault::default()),
        }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn check(&self, key: &str, write: bool) -> Result<()> {
        let mut f = self.fault.lock().unwrap();
        let prefix = if write {
            &f.writes_under
        } else {
            &f.reads_under
        };
        if f.times > 0 && prefix.as_deref().is_some_and(|p| key.starts_with(p)) {
            f.times -= 1;
            bail!("injected fault on {key}");
        }
        Ok(())
    }
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.check(prefix, false)?;
        self.inner.list(prefix).await
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.check(key, false)?;
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &str, lease: Option<LeaseId>) -> Result<Revision> {
        self.check(key, true)?;
        self.inner.put(key, value, lease).await
    }
    async fn compare_and_put(
        &self,
        key: &str,
        expected: Revision,
        value: &str,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        self.check(key, true)?;
        self.inner
            .compare_and_put(key, expected, value, lease)
            .await
    }
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool> {
        self.check(key, true)?;
        self.inner.compare_and_delete(key, expected).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.check(key, true)?;
        self.inner.delete(key).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner.revoke_lease(lease).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchItem>> {
        self.inner.watch(prefix, after).await
    }
}
