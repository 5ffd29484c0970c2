//! A container's veth: creating the pair, moving one end into the container's namespace
//! and configuring both ends (addresses, routes, the gateway's neighbour entry).
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_route::neighbour::NeighbourState;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{
    netlink::{delete_link, link_by_index, link_by_name, LinkInfo},
    netns::{in_netns, open_netns},
    MacAddr,
};

/// What attaching a container created.
#[derive(Clone, Debug)]
pub struct EndpointLinks {
    pub host: LinkInfo,
    pub container_ifname: String,
    pub container_mac: MacAddr,
}

/// Which traffic a container sends through an interface.
#[derive(Clone, Copy, Debug)]
pub enum ContainerRoute {
    /// The default route: the container's first interface.
    Default,
    /// Only this subnet: a further interface, on another network.
    Subnet(crate::net::Ipv4Net),
}

/// A layer-2 network's container: on the LAN's subnet, through the LAN's router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lan {
    /// The subnet's prefix length: the container reaches the LAN directly.
    pub prefix_len: u8,
    /// The LAN router (the default route, on a container's first interface).
    pub router: Ipv4Addr,
    /// The network's 802.1Q VLAN on the wire (0: untagged).
    #[serde(default)]
    pub vlan: u16,
}

/// Everything needed to wire a container's interface.
pub struct EndpointSpec {
    pub route: ContainerRoute,
    /// Where to wire it: a name under /run/netns or a path.
    pub netns: String,
    /// What the endpoint is called (its netns, unless the caller names it).
    pub sandbox: String,
    pub host_ifname: String,
    pub container_ifname: String,
    pub address: Ipv4Addr,
    pub mtu: u32,
    pub gateway: Ipv4Addr,
    /// On a layer-2 network (the gateway then serves only the resolver).
    pub lan: Option<Lan>,
}

/// Creates the veth, moves one end into the container and configures both ends:
/// container: address/32, default route via `gateway` (onlink, permanent neighbour on
/// the host side's MAC); host: /32 route and a
/// permanent neighbour for the container.
pub async fn create_endpoint(handle: &Handle, spec: &EndpointSpec) -> Result<EndpointLinks> {
    if link_by_name(handle, &spec.host_ifname).await?.is_some() {
        bail!(
            "interface {} already exists: is the namespace already attached?",
            spec.host_ifname
        );
    }
    let ns_fd = open_netns(&spec.netns)?;
    let peer_tmp = format!("{}p", &spec.host_ifname[..spec.host_ifname.len().min(14)]);
    handle
        .link()
        .add(
            LinkVeth::new(&spec.host_ifname, &peer_tmp)
                .mtu(spec.mtu)
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("cannot create veth {}", spec.host_ifname))?;
    let result = match super::ethtool::tune_endpoint_veth(&spec.host_ifname, &peer_tmp) {
        Ok(()) => wire_endpoint(handle, spec, &peer_tmp, ns_fd).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        // Deleting one end deletes the pair, wherever the other end is.
        if let Ok(Some(host)) = link_by_name(handle, &spec.host_ifname).await {
            let _ = handle.link().del(host.index).execute().await;
        }
    }
    result
}

async fn wire_endpoint(
    handle: &Handle,
    spec: &EndpointSpec,
    peer_tmp: &str,
    ns_fd: OwnedFd,
) -> Result<EndpointLinks> {
    let peer = link_by_name(handle, peer_tmp)
        .await?
        .ok_or_else(|| anyhow!("veth peer {peer_tmp} vanished"))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(peer.index)
                .setns_by_fd(ns_fd.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .context("cannot move the veth into the container's namespace")?;
    let host = link_by_name(handle, &spec.host_ifname)
        .await?
        .ok_or_else(|| anyhow!("veth {} vanished", spec.host_ifname))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(host.index).up().build())
        .execute()
        .await
        .context("cannot bring up the host-side veth")?;

    let container = ContainerSide {
        tmp_name: peer_tmp.to_owned(),
        ifname: spec.container_ifname.clone(),
        address: spec.address,
        gateway: spec.gateway,
        gateway_mac: host.mac,
        mtu: spec.mtu,
        route: spec.route,
        lan: spec.lan,
    };
    let container_mac = in_netns(&spec.netns, move |h| async move {
        configure_container(&h, &container).await
    })
    .await?;

    wire_host_side(handle, host.index, spec.address, container_mac).await?;
    Ok(EndpointLinks {
        host,
        container_ifname: spec.container_ifname.clone(),
        container_mac,
    })
}

