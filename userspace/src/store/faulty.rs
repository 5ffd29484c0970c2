//! Unit-test helpers for the store: a wrapper that makes chosen writes or reads fail
//! (or lets another writer in at a chosen moment), to test what the code does when a
//! step in the middle of a change fails or races; and embedded stores in temporary
//! folders.
use std::{sync::Mutex, time::Duration};

use anyhow::{bail, Result};
use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{KeyValue, LeaseId, Revision, Store, WatchItem};

/// Which calls fail: writes (put, compare-and-put) or reads (get, list) of keys under a
/// prefix, the next `times` times. Or, for `rewrite_before_delete_under`, a
/// compare-and-delete of such a key is preceded by another writer rewriting the key
/// (its revision changes), `times` times.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    pub writes_under: Option<String>,
    pub reads_under: Option<String>,
    pub rewrite_before_delete_under: Option<String>,
    pub times: usize,
}

/// An embedded store in a temporary folder, removed with the guard.
pub fn temp_embedded() -> (TempFolder, super::embedded::EmbeddedStore) {
    let folder = TempFolder::new();
    let store = super::embedded::EmbeddedStore::new(folder.0.join("store.json")).unwrap();
    (folder, store)
}

/// A temporary folder, removed on drop.
pub struct TempFolder(pub std::path::PathBuf);

impl Default for TempFolder {
    fn default() -> Self {
        Self::new()
    }
}

impl TempFolder {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "oxlay-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

    /// Whether a compare-and-delete of `key` should first see another writer.
    fn rewrite_first(&self, key: &str) -> bool {
        let mut f = self.fault.lock().unwrap();
        let hit = f.times > 0
            && f.rewrite_before_delete_under
                .as_deref()
                .is_some_and(|p| key.starts_with(p));
        if hit {
            f.times -= 1;
        }
        hit
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
        if self.rewrite_first(key) {
            if let Some(kv) = self.inner.get(key).await? {
                self.inner.put(key, &kv.value, None).await?;
            }
        }
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
