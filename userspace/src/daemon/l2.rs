//! This host's part in layer-2 networks: the `[l2] parent` NIC found and its program
//! attached at start, and what a new layer-2 endpoint needs (room on the network, the
//! NIC's MTU, the LAN's router).
use anyhow::{anyhow, bail, Result};
use oxlay_common::l2::MAX_L2_PORTS;

use super::{wiring::NO_PARENT, State};
use crate::{
    config::Config,
    datapath::Datapath,
    model::NetworkRecord,
    net::{netlink, veth::Lan},
};

/// Finds the `[l2] parent` NIC and attaches the layer-2 program to it (replacing what
/// a previous daemon attached there). Its MTU is returned: layer-2 containers get it.
pub(super) async fn attach_parent(
    handle: &rtnetlink::Handle,
    config: &Config,
    datapath: &mut Datapath,
) -> Result<Option<u32>> {
    let Some(parent) = &config.l2.parent else {
        return Ok(None);
    };
    let link = netlink::link_by_name(handle, parent).await?.ok_or_else(|| {
        anyhow!("l2.parent {parent:?} does not exist in this network namespace: check `ip link` and the config")
    })?;
    datapath.attach_l2_parent(&link.name, link.index)?;
    Ok(Some(link.mtu))
}

impl State {
    /// A new endpoint's MTU on `net`: the parent NIC's on a layer-2 network (no
    /// encapsulation), else the overlay's.
    pub(crate) fn mtu_on(&self, net: &NetworkRecord) -> u32 {
        match (&net.l2, self.l2_mtu) {
            (Some(_), Some(mtu)) => mtu,
            _ => self.container_mtu,
        }
    }

    /// How a new endpoint on `net` meets the LAN (`None` on an overlay), once this host
    /// can take one more: a parent NIC, and fewer than [`MAX_L2_PORTS`] containers of
    /// the network here (a broadcast is copied to each of them).
    pub(crate) fn lan_for(&self, net: &NetworkRecord) -> Result<Option<Lan>> {
        if net.l2.is_none() {
            return Ok(None);
        }
        if self.datapath.l2_parent().is_none() {
            bail!("network {} is a layer-2 network, and {NO_PARENT}", net.name);
        }
        let here = self
            .endpoints
            .values()
            .filter(|e| e.network.as_deref() == Some(net.name.as_str()))
            .count();
        if here >= MAX_L2_PORTS {
            bail!(
                "layer-2 network {} has {here} containers on this host, the most one host takes (a broadcast is copied to each): put this one on another host",
                net.name
            );
        }
        Ok(lan_of(net))
    }
}

/// How a container of `net` meets the LAN: `None` on an overlay.
pub(crate) fn lan_of(net: &NetworkRecord) -> Option<Lan> {
    net.l2.map(|l2| Lan {
        prefix_len: net.subnet.prefix_len(),
        router: l2.gateway,
    })
}