/// The host's side of an endpoint: a /32 route to the container through its veth and a
/// permanent neighbour entry, so the host reaches it without ARP.
async fn wire_host_side(
    handle: &Handle,
    host_index: u32,
    address: Ipv4Addr,
    container_mac: MacAddr,
) -> Result<()> {
    handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(address, 32)
                .output_interface(host_index)
                .scope(netlink_packet_route::route::RouteScope::Link)
                .build(),
        )
        .execute()
        .await
        .or_else(|e| match e {
            // Another network's container holds this address on this host already;
            // the host reaches that one, the overlay reaches both.
            rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST => Ok(()),
            e => Err(e),
        })
        .with_context(|| format!("cannot add the host route to {address}"))?;
    handle
        .neighbours()
        .add(host_index, IpAddr::V4(address))
        .link_layer_address(&container_mac.0)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .context("cannot add the neighbour entry for the container")?;
    Ok(())
}

/// A veth for a runtime that moves and configures the container's end itself (Docker):
/// both ends stay in the host namespace, the container's end down, with `mac` if given.
/// The host side is wired as for any endpoint.
pub async fn create_unplaced_veth(
    handle: &Handle,
    host_ifname: &str,
    container_end: &str,
    mtu: u32,
    mac: Option<MacAddr>,
    address: Ipv4Addr,
) -> Result<EndpointLinks> {
    for name in [host_ifname, container_end] {
        if link_by_name(handle, name).await?.is_some() {
            bail!("interface {name} already exists: is the endpoint already created?");
        }
    }
    handle
        .link()
        .add(LinkVeth::new(host_ifname, container_end).mtu(mtu).build())
        .execute()
        .await
        .with_context(|| format!("cannot create veth {host_ifname}"))?;
    let wired = async {
        super::ethtool::tune_endpoint_veth(host_ifname, container_end)?;
        let peer = link_by_name(handle, container_end)
            .await?
            .ok_or_else(|| anyhow!("veth peer {container_end} vanished"))?;
        // The runtime keeps the MTU it finds (Docker does): the overlay's, not 1500.
        let mut container_side = LinkUnspec::new_with_index(peer.index).mtu(mtu);
        if let Some(mac) = mac {
            container_side = container_side.address(mac.0.to_vec());
        }
        handle
            .link()
            .set(container_side.build())
            .execute()
            .await
            .with_context(|| format!("cannot set the MTU and MAC of {container_end}"))?;
        let host = link_by_name(handle, host_ifname)
            .await?
            .ok_or_else(|| anyhow!("veth {host_ifname} vanished"))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(host.index).up().build())
            .execute()
            .await
            .context("cannot bring up the host-side veth")?;
        let container_mac = mac.unwrap_or(peer.mac);
        wire_host_side(handle, host.index, address, container_mac).await?;
        Ok(EndpointLinks {
            host,
            container_ifname: container_end.to_owned(),
            container_mac,
        })
    };
    let result = wired.await;
    if result.is_err() {
        let _ = delete_link(handle, host_ifname).await;
    }
    result
}

/// The container's end of a veth and how to configure it.
struct ContainerSide {
    tmp_name: String,
    ifname: String,
    address: Ipv4Addr,
    gateway: Ipv4Addr,
    gateway_mac: MacAddr,
    mtu: u32,
    route: ContainerRoute,
    lan: Option<Lan>,
}

