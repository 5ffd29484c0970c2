//! This host's part in layer-2 networks: the `[l2] parent` NIC found and its program
//! attached at start (and taken off a NIC an earlier config named), what oxlay did to
//! the NIC undone at uninstall, and what a new layer-2 endpoint needs (room on the
//! network, the NIC's MTU, the LAN's router).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use log::warn;
use oxlay_common::l2::MAX_L2_PORTS;
use serde::{Deserialize, Serialize};

use super::{wiring::NO_PARENT, State};
use crate::{
    config::Config,
    datapath::Datapath,
    model::NetworkRecord,
    net::{netlink, netlink::LinkInfo, veth::Lan},
};

/// What oxlay did to the parent NIC, kept beside the API socket, for the next daemon
/// (when the config names another NIC, or none) and for uninstall to undo.
#[derive(Debug, Serialize, Deserialize)]
struct ParentRecord {
    name: String,
    /// A clsact qdisc oxlay added (kernels before TCX).
    clsact_added: bool,
}

fn record_path(config: &Config) -> PathBuf {
    config.socket_path().with_extension("l2parent.json")
}

fn read_record(path: &Path) -> Option<ParentRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text)
        .inspect_err(|e| warn!("{} is not valid ({e}); ignored", path.display()))
        .ok()
}

/// The `[l2] parent` NIC, looked up before anything is attached (a wrong name then
/// changes nothing on the host).
pub(super) async fn find_parent(
    handle: &rtnetlink::Handle,
    config: &Config,
) -> Result<Option<LinkInfo>> {
    let Some(parent) = &config.l2.parent else {
        return Ok(None);
    };
    let link = netlink::link_by_name(handle, parent).await?.ok_or_else(|| {
        anyhow!("l2.parent {parent:?} does not exist in this network namespace: check `ip link` and the config")
    })?;
    Ok(Some(link))
}

/// This host's parent NIC at start: its MTU (layer-2 containers get it), and the
/// ifindex of the NIC an earlier config named, if it changed (its containers' MACs
/// leave that NIC's filter as they are adopted).
pub(super) struct ParentAtStart {
    pub(super) mtu: Option<u32>,
    pub(super) old_ifindex: Option<u32>,
}

/// Attaches the layer-2 program to `parent` (replacing what a previous daemon attached
/// there), after taking it off a NIC an earlier config named, with the clsact oxlay
/// added there.
pub(super) async fn attach_parent(
    handle: &rtnetlink::Handle,
    config: &Config,
    datapath: &mut Datapath,
    parent: Option<LinkInfo>,
) -> Result<ParentAtStart> {
    let path = record_path(config);
    let old = read_record(&path);
    let moved = old
        .as_ref()
        .filter(|o| Some(&o.name) != parent.as_ref().map(|l| &l.name));
    let old_ifindex = match moved {
        Some(old) => leave_old_parent(handle, config, datapath, old).await,
        None => None,
    };
    let Some(link) = parent else {
        std::fs::remove_file(&path).ok();
        return Ok(ParentAtStart {
            mtu: None,
            old_ifindex,
        });
    };
    // Recorded before the program is attached: a start that fails after this leaves
    // a record that says what to undo. Only the daemon that added the qdisc saw it
    // missing: an earlier record's word stands.
    let added = datapath.add_clsact_for_l2(&link.name);
    let clsact_added = added || old.is_some_and(|o| o.name == link.name && o.clsact_added);
    let record = ParentRecord {
        name: link.name.clone(),
        clsact_added,
    };
    std::fs::write(&path, serde_json::to_vec(&record)?)?;
    datapath.attach_l2_parent(&link.name, link.index)?;
    Ok(ParentAtStart {
        mtu: Some(link.mtu),
        old_ifindex,
    })
}

/// Takes oxlay's program (and the clsact it added) off a NIC that is no longer the
/// parent; its ifindex, for the containers' MACs to leave its filter. Failures are
/// logged: they must not keep the daemon from starting (nothing could uninstall it).
async fn leave_old_parent(
    handle: &rtnetlink::Handle,
    config: &Config,
    datapath: &Datapath,
    old: &ParentRecord,
) -> Option<u32> {
    warn!("the layer-2 parent was {}: taking oxlay off it", old.name);
    // Now the underlay (roles swapped): its program and qdisc are the overlay's.
    if old.name == config.underlay_interface {
        return None;
    }
    datapath.detach_l2_program(&old.name);
    let link = match netlink::link_by_name(handle, &old.name).await {
        Ok(Some(link)) => link,
        Ok(None) => return None,
        Err(e) => {
            warn!("the old layer-2 parent {}: {e:#}", old.name);
            return None;
        }
    };
    if old.clsact_added {
        if let Err(e) = netlink::delete_clsact(handle, link.index).await {
            warn!("the old layer-2 parent {}: {e:#}", old.name);
        }
    }
    Some(link.index)
}

/// Uninstall, after the programs are detached: takes away the clsact oxlay added to
/// the parent NIC, and the record.
pub(super) async fn restore_parent(handle: &rtnetlink::Handle, config: &Config) -> Result<()> {
    let path = record_path(config);
    if let Some(record) = read_record(&path).filter(|r| r.clsact_added) {
        if let Some(link) = netlink::link_by_name(handle, &record.name).await? {
            netlink::delete_clsact(handle, link.index).await?;
        }
    }
    std::fs::remove_file(&path).ok();
    Ok(())
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
        vlan: l2.vlan,
    })
}
