//! Shared fixtures for reconcile's tests: records, local endpoints, and maps in memory.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use oxlay_common::{l2::L2Network, Endpoint, Peer, Route, DIRECT_NET_ID};

use super::*;
use crate::{
    config::Config,
    datapath::RouteEntry,
    model::{self, local::LocalEndpoint, BlockRecord, HostRecord, NetworkRecord},
    net::{Ipv4Net, MacAddr},
    store::WatchEvent,
};

mod apply;
mod desired;
mod wireguard;

fn config() -> Config {
    "node_name = \"me\"\nunderlay_interface = \"eth0\"\n"
        .parse()
        .unwrap()
}

fn me() -> Me<'static> {
    Me {
        name: "me",
        underlay_subnet: "192.168.50.0/24".parse().unwrap(),
        l2_parent: None,
    }
}

fn host(name: &str, last: u8) -> HostRecord {
    HostRecord {
        name: name.into(),
        underlay_address: Ipv4Addr::new(192, 168, 50, last),
        vtep_mac: MacAddr([2, 0, 0, 0, 0, last]),
        gre: true,
        wireguard: None,
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
        egress: Default::default(),
        encap: Default::default(),
        l2: None,
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
        lan: None,
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
        published: Vec::new(),
    }
}

/// Maps in memory with a route capacity, like a BPF map's max_entries, and keys
/// that refuse to be written; every call is logged in order.
#[derive(Default)]
struct FakeMaps {
    networks: BTreeSet<u32>,
    peers: BTreeMap<Ipv4Addr, Peer>,
    routes: BTreeMap<(u32, Ipv4Net), Route>,
    endpoints: BTreeMap<u32, Endpoint>,
    l2_ports: BTreeMap<L2PortKey, u32>,
    l2_networks: BTreeMap<u32, L2Network>,
    route_capacity: usize,
    refuse: BTreeSet<(u32, Ipv4Net)>,
    log: Vec<String>,
}

impl RoutingMaps for FakeMaps {
    fn l2_ports(&self) -> Result<Vec<(L2PortKey, u32)>> {
        Ok(self.l2_ports.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_l2_port(&mut self, key: L2PortKey, ifindex: u32) -> Result<()> {
        self.log.push(format!("+l2port {} {ifindex}", key.0));
        self.l2_ports.insert(key, ifindex);
        Ok(())
    }
    fn remove_l2_port(&mut self, key: L2PortKey) -> Result<()> {
        self.log.push(format!("-l2port {}", key.0));
        self.l2_ports.remove(&key);
        Ok(())
    }
    fn l2_networks(&self) -> Result<Vec<(u32, L2Network)>> {
        Ok(self.l2_networks.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_l2_network(&mut self, net_id: u32, network: L2Network) -> Result<()> {
        self.log
            .push(format!("+l2net {net_id} vlan {}", network.vlan));
        self.l2_networks.insert(net_id, network);
        Ok(())
    }
    fn remove_l2_network(&mut self, net_id: u32, old: &L2Network) -> Result<()> {
        self.log.push(format!("-l2net {net_id} vlan {}", old.vlan));
        self.l2_networks.remove(&net_id);
        Ok(())
    }
    fn endpoints(&self) -> Result<Vec<(u32, Endpoint)>> {
        Ok(self.endpoints.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_endpoint(&mut self, host_ifindex: u32, endpoint: Endpoint) -> Result<()> {
        self.log.push(format!("+endpoint {host_ifindex}"));
        self.endpoints.insert(host_ifindex, endpoint);
        Ok(())
    }
    fn remove_endpoint(&mut self, host_ifindex: u32) -> Result<()> {
        self.log.push(format!("-endpoint {host_ifindex}"));
        self.endpoints.remove(&host_ifindex);
        Ok(())
    }
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
    fn peers(&self) -> Result<Vec<(Ipv4Addr, Peer)>> {
        Ok(self.peers.iter().map(|(a, p)| (*a, *p)).collect())
    }
    fn set_peer(&mut self, underlay: Ipv4Addr, peer: Peer) -> Result<()> {
        self.log.push(format!("+peer {underlay}"));
        self.peers.insert(underlay, peer);
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
