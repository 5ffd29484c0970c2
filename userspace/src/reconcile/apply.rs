//! Writing the difference between what the maps hold and what they should hold,
//! removals first, through the `RoutingMaps` trait (the kernel's maps, or a fake in
//! tests) and a shadow of what was last written.
use std::net::Ipv4Addr;

use anyhow::Result;
use oxlay_common::{Endpoint, Peer, Route};

use oxlay_common::l2::L2Network;

use super::desired::{Desired, L2PortKey, RouteKey};
use crate::{datapath::RouteEntry, net::Ipv4Net};

/// The maps reconcile writes, behind a trait so that the order of changes and the
/// handling of failures are tested without a kernel.
pub trait RoutingMaps {
    fn networks(&self) -> Result<Vec<u32>>;
    fn add_network(&mut self, vni: u32) -> Result<()>;
    fn remove_network(&mut self, vni: u32) -> Result<()>;
    fn peers(&self) -> Result<Vec<(Ipv4Addr, Peer)>>;
    fn set_peer(&mut self, underlay: Ipv4Addr, peer: Peer) -> Result<()>;
    fn remove_peer(&mut self, underlay: Ipv4Addr) -> Result<()>;
    fn routes(&self) -> Result<Vec<RouteEntry>>;
    fn set_route(&mut self, net_id: u32, dest: Ipv4Net, route: Route) -> Result<()>;
    fn remove_route(&mut self, net_id: u32, dest: Ipv4Net) -> Result<()>;
    fn endpoints(&self) -> Result<Vec<(u32, Endpoint)>>;
    fn set_endpoint(&mut self, host_ifindex: u32, endpoint: Endpoint) -> Result<()>;
    fn remove_endpoint(&mut self, host_ifindex: u32) -> Result<()>;
    fn l2_ports(&self) -> Result<Vec<(L2PortKey, u32)>>;
    fn set_l2_port(&mut self, key: L2PortKey, ifindex: u32) -> Result<()>;
    fn remove_l2_port(&mut self, key: L2PortKey) -> Result<()>;
    fn l2_networks(&self) -> Result<Vec<(u32, L2Network)>>;
    fn set_l2_network(&mut self, net_id: u32, network: L2Network) -> Result<()>;
    /// `old` is what the entry holds (its parent and VLAN key the VLAN map).
    fn remove_l2_network(&mut self, net_id: u32, old: &L2Network) -> Result<()>;

    /// Everything the maps hold now (a shadow lends its own copy).
    fn current(&self) -> Result<std::borrow::Cow<'_, Desired>> {
        read_shadow(self).map(std::borrow::Cow::Owned)
    }
}

/// The kernel maps seen through what was last written to them: reads come from the
/// shadow (no map dump), writes go to the kernel and, when they succeed, to the
/// shadow. Valid while nothing else writes those entries; a drift check or a failure
/// starts again from the kernel's own contents.
pub struct Shadowed<'a, M: RoutingMaps> {
    pub maps: &'a mut M,
    pub shadow: &'a mut Desired,
}

