//! The containers' ARP: every request a container makes for another address is
//! answered here with the host-side veth's MAC, since every packet a container sends
//! goes through its host-side veth whatever the destination. Containers can then use any
//! gateway (169.254.1.1) and any prefix length (Docker gives the network's) without a
//! neighbour entry set from outside, which runtimes such as Docker leave no room for.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use network_types::eth::EthHdr;
use oxlay_common::{wire::ETH_LEN, Counter, Endpoint};

use crate::{counters::count, maps, parse::read};

pub const ETH_P_ARP: u16 = 0x0806;

/// An ARP packet for IPv4 over Ethernet (RFC 826), as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpIpv4 {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    oper: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// Whether an ARP frame from container `ep` is well-formed IPv4-over-Ethernet ARP (a
/// request or a reply) that speaks as the container: its MAC, and its address or
/// 0.0.0.0 (a duplicate-address probe).
#[inline(always)]
pub fn sent_as(ctx: &TcContext, ep: &Endpoint) -> bool {
    let Some(arp) = read::<ArpIpv4>(ctx.data(), ctx.data_end(), ETH_LEN) else {
        return false;
    };
    let oper = u16::from_be_bytes(arp.oper);
    u16::from_be_bytes(arp.htype) == 1
        && u16::from_be_bytes(arp.ptype) == 0x0800
        && arp.hlen == 6
        && arp.plen == 4
        && (oper == ARP_REQUEST || oper == ARP_REPLY)
        && arp.sha == ep.mac
        && (arp.spa == ep.addr || arp.spa == [0; 4])
}

/// The address an ARP request asks for (None: not IPv4-over-Ethernet ARP).
#[inline(always)]
pub fn target(ctx: &TcContext) -> Option<[u8; 4]> {
    let arp = read::<ArpIpv4>(ctx.data(), ctx.data_end(), ETH_LEN)?;
    (u16::from_be_bytes(arp.oper) == ARP_REQUEST).then_some(arp.tpa)
}

/// Answers the container's ARP request in place and sends it back to the container.
/// `Ok(None)` for other ARP (probes, announcements, replies, other protocols): the stack
/// has it. ARP claiming another address or MAC is spoofing, dropped like IPv4 is.
#[inline(always)]
pub fn respond(ctx: &TcContext, eth: &EthHdr, ep: &Endpoint) -> Result<Option<i32>, Counter> {
    let Some(arp) = read::<ArpIpv4>(ctx.data(), ctx.data_end(), ETH_LEN) else {
        return Ok(None);
    };
    let is_ipv4 = u16::from_be_bytes(arp.htype) == 1
        && u16::from_be_bytes(arp.ptype) == 0x0800
        && arp.hlen == 6
        && arp.plen == 4;
    if !is_ipv4 {
        return Ok(None);
    }
    // A duplicate-address probe says 0.0.0.0; anything else must be the container.
    let sender_ok = arp.spa == ep.addr || arp.spa == [0; 4];
    if !sender_ok || arp.sha != ep.mac || eth.src_addr != ep.mac {
        return Err(Counter::DropSpoofedSource);
    }
    // Not for itself: that is an announcement or a probe.
    let is_request = u16::from_be_bytes(arp.oper) == ARP_REQUEST;
    if !is_request || arp.spa != ep.addr || arp.tpa == ep.addr {
        return Ok(None);
    }
    // The container's own local route holds the host-side veth's MAC.
    let Some(route) = maps::route(ep.net_id, ep.addr) else {
        return Ok(None);
    };
    let gateway_mac = route.src_mac;
    let reply = ArpIpv4 {
        oper: ARP_REPLY.to_be_bytes(),
        sha: gateway_mac,
        spa: arp.tpa,
        tha: arp.sha,
        tpa: arp.spa,
        ..arp
    };
    let macs: [[u8; 6]; 2] = [arp.sha, gateway_mac];
    ctx.store(0, &macs, 0)
        .map_err(|_| Counter::DropHeaderWriteFailed)?;
    ctx.store(ETH_LEN, &reply, 0)
        .map_err(|_| Counter::DropHeaderWriteFailed)?;
    count(ctx, Counter::ArpReplied);
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Out of the same veth, back to the container.
    // SAFETY: plain helper call with the interface the packet came in on.
    Ok(Some(unsafe { bpf_redirect(ifindex, 0) } as i32))
}
