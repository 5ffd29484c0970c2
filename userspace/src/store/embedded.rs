//! A store in one file, shared by the daemons of one machine; no server needed.
//!
//! Every operation takes an exclusive `flock` on `<file>.lock`, reads the state, expires
//! leases, applies itself and writes the state back atomically (temp file + rename).
//! Revisions, compare-and-put and leases follow etcd; watchers poll the event log, which
//! keeps the last [`EVENT_LOG`] events (falling further behind is an error, as a
//! compaction is in etcd). Meant for one machine and modest sizes; use etcd beyond.
use std::{
    collections::{BTreeMap, VecDeque},
    fs::File,
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{KeyValue, LeaseId, Revision, Store, WatchEvent, WatchItem};

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

#[derive(Default, Serialize, Deserialize)]
struct State {
    revision: Revision,
    next_lease: LeaseId,
    kvs: BTreeMap<String, Entry>,
    leases: BTreeMap<LeaseId, Lease>,
    events: VecDeque<Event>,
    /// The boot whose clock `expires_ms` counts in.
    #[serde(default)]
    boot_id: String,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    value: String,
    mod_revision: Revision,
    lease: LeaseId,
}

#[derive(Serialize, Deserialize)]
struct Lease {
    ttl_ms: u64,
    expires_ms: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Event {
    revision: Revision,
    key: String,
    /// None for a delete.
    value: Option<String>,
    lease: LeaseId,
}

/// Milliseconds since boot (CLOCK_BOOTTIME): the same for every process on the
/// machine, and it never steps, so setting the wall clock cannot expire every lease at
/// once. It restarts at boot; the state records the boot it belongs to (see `boot_id`).
fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid, owned pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// This boot's id: lease deadlines of another boot mean nothing in this one.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl State {
    fn write(&mut self, key: &str, value: Option<String>, lease: LeaseId) -> Revision {
        self.revision += 1;
        self.dirty = true;
        let revision = self.revision;
        match &value {
            Some(v) => {
                self.kvs.insert(
                    key.to_owned(),
                    Entry {
                        value: v.clone(),
                        mod_revision: revision,
                        lease,
                    },
                );
            }
            None => {
                self.kvs.remove(key);
            }
        }
        self.events.push_back(Event {
            revision,
            key: key.to_owned(),
            value,
            lease,
        });
        while self.events.len() > EVENT_LOG {
            self.events.pop_front();
        }
        revision
    }

    fn expire(&mut self, now: u64) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        self.dirty = true;
        let keys: Vec<String> = self
            .kvs
            .iter()
            .filter(|(_, e)| e.lease == id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.write(&key, None, 0);
        }
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<LeaseId> {
        match lease {
            None => Ok(0),
            Some(id) if self.leases.contains_key(&id) => Ok(id),
            Some(id) => bail!("lease {id} does not exist (expired or revoked)"),
        }
    }

    fn kv(key: &str, e: &Entry) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: e.value.clone(),
            mod_revision: e.mod_revision,
            lease: e.lease,
        }
    }
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

fn locked<T>(path: &Path, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
    let lock_path = path.with_extension("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open the store lock {}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot lock the store");
    }
    let mut state: State = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("the store file {} is corrupt", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let boot = boot_id();
    if state.boot_id != boot {
        // Written in another boot (or by a version that used the wall clock): its
        // deadlines are meaningless here, so every lease gets a full TTL from now.
        let now = now_ms();
        for lease in state.leases.values_mut() {
            lease.expires_ms = now + lease.ttl_ms;
        }
        state.boot_id = boot;
        state.dirty = true;
    }
    state.expire(now_ms());
    let result = f(&mut state);
    if state.dirty {
        let tmp = path.with_extension("tmp");
        let mut file =
            File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec(&state)?)?;
        file.sync_data()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
    }
    result
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
mod tests {
    use super::*;

    /// Lease deadlines count in the boot clock of the boot that wrote them. A store
    /// file from another boot, or written by a build that used the wall clock (no boot
    /// id), gets every lease a full TTL from now instead of expiring them all at once
    /// or keeping them forever.
    #[tokio::test]
    async fn leases_from_another_clock_get_a_full_ttl() {
        let folder = super::super::faulty::TempFolder::new();
        let path = folder.0.join("store.json");
        let store = EmbeddedStore::new(&path).unwrap();
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        store.put("/k", "v", Some(lease)).await.unwrap();
        for (boot, expires) in [("", 1), ("another-boot", u64::MAX / 2)] {
            // Rewrite the file as another boot (or the wall clock) left it.
            let mut state: State = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            state.boot_id = boot.to_owned();
            state.leases.get_mut(&lease).unwrap().expires_ms = expires;
            std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
            store.keep_alive(lease).await.unwrap();
            assert!(store.get("/k").await.unwrap().is_some(), "boot {boot:?}");
            let state: State = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let left = state.leases[&lease].expires_ms.saturating_sub(now_ms());
            assert!(
                left > 25_000 && left <= 30_000,
                "boot {boot:?}: {left} ms left"
            );
        }
    }
}
