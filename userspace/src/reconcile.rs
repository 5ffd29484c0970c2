//! Turns what the store and the config say into the datapath's maps, changing only what
//! differs: a route, peer or network that is already right is never touched, so traffic
//! on it never sees a gap.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use oxlay_common::Route;

use crate::{
    config::Config,
    datapath::Datapath,
    endpoint::LocalEndpoint,
    model::{BlockRecord, HostRecord, NetworkRecord},
    net::{Ipv4Net, MacAddr},
};

/// The store's view that routing depends on.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub hosts: Vec<HostRecord>,
    pub networks: Vec<NetworkRecord>,
    pub blocks: Vec<BlockRecord>,
}

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// VNIs decapsulation accepts: the static one and those with local endpoints.
    pub networks: BTreeSet<u32>,
    /// Underlay addresses whose VXLAN packets are accepted.
    pub peers: BTreeSet<Ipv4Addr>,
    pub routes: BTreeMap<(u32, Ipv4Net), Route>,
}

/// Computes the desired maps for host `me`.
pub fn desired(
    me: &str,
    config: &Config,
    snapshot: &Snapshot,
    local: &[&LocalEndpoint],
) -> Result<Desired> {
    let mut d = Desired::default();
    if let Some((vni, _)) = config.static_network() {
        d.networks.insert(vni);
        for peer in &config.peers {
            d.peers.insert(peer.underlay_address);
            let mac = peer
                .vtep_mac
                .unwrap_or_else(|| MacAddr::derived(&peer.name));
            d.routes.insert(
                (vni, peer.pod_subnet),
                Route::remote(peer.underlay_address.octets(), mac.0),
            );
        }
    }
    for ep in local {
        d.networks.insert(ep.vni);
        d.routes.insert(
            (ep.vni, Ipv4Net::new(ep.address, 32)?),
            Route::local(ep.host_ifindex, ep.container_mac.0, ep.host_mac.0),
        );
    }
    let hosts: BTreeMap<&str, &HostRecord> = snapshot
        .hosts
        .iter()
        .filter(|h| h.name != me)
        .map(|h| (h.name.as_str(), h))
        .collect();
    d.peers.extend(hosts.values().map(|h| h.underlay_address));
    let vnis: BTreeMap<&str, u32> = snapshot
        .networks
        .iter()
        .map(|n| (n.name.as_str(), n.vni))
        .collect();
    for block in &snapshot.blocks {
        // Only networks this host takes part in need routes; only live hosts get them.
        let (Some(&vni), Some(host)) = (
            vnis.get(block.network.as_str()),
            hosts.get(block.host.as_str()),
        ) else {
            continue;
        };
        if d.networks.contains(&vni) {
            d.routes
                .entry((vni, block.block))
                .or_insert_with(|| Route::remote(host.underlay_address.octets(), host.vtep_mac.0));
        }
    }
    Ok(d)
}

/// Counts of what `apply` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// Brings the maps to `want`, touching only entries that differ.
pub fn apply(datapath: &mut Datapath, want: &Desired) -> Result<Changes> {
    let mut c = Changes::default();
    // Add before remove: a route that moves between entries is never missing.
    let have_networks: BTreeSet<u32> = datapath.networks()?.into_iter().collect();
    for vni in want.networks.difference(&have_networks) {
        datapath.add_network(*vni)?;
        c.added += 1;
    }
    let have_peers: BTreeSet<Ipv4Addr> = datapath.peers()?.into_iter().collect();
    for peer in want.peers.difference(&have_peers) {
        datapath.add_peer(*peer)?;
        c.added += 1;
    }
    let have_routes: BTreeMap<(u32, Ipv4Net), Route> = datapath
        .routes()?
        .into_iter()
        .map(|r| ((r.net_id, r.dest), r.route))
        .collect();
    for (key, route) in &want.routes {
        if have_routes.get(key) != Some(route) {
            datapath.set_route(key.0, key.1, *route)?;
            c.added += 1;
        }
    }
    for key in have_routes.keys().filter(|k| !want.routes.contains_key(k)) {
        datapath.remove_route(key.0, key.1)?;
        c.removed += 1;
    }
    for peer in have_peers.difference(&want.peers) {
        datapath.remove_peer(*peer)?;
        c.removed += 1;
    }
    for vni in have_networks.difference(&want.networks) {
        datapath.remove_network(*vni)?;
        c.removed += 1;
    }
    Ok(c)
}
