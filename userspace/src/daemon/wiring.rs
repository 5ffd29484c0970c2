//! The steps of wiring an endpoint: creating its veth, attaching the program to the
//! host's end, and unwiring it again.
use std::net::Ipv4Addr;

use anyhow::Result;
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
    };
    finish_attach(handle, datapath, record).await
}

/// Attaches the container-egress program to the host-side veth; on failure, removes
/// what was made. The endpoint's map entries come from reconciling (the only map
/// writer) once the caller records it.
async fn finish_attach(
    handle: &Handle,
    datapath: &mut Datapath,
    record: LocalEndpoint,
) -> Result<LocalEndpoint> {
    if let Err(e) = datapath.attach_endpoint(&record.host_ifname) {
        let _ = detach(handle, datapath, &record).await;
        return Err(e);
    }
    Ok(record)
}

/// Takes over an endpoint whose interfaces already exist: attaches the program (its
/// map entries, pinned by the previous daemon, are kept until reconciling).
pub fn adopt(datapath: &mut Datapath, ep: &LocalEndpoint) -> Result<()> {
    datapath.attach_endpoint(&ep.host_ifname)
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
    netlink::delete_link(handle, &record.host_ifname).await
}