async fn configure_container(h: &Handle, c: &ContainerSide) -> Result<MacAddr> {
    let (tmp_name, ifname, mtu) = (c.tmp_name.as_str(), c.ifname.as_str(), c.mtu);
    let link = link_by_name(h, tmp_name)
        .await?
        .ok_or_else(|| anyhow!("veth {tmp_name} did not arrive in the namespace"))?;
    if link_by_name(h, ifname).await?.is_some() {
        bail!("the namespace already has an interface {ifname}");
    }
    h.link()
        .set(
            LinkUnspec::new_with_index(link.index)
                .name(ifname.to_owned())
                .mtu(mtu)
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("cannot rename the container's veth to {ifname}"))?;
    // oxlay networks carry IPv4 only, and the datapath drops (and counts) a container's
    // other frames: no IPv6 on the interface, so its link-local chatter is not sent at
    // all. This thread is in the container's namespace, so /proc/sys/net is its own. A
    // kernel without IPv6 has no such file.
    let ipv6 = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&ipv6, "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot write {ipv6}"));
        }
        _ => {}
    }
    h.link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .context("cannot bring up the container's veth")?;
    if let Some(lo) = link_by_name(h, "lo").await? {
        h.link()
            .set(LinkUnspec::new_with_index(lo.index).up().build())
            .execute()
            .await
            .context("cannot bring up lo in the container")?;
    }
    address_and_route(h, link.index, c).await?;
    let link = link_by_index(h, link.index)
        .await?
        .ok_or_else(|| anyhow!("the container's veth vanished"))?;
    Ok(link.mac)
}

/// Gives the container's interface its address, the gateway's permanent neighbour
/// entry and the route through the gateway (default, or only `route`'s subnet). On a
/// layer-2 network: the subnet's address, the gateway for itself alone, and the
/// default route through the LAN's router.
async fn address_and_route(h: &Handle, index: u32, c: &ContainerSide) -> Result<()> {
    let (address, gateway, gateway_mac, route) = (c.address, c.gateway, c.gateway_mac, c.route);
    h.address()
        .add(
            index,
            IpAddr::V4(address),
            c.lan.map_or(32, |l| l.prefix_len),
        )
        .execute()
        .await
        .with_context(|| format!("cannot add address {address} in the container"))?;
    h.neighbours()
        .add(index, IpAddr::V4(gateway))
        .link_layer_address(&gateway_mac.0)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .context("cannot add the gateway neighbour in the container")?;
    if let Some(lan) = c.lan {
        return lan_routes(h, index, c.gateway, lan, route).await;
    }
    let mut via_gateway = RouteMessageBuilder::<Ipv4Addr>::new();
    if let ContainerRoute::Subnet(subnet) = route {
        via_gateway = via_gateway.destination_prefix(subnet.addr(), subnet.prefix_len());
    }
    h.route()
        .add(
            via_gateway
                .gateway(gateway)
                .output_interface(index)
                .onlink()
                .build(),
        )
        .replace()
        .execute()
        .await
        .context("cannot add the route via the gateway in the container")?;
    Ok(())
}

/// A layer-2 container's routes: the gateway (the host's side, the resolver) on the
/// link, and on its first interface the default route through the LAN's router (the
/// subnet's own route comes with the address).
async fn lan_routes(
    h: &Handle,
    index: u32,
    gateway: Ipv4Addr,
    lan: Lan,
    route: ContainerRoute,
) -> Result<()> {
    h.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(gateway, 32)
                .output_interface(index)
                .scope(netlink_packet_route::route::RouteScope::Link)
                .build(),
        )
        .replace()
        .execute()
        .await
        .context("cannot add the route to the gateway in the container")?;
    if let ContainerRoute::Default = route {
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(lan.router)
                    .output_interface(index)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .with_context(|| {
                format!(
                    "cannot add the default route via {} in the container",
                    lan.router
                )
            })?;
    }
    Ok(())
}
