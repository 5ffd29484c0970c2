//! The peers oxlay's WireGuard device should have, from the store's hosts and blocks: a
//! pure function, like the maps' desired state.
use std::{collections::BTreeSet, net::SocketAddrV4};

use base64::Engine;

use super::snapshot::Snapshot;
use crate::net::{
    wireguard::{Key, PeerSpec},
    Ipv4Net,
};

/// Every other host that encrypts, at its underlay address and WireGuard port. It may
/// send from its underlay address (VXLAN and GRE come from there) and from its blocks
/// of direct networks (direct packets travel unencapsulated inside WireGuard). Hosts
/// whose key does not decode, or that share a key with another host (a copied key
/// file: WireGuard would give one the other's addresses), come back as warnings.
pub fn desired_wireguard_peers(me: &str, snapshot: &Snapshot) -> (Vec<PeerSpec>, Vec<String>) {
    let mut peers = Vec::new();
    let mut warnings = Vec::new();
    let mut holders: std::collections::BTreeMap<&str, usize> = Default::default();
    for h in snapshot.hosts.values().filter_map(|h| h.wireguard.as_ref()) {
        *holders.entry(h.public_key.as_str()).or_default() += 1;
    }
    for (name, host) in snapshot.hosts.iter().filter(|(name, _)| *name != me) {
        let Some(wg) = &host.wireguard else {
            continue;
        };
        let Some(public_key) = decode_key(&wg.public_key) else {
            warnings.push(format!(
                "host {name} publishes WireGuard key {:?}, which is not 32 bytes of base64: it is reached in plain",
                wg.public_key
            ));
            continue;
        };
        if holders.get(wg.public_key.as_str()).copied().unwrap_or(0) > 1 {
            warnings.push(format!(
                "host {name} publishes WireGuard key {} like another host (a copied key file?): it is reached in plain until each host has its own key (remove the key file and restart its daemon)",
                wg.public_key
            ));
            continue;
        }
        let mut allowed: BTreeSet<Ipv4Net> = BTreeSet::new();
        if let Ok(own) = Ipv4Net::new(host.underlay_address, 32) {
            allowed.insert(own);
        }
        allowed.extend(
            snapshot
                .blocks
                .values()
                .filter(|b| b.host == *name)
                .filter(|b| snapshot.networks.get(&b.network).is_some_and(|n| n.direct))
                .map(|b| b.block),
        );
        peers.push(PeerSpec {
            public_key,
            endpoint: SocketAddrV4::new(host.underlay_address, wg.port),
            allowed_ips: allowed.into_iter().collect(),
        });
    }
    (peers, warnings)
}

/// Whether a host record's key can be used (see `desired_wireguard_peers`).
pub fn decode_key(text: &str) -> Option<Key> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?
        .try_into()
        .ok()
}

pub fn encode_key(key: &Key) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}
