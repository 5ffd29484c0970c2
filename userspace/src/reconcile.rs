//! Turns what the store and the config say into the datapath's maps, changing only what
//! differs: a route, peer or network that is already right is never touched, so traffic
//! on it never sees a gap.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use oxlay_common::{Route, DIRECT_NET_ID};

use crate::{
    config::Config,
    datapath::{Datapath, RouteEntry},
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

/// This host as routing sees it.
pub struct Me<'a> {
    pub name: &'a str,
    /// The underlay subnet: direct routing reaches only peers inside it.
    pub underlay_subnet: Ipv4Net,
}

impl Desired {
    /// A route to a peer's block: direct when asked for and the peer is on our underlay
    /// subnet (also entered in the direct table, where received packets' sources are
    /// checked), else VXLAN.
    fn peer_route(
        &mut self,
        me: &Me,
        vni: u32,
        block: Ipv4Net,
        underlay: Ipv4Addr,
        vtep_mac: MacAddr,
        direct: bool,
    ) {
        if direct && me.underlay_subnet.contains(underlay) {
            let route = Route::direct(underlay.octets());
            self.routes.insert((vni, block), route);
            // The direct table serves every direct network: entries name theirs.
            self.routes
                .insert((DIRECT_NET_ID, block), route.in_network(vni));
        } else {
            self.routes
                .entry((vni, block))
                .or_insert(Route::remote(underlay.octets(), vtep_mac.0));
        }
    }
}

/// Computes the desired maps for host `me`.
pub fn desired(
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
            d.peers.insert(peer.underlay_address);
            let mac = peer
                .vtep_mac
                .unwrap_or_else(|| MacAddr::derived(&peer.name));
            d.peer_route(
                me,
                vni,
                peer.pod_subnet,
                peer.underlay_address,
                mac,
                peer.direct,
            );
            if peer.direct {
                direct_vnis.insert(vni);
            }
        }
    }
    direct_vnis.extend(snapshot.networks.iter().filter(|n| n.direct).map(|n| n.vni));
    for ep in local {
        d.networks.insert(ep.vni);
        let route = Route::local(ep.host_ifindex, ep.container_mac.0, ep.host_mac.0);
        let dest = Ipv4Net::new(ep.address, 32)?;
        d.routes.insert((ep.vni, dest), route);
        if direct_vnis.contains(&ep.vni) {
            d.routes
                .insert((DIRECT_NET_ID, dest), route.in_network(ep.vni));
        }
    }
    let hosts: BTreeMap<&str, &HostRecord> = snapshot
        .hosts
        .iter()
        .filter(|h| h.name != me.name)
        .map(|h| (h.name.as_str(), h))
        .collect();
    d.peers.extend(hosts.values().map(|h| h.underlay_address));
    let networks: BTreeMap<&str, &NetworkRecord> = snapshot
        .networks
        .iter()
        .map(|n| (n.name.as_str(), n))
        .collect();
    for block in &snapshot.blocks {
        // Only networks this host takes part in need routes; only live hosts get them.
        let (Some(net), Some(host)) = (
            networks.get(block.network.as_str()),
            hosts.get(block.host.as_str()),
        ) else {
            continue;
        };
        if d.networks.contains(&net.vni) {
            d.peer_route(
                me,
                net.vni,
                block.block,
                host.underlay_address,
                host.vtep_mac,
                net.direct,
            );
        }
    }
    Ok(d)
}

/// The maps reconcile writes, behind a trait so that the order of changes and the
/// handling of failures are tested without a kernel.
pub trait RoutingMaps {
    fn networks(&self) -> Result<Vec<u32>>;
    fn add_network(&mut self, vni: u32) -> Result<()>;
    fn remove_network(&mut self, vni: u32) -> Result<()>;
    fn peers(&self) -> Result<Vec<Ipv4Addr>>;
    fn add_peer(&mut self, underlay: Ipv4Addr) -> Result<()>;
    fn remove_peer(&mut self, underlay: Ipv4Addr) -> Result<()>;
    fn routes(&self) -> Result<Vec<RouteEntry>>;
    fn set_route(&mut self, net_id: u32, dest: Ipv4Net, route: Route) -> Result<()>;
    fn remove_route(&mut self, net_id: u32, dest: Ipv4Net) -> Result<()>;
}

