//! Layer-2 networks: the programs are the switch. A container's frame goes to another
//! local container of its network by destination MAC, or out of the network's parent
//! NIC as it is (tagged with the network's VLAN); a frame from the parent goes to the
//! local container it is addressed to; broadcast and multicast reach every local
//! container of the network and the wire (from a container) or the host (from the
//! wire). Everything else on the parent is the host's, untouched.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_clone_redirect, bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use oxlay_common::{
    l2::{L2Network, MAX_L2_PORTS},
    wire::{ETH_LEN, GATEWAY},
    Counter, Endpoint,
};

use crate::{
    arp::{self, ETH_P_ARP},
    counters::count,
    maps,
    parse::{read, ETH_P_IPV4},
};

const ETH_P_8021Q: u16 = 0x8100;
/// Link-local group addresses 01:80:c2:00:00:0x (STP, LLDP, pause): a switch keeps
/// them to itself, and so does this one.
const LINK_LOCAL_GROUP: [u8; 5] = [0x01, 0x80, 0xc2, 0x00, 0x00];

/// Whether a MAC is a group address (broadcast or multicast).
#[inline(always)]
fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// A frame from container `ep` (its host-side veth `ifindex`) on a layer-2 network.
pub fn from_container(ctx: &TcContext, ep: &Endpoint, ifindex: u32) -> i32 {
    let Some(eth) = read::<EthHdr>(ctx.data(), ctx.data_end(), 0) else {
        count(ctx, Counter::DropTruncatedInner);
        return TC_ACT_SHOT as i32;
    };
    match try_from_container(ctx, &eth, ep, ifindex) {
        Ok(action) => action,
        Err(reason) => {
            count(ctx, reason);
            TC_ACT_SHOT as i32
        }
    }
}

fn try_from_container(
    ctx: &TcContext,
    eth: &EthHdr,
    ep: &Endpoint,
    ifindex: u32,
) -> Result<i32, Counter> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // A container speaks only with its own MAC and address, in IPv4 and in ARP (a
    // probe's sender address is 0.0.0.0).
    if eth.src_addr != ep.mac {
        return Err(Counter::DropSpoofedSource);
    }
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let tagged = unsafe { (*ctx.skb.skb).vlan_present } != 0;
    match u16::from_be(eth.ether_type) {
        _ if tagged => return Err(Counter::DropContainerNotIpv4),
        ETH_P_IPV4 => {
            let ip = read::<Ipv4Hdr>(data, data_end, ETH_LEN).ok_or(Counter::DropTruncatedInner)?;
            if ip.src_addr != ep.addr {
                return Err(Counter::DropSpoofedSource);
            }
            // The host's side of the veth (oxlay's resolver): the host's to take.
            if ip.dst_addr == GATEWAY {
                count(ctx, Counter::L2ToHost);
                return Ok(TC_ACT_OK as i32);
            }
        }
        // Who has the gateway: the host's side of the veth answers (a runtime that
        // sets no neighbour entry for it, as Docker).
        ETH_P_ARP if arp::sent_as(ctx, ep) && arp::target(ctx) == Some(GATEWAY) => {
            count(ctx, Counter::L2ToHost);
            return Ok(TC_ACT_OK as i32);
        }
        ETH_P_ARP if arp::sent_as(ctx, ep) => {}
        ETH_P_ARP => return Err(Counter::DropSpoofedSource),
        _ => return Err(Counter::DropContainerNotIpv4),
    }
    let net = maps::l2_network(ep.net_id).ok_or(Counter::DropL2NoParent)?;
    let dst = eth.dst_addr;
    if is_group(&dst) {
        flood(ctx, net, ifindex);
        count(ctx, Counter::L2Flooded);
        return to_wire(ctx, net);
    }
    match maps::l2_port(ep.net_id, dst) {
        // Out of the other container's host-side veth, so that its end takes the frame
        // as addressed to it (a redirect into its namespace would keep this veth's
        // "other host" mark, which kernels before 6.15 drop).
        Some(port) if port != ifindex => {
            count(ctx, Counter::L2Switched);
            // SAFETY: plain helper call; an unknown ifindex makes the kernel drop it.
            return Ok(unsafe { bpf_redirect(port, 0) } as i32);
        }
        _ => {}
    }
    count(ctx, Counter::L2ToWire);
    to_wire(ctx, net)
}

