//! The kernel's maps as reconcile writes them: `RoutingMaps` on the loaded datapath.
use std::net::Ipv4Addr;

use anyhow::Result;
use oxlay_common::{l2::L2Network, Endpoint, Peer, Route};

use super::{desired::L2PortKey, RoutingMaps};
use crate::{
    datapath::{Datapath, RouteEntry},
    net::Ipv4Net,
};

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
    fn peers(&self) -> Result<Vec<(Ipv4Addr, Peer)>> {
        Datapath::peers(self)
    }
    fn set_peer(&mut self, underlay: Ipv4Addr, peer: Peer) -> Result<()> {
        Datapath::set_peer(self, underlay, peer)
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
    fn endpoints(&self) -> Result<Vec<(u32, Endpoint)>> {
        Datapath::endpoints(self)
    }
    fn set_endpoint(&mut self, host_ifindex: u32, endpoint: Endpoint) -> Result<()> {
        Datapath::set_endpoint(self, host_ifindex, endpoint)
    }
    fn remove_endpoint(&mut self, host_ifindex: u32) -> Result<()> {
        Datapath::remove_endpoint(self, host_ifindex)
    }
    fn l2_ports(&self) -> Result<Vec<(L2PortKey, u32)>> {
        Datapath::l2_ports(self)
    }
    fn set_l2_port(&mut self, (net_id, mac): L2PortKey, ifindex: u32) -> Result<()> {
        Datapath::set_l2_port(self, net_id, mac, ifindex)
    }
    fn remove_l2_port(&mut self, (net_id, mac): L2PortKey) -> Result<()> {
        Datapath::remove_l2_port(self, net_id, mac)
    }
    fn l2_networks(&self) -> Result<Vec<(u32, L2Network)>> {
        Datapath::l2_networks(self)
    }
    fn set_l2_network(&mut self, net_id: u32, network: L2Network) -> Result<()> {
        Datapath::set_l2_network(self, net_id, network)
    }
    fn remove_l2_network(&mut self, net_id: u32, old: &L2Network) -> Result<()> {
        Datapath::remove_l2_network(self, net_id, old.parent_ifindex, old.vlan)
    }
}
