//! Bounds-checked header access and the classification of underlay packets (VXLAN,
//! GRE, direct) shared by TC and XDP.
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use oxlay_common::{
    wire::{
        ECHO_MAGIC, ETH_LEN, ETH_P_TEB, GRE_FLAGS_KEY, GRE_LEN, IPPROTO_GRE, IPV4_LEN, UDP_LEN,
        VNI_MAX, VXLAN_FLAG_VNI, VXLAN_LEN,
    },
    Counter, DatapathConfig, Route, RouteKind, DIRECT_NET_ID,
};

use crate::{maps, wireguard};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPPROTO_UDP: u8 = 17;

/// Offsets of each header in a VXLAN packet whose outer IPv4 header has no options.
pub const OUTER_IP_OFF: usize = ETH_LEN;
pub const OUTER_UDP_OFF: usize = OUTER_IP_OFF + IPV4_LEN;
pub const VXLAN_OFF: usize = OUTER_UDP_OFF + UDP_LEN;
pub const INNER_ETH_OFF: usize = VXLAN_OFF + VXLAN_LEN;
pub const INNER_IP_OFF: usize = INNER_ETH_OFF + ETH_LEN;
/// Bytes that must be linear to classify a VXLAN packet (a GRE one needs fewer).
pub const VXLAN_CLASSIFY_LEN: usize = INNER_IP_OFF + IPV4_LEN;
/// The same for Ethernet over GRE with a key.
const GRE_OFF: usize = OUTER_IP_OFF + IPV4_LEN;
pub const GRE_INNER_ETH_OFF: usize = GRE_OFF + GRE_LEN;
pub const GRE_INNER_IP_OFF: usize = GRE_INNER_ETH_OFF + ETH_LEN;

/// A pointer to a `T` at `offset`, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*const T> {
    let start = data + offset;
    if start + core::mem::size_of::<T>() > data_end {
        return None;
    }
    Some(start as *const T)
}

/// Reads a `T` at `offset`, if the packet holds all of it.
#[inline(always)]
pub fn read<T: Copy>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that [offset, offset + size_of::<T>()) lies inside the
    // packet; read_unaligned because packet headers have no alignment guarantee.
    ptr_at::<T>(data, data_end, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Writes `value` at `offset`, if the packet holds all of it. Cheaper than the
/// store-bytes helper; in TC the kernel makes a cloned packet's data private before the
/// program runs (the verifier's prologue for programs that write directly).
#[inline(always)]
pub fn write<T>(data: usize, data_end: usize, offset: usize, value: T) -> bool {
    match ptr_at::<T>(data, data_end, offset) {
        Some(p) => {
            // SAFETY: ptr_at checked that the bytes lie inside the packet, which the
            // program may write; write_unaligned because headers have no alignment
            // guarantee.
            unsafe { (p as *mut T).write_unaligned(value) };
            true
        }
        None => false,
    }
}

/// Where a packet to classify came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The underlay interface, as it was on the wire.
    Underlay,
    /// oxlay's WireGuard device: decrypted, and authenticated as a peer's.
    Wireguard,
}

/// What the decapsulation programs do with a packet from the underlay.
pub enum Decap {
    /// Not VXLAN for this host: the host's own traffic.
    Pass,
    /// VXLAN for this host that must not be delivered, with the reason.
    Drop(Counter),
    /// Strip the outer headers (the inner Ethernet header starts at `strip`; `gre`:
    /// they are GRE's, else VXLAN's) and deliver to this local route.
    Deliver {
        route: Route,
        strip: usize,
        gre: bool,
        vni: u32,
    },
    /// An unencapsulated packet from a direct peer: deliver as it is.
    DeliverDirect(Route),
    /// `oxlay doctor`'s probe from a peer: send it back (see `echo.rs`).
    Echo,
}

/// Decides what to do with a frame that arrived on the underlay.
/// `frame_len` is the whole frame's length (the linear part may be shorter).
#[inline(always)]
pub fn classify(
    data: usize,
    data_end: usize,
    frame_len: usize,
    cfg: &DatapathConfig,
    arrival: Arrival,
) -> Decap {
    let Some(eth) = read::<EthHdr>(data, data_end, 0) else {
        return Decap::Pass;
    };
    if u16::from_be(eth.ether_type) != ETH_P_IPV4 {
        return Decap::Pass;
    }
    let Some(ip) = read::<Ipv4Hdr>(data, data_end, OUTER_IP_OFF) else {
        return Decap::Pass;
    };
    if ip.dst_addr != cfg.underlay_addr {
        return classify_direct(&ip, cfg, arrival);
    }
    match ip.proto {
        IPPROTO_UDP => classify_vxlan(data, data_end, frame_len, cfg, &ip, arrival),
        IPPROTO_GRE => classify_gre(data, data_end, frame_len, &ip, cfg, arrival),
        _ => Decap::Pass,
    }
}

