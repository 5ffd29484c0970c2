//! What the maps should hold, computed from the snapshot, the config and the local
//! endpoints: a pure function, whole or for the keys of changed blocks.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use oxlay_common::{
    l2::{L2Network, MAX_L2_PORTS},
    Endpoint, Peer, Route, DIRECT_NET_ID, PEER_WIREGUARD,
};

use super::snapshot::Snapshot;
use crate::{
    config::Config,
    model::local::LocalEndpoint,
    model::{BlockRecord, Encap},
    net::{Ipv4Net, MacAddr},
};

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// VNIs decapsulation accepts: the static one and those with local endpoints.
    pub networks: BTreeSet<u32>,
    /// Underlay addresses whose VXLAN packets are accepted, and whether packets to and
    /// from them are encrypted (`PEER_WIREGUARD`).
    pub peers: BTreeMap<Ipv4Addr, Peer>,
    pub routes: BTreeMap<(u32, Ipv4Net), Route>,
    /// The local endpoints by their host-side veth's ifindex (what encapsulation checks
    /// a container's packets against).
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// Layer-2 networks' local containers: (network id, MAC) -> host-side veth.
    pub l2_ports: BTreeMap<L2PortKey, u32>,
    /// Layer-2 networks with containers here: parent NIC, VLAN, local ports.
    pub l2_networks: BTreeMap<u32, L2Network>,
}

/// A layer-2 container by its network id and MAC.
pub type L2PortKey = (u32, [u8; 6]);

/// This host as routing sees it.
pub struct Me<'a> {
    pub name: &'a str,
    /// The underlay subnet: direct routing reaches only peers inside it.
    pub underlay_subnet: Ipv4Net,
    /// The `[l2] parent` NIC's ifindex, if this host has one.
    pub l2_parent: Option<u32>,
}

/// How a route write lands: `Set` replaces what a key holds, `Keep` fills only an
/// empty key. `desired` applies writes in a fixed order; the incremental path replays
/// the same writes for the keys a change touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    Set,
    Keep,
}

pub type RouteKey = (u32, Ipv4Net);

impl Desired {
    fn write(&mut self, key: RouteKey, route: Route, how: Write) {
        match how {
            Write::Set => {
                self.routes.insert(key, route);
            }
            Write::Keep => {
                self.routes.entry(key).or_insert(route);
            }
        }
    }
}

/// The writes of a route to a peer's block: direct when asked for and the peer is on
/// our underlay subnet (also entered in the direct table, where received packets'
/// sources are checked), else the network's encapsulation.
fn peer_writes(
    me: &Me,
    vni: u32,
    block: Ipv4Net,
    underlay: Ipv4Addr,
    vtep_mac: MacAddr,
    (direct, encap): (bool, Encap),
) -> Vec<(RouteKey, Route, Write)> {
    if direct && me.underlay_subnet.contains(underlay) {
        let route = Route::direct(underlay.octets());
        // The direct table serves every direct network: entries name theirs.
        vec![
            ((vni, block), route, Write::Set),
            ((DIRECT_NET_ID, block), route.in_network(vni), Write::Set),
        ]
    } else {
        let route = Route::remote(underlay.octets(), vtep_mac.0);
        let route = match encap {
            Encap::Vxlan => route,
            Encap::Gre => route.over_gre(),
        };
        vec![((vni, block), route, Write::Keep)]
    }
}

/// The writes one store block makes, given the networks this host takes part in.
fn block_writes(
    me: &Me,
    snapshot: &Snapshot,
    networks: &BTreeSet<u32>,
    block: &BlockRecord,
) -> Vec<(RouteKey, Route, Write)> {
    // Only networks this host takes part in need routes; only live hosts get them.
    let (Some(net), Some(host)) = (
        snapshot.networks.get(&block.network),
        snapshot
            .hosts
            .get(&block.host)
            .filter(|_| block.host != me.name),
    ) else {
        return Vec::new();
    };
    let mut writes = Vec::new();
    if networks.contains(&net.vni) {
        writes = peer_writes(
            me,
            net.vni,
            block.block,
            host.underlay_address,
            host.vtep_mac,
            // A host from before GRE gets VXLAN (which every host takes).
            (net.direct, if host.gre { net.encap } else { Encap::Vxlan }),
        );
    }
    if net.direct {
        // Every direct network's blocks, near or far, with or without endpoints
        // here, name their network in the direct table: a plain packet from one of
        // them to a local container of another direct network is then known for
        // what it is and dropped, not handed to the host's routing.
        let route = Route::direct(host.underlay_address.octets()).in_network(net.vni);
        writes.push(((DIRECT_NET_ID, block.block), route, Write::Keep));
    }
    writes
}

/// Computes the desired maps for host `me`.
pub fn desired(
    me: &Me,
    config: &Config,
    snapshot: &Snapshot,
    local: &[&LocalEndpoint],
) -> Result<Desired> {
    let base = desired_base(me, config, snapshot, local)?;
    Ok(with_blocks(me, snapshot, &base))
}

/// `base` with the routes of every store block added: the desired maps.
pub fn with_blocks(me: &Me, snapshot: &Snapshot, base: &Desired) -> Desired {
    let mut d = base.clone();
    for block in snapshot.blocks.values() {
        for (key, route, how) in block_writes(me, snapshot, &base.networks, block) {
            d.write(key, route, how);
        }
    }
    d
}

