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
    model::{self, BlockRecord, HostRecord, NetworkRecord},
    net::{Ipv4Net, MacAddr},
    store::WatchEvent,
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
    by_prefix: BTreeMap<Ipv4Net, BTreeSet<String>>,
}

impl Snapshot {
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
/// sources are checked), else VXLAN.
fn peer_writes(
    me: &Me,
    vni: u32,
    block: Ipv4Net,
    underlay: Ipv4Addr,
    vtep_mac: MacAddr,
    direct: bool,
) -> Vec<(RouteKey, Route, Write)> {
    if direct && me.underlay_subnet.contains(underlay) {
        let route = Route::direct(underlay.octets());
        // The direct table serves every direct network: entries name theirs.
        vec![
            ((vni, block), route, Write::Set),
            ((DIRECT_NET_ID, block), route.in_network(vni), Write::Set),
        ]
    } else {
        vec![(
            (vni, block),
            Route::remote(underlay.octets(), vtep_mac.0),
            Write::Keep,
        )]
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
            net.direct,
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
/// takes part in, the peers, the static peers' routes and the local endpoints' routes.
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
            d.peers.insert(peer.underlay_address);
            let mac = peer
                .vtep_mac
                .unwrap_or_else(|| MacAddr::derived(&peer.name));
            let writes = peer_writes(
                me,
                vni,
                peer.pod_subnet,
                peer.underlay_address,
                mac,
                peer.direct,
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
    let others = |name: &str| name != me.name;
    d.peers.extend(
        snapshot
            .hosts
            .iter()
            .filter(|(name, _)| others(name))
            .map(|(_, h)| h.underlay_address),
    );
    Ok(d)
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

    /// Everything the maps hold now (a shadow lends its own copy).
    fn current(&self) -> Result<std::borrow::Cow<'_, Desired>> {
        read_shadow(self).map(std::borrow::Cow::Owned)
    }
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
    fn peers(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self.shadow.peers.iter().copied().collect())
    }
    fn add_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
        self.maps.add_peer(underlay)?;
        self.shadow.peers.insert(underlay);
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

/// Brings the maps to `want`, touching only entries that differ. Stale entries go
/// first, so a full map has room for the new ones; a failed entry is recorded and the
/// rest carry on (the caller retries the failed ones later). A route that changes
/// value is overwritten in place, never removed and re-added. Fails only when the maps
/// cannot be read.
pub fn apply(maps: &mut impl RoutingMaps, want: &Desired) -> Result<Changes> {
    // What differs is decided first (from a borrowed shadow: no copy), written after.
    let (stale_routes, stale_peers, stale_networks, new_networks, new_peers, new_routes) = {
        let have = maps.current()?;
        let stale_routes: Vec<(u32, Ipv4Net)> = have
            .routes
            .keys()
            .filter(|k| !want.routes.contains_key(k))
            .copied()
            .collect();
        let stale_peers: Vec<Ipv4Addr> = have.peers.difference(&want.peers).copied().collect();
        let stale_networks: Vec<u32> = have.networks.difference(&want.networks).copied().collect();
        let new_networks: Vec<u32> = want.networks.difference(&have.networks).copied().collect();
        let new_peers: Vec<Ipv4Addr> = want.peers.difference(&have.peers).copied().collect();
        let new_routes: Vec<((u32, Ipv4Net), Route)> = want
            .routes
            .iter()
            .filter(|(k, r)| have.routes.get(k) != Some(r))
            .map(|(k, r)| (*k, *r))
            .collect();
        (
            stale_routes,
            stale_peers,
            stale_networks,
            new_networks,
            new_peers,
            new_routes,
        )
    };
    let mut c = Changes::default();
    for (net_id, dest) in stale_routes {
        c.record(maps.remove_route(net_id, dest), true);
    }
    for peer in stale_peers {
        c.record(maps.remove_peer(peer), true);
    }
    for vni in stale_networks {
        c.record(maps.remove_network(vni), true);
    }
    // Networks and peers before the routes that lead to them.
    for vni in new_networks {
        c.record(maps.add_network(vni), false);
    }
    for peer in new_peers {
        c.record(maps.add_peer(peer), false);
    }
    for ((net_id, dest), route) in new_routes {
        c.record(maps.set_route(net_id, dest, route), false);
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
        let snapshot = Snapshot::from_records(
            vec![host("me", 11), host("b", 12)],
            vec![network("blue", 100), network("red", 200)],
            vec![
                block("blue", "10.10.0.0/24", "me"),
                block("blue", "10.10.1.0/24", "b"),
                block("red", "10.10.1.0/24", "b"),
                // A block of a host that is not (or no longer) registered: no route.
                block("blue", "10.10.2.0/24", "gone"),
            ],
        );
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
        snapshot.networks.get_mut("blue").unwrap().direct = true;
        let far = HostRecord {
            underlay_address: Ipv4Addr::new(192, 168, 60, 9),
            ..host("far", 9)
        };
        snapshot.hosts.insert("far".into(), far);
        let far_block = block("blue", "10.10.9.0/24", "far");
        snapshot
            .blocks
            .insert(model::block_key("blue", far_block.block), far_block);
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
        // The far block is reached by VXLAN, but the direct table names its network
        // (a plain packet from it is known to be blue's).
        assert_eq!(
            d.routes[&(DIRECT_NET_ID, "10.10.9.0/24".parse().unwrap())],
            Route::direct([192, 168, 60, 9]).in_network(100)
        );
        assert!(d
            .routes
            .contains_key(&(DIRECT_NET_ID, "10.10.0.1/32".parse().unwrap())));
        assert!(!d.networks.contains(&DIRECT_NET_ID));
        snapshot.networks.get_mut("blue").unwrap().direct = false;

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

    /// The direct table names the network of every direct network's blocks, also of
    /// networks without endpoints here (so their packets are recognised and dropped);
    /// only networks with endpoints here get routes.
    #[test]
    fn every_direct_network_is_known_in_the_direct_table() {
        let mut blue = network("blue", 100);
        blue.direct = true;
        let mut green = network("green", 200);
        green.direct = true;
        green.subnet = "10.20.0.0/16".parse().unwrap();
        let snapshot = Snapshot::from_records(
            vec![host("me", 11), host("b", 12)],
            vec![blue, green],
            vec![
                block("blue", "10.10.1.0/24", "b"),
                block("green", "10.20.1.0/24", "b"),
            ],
        );
        let ep = local(100, "10.10.0.1");
        let d = desired(&me(), &config(), &snapshot, &[&ep]).unwrap();
        let green_block: Ipv4Net = "10.20.1.0/24".parse().unwrap();
        assert_eq!(
            d.routes[&(DIRECT_NET_ID, green_block)],
            Route::direct([192, 168, 50, 12]).in_network(200)
        );
        assert!(
            !d.routes.contains_key(&(200, green_block)),
            "no endpoint on green here"
        );
        assert!(!d.networks.contains(&200));
    }

    /// Watch events change the snapshot one key at a time; keys routing does not
    /// read are not tracked, and a record that does not decode is left out.
    #[test]
    fn the_snapshot_follows_watch_events() {
        use crate::store::KeyValue;
        let put = |key: &str, value: String| {
            WatchEvent::Put(KeyValue {
                key: key.into(),
                value,
                mod_revision: 1,
                lease: 0,
            })
        };
        let mut s = Snapshot::default();
        let b = block("blue", "10.10.1.0/24", "b");
        let key = model::block_key("blue", b.block);
        let event = put(&key, serde_json::to_string(&b).unwrap());
        assert!(s.apply(&event).unwrap());
        assert!(
            !s.apply(&event).unwrap(),
            "the same record again changes nothing"
        );
        assert_eq!(s.blocks[&key], b);
        let ep = put("/oxlay/endpoints/blue/10.10.1.2", "{}".into());
        assert!(!Snapshot::tracks(ep.key()));
        assert!(!s.apply(&ep).unwrap());
        let bad = put(
            &format!("{}x", model::NETWORKS),
            r#"{"name":"x","vni":5,"subnet":"10.0.0.0/24","block_prefix":8}"#.into(),
        );
        assert!(s.apply(&bad).is_err());
        assert!(s.networks.is_empty());
        let gone = WatchEvent::Delete {
            key: key.clone(),
            revision: 2,
        };
        assert!(s.apply(&gone).unwrap());
        assert!(s.blocks.is_empty());
    }

    /// Through the shadow, a change reads nothing from the kernel and writes only what
    /// differs; the shadow then equals what was asked for.
    #[test]
    fn shadowed_apply_writes_only_the_change() {
        let peer = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12]);
        let mut maps = FakeMaps {
            route_capacity: 100,
            ..Default::default()
        };
        let mut want = Desired::default();
        want.networks.insert(100);
        for i in 1..50u8 {
            want.routes
                .insert((100, net(&format!("10.10.{i}.0/24"))), peer);
        }
        apply(&mut maps, &want).unwrap();
        let mut shadow = read_shadow(&maps).unwrap();
        assert_eq!(shadow, want);
        maps.log.clear();
        want.routes.insert((100, net("10.10.200.0/24")), peer);
        want.routes.remove(&(100, net("10.10.1.0/24")));
        let c = apply(
            &mut Shadowed {
                maps: &mut maps,
                shadow: &mut shadow,
            },
            &want,
        )
        .unwrap();
        assert_eq!((c.added, c.removed), (1, 1));
        assert_eq!(
            maps.log,
            ["-route 100 10.10.1.0/24", "+route 100 10.10.200.0/24"]
        );
        assert_eq!(shadow, want);
    }

    /// Block events applied key by key (`block_route_keys`, `desired_route`) give the
    /// same maps as computing everything anew, over a long run of random adds, moves
    /// and removals in overlapping, direct and unrelated networks.
    #[test]
    fn block_changes_key_by_key_match_a_full_recompute() {
        use crate::store::KeyValue;
        let mut blue = network("blue", 100);
        blue.direct = true;
        let red = network("red", 200); // same subnet as blue, not direct
                                       // Direct, no endpoint here, and overlapping blue (the model refuses that; the
                                       // maps must still come out the same either way): the direct table's writes of
                                       // blue and green then compete for the same keys.
        let mut green = network("green", 300);
        green.direct = true;
        let far = HostRecord {
            underlay_address: Ipv4Addr::new(192, 168, 60, 9),
            ..host("far", 9)
        };
        let mut snapshot = Snapshot::from_records(
            vec![host("me", 11), host("b", 12), host("c", 13), far],
            vec![blue, red, green],
            vec![],
        );
        let locals = [local(100, "10.10.0.1"), local(200, "10.10.0.2")];
        let local: Vec<&LocalEndpoint> = locals.iter().collect();
        // A static network with blue's VNI and a peer whose subnet is one of the blocks:
        // the base competes with the blocks for that key.
        let config: Config = "node_name = \"me\"\nunderlay_interface = \"eth0\"\nvni = 100\npod_subnet = \"10.30.0.0/24\"\n[[peers]]\nname = \"p\"\nunderlay_address = \"192.168.50.20\"\npod_subnet = \"10.10.1.0/24\"\n"
            .parse()
            .unwrap();
        let base = desired_base(&me(), &config, &snapshot, &local).unwrap();
        let mut want = with_blocks(&me(), &snapshot, &base);
        let mut seed: u64 = 42;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for step in 0..600 {
            let network = ["blue", "red", "green"][next(3) as usize];
            let cidr = format!("10.10.{}.0/24", next(6));
            let block = block(
                network,
                &cidr,
                ["me", "b", "c", "far", "gone"][next(5) as usize],
            );
            let key = model::block_key(network, block.block);
            let event = if next(3) == 0 {
                WatchEvent::Delete {
                    key: key.clone(),
                    revision: step,
                }
            } else {
                WatchEvent::Put(KeyValue {
                    key: key.clone(),
                    value: serde_json::to_string(&block).unwrap(),
                    mod_revision: step,
                    lease: 0,
                })
            };
            let old = snapshot.blocks.get(&key).cloned();
            snapshot.apply(&event).unwrap();
            for route_key in block_route_keys(&me(), &snapshot, &base, old.as_ref(), &key) {
                match desired_route(&me(), &snapshot, &base, route_key) {
                    Some(route) => want.routes.insert(route_key, route),
                    None => want.routes.remove(&route_key),
                };
            }
            let full = desired(&me(), &config, &snapshot, &local).unwrap();
            assert_eq!(want, full, "step {step}: {event:?}");
        }
        assert!(
            want.routes.len() > 5,
            "the run exercised few routes: {:?}",
            want.routes
        );
    }
}