/// Sends the frame out of the network's parent NIC, with its VLAN tag.
#[inline(always)]
fn to_wire(ctx: &TcContext, net: &L2Network) -> Result<i32, Counter> {
    if net.vlan != 0 {
        // SAFETY: plain helper call on this program's own packet.
        let pushed = unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q.to_be(), net.vlan) };
        if pushed != 0 {
            return Err(Counter::DropHeaderWriteFailed);
        }
    }
    // SAFETY: plain helper call; an unknown ifindex makes the kernel drop it.
    Ok(unsafe { bpf_redirect(net.parent_ifindex, 0) } as i32)
}

/// Copies the frame to every local container of `net` but the one on `except` (the
/// sender's veth). A copy that cannot be made is that container's loss, not the
/// others'.
#[inline(always)]
fn flood(ctx: &TcContext, net: &L2Network, except: u32) {
    // A copy on the stack: userspace may replace the entry meanwhile, and the old
    // value's memory be reused at once.
    let (ports, len) = (net.ports, (net.ports_len as usize).min(MAX_L2_PORTS));
    for i in 0..MAX_L2_PORTS {
        if i >= len {
            break;
        }
        let port = ports[i];
        if port != except {
            // SAFETY: plain helper call on this program's own packet; the copy goes out
            // of the container's host-side veth, into the container.
            unsafe { bpf_clone_redirect(ctx.skb.skb, port, 0) };
        }
    }
}

/// A frame from a parent NIC: to the local container it is for, or to every local
/// container of its network (and the host) if broadcast; the host's otherwise.
pub fn from_wire(ctx: &TcContext) -> i32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(eth) = read::<EthHdr>(data, data_end, 0) else {
        return TC_ACT_OK as i32;
    };
    // The kernel takes the VLAN tag off before TC ingress: it is in the skb.
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let (ifindex, tagged, tci, tag_proto) = unsafe {
        let skb = &*ctx.skb.skb;
        (
            skb.ifindex,
            skb.vlan_present != 0,
            skb.vlan_tci as u16,
            skb.vlan_proto,
        )
    };
    // 802.1Q only (an 802.1ad outer tag is not a network of ours).
    if tagged && tag_proto != (ETH_P_8021Q.to_be() as u32) {
        return TC_ACT_OK as i32;
    }
    let vlan = if tagged { tci & 0x0fff } else { 0 };
    let Some(net_id) = maps::l2_network_on(ifindex, vlan) else {
        return TC_ACT_OK as i32;
    };
    // Containers get IPv4 and ARP, untagged; not a switch's own link-local groups.
    let ether_type = u16::from_be(eth.ether_type);
    let carried = ether_type == ETH_P_IPV4 || ether_type == ETH_P_ARP;
    if !carried || eth.dst_addr[..5] == LINK_LOCAL_GROUP {
        return TC_ACT_OK as i32;
    }
    // A frame from a local container's MAC came back (a reflecting switch) or is forged:
    // never the container's to receive.
    if maps::l2_port(net_id, eth.src_addr).is_some() {
        return TC_ACT_OK as i32;
    }
    if is_group(&eth.dst_addr) {
        let Some(net) = maps::l2_network(net_id) else {
            return TC_ACT_OK as i32;
        };
        // The copies go untagged; the host gets the frame as it came.
        // SAFETY: plain helper calls on this program's own packet.
        if tagged && unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
            return TC_ACT_OK as i32;
        }
        flood(ctx, net, 0);
        count(ctx, Counter::L2Flooded);
        // SAFETY: as above.
        if tagged && unsafe { bpf_skb_vlan_push(ctx.skb.skb, tag_proto as u16, tci) } != 0 {
            // Untagged, it would reach the host as the untagged network's: drop it.
            count(ctx, Counter::DropHeaderWriteFailed);
            return TC_ACT_SHOT as i32;
        }
        return TC_ACT_OK as i32;
    }
    let Some(port) = maps::l2_port(net_id, eth.dst_addr) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: plain helper call on this program's own packet.
    if tagged && unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        count(ctx, Counter::DropHeaderWriteFailed);
        return TC_ACT_SHOT as i32;
    }
    count(ctx, Counter::L2FromWire);
    // SAFETY: plain helper call; the frame leaves by the container's host-side veth.
    unsafe { bpf_redirect(port, 0) as i32 }
}
