//! Which names each network's containers go by, kept from the store's endpoint and
//! host records (listed once, then one watch event at a time), and the lookup that
//! answers a query from one container.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Result;

use crate::{
    model::{self, EndpointRecord},
    store::{Store, WatchEvent},
};

/// What a name means to the container that asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A container on one of the asker's networks: its addresses (several when
    /// containers share an alias).
    Container(Vec<Ipv4Addr>),
    /// Not a name of the asker's networks: the host's resolvers answer it.
    NotOurs,
}

/// Names by network, from the store. An endpoint's names count while its host is
/// registered: a host that died takes its names with it when its lease runs out.
#[derive(Debug, Default)]
pub struct Directory {
    /// The host this daemon runs on (queries come from its containers).
    host: String,
    hosts: BTreeSet<String>,
    /// Endpoint records by store key.
    endpoints: BTreeMap<String, EndpointRecord>,
    /// Store keys of endpoints by (network, lowercase name).
    by_name: BTreeMap<(String, String), BTreeSet<String>>,
    /// Store keys of this host's endpoints by address (the asker's networks).
    local_by_address: BTreeMap<Ipv4Addr, BTreeSet<String>>,
}

/// A query name as names are kept: lowercase, without the root's dot.
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a key's records are the directory's.
pub fn tracks(key: &str) -> bool {
    key.starts_with(model::ENDPOINTS) || key.starts_with(model::HOSTS)
}

