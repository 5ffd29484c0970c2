//! A store in one file, shared by the daemons of one machine; no server needed.
//!
//! Every operation takes an exclusive `flock` on `<file>.lock`, reads the state, expires
//! leases, applies itself and writes the state back atomically (temp file + rename).
//! Revisions, compare-and-put and leases follow etcd; watchers poll the event log, which
//! keeps the last [`EVENT_LOG`] events (falling further behind is an error, as a
//! compaction is in etcd). Meant for one machine and modest sizes; use etcd beyond.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{KeyValue, LeaseId, Revision, Store, WatchEvent, WatchItem};

mod state;

use state::{locked, now_ms, Lease, State};

/// Events kept for watchers.
pub const EVENT_LOG: usize = 50_000;
/// How often watchers look for new events (and expire leases).
const POLL: Duration = Duration::from_millis(50);

/// Where the daemons of one machine share their store unless configured otherwise.
pub const DEFAULT_PATH: &str = "/run/oxlay/store.json";

#[derive(Clone, Debug)]
pub struct EmbeddedStore {
    path: PathBuf,
}

impl EmbeddedStore {
    /// A store in `path` (created on first write); the directory must be writable.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the store directory {}", dir.display()))?;
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the state under the file lock, writing it back if it changed.
    async fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || locked(&path, f))
            .await
            .map_err(|e| anyhow!("store task failed: {e}"))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let prefix = prefix.to_owned();
        self.with_state(move |s| {
            let kvs = s
                .kvs
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, e)| State::kv(k, e))
                .collect();
            Ok((kvs, s.revision))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.with_state(move |s| Ok(s.kvs.get(&key).map(|e| State::kv(&key, e))))
            .await
    }

    async fn put(&self, key: &str, value: &str, lease: Option<LeaseId>) -> Result<Revision> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with_state(move |s| {
            let lease = s.check_lease(lease)?;
            Ok(s.write(&key, Some(value), lease))
        })
        .await
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Revision,
        value: &str,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with_state(move |s| {
            let current = s.kvs.get(&key).map_or(0, |e| e.mod_revision);
            if current != expected {
                return Ok(None);
            }
            let lease = s.check_lease(lease)?;
            Ok(Some(s.write(&key, Some(value), lease)))
        })
        .await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool> {
        let key = key.to_owned();
        self.with_state(move |s| match s.kvs.get(&key) {
            Some(e) if e.mod_revision == expected => {
                s.write(&key, None, 0);
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.with_state(move |s| {
            if s.kvs.contains_key(&key) {
                s.write(&key, None, 0);
                Ok(true)
            } else {
                Ok(false)
            }
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.with_state(move |s| {
            s.next_lease += 1;
            s.dirty = true;
            let id = s.next_lease;
            s.leases.insert(
                id,
                Lease {
                    ttl_ms,
                    expires_ms: now_ms() + ttl_ms,
                },
            );
            Ok(id)
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.with_state(move |s| {
            let l = s.leases.get_mut(&lease).ok_or(super::LeaseExpired(lease))?;
            l.expires_ms = now_ms() + l.ttl_ms;
            s.dirty = true;
            Ok(())
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.with_state(move |s| {
            if s.leases.contains_key(&lease) {
                s.drop_lease(lease);
            }
            Ok(())
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchItem>> {
        let (tx, rx) = mpsc::channel(1024);
        let store = self.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut last = after;
            loop {
                let p = prefix.clone();
                let batch = store
                    .with_state(move |s| {
                        let first = s.events.front().map_or(s.revision + 1, |e| e.revision);
                        if last < s.revision && first > last + 1 {
                            bail!("watch fell behind the store's event log (revision {last}); list again");
                        }
                        let events: Vec<WatchEvent> = s
                            .events
                            .iter()
                            .filter(|e| e.revision > last && e.key.starts_with(&p))
                            .map(|e| match &e.value {
                                Some(v) => WatchEvent::Put(KeyValue {
                                    key: e.key.clone(),
                                    value: v.clone(),
                                    mod_revision: e.revision,
                                    lease: e.lease,
                                }),
                                None => WatchEvent::Delete {
                                    key: e.key.clone(),
                                    revision: e.revision,
                                },
                            })
                            .collect();
                        Ok((events, s.revision))
                    })
                    .await;
                match batch {
                    Ok((events, revision)) => {
                        for e in events {
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        last = revision;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests;