/// A UDP packet to this host: VXLAN if to the VXLAN port.
#[inline(always)]
fn classify_vxlan(
    data: usize,
    data_end: usize,
    frame_len: usize,
    cfg: &DatapathConfig,
    ip: &Ipv4Hdr,
    arrival: Arrival,
) -> Decap {
    // UDP sits after the IPv4 header, options included; mask keeps the offset bounded.
    let ihl = (ip.vihl & 0x0f) as usize;
    let frag = u16::from_be_bytes(ip.frags);
    if frag & 0x1fff != 0 {
        // A later fragment has no UDP header to look at: the stack reassembles it and
        // finds no socket on the VXLAN port.
        return Decap::Pass;
    }
    let Some(udp) = read::<UdpHdr>(data, data_end, OUTER_IP_OFF + ihl * 4) else {
        return Decap::Pass;
    };
    if u16::from_be_bytes(udp.dst) != cfg.vxlan_port {
        return Decap::Pass;
    }
    // From here on the packet claims to be VXLAN for us: drop, never pass, on failure.
    if ihl != 5 {
        return Decap::Drop(Counter::DropOuterIpOptions);
    }
    if frag & 0x2000 != 0 {
        return Decap::Drop(Counter::DropOuterFragment);
    }
    // The peer and network maps only name what failed: a route naming the sender as
    // the owner of the inner source proves it a peer, and a local route in the VNI
    // proves the network present (both come from the same store records). Their
    // reasons still come first, as if they had been checked here.
    let peer = ip.src_addr;
    let Some(vxlan) = read::<VxlanHdr>(data, data_end, VXLAN_OFF) else {
        return Decap::Drop(unless_unknown(peer, None, Counter::DropTruncatedVxlan));
    };
    if vxlan.flags == 0 && vxlan._reserved1 == ECHO_MAGIC {
        if !maps::is_peer(peer) {
            return Decap::Drop(Counter::DropUnknownPeer);
        }
        // The answer goes to the probe's source port: never to a VXLAN port (a spoofed
        // probe would have two hosts send it back and forth for ever) nor to a system
        // port (a service trusting the peer's address).
        let reply_port = u16::from_be_bytes(udp.src);
        if reply_port < 1024 || reply_port == cfg.vxlan_port || reply_port == 4789 {
            return Decap::Drop(Counter::DropBadVxlanFlags);
        }
        return Decap::Echo;
    }
    if wireguard::arrived_unencrypted(cfg, peer, arrival) {
        return Decap::Drop(Counter::DropUnencrypted);
    }
    if vxlan.flags & VXLAN_FLAG_VNI == 0 {
        return Decap::Drop(unless_unknown(peer, None, Counter::DropBadVxlanFlags));
    }
    let vni = vxlan.vni();
    let drop = |reason| Decap::Drop(unless_unknown(peer, Some(vni), reason));
    // VNI 0 is no network: the route lookups below would find the direct table, whose
    // networks only `classify_direct` keeps apart.
    if vni == DIRECT_NET_ID {
        return drop(Counter::DropUnknownVni);
    }
    let Some(inner_ip) = inner_ipv4(data, data_end, INNER_ETH_OFF) else {
        return drop(inner_failure(data, data_end, INNER_ETH_OFF));
    };
    // The lengths must agree (a truncated frame was reported as such above): IPv4
    // within the frame (Ethernet may pad), UDP = IPv4 - 20.
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip_len + ETH_LEN > frame_len || u16::from_be_bytes(udp.len) as usize + IPV4_LEN != ip_len {
        return drop(Counter::DropBadLength);
    }
    match deliverable(peer, vni, &inner_ip) {
        Ok(route) => Decap::Deliver {
            route,
            strip: INNER_ETH_OFF,
            gre: false,
            vni,
        },
        Err(reason) => drop(reason),
    }
}