impl Directory {
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            ..Self::default()
        }
    }

    /// The directory of the store as it is now.
    pub async fn list(store: &dyn Store, host: &str) -> Result<Self> {
        let mut directory = Self::new(host);
        for prefix in [model::HOSTS, model::ENDPOINTS] {
            for kv in store.list(prefix).await?.0 {
                directory.apply(&WatchEvent::Put(kv));
            }
        }
        Ok(directory)
    }

    /// Applies one watch event (others than endpoints and hosts are ignored; a record
    /// that does not decode counts as removed).
    pub fn apply(&mut self, event: &WatchEvent) {
        let key = event.key();
        let value = match event {
            WatchEvent::Put(kv) => Some(kv.value.as_str()),
            WatchEvent::Delete { .. } => None,
        };
        if let Some(name) = key.strip_prefix(model::HOSTS) {
            match value {
                Some(_) => self.hosts.insert(name.to_owned()),
                None => self.hosts.remove(name),
            };
        } else if key.starts_with(model::ENDPOINTS) {
            self.forget(key);
            let record = value.and_then(|v| serde_json::from_str::<EndpointRecord>(v).ok());
            if let Some(record) = record {
                self.remember(key, record);
            }
        }
    }

    fn remember(&mut self, key: &str, record: EndpointRecord) {
        for name in &record.names {
            let slot = (record.network.clone(), normalise(name));
            self.by_name.entry(slot).or_default().insert(key.to_owned());
        }
        if record.host == self.host {
            let keys = self.local_by_address.entry(record.address).or_default();
            keys.insert(key.to_owned());
        }
        self.endpoints.insert(key.to_owned(), record);
    }

    fn forget(&mut self, key: &str) {
        let Some(old) = self.endpoints.remove(key) else {
            return;
        };
        for name in &old.names {
            let slot = (old.network.clone(), normalise(name));
            if let Some(keys) = self.by_name.get_mut(&slot) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_name.remove(&slot);
                }
            }
        }
        if let Some(keys) = self.local_by_address.get_mut(&old.address) {
            keys.remove(key);
            if keys.is_empty() {
                self.local_by_address.remove(&old.address);
            }
        }
    }

    /// The network of this host's container at `source`. Networks may overlap: an
    /// address that is a local endpoint of two networks does not tell which one asks,
    /// and gets no network (names never cross networks).
    fn network_of(&self, source: Ipv4Addr) -> Option<&str> {
        let networks: BTreeSet<&str> = self
            .local_by_address
            .get(&source)
            .into_iter()
            .flatten()
            .filter_map(|key| self.endpoints.get(key))
            .map(|e| e.network.as_str())
            .collect();
        match networks.len() {
            1 => networks.into_iter().next(),
            _ => None,
        }
    }

    /// What `qname` means to the container at `source`: a name on one of its
    /// networks, bare (`srv`) or with the network's name (`srv.web`).
    pub fn lookup(&self, source: Ipv4Addr, qname: &str) -> Lookup {
        let qname = normalise(qname);
        let mut found = BTreeSet::new();
        if let Some(network) = self.network_of(source) {
            let bare = qname
                .strip_suffix(network)
                .and_then(|rest| rest.strip_suffix('.'));
            for name in std::iter::once(qname.as_str()).chain(bare) {
                let slot = (network.to_owned(), name.to_owned());
                let keys = self.by_name.get(&slot).into_iter().flatten();
                found.extend(
                    keys.filter_map(|key| self.endpoints.get(key))
                        .filter(|e| self.hosts.contains(&e.host))
                        .map(|e| e.address),
                );
            }
        }
        if found.is_empty() {
            Lookup::NotOurs
        } else {
            Lookup::Container(found.into_iter().collect())
        }
    }

    /// How many names the directory holds (for `oxlay status`).
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn put(key: &str, value: serde_json::Value) -> WatchEvent {
        WatchEvent::Put(KeyValue {
            key: key.to_owned(),
            value: value.to_string(),
            mod_revision: 1,
            lease: 0,
        })
    }

    fn endpoint(network: &str, address: &str, host: &str, names: &[&str]) -> WatchEvent {
        put(
            &format!("{}{network}/{address}", model::ENDPOINTS),
            serde_json::json!({
                "network": network, "address": address, "host": host,
                "sandbox": "sb", "names": names,
            }),
        )
    }

    fn host(name: &str) -> WatchEvent {
        put(
            &format!("{}{name}", model::HOSTS),
            serde_json::json!({"name": name, "underlay_address": "192.168.50.1",
                               "vtep_mac": "02:00:00:00:00:01"}),
        )
    }

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// a (10.1.0.2, on this host) and srv (10.1.1.2, on host b) share `web`; blue
    /// (10.2.0.2, here) is on `blue` only.
    fn directory() -> Directory {
        let mut d = Directory::new("a");
        for e in [
            host("a"),
            host("b"),
            endpoint("web", "10.1.0.2", "a", &["client"]),
            endpoint("web", "10.1.1.2", "b", &["srv", "Www"]),
            endpoint("blue", "10.2.0.2", "a", &["blue-client"]),
        ] {
            d.apply(&e);
        }
        d
    }

    #[test]
    fn a_container_finds_names_of_its_networks_on_any_host() {
        let d = directory();
        let found = Lookup::Container(vec![addr("10.1.1.2")]);
        assert_eq!(d.lookup(addr("10.1.0.2"), "srv"), found);
        assert_eq!(d.lookup(addr("10.1.0.2"), "SRV."), found, "case, root dot");
        assert_eq!(d.lookup(addr("10.1.0.2"), "www"), found, "an alias");
        assert_eq!(
            d.lookup(addr("10.1.0.2"), "srv.web"),
            found,
            "with the network"
        );
        assert_eq!(d.lookup(addr("10.1.0.2"), "srv.blue"), Lookup::NotOurs);
        assert_eq!(d.lookup(addr("10.1.0.2"), "example.org"), Lookup::NotOurs);
    }

    #[test]
    fn names_never_cross_networks() {
        let d = directory();
        assert_eq!(d.lookup(addr("10.2.0.2"), "srv"), Lookup::NotOurs);
        assert_eq!(d.lookup(addr("10.2.0.2"), "srv.web"), Lookup::NotOurs);
        // Not a container of this host: no network, no names.
        assert_eq!(d.lookup(addr("10.1.1.2"), "client"), Lookup::NotOurs);
    }

    #[test]
    fn an_address_of_two_overlapping_networks_gets_neither_networks_names() {
        let mut d = directory();
        // blue's 10.2.0.2 is also a local endpoint of web (overlapping subnets).
        d.apply(&endpoint("web", "10.2.0.2", "a", &[]));
        assert_eq!(d.lookup(addr("10.2.0.2"), "srv"), Lookup::NotOurs);
        assert_eq!(d.lookup(addr("10.2.0.2"), "blue-client"), Lookup::NotOurs);
    }

    #[test]
    fn names_go_with_their_endpoint_and_with_their_host() {
        let mut d = directory();
        d.apply(&WatchEvent::Delete {
            key: format!("{}b", model::HOSTS),
            revision: 2,
        });
        assert_eq!(
            d.lookup(addr("10.1.0.2"), "srv"),
            Lookup::NotOurs,
            "host gone"
        );
        d.apply(&host("b"));
        d.apply(&endpoint("web", "10.1.1.2", "b", &["other"]));
        assert_eq!(
            d.lookup(addr("10.1.0.2"), "srv"),
            Lookup::NotOurs,
            "renamed"
        );
        d.apply(&WatchEvent::Delete {
            key: format!("{}web/10.1.1.2", model::ENDPOINTS),
            revision: 3,
        });
        assert_eq!(
            d.lookup(addr("10.1.0.2"), "other"),
            Lookup::NotOurs,
            "removed"
        );
        assert_eq!(d.len(), 2, "client, blue-client");
    }

    #[test]
    fn a_shared_alias_answers_every_address() {
        let mut d = directory();
        d.apply(&endpoint("web", "10.1.0.9", "a", &["www"]));
        let all = Lookup::Container(vec![addr("10.1.0.9"), addr("10.1.1.2")]);
        assert_eq!(d.lookup(addr("10.1.0.2"), "www"), all);
    }
}