impl RoutingMaps for Datapath {
    fn networks(&self) -> Result<Vec<u32>> {
        Datapath::networks(self)
    }
    fn add_network(&mut self, vni: u32) -> Result<()> {
        Datapath::add_network(self, vni)
    }
    fn remove_network(&mut self, vni: u32) -> Result<()> {
        Datapath::remove_network(self, vni)
    }
    fn peers(&self) -> Result<Vec<Ipv4Addr>> {
        Datapath::peers(self)
    }
    fn add_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
        Datapath::add_peer(self, underlay)
    }
    fn remove_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
        Datapath::remove_peer(self, underlay)
    }
    fn routes(&self) -> Result<Vec<RouteEntry>> {
        Datapath::routes(self)
    }
    fn set_route(&mut self, net_id: u32, dest: Ipv4Net, route: Route) -> Result<()> {
        Datapath::set_route(self, net_id, dest, route)
    }
    fn remove_route(&mut self, net_id: u32, dest: Ipv4Net) -> Result<()> {
        Datapath::remove_route(self, net_id, dest)
    }
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

/// Brings the maps to `want`, touching only entries that differ. Stale entries go
/// first, so a full map has room for the new ones; a failed entry is recorded and the
/// rest carry on (the caller retries the failed ones later). A route that changes
/// value is overwritten in place, never removed and re-added. Fails only when the maps
/// cannot be read.
pub fn apply(maps: &mut impl RoutingMaps, want: &Desired) -> Result<Changes> {
    let mut c = Changes::default();
    let have_networks: BTreeSet<u32> = maps.networks()?.into_iter().collect();
    let have_peers: BTreeSet<Ipv4Addr> = maps.peers()?.into_iter().collect();
    let have_routes: BTreeMap<(u32, Ipv4Net), Route> = maps
        .routes()?
        .into_iter()
        .map(|r| ((r.net_id, r.dest), r.route))
        .collect();
    for key in have_routes.keys().filter(|k| !want.routes.contains_key(k)) {
        c.record(maps.remove_route(key.0, key.1), true);
    }
    for peer in have_peers.difference(&want.peers) {
        c.record(maps.remove_peer(*peer), true);
    }
    for vni in have_networks.difference(&want.networks) {
        c.record(maps.remove_network(*vni), true);
    }
    // Networks and peers before the routes that lead to them.
    for vni in want.networks.difference(&have_networks) {
        c.record(maps.add_network(*vni), false);
    }
    for peer in want.peers.difference(&have_peers) {
        c.record(maps.add_peer(*peer), false);
    }
    for (key, route) in &want.routes {
        if have_routes.get(key) != Some(route) {
            c.record(maps.set_route(key.0, key.1, *route), false);
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        "node_name = \"me\"\nunderlay_interface = \"eth0\"\n"
            .parse()
            .unwrap()
    }

    fn me() -> Me<'static> {
        Me {
            name: "me",
            underlay_subnet: "192.168.50.0/24".parse().unwrap(),
        }
    }

    fn host(name: &str, last: u8) -> HostRecord {
        HostRecord {
            name: name.into(),
            underlay_address: Ipv4Addr::new(192, 168, 50, last),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, last]),
        }
    }

    fn network(name: &str, vni: u32) -> NetworkRecord {
        NetworkRecord {
            name: name.into(),
            vni,
            subnet: "10.10.0.0/16".parse().unwrap(),
            block_prefix: 24,
            labels: Default::default(),
            direct: false,
            removing: false,
        }
    }

    fn block(network: &str, cidr: &str, host: &str) -> BlockRecord {
        BlockRecord {
            network: network.into(),
            block: cidr.parse().unwrap(),
            host: host.into(),
        }
    }

    fn local(vni: u32, addr: &str) -> LocalEndpoint {
        LocalEndpoint {
            network: Some("blue".into()),
            vni,
            netns: "c1".into(),
            address: addr.parse().unwrap(),
            host_ifname: "oxl1".into(),
            host_ifindex: 9,
            host_mac: MacAddr([2, 9, 9, 9, 9, 9]),
            container_ifname: "eth0".into(),
            container_mac: MacAddr([2, 1, 1, 1, 1, 1]),
            mtu: 1450,
            routes_only: None,
        }
    }

    #[test]
    fn only_networks_with_local_endpoints_are_accepted_and_routed() {
        let snapshot = Snapshot {
            hosts: vec![host("me", 11), host("b", 12)],
            networks: vec![network("blue", 100), network("red", 200)],
            blocks: vec![
                block("blue", "10.10.0.0/24", "me"),
                block("blue", "10.10.1.0/24", "b"),
                block("red", "10.10.1.0/24", "b"),
                // A block of a host that is not (or no longer) registered: no route.
                block("blue", "10.10.2.0/24", "gone"),
            ],
        };
        let ep = local(100, "10.10.0.1");
        let d = desired(&me(), &config(), &snapshot, &[&ep]).unwrap();
        assert_eq!(
            d.networks,
            BTreeSet::from([100]),
            "red has no endpoint here"
        );
        assert_eq!(d.peers, BTreeSet::from([Ipv4Addr::new(192, 168, 50, 12)]));
        let keys: Vec<String> = d.routes.keys().map(|(v, n)| format!("{v} {n}")).collect();
        assert_eq!(keys, ["100 10.10.0.1/32", "100 10.10.1.0/24"]);
        assert_eq!(
            d.routes[&(100, "10.10.1.0/24".parse().unwrap())],
            Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12])
        );
        // Direct networks route peers on our underlay subnet unencapsulated, others by VXLAN.
        let mut snapshot = snapshot;
        snapshot.networks[0].direct = true;
        snapshot.hosts.push(HostRecord {
            underlay_address: Ipv4Addr::new(192, 168, 60, 9),
            ..host("far", 9)
        });
        snapshot.blocks.push(block("blue", "10.10.9.0/24", "far"));
        let d = desired(&me(), &config(), &snapshot, &[&ep]).unwrap();
        let near = Route::direct([192, 168, 50, 12]);
        assert_eq!(d.routes[&(100, "10.10.1.0/24".parse().unwrap())], near);
        assert_eq!(
            d.routes[&(DIRECT_NET_ID, "10.10.1.0/24".parse().unwrap())],
            near.in_network(100),
            "direct-table entries name their network"
        );
        assert_eq!(
            d.routes[&(100, "10.10.9.0/24".parse().unwrap())].kind,
            oxlay_common::RouteKind::Remote as u8
        );
        assert!(!d
            .routes
            .contains_key(&(DIRECT_NET_ID, "10.10.9.0/24".parse().unwrap())));
        assert!(d
            .routes
            .contains_key(&(DIRECT_NET_ID, "10.10.0.1/32".parse().unwrap())));
        assert!(!d.networks.contains(&DIRECT_NET_ID));
        snapshot.networks[0].direct = false;

        // Without local endpoints: nothing accepted, nothing routed, peers still known.
        let d = desired(&me(), &config(), &snapshot, &[]).unwrap();
        assert!(d.networks.is_empty() && d.routes.is_empty());
    }

    /// Maps in memory with a route capacity, like a BPF map's max_entries, and keys
    /// that refuse to be written; every call is logged in order.
    #[derive(Default)]
    struct FakeMaps {
        networks: BTreeSet<u32>,
        peers: BTreeSet<Ipv4Addr>,
        routes: BTreeMap<(u32, Ipv4Net), Route>,
        route_capacity: usize,
        refuse: BTreeSet<(u32, Ipv4Net)>,
        log: Vec<String>,
    }

    impl RoutingMaps for FakeMaps {
        fn networks(&self) -> Result<Vec<u32>> {
            Ok(self.networks.iter().copied().collect())
        }
        fn add_network(&mut self, vni: u32) -> Result<()> {
            self.log.push(format!("+net {vni}"));
            self.networks.insert(vni);
            Ok(())
        }
        fn remove_network(&mut self, vni: u32) -> Result<()> {
            self.log.push(format!("-net {vni}"));
            self.networks.remove(&vni);
            Ok(())
        }
        fn peers(&self) -> Result<Vec<Ipv4Addr>> {
            Ok(self.peers.iter().copied().collect())
        }
        fn add_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
            self.log.push(format!("+peer {underlay}"));
            self.peers.insert(underlay);
            Ok(())
        }
        fn remove_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
            self.log.push(format!("-peer {underlay}"));
            self.peers.remove(&underlay);
            Ok(())
        }
        fn routes(&self) -> Result<Vec<RouteEntry>> {
            Ok(self
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
            self.log.push(format!("+route {net_id} {dest}"));
            let key = (net_id, dest);
            if self.refuse.contains(&key) {
                anyhow::bail!("route {net_id} {dest} refused");
            }
            if !self.routes.contains_key(&key) && self.routes.len() >= self.route_capacity {
                anyhow::bail!("route map full at {dest}");
            }
            self.routes.insert(key, route);
            Ok(())
        }
        fn remove_route(&mut self, net_id: u32, dest: Ipv4Net) -> Result<()> {
            self.log.push(format!("-route {net_id} {dest}"));
            self.routes.remove(&(net_id, dest));
            Ok(())
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn apply_removes_before_adding_so_a_full_map_takes_the_new_routes() {
        let peer = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12]);
        let mut maps = FakeMaps {
            route_capacity: 2,
            ..Default::default()
        };
        maps.routes.insert((100, net("10.10.1.0/24")), peer);
        maps.routes.insert((100, net("10.10.2.0/24")), peer);
        // The host of 10.10.2.0/24 left and 10.10.3.0/24 arrived: the map is full.
        let want = Desired {
            networks: BTreeSet::from([100]),
            peers: BTreeSet::from([Ipv4Addr::new(192, 168, 50, 12)]),
            routes: BTreeMap::from([
                ((100, net("10.10.1.0/24")), peer),
                ((100, net("10.10.3.0/24")), peer),
            ]),
        };
        let c = apply(&mut maps, &want).unwrap();
        assert_eq!(c.failed, Vec::<String>::new());
        assert_eq!((c.added, c.removed), (3, 1));
        assert_eq!(
            maps.routes.keys().collect::<Vec<_>>(),
            want.routes.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            maps.log,
            [
                "-route 100 10.10.2.0/24",
                "+net 100",
                "+peer 192.168.50.12",
                "+route 100 10.10.3.0/24"
            ]
        );
        // Nothing differs: nothing is touched.
        maps.log.clear();
        let c = apply(&mut maps, &want).unwrap();
        assert_eq!((c.added, c.removed, c.failed.len()), (0, 0, 0));
        assert!(maps.log.is_empty(), "{:?}", maps.log);
    }

    #[test]
    fn apply_carries_on_past_a_failed_entry_and_reports_it() {
        let peer = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12]);
        let mut maps = FakeMaps {
            route_capacity: 10,
            refuse: BTreeSet::from([(100, net("10.10.1.0/24"))]),
            ..Default::default()
        };
        let want = Desired {
            networks: BTreeSet::from([100]),
            peers: BTreeSet::new(),
            routes: BTreeMap::from([
                ((100, net("10.10.1.0/24")), peer),
                ((100, net("10.10.2.0/24")), peer),
                ((100, net("10.10.3.0/24")), peer),
            ]),
        };
        let c = apply(&mut maps, &want).unwrap();
        assert_eq!(c.failed.len(), 1, "{:?}", c.failed);
        assert!(c.failed[0].contains("10.10.1.0/24"), "{:?}", c.failed);
        assert_eq!(
            maps.routes.len(),
            2,
            "the routes after the failed one are in"
        );
        // Once the map takes it, a retry adds only the missing entry.
        maps.refuse.clear();
        maps.log.clear();
        let c = apply(&mut maps, &want).unwrap();
        assert_eq!((c.added, c.failed.len()), (1, 0));
        assert_eq!(maps.log, ["+route 100 10.10.1.0/24"]);
    }
}