/// A GRE packet to this host: oxlay's when it carries Ethernet (TEB) from a peer. GRE
/// from another address, or carrying something else, is the host's own (its own
/// tunnels, if it has any).
#[inline(always)]
fn classify_gre(
    data: usize,
    data_end: usize,
    frame_len: usize,
    ip: &Ipv4Hdr,
    cfg: &DatapathConfig,
    arrival: Arrival,
) -> Decap {
    let peer = ip.src_addr;
    if !maps::is_peer(peer) {
        return Decap::Pass;
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & 0x1fff != 0 {
        // A later fragment has no GRE header to look at (as for VXLAN).
        return Decap::Pass;
    }
    // GRE sits after the IPv4 header, options included; the mask keeps it bounded.
    // Its first 4 bytes say what it carries; only then is it oxlay's business.
    let ihl = (ip.vihl & 0x0f) as usize;
    let gre_off = OUTER_IP_OFF + ihl * 4;
    match read::<[u8; 4]>(data, data_end, gre_off) {
        Some(base) if u16::from_be_bytes([base[2], base[3]]) == ETH_P_TEB => {}
        _ => return Decap::Pass,
    }
    // From here on the packet claims to be oxlay's GRE: drop, never pass, on failure.
    if wireguard::arrived_unencrypted(cfg, peer, arrival) {
        return Decap::Drop(Counter::DropUnencrypted);
    }
    let Some(gre) = read::<[u8; GRE_LEN]>(data, data_end, gre_off) else {
        return Decap::Drop(Counter::DropBadGre);
    };
    if ihl != 5 {
        return Decap::Drop(Counter::DropOuterIpOptions);
    }
    if frags & 0x2000 != 0 {
        return Decap::Drop(Counter::DropOuterFragment);
    }
    // Only the key, as `gretap ... key N` sends it: no checksum, sequence or routing.
    if u16::from_be_bytes([gre[0], gre[1]]) != GRE_FLAGS_KEY {
        return Decap::Drop(Counter::DropBadGre);
    }
    let key = u32::from_be_bytes([gre[4], gre[5], gre[6], gre[7]]);
    let drop = |reason| Decap::Drop(unless_unknown(peer, Some(key), reason));
    if key == DIRECT_NET_ID || key > VNI_MAX {
        return Decap::Drop(Counter::DropUnknownVni);
    }
    let Some(inner_ip) = inner_ipv4(data, data_end, GRE_INNER_ETH_OFF) else {
        return drop(inner_failure(data, data_end, GRE_INNER_ETH_OFF));
    };
    // The outer length within the frame (Ethernet may pad), and long enough for the
    // headers read above.
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip_len + ETH_LEN > frame_len || ip_len < GRE_INNER_IP_OFF - ETH_LEN + IPV4_LEN {
        return drop(Counter::DropBadLength);
    }
    match deliverable(peer, key, &inner_ip) {
        Ok(route) => Decap::Deliver {
            route,
            strip: GRE_INNER_ETH_OFF,
            gre: true,
            vni: key,
        },
        Err(reason) => drop(reason),
    }
}

/// The inner IPv4 header of an encapsulated frame whose Ethernet header is at `eth_off`.
#[inline(always)]
fn inner_ipv4(data: usize, data_end: usize, eth_off: usize) -> Option<Ipv4Hdr> {
    let inner_eth = read::<EthHdr>(data, data_end, eth_off)?;
    if u16::from_be(inner_eth.ether_type) != ETH_P_IPV4 {
        return None;
    }
    read::<Ipv4Hdr>(data, data_end, eth_off + ETH_LEN)
}

/// Why `inner_ipv4` found nothing: not IPv4, or too short.
#[inline(always)]
fn inner_failure(data: usize, data_end: usize, eth_off: usize) -> Counter {
    match read::<EthHdr>(data, data_end, eth_off) {
        Some(eth) if u16::from_be(eth.ether_type) != ETH_P_IPV4 => Counter::DropInnerNotIpv4,
        _ => Counter::DropTruncatedInner,
    }
}

/// The local route to deliver an inner packet from `peer` in network `vni` to, or why
/// not. A peer may only speak for the addresses it owns: its blocks in this network (a
/// route naming the sender as owner also proves it a known peer). Delivery is by inner
/// IP; the inner destination MAC is whatever the peer chose (a local route in this
/// network also proves the network present here).
#[inline(always)]
fn deliverable(peer: [u8; 4], vni: u32, inner_ip: &Ipv4Hdr) -> Result<Route, Counter> {
    match maps::route(vni, inner_ip.src_addr) {
        Some(r)
            if (r.kind == RouteKind::Remote as u8
                || r.kind == RouteKind::RemoteGre as u8
                || r.kind == RouteKind::Direct as u8)
                && r.underlay_addr == peer => {}
        _ => return Err(Counter::DropSpoofedPeerSource),
    }
    match maps::route(vni, inner_ip.dst_addr) {
        Some(r) if r.kind == RouteKind::Local as u8 => Ok(*r),
        _ => Err(Counter::DropNoLocalEndpoint),
    }
}

/// The reason to count for a VXLAN packet that failed a check: an unknown peer, then
/// (once the VNI is read) an unknown network, come before `reason`.
#[inline(always)]
fn unless_unknown(peer: [u8; 4], vni: Option<u32>, reason: Counter) -> Counter {
    if !maps::is_peer(peer) {
        Counter::DropUnknownPeer
    } else if vni.is_some_and(|vni| !maps::has_network(vni)) {
        Counter::DropUnknownVni
    } else {
        reason
    }
}

/// A packet not addressed to this host: deliver it when it is for a local endpoint of a
/// direct network and comes from a direct peer's block of the same network; drop it
/// when it comes from another direct network's block (networks are isolated); else it
/// is not ours.
#[inline(always)]
fn classify_direct(ip: &Ipv4Hdr, cfg: &DatapathConfig, arrival: Arrival) -> Decap {
    match maps::route(DIRECT_NET_ID, ip.dst_addr) {
        Some(dst) if dst.kind == RouteKind::Local as u8 => {
            match maps::route(DIRECT_NET_ID, ip.src_addr) {
                Some(src) if src.kind == RouteKind::Direct as u8 => {
                    if wireguard::arrived_unencrypted(cfg, src.underlay_addr, arrival) {
                        Decap::Drop(Counter::DropUnencrypted)
                    } else if src.vni == dst.vni {
                        Decap::DeliverDirect(*dst)
                    } else {
                        Decap::Drop(Counter::DropDirectOtherNetwork)
                    }
                }
                _ => Decap::Pass,
            }
        }
        _ => Decap::Pass,
    }
}
