//! rtnetlink plumbing: opening a handle, looking up links and addresses, deleting links,
//! the host's own addresses on lo.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressScope},
    link::{LinkAttribute, LinkMessage},
};
use rtnetlink::Handle;

use crate::net::MacAddr;

/// A link as oxlay needs to know it.
#[derive(Clone, Debug)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    /// The link's alias (`ip link set ... alias`), which marks oxlay's own devices.
    pub alias: Option<String>,
}

/// Opens a netlink connection in the calling thread's network namespace.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: MacAddr([0; 6]),
        mtu: 0,
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                info.mac = MacAddr(a.as_slice().try_into().unwrap_or_default())
            }
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::IfAlias(a) => info.alias = Some(a.clone()),
            _ => {}
        }
    }
    info
}

/// The link called `name`, or None if there is none.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkInfo>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(link_info(&msg))),
        Ok(None) => Ok(None),
        // The kernel answers ENODEV for a name it does not know.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot look up interface {name}")),
    }
}

pub async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<LinkInfo>> {
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(msg) => Ok(msg.as_ref().map(link_info)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot look up interface {index}")),
    }
}

/// Every link in this namespace.
pub async fn links(handle: &Handle) -> Result<Vec<LinkInfo>> {
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = links.try_next().await.context("cannot list interfaces")? {
        out.push(link_info(&msg));
    }
    Ok(out)
}

/// The first IPv4 address on link `index`.
pub async fn first_ipv4(handle: &Handle, index: u32) -> Result<Option<Ipv4Addr>> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        for attr in msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(a)) = attr {
                return Ok(Some(a));
            }
        }
    }
    Ok(None)
}

/// The subnet that `addr` (an address of link `index`) belongs to, from its prefix
/// length; a /32 when the address is not on the link.
pub async fn subnet_of(handle: &Handle, index: u32, addr: Ipv4Addr) -> Result<crate::net::Ipv4Net> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        let prefix = msg.header.prefix_len;
        for attr in &msg.attributes {
            if *attr == AddressAttribute::Address(IpAddr::V4(addr)) {
                let net = ipnet::Ipv4Net::new(addr, prefix)?.trunc();
                return crate::net::Ipv4Net::new(net.network(), net.prefix_len());
            }
        }
    }
    crate::net::Ipv4Net::new(addr, 32)
}

/// Deletes a link (for a veth: both ends). A link already gone is not an error.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<()> {
    if let Some(link) = link_by_name(handle, name).await? {
        handle
            .link()
            .del(link.index)
            .execute()
            .await
            .or_else(|e| match e {
                // Gone meanwhile: a namespace being torn down takes its veths along.
                rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV => Ok(()),
                e => Err(e),
            })
            .with_context(|| format!("cannot delete interface {name}"))?;
    }
    Ok(())
}

/// Adds `address`/32 to the loopback link: an address of the host that its containers
/// reach through any interface. Present already is fine (a restarted daemon).
pub async fn add_local_address(handle: &Handle, address: Ipv4Addr) -> Result<()> {
    let lo = link_by_name(handle, "lo")
        .await?
        .context("this network namespace has no loopback link")?;
    let mut add = handle.address().add(lo.index, IpAddr::V4(address), 32);
    // Scope host: never picked as the source of the host's own traffic to containers
    // (a global address on lo would be, ahead of the underlay's).
    add.message_mut().header.scope = AddressScope::Host;
    add.execute()
        .await
        .or_else(|e| match e {
            rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST => Ok(()),
            e => Err(e),
        })
        .with_context(|| format!("cannot add address {address} to lo"))
}

/// Removes `address` from the loopback link, if it is there.
pub async fn remove_local_address(handle: &Handle, address: Ipv4Addr) -> Result<()> {
    let Some(lo) = link_by_name(handle, "lo").await? else {
        return Ok(());
    };
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(lo.index)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        if msg
            .attributes
            .contains(&AddressAttribute::Address(IpAddr::V4(address)))
        {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .with_context(|| format!("cannot remove address {address} from lo"))?;
            break;
        }
    }
    Ok(())
}

/// Makes NIC `ifindex` take frames for `mac` (a layer-2 container's): the MAC joins
/// its unicast filter, as macvlan's do (`bridge fdb add MAC dev NIC self`); a NIC
/// without room, or without filtering, goes promiscuous by itself, and back once the
/// list empties. Already there is fine.
pub async fn add_unicast_filter(handle: &Handle, ifindex: u32, mac: MacAddr) -> Result<()> {
    use netlink_packet_route::neighbour::NeighbourFlags;
    let added = handle
        .neighbours()
        .add_bridge(ifindex, &mac.0)
        .flags(NeighbourFlags::Own)
        .execute()
        .await;
    match added {
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
        other => other.with_context(|| {
            format!("cannot add {mac} to the filter of the parent NIC (ifindex {ifindex})")
        }),
    }
}

/// Takes `mac` out of NIC `ifindex`'s unicast filter; not there (or the NIC gone) is
/// fine.
pub async fn remove_unicast_filter(handle: &Handle, ifindex: u32, mac: MacAddr) -> Result<()> {
    use netlink_packet_route::{
        neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
        AddressFamily,
    };
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = ifindex;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    match handle.neighbours().del(message).execute().await {
        Err(rtnetlink::Error::NetlinkError(m))
            if [-libc::ENOENT, -libc::ENODEV].contains(&m.raw_code()) =>
        {
            Ok(())
        }
        other => other.with_context(|| format!("cannot remove {mac} from the parent NIC's filter")),
    }
}

/// Deletes the clsact qdisc of NIC `ifindex` (and the filters on it); gone is fine.
pub async fn delete_clsact(handle: &Handle, ifindex: u32) -> Result<()> {
    use netlink_packet_route::tc::TcHandle;
    let mut request = handle.qdisc().del(ifindex as i32);
    let header = &mut request.message_mut().header;
    header.parent = TcHandle::CLSACT;
    header.handle = TcHandle {
        major: u16::MAX,
        minor: 0,
    };
    match request.execute().await {
        Err(rtnetlink::Error::NetlinkError(m))
            if [-libc::ENOENT, -libc::ENODEV, -libc::EINVAL].contains(&m.raw_code()) =>
        {
            Ok(())
        }
        other => other.context("cannot delete the clsact qdisc"),
    }
}

/// The kernel vxlan devices of this namespace: (name, UDP port).
pub async fn vxlan_devices(handle: &Handle) -> Result<Vec<(String, u16)>> {
    use netlink_packet_route::link::{InfoData, InfoVxlan, LinkInfo as Info};
    let mut found = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.context("cannot list interfaces")? {
        let vxlan = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                Info::Data(InfoData::Vxlan(attrs)) => Some(
                    attrs
                        .iter()
                        .find_map(|v| match v {
                            InfoVxlan::Port(p) => Some(*p),
                            _ => None,
                        })
                        // No attribute: the kernel's default port, 8472.
                        .unwrap_or(8472),
                ),
                _ => None,
            }),
            _ => None,
        });
        if let Some(port) = vxlan {
            found.push((link_info(&msg).name, port));
        }
    }
    Ok(found)
}
