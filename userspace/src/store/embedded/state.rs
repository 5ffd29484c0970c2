//! What the store file holds (keys, revisions, leases, the event log), and the `flock`
//! under which each operation reads, changes and atomically rewrites it.
use std::{
    collections::{BTreeMap, VecDeque},
    fs::File,
    io::Write,
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::EVENT_LOG;
use crate::store::{KeyValue, LeaseId, Revision};

#[derive(Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) revision: Revision,
    pub(super) next_lease: LeaseId,
    pub(super) kvs: BTreeMap<String, Entry>,
    pub(super) leases: BTreeMap<LeaseId, Lease>,
    pub(super) events: VecDeque<Event>,
    /// The boot whose clock `expires_ms` counts in.
    #[serde(default)]
    pub(super) boot_id: String,
    #[serde(skip)]
    pub(super) dirty: bool,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) value: String,
    pub(super) mod_revision: Revision,
    pub(super) lease: LeaseId,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Lease {
    pub(super) ttl_ms: u64,
    pub(super) expires_ms: u64,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Event {
    pub(super) revision: Revision,
    pub(super) key: String,
    /// None for a delete.
    pub(super) value: Option<String>,
    pub(super) lease: LeaseId,
}

/// Milliseconds since boot (CLOCK_BOOTTIME): the same for every process on the
/// machine, and it never steps, so setting the wall clock cannot expire every lease at
/// once. It restarts at boot; the state records the boot it belongs to (see `boot_id`).
pub(super) fn now_ms() -> u64 {
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
pub(super) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl State {
    pub(super) fn write(&mut self, key: &str, value: Option<String>, lease: LeaseId) -> Revision {
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

    pub(super) fn expire(&mut self, now: u64) {
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

    pub(super) fn drop_lease(&mut self, id: LeaseId) {
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

    pub(super) fn check_lease(&self, lease: Option<LeaseId>) -> Result<LeaseId> {
        match lease {
            None => Ok(0),
            Some(id) if self.leases.contains_key(&id) => Ok(id),
            Some(id) => bail!("lease {id} does not exist (expired or revoked)"),
        }
    }

    pub(super) fn kv(key: &str, e: &Entry) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: e.value.clone(),
            mod_revision: e.mod_revision,
            lease: e.lease,
        }
    }
}

pub(super) fn locked<T>(path: &Path, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
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