/// What the maps should hold apart from the store's blocks: the networks this host
/// takes part in, the peers, the static peers' routes, the local endpoints and their
/// routes.
/// It changes with the config, the local endpoints, the hosts and the networks, not
/// with blocks.
pub fn desired_base(
    me: &Me,
    config: &Config,
    snapshot: &Snapshot,
    local: &[&LocalEndpoint],
) -> Result<Desired> {
    let mut d = Desired::default();
    let mut direct_vnis = BTreeSet::new();
    if let Some((vni, _)) = config.static_network() {
        d.networks.insert(vni);
        for peer in &config.peers {
            d.peers.insert(peer.underlay_address, Peer::default());
            let mac = peer
                .vtep_mac
                .unwrap_or_else(|| MacAddr::derived(&peer.name));
            let writes = peer_writes(
                me,
                vni,
                peer.pod_subnet,
                peer.underlay_address,
                mac,
                (peer.direct, config.encap),
            );
            for (key, route, how) in writes {
                d.write(key, route, how);
            }
            if peer.direct {
                direct_vnis.insert(vni);
            }
        }
    }
    direct_vnis.extend(
        snapshot
            .networks
            .values()
            .filter(|n| n.direct)
            .map(|n| n.vni),
    );
    for ep in local.iter().filter(|ep| ep.is_l2()) {
        add_l2_endpoint(&mut d, me, ep);
    }
    for ep in local.iter().filter(|ep| !ep.is_l2()) {
        d.networks.insert(ep.vni);
        d.endpoints.insert(ep.host_ifindex, ep.map_entry());
        let route = Route::local(ep.host_ifindex, ep.container_mac.0, ep.host_mac.0);
        let dest = Ipv4Net::new(ep.address, 32)?;
        d.routes.insert((ep.vni, dest), route);
        if direct_vnis.contains(&ep.vni) {
            d.routes
                .insert((DIRECT_NET_ID, dest), route.in_network(ep.vni));
        }
    }
    let others = |name: &str| name != me.name;
    // Both ends must encrypt: a host without WireGuard is reached in plain (a cluster
    // turns encryption on host by host).
    let encrypts = config.wireguard.is_some();
    d.peers.extend(
        snapshot
            .hosts
            .iter()
            .filter(|(name, _)| others(name))
            .map(|(_, h)| {
                let key = h
                    .wireguard
                    .as_ref()
                    .and_then(|w| super::decode_key(&w.public_key));
                let flags = if encrypts && key.is_some() {
                    PEER_WIREGUARD
                } else {
                    0
                };
                (h.underlay_address, Peer { flags, _pad: 0 })
            }),
    );
    Ok(d)
}

/// A layer-2 container: its endpoint entry, its port, and its network's entry (when
/// this host has a parent NIC), which lists it for broadcasts. No route: it is
/// switched by MAC, not routed. The VLAN is the endpoint's own (from the network record
/// it was made from), not the snapshot's, which may not have the network yet.
fn add_l2_endpoint(d: &mut Desired, me: &Me, ep: &LocalEndpoint) {
    d.endpoints.insert(ep.host_ifindex, ep.map_entry());
    d.l2_ports
        .insert((ep.vni, ep.container_mac.0), ep.host_ifindex);
    let (Some(parent), Some(lan)) = (me.l2_parent, ep.lan) else {
        // Its frames are dropped and counted (drop_l2_no_parent).
        return;
    };
    let net = d.l2_networks.entry(ep.vni).or_insert(L2Network {
        parent_ifindex: parent,
        vlan: lan.vlan,
        ..Default::default()
    });
    // The daemon refuses more (see `State::lan_for`); a broadcast reaches these.
    if (net.ports_len as usize) < MAX_L2_PORTS {
        net.ports[net.ports_len as usize] = ep.host_ifindex;
        net.ports_len += 1;
    }
}

/// The routes a change of the block at store key `key` can touch: those its record
/// writes, before (`old`) and after (the snapshot's now).
pub fn block_route_keys(
    me: &Me,
    snapshot: &Snapshot,
    base: &Desired,
    old: Option<&BlockRecord>,
    key: &str,
) -> BTreeSet<RouteKey> {
    old.into_iter()
        .chain(snapshot.blocks.get(key))
        .flat_map(|b| block_writes(me, snapshot, &base.networks, b))
        .map(|(k, _, _)| k)
        .collect()
}

/// The value `key` has in `desired`: the base's, then the writes of every block with
/// that prefix, in the order `desired` makes them. Costs the blocks of one prefix, not
/// the cluster.
pub fn desired_route(me: &Me, snapshot: &Snapshot, base: &Desired, key: RouteKey) -> Option<Route> {
    let mut value = base.routes.get(&key).copied();
    for block_key in snapshot.by_prefix.get(&key.1).into_iter().flatten() {
        let Some(block) = snapshot.blocks.get(block_key) else {
            continue;
        };
        for (k, route, how) in block_writes(me, snapshot, &base.networks, block) {
            if k == key {
                match how {
                    Write::Set => value = Some(route),
                    Write::Keep => {
                        value.get_or_insert(route);
                    }
                }
            }
        }
    }
    value
}
