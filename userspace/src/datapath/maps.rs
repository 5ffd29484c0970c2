//! Typed access to the pinned maps: config, networks, peers, routes, endpoints and
//! counters.
use std::net::Ipv4Addr;

use anyhow::{anyhow, Context, Result};
use aya::maps::{
    lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap,
};
use oxlay_common::{
    map_names, CounterInfo, CounterValue, DatapathConfig, Endpoint, Network, NetworkTraffic, Peer,
    Route, RouteDest, COUNTERS,
};

use super::*;
use crate::net::Ipv4Net;

/// A route as stored in the route map, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub net_id: u32,
    pub dest: Ipv4Net,
    pub route: Route,
}

impl Datapath {
    pub fn set_config(&mut self, config: DatapathConfig) -> Result<()> {
        let mut map: Array<&mut MapData, DatapathConfig> = self.map_mut(map_names::CONFIG)?;
        map.set(0, config, 0)
            .context("cannot write the datapath config map")
    }

    pub fn add_network(&mut self, vni: u32) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Network> = self.map_mut(map_names::NETWORKS)?;
        map.insert(
            vni,
            Network {
                net_id: vni,
                _pad: 0,
            },
            0,
        )
        .with_context(|| format!("cannot add network {vni}"))
    }

    pub fn remove_network(&mut self, vni: u32) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Network> = self.map_mut(map_names::NETWORKS)?;
        ignore_missing(map.remove(&vni)).with_context(|| format!("cannot remove network {vni}"))?;
        // Its traffic goes with it (a network made again under this VNI starts at 0).
        let mut traffic: PerCpuHashMap<&mut MapData, u32, NetworkTraffic> =
            self.map_mut(map_names::NETWORK_TRAFFIC)?;
        ignore_missing(traffic.remove(&vni))
            .with_context(|| format!("cannot remove network {vni}'s traffic counters"))
    }

    /// VNIs whose packets decapsulation accepts.
    pub fn networks(&self) -> Result<Vec<u32>> {
        let map: BpfHashMap<&MapData, u32, Network> = self.map(map_names::NETWORKS)?;
        map.keys().map(|k| Ok(k?)).collect()
    }

    pub fn remove_peer(&mut self, underlay: Ipv4Addr) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, [u8; 4], Peer> = self.map_mut(map_names::PEERS)?;
        ignore_missing(map.remove(&underlay.octets()))
            .with_context(|| format!("cannot remove peer {underlay}"))
    }

    pub fn set_peer(&mut self, underlay: Ipv4Addr, peer: Peer) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, [u8; 4], Peer> = self.map_mut(map_names::PEERS)?;
        map.insert(underlay.octets(), peer, 0)
            .with_context(|| format!("cannot add peer {underlay}"))
    }

    pub fn peers(&self) -> Result<Vec<(Ipv4Addr, Peer)>> {
        let map: BpfHashMap<&MapData, [u8; 4], Peer> = self.map(map_names::PEERS)?;
        map.iter()
            .map(|kv| kv.map(|(k, v)| (Ipv4Addr::from(k), v)).map_err(Into::into))
            .collect()
    }

    pub fn set_route(&mut self, net_id: u32, dest: Ipv4Net, route: Route) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, RouteDest, Route> = self.map_mut(map_names::ROUTES)?;
        map.insert(&route_key(net_id, dest), route, 0)
            .with_context(|| format!("cannot add route to {dest} in network {net_id}"))
    }

    pub fn remove_route(&mut self, net_id: u32, dest: Ipv4Net) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, RouteDest, Route> = self.map_mut(map_names::ROUTES)?;
        // A route already gone counts as removed.
        ignore_missing(map.remove(&route_key(net_id, dest)))
            .with_context(|| format!("cannot remove route to {dest} in network {net_id}"))
    }

    /// What the programs' lookup of `addr` in network `net_id` finds (longest prefix).
    pub fn route_lookup(&self, net_id: u32, addr: Ipv4Addr) -> Result<Option<Route>> {
        let map: LpmTrie<&MapData, RouteDest, Route> = self.map(map_names::ROUTES)?;
        let key = Key::new(64, RouteDest::new(net_id, addr.octets()));
        match map.get(&key, 0) {
            Ok(route) => Ok(Some(route)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("cannot look a route up"),
        }
    }

    pub fn routes(&self) -> Result<Vec<RouteEntry>> {
        let map: LpmTrie<&MapData, RouteDest, Route> = self.map(map_names::ROUTES)?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (key, route) = item?;
            let data = key.data();
            let net_id = u32::from_be_bytes(data.net);
            let dest = Ipv4Net::new(Ipv4Addr::from(data.addr), (key.prefix_len() - 32) as u8)?;
            out.push(RouteEntry {
                net_id,
                dest,
                route,
            });
        }
        out.sort_by_key(|r| (r.net_id, r.dest.addr(), r.dest.prefix_len()));
        Ok(out)
    }

    pub fn set_endpoint(&mut self, host_ifindex: u32, endpoint: Endpoint) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Endpoint> =
            self.map_mut(map_names::ENDPOINTS)?;
        map.insert(host_ifindex, endpoint, 0)
            .context("cannot add the endpoint to the endpoint map")
    }

    /// The endpoint map: host-side veth ifindex -> endpoint.
    pub fn endpoints(&self) -> Result<Vec<(u32, Endpoint)>> {
        let map: BpfHashMap<&MapData, u32, Endpoint> = self.map(map_names::ENDPOINTS)?;
        map.iter()
            .map(|kv| kv.context("cannot read the endpoint map"))
            .collect()
    }

    pub fn remove_endpoint(&mut self, host_ifindex: u32) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, Endpoint> =
            self.map_mut(map_names::ENDPOINTS)?;
        ignore_missing(map.remove(&host_ifindex))
            .context("cannot remove the endpoint from the endpoint map")
    }

    /// Tells the programs what `oxlay monitor` listeners want reported.
    pub fn set_monitor(&mut self, switch: oxlay_common::monitor::MonitorConfig) -> Result<()> {
        let mut map: Array<&mut MapData, oxlay_common::monitor::MonitorConfig> =
            self.map_mut(map_names::MONITOR)?;
        map.set(0, switch, 0)
            .context("cannot write the monitor switch map")
    }

    /// The ring buffer of monitor events, taken out (it has one reader).
    pub fn take_events(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or_else(|| anyhow!("the monitor's ring buffer was taken already"))?;
        aya::maps::RingBuf::try_from(map).context("map OXLAY_EVENTS is not a ring buffer")
    }

    /// Every counter summed over CPUs, in table order.
    pub fn counters(&self) -> Result<Vec<(&'static CounterInfo, CounterValue)>> {
        let map: PerCpuArray<&MapData, CounterValue> = self.map(map_names::COUNTERS)?;
        COUNTERS
            .iter()
            .map(|info| {
                let per_cpu = map.get(&(info.counter as u32), 0)?;
                let mut sum = CounterValue::default();
                per_cpu.iter().for_each(|v| sum += *v);
                Ok((info, sum))
            })
            .collect()
    }

    /// Each overlay network's traffic (by VNI) summed over CPUs, in VNI order; a
    /// network without traffic yet is absent.
    pub fn network_traffic(&self) -> Result<Vec<(u32, NetworkTraffic)>> {
        let map: PerCpuHashMap<&MapData, u32, NetworkTraffic> =
            self.map(map_names::NETWORK_TRAFFIC)?;
        let mut all = map
            .iter()
            .map(|item| {
                let (vni, per_cpu) = item?;
                let mut sum = NetworkTraffic::default();
                per_cpu.iter().for_each(|v| sum += *v);
                Ok((vni, sum))
            })
            .collect::<Result<Vec<_>>>()?;
        all.sort_by_key(|(vni, _)| *vni);
        Ok(all)
    }

    pub(super) fn map<'a, T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>>(
        &'a self,
        name: &str,
    ) -> Result<T> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }

    pub(super) fn map_mut<'a, T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>>(
        &'a mut self,
        name: &str,
    ) -> Result<T> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }
}

/// A removal of something already gone is not an error.
/// A removal of a key that is not there succeeded. aya reports it as `KeyNotFound` or,
/// for deletes, as the syscall's ENOENT.
pub(super) fn ignore_missing(
    r: Result<(), aya::maps::MapError>,
) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

pub(super) fn route_key(net_id: u32, dest: Ipv4Net) -> Key<RouteDest> {
    Key::new(
        RouteDest::prefix_len(dest.prefix_len()),
        RouteDest::new(net_id, dest.addr().octets()),
    )
}