impl<M: RoutingMaps> RoutingMaps for Shadowed<'_, M> {
    fn current(&self) -> Result<std::borrow::Cow<'_, Desired>> {
        Ok(std::borrow::Cow::Borrowed(self.shadow))
    }
    fn networks(&self) -> Result<Vec<u32>> {
        Ok(self.shadow.networks.iter().copied().collect())
    }
    fn add_network(&mut self, vni: u32) -> Result<()> {
        self.maps.add_network(vni)?;
        self.shadow.networks.insert(vni);
        Ok(())
    }
    fn remove_network(&mut self, vni: u32) -> Result<()> {
        self.maps.remove_network(vni)?;
        self.shadow.networks.remove(&vni);
        Ok(())
    }
    fn peers(&self) -> Result<Vec<(Ipv4Addr, Peer)>> {
        Ok(self.shadow.peers.iter().map(|(a, p)| (*a, *p)).collect())
    }
    fn set_peer(&mut self, underlay: Ipv4Addr, peer: Peer) -> Result<()> {
        self.maps.set_peer(underlay, peer)?;
        self.shadow.peers.insert(underlay, peer);
        Ok(())
    }
    fn remove_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
        self.maps.remove_peer(underlay)?;
        self.shadow.peers.remove(&underlay);
        Ok(())
    }
    fn routes(&self) -> Result<Vec<RouteEntry>> {
        Ok(self
            .shadow
            .routes
            .iter()
            .map(|(&(net_id, dest), &route)| RouteEntry {
                net_id,
                dest,
                route,
            })
            .collect())
    }
    fn set_route(&mut self, net_id: u32, dest: Ipv4Net, route: Route) -> Result<()> {
        self.maps.set_route(net_id, dest, route)?;
        self.shadow.routes.insert((net_id, dest), route);
        Ok(())
    }
    fn remove_route(&mut self, net_id: u32, dest: Ipv4Net) -> Result<()> {
        self.maps.remove_route(net_id, dest)?;
        self.shadow.routes.remove(&(net_id, dest));
        Ok(())
    }
    fn endpoints(&self) -> Result<Vec<(u32, Endpoint)>> {
        Ok(self
            .shadow
            .endpoints
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
    fn set_endpoint(&mut self, host_ifindex: u32, endpoint: Endpoint) -> Result<()> {
        self.maps.set_endpoint(host_ifindex, endpoint)?;
        self.shadow.endpoints.insert(host_ifindex, endpoint);
        Ok(())
    }
    fn remove_endpoint(&mut self, host_ifindex: u32) -> Result<()> {
        self.maps.remove_endpoint(host_ifindex)?;
        self.shadow.endpoints.remove(&host_ifindex);
        Ok(())
    }
    fn l2_ports(&self) -> Result<Vec<(L2PortKey, u32)>> {
        Ok(self.shadow.l2_ports.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_l2_port(&mut self, key: L2PortKey, ifindex: u32) -> Result<()> {
        self.maps.set_l2_port(key, ifindex)?;
        self.shadow.l2_ports.insert(key, ifindex);
        Ok(())
    }
    fn remove_l2_port(&mut self, key: L2PortKey) -> Result<()> {
        self.maps.remove_l2_port(key)?;
        self.shadow.l2_ports.remove(&key);
        Ok(())
    }
    fn l2_networks(&self) -> Result<Vec<(u32, L2Network)>> {
        Ok(self
            .shadow
            .l2_networks
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
    fn set_l2_network(&mut self, net_id: u32, network: L2Network) -> Result<()> {
        self.maps.set_l2_network(net_id, network)?;
        self.shadow.l2_networks.insert(net_id, network);
        Ok(())
    }
    fn remove_l2_network(&mut self, net_id: u32, old: &L2Network) -> Result<()> {
        self.maps.remove_l2_network(net_id, old)?;
        self.shadow.l2_networks.remove(&net_id);
        Ok(())
    }
}

/// The shadow of maps as they are now (read once from the kernel).
pub fn read_shadow<M: RoutingMaps + ?Sized>(maps: &M) -> Result<Desired> {
    Ok(Desired {
        networks: maps.networks()?.into_iter().collect(),
        peers: maps.peers()?.into_iter().collect(),
        routes: maps
            .routes()?
            .into_iter()
            .map(|r| ((r.net_id, r.dest), r.route))
            .collect(),
        endpoints: maps.endpoints()?.into_iter().collect(),
        l2_ports: maps.l2_ports()?.into_iter().collect(),
        l2_networks: maps.l2_networks()?.into_iter().collect(),
    })
}

/// Brings the given route keys to the given values (`None`: absent), touching only
/// those that differ; for a change that touches few keys. Failures as in [`apply`].
pub fn apply_routes(
    maps: &mut impl RoutingMaps,
    want: &[(RouteKey, Option<Route>)],
) -> Result<Changes> {
    let writes: Vec<(RouteKey, Option<Route>)> = {
        let have = maps.current()?;
        want.iter()
            .filter(|(key, route)| have.routes.get(key) != route.as_ref())
            .copied()
            .collect()
    };
    let mut c = Changes::default();
    for ((net_id, dest), route) in writes {
        match route {
            Some(route) => c.record(maps.set_route(net_id, dest, route), false),
            None => c.record(maps.remove_route(net_id, dest), true),
        }
    }
    Ok(c)
}

/// What `apply` changed, and the entries it could not change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    /// One message per entry that failed (e.g. a full map); the others were applied.
    pub failed: Vec<String>,
}

impl Changes {
    fn record(&mut self, result: Result<()>, removal: bool) {
        match result {
            Ok(()) if removal => self.removed += 1,
            Ok(()) => self.added += 1,
            Err(e) => self.failed.push(format!("{e:#}")),
        }
    }
}

/// The elements of `a` not in `b`.
fn minus<T: Ord + Copy>(
    a: &std::collections::BTreeSet<T>,
    b: &std::collections::BTreeSet<T>,
) -> Vec<T> {
    a.difference(b).copied().collect()
}

/// What `apply` will write: every entry that differs between the maps and `want`.
struct Plan {
    stale_routes: Vec<RouteKey>,
    stale_peers: Vec<Ipv4Addr>,
    stale_networks: Vec<u32>,
    stale_endpoints: Vec<u32>,
    new_networks: Vec<u32>,
    /// New peers, and those whose entry changes (they start or stop encrypting).
    new_peers: Vec<(Ipv4Addr, Peer)>,
    new_endpoints: Vec<(u32, Endpoint)>,
    new_routes: Vec<(RouteKey, Route)>,
    stale_l2_ports: Vec<L2PortKey>,
    /// Networks gone, or whose parent or VLAN changed (their VLAN entry goes too).
    stale_l2_networks: Vec<(u32, L2Network)>,
    new_l2_networks: Vec<(u32, L2Network)>,
    new_l2_ports: Vec<(L2PortKey, u32)>,
}

impl Plan {
    fn new(have: &Desired, want: &Desired) -> Self {
        Plan {
            stale_routes: have
                .routes
                .keys()
                .filter(|k| !want.routes.contains_key(k))
                .copied()
                .collect(),
            stale_peers: have
                .peers
                .keys()
                .filter(|k| !want.peers.contains_key(k))
                .copied()
                .collect(),
            stale_networks: minus(&have.networks, &want.networks),
            stale_endpoints: have
                .endpoints
                .keys()
                .filter(|k| !want.endpoints.contains_key(k))
                .copied()
                .collect(),
            new_networks: minus(&want.networks, &have.networks),
            new_peers: changed(&have.peers, &want.peers),
            new_endpoints: want
                .endpoints
                .iter()
                .filter(|(k, e)| have.endpoints.get(k) != Some(e))
                .map(|(k, e)| (*k, *e))
                .collect(),
            new_routes: changed(&have.routes, &want.routes),
            stale_l2_ports: have
                .l2_ports
                .keys()
                .filter(|k| !want.l2_ports.contains_key(k))
                .copied()
                .collect(),
            stale_l2_networks: have
                .l2_networks
                .iter()
                .filter(|(id, old)| {
                    want.l2_networks.get(id).is_none_or(|new| {
                        (new.parent_ifindex, new.vlan) != (old.parent_ifindex, old.vlan)
                    })
                })
                .map(|(id, old)| (*id, *old))
                .collect(),
            new_l2_networks: changed(&have.l2_networks, &want.l2_networks),
            new_l2_ports: changed(&have.l2_ports, &want.l2_ports),
        }
    }
}

/// The entries of `want` that `have` lacks or holds with another value.
fn changed<K: Ord + Copy, V: PartialEq + Copy>(
    have: &std::collections::BTreeMap<K, V>,
    want: &std::collections::BTreeMap<K, V>,
) -> Vec<(K, V)> {
    want.iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// Brings the maps to `want`, touching only entries that differ. Stale entries go
/// first, so a full map has room for the new ones; a failed entry is recorded and the
/// rest carry on (the caller retries the failed ones later). A route or endpoint that
/// changes value is overwritten in place, never removed and re-added. Fails only when
/// the maps cannot be read.
pub fn apply(maps: &mut impl RoutingMaps, want: &Desired) -> Result<Changes> {
    // What differs is decided first (from a borrowed shadow: no copy), written after.
    let plan = Plan::new(&*maps.current()?, want);
    let mut c = Changes::default();
    for (net_id, dest) in plan.stale_routes {
        c.record(maps.remove_route(net_id, dest), true);
    }
    for key in plan.stale_l2_ports {
        c.record(maps.remove_l2_port(key), true);
    }
    for (net_id, old) in plan.stale_l2_networks {
        c.record(maps.remove_l2_network(net_id, &old), true);
    }
    for ifindex in plan.stale_endpoints {
        c.record(maps.remove_endpoint(ifindex), true);
    }
    for peer in plan.stale_peers {
        c.record(maps.remove_peer(peer), true);
    }
    for vni in plan.stale_networks {
        c.record(maps.remove_network(vni), true);
    }
    // Networks, peers and endpoints before the routes that lead to them.
    for vni in plan.new_networks {
        c.record(maps.add_network(vni), false);
    }
    for (underlay, peer) in plan.new_peers {
        c.record(maps.set_peer(underlay, peer), false);
    }
    for (ifindex, endpoint) in plan.new_endpoints {
        c.record(maps.set_endpoint(ifindex, endpoint), false);
    }
    for ((net_id, dest), route) in plan.new_routes {
        c.record(maps.set_route(net_id, dest, route), false);
    }
    // A network before the ports a broadcast of it reaches.
    for (net_id, network) in plan.new_l2_networks {
        c.record(maps.set_l2_network(net_id, network), false);
    }
    for (key, ifindex) in plan.new_l2_ports {
        c.record(maps.set_l2_port(key, ifindex), false);
    }
    Ok(c)
}
