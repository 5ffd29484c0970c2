//! The store's records routing depends on, listed once and then kept current from the
//! watch one key at a time.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use crate::{
    model::{self, BlockRecord, HostRecord, NetworkRecord},
    net::Ipv4Net,
    store::{Revision, Store, WatchEvent},
};

/// The store's records that routing depends on: hosts and networks by name, blocks by
/// store key. Filled by a listing, then kept current from watch events one key at a
/// time, so that a change costs the change and not a relisting of the cluster.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub hosts: BTreeMap<String, HostRecord>,
    pub networks: BTreeMap<String, NetworkRecord>,
    pub blocks: BTreeMap<String, BlockRecord>,
    /// Block store keys by the block they hold (networks may overlap).
    pub(super) by_prefix: BTreeMap<Ipv4Net, BTreeSet<String>>,
}

impl Snapshot {
    /// Lists the store's routing records (at start, and when a watch starts over):
    /// the snapshot and the revision from which to watch. A record that does not
    /// decode is left out with a warning.
    pub async fn list(store: &dyn Store) -> Result<(Self, Revision)> {
        let mut snapshot = Snapshot::default();
        let mut start = None;
        for prefix in [model::HOSTS, model::NETWORKS, model::BLOCKS] {
            let (kvs, revision) = store.list(prefix).await?;
            // Watching from the first listing's revision replays whatever changed
            // while the others were read.
            start.get_or_insert(revision);
            for kv in kvs {
                if let Err(e) = snapshot.apply(&WatchEvent::Put(kv)) {
                    log::warn!("{e:#}");
                }
            }
        }
        Ok((snapshot, start.unwrap_or(0)))
    }

    /// A snapshot of these records, keyed as the store keys them.
    pub fn from_records(
        hosts: Vec<HostRecord>,
        networks: Vec<NetworkRecord>,
        blocks: Vec<BlockRecord>,
    ) -> Self {
        let blocks: BTreeMap<String, BlockRecord> = blocks
            .into_iter()
            .map(|b| (model::block_key(&b.network, b.block), b))
            .collect();
        let mut by_prefix: BTreeMap<Ipv4Net, BTreeSet<String>> = BTreeMap::new();
        for (key, b) in &blocks {
            by_prefix.entry(b.block).or_default().insert(key.clone());
        }
        Self {
            hosts: hosts.into_iter().map(|h| (h.name.clone(), h)).collect(),
            networks: networks.into_iter().map(|n| (n.name.clone(), n)).collect(),
            blocks,
            by_prefix,
        }
    }

    /// Whether a key's records are part of the snapshot (others do not affect routing).
    pub fn tracks(key: &str) -> bool {
        key.starts_with(model::HOSTS)
            || key.starts_with(model::NETWORKS)
            || key.starts_with(model::BLOCKS)
    }

    /// Applies one watch event. Returns whether the snapshot changed; a record that
    /// does not decode is an error and leaves the key out (as if deleted).
    pub fn apply(&mut self, event: &WatchEvent) -> Result<bool> {
        let key = event.key();
        let value = match event {
            WatchEvent::Put(kv) => Some(kv.value.as_str()),
            WatchEvent::Delete { .. } => None,
        };
        fn set<T: PartialEq>(
            map: &mut BTreeMap<String, T>,
            key: &str,
            value: Option<Result<T>>,
        ) -> Result<bool> {
            match value {
                None => Ok(map.remove(key).is_some()),
                Some(Ok(record)) => {
                    let changed = map.get(key) != Some(&record);
                    map.insert(key.to_owned(), record);
                    Ok(changed)
                }
                Some(Err(e)) => {
                    map.remove(key);
                    Err(e)
                }
            }
        }
        let decode = |v: &str| -> Result<serde_json::Value> { Ok(serde_json::from_str(v)?) };
        if let Some(name) = key.strip_prefix(model::HOSTS) {
            let record =
                value.map(|v| decode(v).and_then(|j| Ok(serde_json::from_value::<HostRecord>(j)?)));
            set(&mut self.hosts, name, record)
        } else if let Some(name) = key.strip_prefix(model::NETWORKS) {
            let record = value.map(|v| model::decode_network(key, v));
            set(&mut self.networks, name, record)
        } else if key.starts_with(model::BLOCKS) {
            let record = value
                .map(|v| decode(v).and_then(|j| Ok(serde_json::from_value::<BlockRecord>(j)?)));
            if let Some(old) = self.blocks.get(key) {
                if let Some(keys) = self.by_prefix.get_mut(&old.block) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.by_prefix.remove(&old.block);
                    }
                }
            }
            let changed = set(&mut self.blocks, key, record);
            if let Some(new) = self.blocks.get(key) {
                self.by_prefix
                    .entry(new.block)
                    .or_default()
                    .insert(key.to_owned());
            }
            changed
        } else {
            Ok(false)
        }
        .map_err(|e| e.context(format!("store record {key} is not valid; left out")))
    }
}
