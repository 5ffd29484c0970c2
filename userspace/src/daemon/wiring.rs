//! The steps of wiring an endpoint: creating its veth, attaching the program to the
//! host's end, and unwiring it again.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use rtnetlink::Handle;

use crate::{
    datapath::Datapath,
    model::local::{host_ifname, LocalEndpoint},
    net::MacAddr,
    net::{
        ethtool, netlink, netns,
        veth::{self, EndpointSpec},
    },
};

/// Creates the interfaces and attaches the program.
pub async fn attach(
    handle: &Handle,
    datapath: &mut Datapath,
    network: Option<String>,
    vni: u32,
    spec: EndpointSpec,
) -> Result<LocalEndpoint> {
    let links = veth::create_endpoint(handle, &spec).await?;
    let record = LocalEndpoint {
        network,
        vni,
        netns: spec.sandbox.clone(),
        address: spec.address,
        host_ifname: links.host.name.clone(),
        host_ifindex: links.host.index,
        host_mac: links.host.mac,
        container_ifname: links.container_ifname.clone(),
        container_mac: links.container_mac,
        mtu: spec.mtu,
        routes_only: match spec.route {
            veth::ContainerRoute::Default => None,
            veth::ContainerRoute::Subnet(subnet) => Some(subnet),
        },
        published: Vec::new(),
        lan: spec.lan,
    };
    finish_attach(handle, datapath, record).await
}

/// An endpoint whose container end a runtime places (see `attach_unplaced`).
pub struct UnplacedSpec {
    pub network: String,
    pub vni: u32,
    /// Names the endpoint (and derives its host-side interface name).
    pub sandbox: String,
    pub address: Ipv4Addr,
    /// The runtime's MAC for the container's end; the kernel's otherwise.
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// On a layer-2 network: how it meets the LAN.
    pub lan: Option<veth::Lan>,
}

/// Like `attach`, for a runtime that moves the container's end of the veth into its
/// sandbox and configures it itself (Docker). `sandbox` names the endpoint.
pub async fn attach_unplaced(
    handle: &Handle,
    datapath: &mut Datapath,
    spec: UnplacedSpec,
) -> Result<LocalEndpoint> {
    let UnplacedSpec {
        network,
        vni,
        sandbox,
        address,
        mac,
        mtu,
        lan,
    } = spec;
    let host_ifname = host_ifname(&sandbox, Some(&network));
    // The container's end keeps this name until the runtime moves it.
    let container_end = format!("{host_ifname}c");
    let links =
        veth::create_unplaced_veth(handle, &host_ifname, &container_end, mtu, mac, address).await?;
    let record = LocalEndpoint {
        network: Some(network),
        vni,
        netns: sandbox,
        address,
        host_ifname: links.host.name.clone(),
        host_ifindex: links.host.index,
        host_mac: links.host.mac,
        container_ifname: links.container_ifname.clone(),
        container_mac: links.container_mac,
        mtu,
        // The runtime sets the container's routes (Docker: from the Join answer).
        routes_only: None,
        published: Vec::new(),
        lan,
    };
    finish_attach(handle, datapath, record).await
}

/// Attaches the container-egress program to the host-side veth and, on a layer-2
/// network, makes the parent NIC take the container's MAC; on failure, removes what
/// was made. The endpoint's map entries come from reconciling (the only map writer)
/// once the caller records it.
async fn finish_attach(
    handle: &Handle,
    datapath: &mut Datapath,
    record: LocalEndpoint,
) -> Result<LocalEndpoint> {
    let attached = async {
        datapath.attach_endpoint(&record.host_ifname)?;
        if record.is_l2() {
            let parent = datapath.l2_parent().context(NO_PARENT)?;
            netlink::add_unicast_filter(handle, parent, record.container_mac).await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = attached.await {
        let _ = detach(handle, datapath, &record).await;
        return Err(e);
    }
    Ok(record)
}

/// Why a layer-2 endpoint cannot be made on this host.
pub const NO_PARENT: &str =
    "this host has no layer-2 parent NIC: set `[l2] parent = \"eth1\"` (the NIC on the network's LAN) in its config and restart the daemon";

/// Takes over an endpoint whose interfaces already exist: attaches the program (its
/// map entries, pinned by the previous daemon, are kept until reconciling) and makes
/// sure a layer-2 container's MAC is in the parent NIC's filter.
pub async fn adopt(handle: &Handle, datapath: &mut Datapath, ep: &LocalEndpoint) -> Result<()> {
    datapath.attach_endpoint(&ep.host_ifname)?;
    match datapath.l2_parent() {
        Some(parent) if ep.is_l2() => {
            netlink::add_unicast_filter(handle, parent, ep.container_mac).await?;
        }
        // Its frames are dropped and counted (drop_l2_no_parent) until the config
        // names the parent again; the rest of the host carries on.
        None if ep.is_l2() => {
            log::warn!("layer-2 endpoint {} {}: {NO_PARENT}", ep.netns, ep.address)
        }
        _ => {}
    }
    Ok(())
}

/// Gives an adopted endpoint (perhaps made by an older oxlay) the offloads a new one
/// gets (see `ethtool.rs`). Without them traffic still flows, only uncoalesced, so a
/// failure is logged, not returned.
pub async fn tune_adopted(ep: &LocalEndpoint) {
    let container_end = ep.container_ifname.clone();
    let tuned = async {
        netns::in_netns(&ep.netns, move |_| async move {
            ethtool::turn_gro_on(&container_end)
        })
        .await?;
        ethtool::turn_tso_off(&ep.host_ifname)
    };
    if let Err(e) = tuned.await {
        log::warn!(
            "endpoint {} {}: {e:#}; its traffic flows without receive coalescing",
            ep.netns,
            ep.address
        );
    }
}

/// Removes what `attach` made: the program and the veth (both ends). Parts already
/// gone are skipped, so this can finish a detach that was interrupted. The caller
/// removes the endpoint's map entries first (by reconciling without it).
pub async fn detach(
    handle: &Handle,
    datapath: &mut Datapath,
    record: &LocalEndpoint,
) -> Result<()> {
    datapath.detach_endpoint(&record.host_ifname);
    let unfiltered = match datapath.l2_parent().filter(|_| record.is_l2()) {
        Some(parent) => netlink::remove_unicast_filter(handle, parent, record.container_mac).await,
        None => Ok(()),
    };
    // The veth goes whatever became of the MAC: no container keeps an interface.
    netlink::delete_link(handle, &record.host_ifname).await?;
    unfiltered
}
