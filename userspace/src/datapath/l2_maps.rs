//! The maps of layer-2 networks: which local container has which MAC, each network's
//! parent NIC, VLAN and local containers, and which network a (parent, VLAN) is.
use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use oxlay_common::{
    l2::{L2Key, L2Network, L2Vlan},
    map_names,
};

use super::{maps::ignore_missing, Datapath};

impl Datapath {
    /// Network `net_id` switches frames for MAC `mac` to host-side veth `ifindex`.
    pub fn set_l2_port(&mut self, net_id: u32, mac: [u8; 6], ifindex: u32) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, L2Key, u32> = self.map_mut(map_names::L2_FDB)?;
        let key = L2Key {
            net_id,
            mac,
            _pad: [0; 2],
        };
        map.insert(key, ifindex, 0)
            .context("cannot add the container's MAC to the layer-2 map")
    }

    /// Every (network id, MAC) -> host-side veth entry.
    pub fn l2_ports(&self) -> Result<Vec<(crate::reconcile::L2PortKey, u32)>> {
        let map: BpfHashMap<&MapData, L2Key, u32> = self.map(map_names::L2_FDB)?;
        map.iter()
            .map(|kv| {
                let (key, ifindex) = kv.context("cannot read the layer-2 map")?;
                Ok(((key.net_id, key.mac), ifindex))
            })
            .collect()
    }

    /// Every layer-2 network entry.
    pub fn l2_networks(&self) -> Result<Vec<(u32, L2Network)>> {
        let map: BpfHashMap<&MapData, u32, L2Network> = self.map(map_names::L2_NETWORKS)?;
        map.iter()
            .map(|kv| kv.context("cannot read the layer-2 networks map"))
            .collect()
    }

    pub fn remove_l2_port(&mut self, net_id: u32, mac: [u8; 6]) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, L2Key, u32> = self.map_mut(map_names::L2_FDB)?;
        let key = L2Key {
            net_id,
            mac,
            _pad: [0; 2],
        };
        ignore_missing(map.remove(&key)).context("cannot remove a MAC from the layer-2 map")
    }

    /// Layer-2 network `net_id` on this host, and the (parent, VLAN) that is it: the
    /// VLAN first, taken back if the network cannot be written, so that the two maps
    /// never disagree with what reconcile believes it wrote.
    pub fn set_l2_network(&mut self, net_id: u32, network: L2Network) -> Result<()> {
        let vlan = L2Vlan {
            ifindex: network.parent_ifindex,
            vlan: network.vlan,
            _pad: 0,
        };
        let mut vlans: BpfHashMap<&mut MapData, L2Vlan, u32> = self.map_mut(map_names::L2_VLANS)?;
        let existed = vlans.get(&vlan, 0).is_ok();
        vlans
            .insert(vlan, net_id, 0)
            .context("cannot add the layer-2 network's VLAN")?;
        let mut nets: BpfHashMap<&mut MapData, u32, L2Network> =
            self.map_mut(map_names::L2_NETWORKS)?;
        if let Err(e) = nets.insert(net_id, network, 0) {
            // A network changed in place keeps the VLAN key it had.
            if !existed {
                let mut vlans: BpfHashMap<&mut MapData, L2Vlan, u32> =
                    self.map_mut(map_names::L2_VLANS)?;
                let _ = vlans.remove(&vlan);
            }
            return Err(e).context("cannot add the layer-2 network");
        }
        Ok(())
    }

    pub fn remove_l2_network(&mut self, net_id: u32, parent_ifindex: u32, vlan: u16) -> Result<()> {
        let key = L2Vlan {
            ifindex: parent_ifindex,
            vlan,
            _pad: 0,
        };
        let mut vlans: BpfHashMap<&mut MapData, L2Vlan, u32> = self.map_mut(map_names::L2_VLANS)?;
        ignore_missing(vlans.remove(&key)).context("cannot remove a layer-2 VLAN")?;
        let mut nets: BpfHashMap<&mut MapData, u32, L2Network> =
            self.map_mut(map_names::L2_NETWORKS)?;
        ignore_missing(nets.remove(&net_id)).context("cannot remove a layer-2 network")
    }
}
