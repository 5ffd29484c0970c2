//! Packets leaving a container: local delivery, VXLAN or GRE encapsulation, or the host
//! stack.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_GRE,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use oxlay_common::{
    l2::ENDPOINT_L2,
    wire::{
        udp_src_port, ENCAP_OVERHEAD, ETH_LEN, ETH_P_TEB, GRE_ENCAP_OVERHEAD, GRE_FLAGS_KEY,
        IPPROTO_GRE, IPV4_LEN, OUTER_TTL,
    },
    Counter, DatapathConfig, Endpoint, Route, RouteKind,
};

use crate::{
    arp, checksum, wireguard,
    counters::{count, count_in, count_network, Direction},
    l2, maps, mtu,
    parse::{read, write, ETH_P_IPV4, IPPROTO_UDP},
};

const AF_INET: u32 = 2;
const IPPROTO_TCP: u8 = 6;

/// Everything written in front of the container's IPv4 packet, in wire order.
#[repr(C)]
struct VxlanHeaders {
    outer_eth: EthHdr,
    outer_ip: Ipv4Hdr,
    outer_udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
}
const _: () = assert!(core::mem::size_of::<VxlanHeaders>() == ETH_LEN + ENCAP_OVERHEAD);

/// Ethernet over GRE with the key (the network's VNI), as Linux's `gretap` sends it.
#[repr(C)]
struct GreHeaders {
    outer_eth: EthHdr,
    outer_ip: Ipv4Hdr,
    gre_flags: [u8; 2],
    gre_proto: [u8; 2],
    gre_key: [u8; 4],
    inner_eth: EthHdr,
}
const _: () = assert!(core::mem::size_of::<GreHeaders>() == ETH_LEN + GRE_ENCAP_OVERHEAD);

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner L2 header length, in the top byte.
const fn encap_l2_len(len: u64) -> u64 {
    (len & 0xff) << 56
}

/// Room for the outer headers, marked as a UDP tunnel around Ethernet so GSO segments
/// it correctly. FIXED_GSO keeps the MSS: container MTU is already underlay MTU - 50.
const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | encap_l2_len(ETH_LEN as u64);

/// The same for GRE: GSO segments it as a GRE tunnel around Ethernet.
const GRE_ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_GRE
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | encap_l2_len(ETH_LEN as u64);

pub fn from_container(ctx: &TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(ep) = maps::endpoint(ifindex) else {
        count(ctx, Counter::PassedToStack);
        return TC_ACT_OK as i32;
    };
    // A layer-2 network's containers are switched by MAC, ARP included. (Dispatched
    // here, not inside the overlay's path: LLVM merged that path's return with this
    // one's into code the verifier rejects.)
    if ep.flags & ENDPOINT_L2 != 0 {
        return l2::from_container(ctx, ep, ifindex);
    }
    match try_from_container(ctx, ep) {
        Ok(Some(action)) => action,
        Ok(None) => {
            count(ctx, Counter::PassedToStack);
            TC_ACT_OK as i32
        }
        Err(reason) => {
            count(ctx, reason);
            TC_ACT_SHOT as i32
        }
    }
}

/// `Ok(None)`: not for the overlay, let the stack have it.
fn try_from_container(ctx: &TcContext, ep: &Endpoint) -> Result<Option<i32>, Counter> {
    let Some(cfg) = maps::config() else {
        return Ok(None);
    };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(eth) = read::<EthHdr>(data, data_end, 0) else {
        return Ok(None);
    };
    let ether_type = u16::from_be(eth.ether_type);
    if ether_type == arp::ETH_P_ARP {
        return arp::respond(ctx, &eth, ep);
    }
    // Only IPv4 is checked against the container's address: anything else (IPv6,
    // VLAN-tagged, other ethertypes) would reach the host stack unchecked. A VLAN tag
    // may also travel beside the frame (veth offloads it): that counts as tagged.
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let tagged = unsafe { (*ctx.skb.skb).vlan_present } != 0;
    if ether_type != ETH_P_IPV4 || tagged {
        return Err(Counter::DropContainerNotIpv4);
    }
    let Some(ip) = read::<Ipv4Hdr>(data, data_end, ETH_LEN) else {
        return Ok(None);
    };
    // A container speaks only with its own address and MAC, wherever it sends.
    if ip.src_addr != ep.addr || eth.src_addr != ep.mac {
        return Err(Counter::DropSpoofedSource);
    }
    let Some(route) = maps::route(ep.net_id, ip.dst_addr) else {
        return Ok(None);
    };
    let route = *route;
    if route.kind == RouteKind::Local as u8 {
        return deliver_local(ctx, &route).map(Some);
    }
    if route.kind == RouteKind::Direct as u8 {
        return Ok(Some(route_direct(ctx, cfg, &route)));
    }
    let cfg = *cfg;
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size } as usize;
    let ip_len = ctx.len() as usize - ETH_LEN;
    let gre = route.kind == RouteKind::RemoteGre as u8;
    let mut flags = if gre { GRE_ENCAP_FLAGS } else { ENCAP_FLAGS };
    if cfg.underlay_mtu != 0 {
        if gso_size == 0 {
            if !mtu::fits(ip_len, cfg.underlay_mtu) {
                return Ok(Some(mtu::too_big(ctx, &eth, &ip, cfg.underlay_mtu)));
            }
        } else if !mtu::fits(
            gso_size + segment_headers(data, data_end, &ip),
            cfg.underlay_mtu,
        ) {
            if ip.proto != IPPROTO_TCP {
                // UDP GSO: gso_size is the sender's datagram size, which the kernel may
                // not change (it refuses the shrink). Answer as for one datagram too
                // big: ICMP "fragmentation needed", so the sender learns the MTU.
                return Ok(Some(mtu::too_big(ctx, &eth, &ip, cfg.underlay_mtu)));
            }
            // TCP segments of this size would not fit once encapsulated (a container
            // MTU above underlay - 50): let the kernel cut them shorter by the headers
            // it adds (50 bytes, or GRE's 42).
            flags &= !(BPF_F_ADJ_ROOM_FIXED_GSO as u64);
        }
    }
    if gre {
        encapsulate_gre(ctx, &cfg, ep.net_id, &route, flags).map(Some)
    } else {
        encapsulate(ctx, &cfg, ep.net_id, &route, flags).map(Some)
    }
}

/// IPv4 + L4 header bytes in front of each GSO segment's payload; a large value (so
/// segments get cut) when the headers cannot be read.
#[inline(always)]
fn segment_headers(data: usize, data_end: usize, ip: &Ipv4Hdr) -> usize {
    const UNKNOWN: usize = 120;
    if ip.vihl != 0x45 {
        return UNKNOWN;
    }
    match ip.proto {
        IPPROTO_UDP => 20 + 8,
        IPPROTO_TCP => match read::<u8>(data, data_end, ETH_LEN + 20 + 12) {
            Some(doff) => 20 + ((doff >> 4) as usize) * 4,
            None => UNKNOWN,
        },
        _ => UNKNOWN,
    }
}

/// A direct network's peer on the same underlay subnet: send the packet as it is, with
/// the peer's underlay address as next hop (the kernel fills in the MACs).
fn route_direct(ctx: &TcContext, cfg: &DatapathConfig, route: &Route) -> i32 {
    count(ctx, Counter::RoutedDirect);
    if let Some(device) = wireguard::device_to(cfg, route.underlay_addr) {
        return wireguard::send(ctx, device);
    }
    let mut next_hop = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: u32::from_ne_bytes(route.underlay_addr),
        },
    };
    // SAFETY: next_hop is a valid bpf_redir_neigh that outlives the call, and its size
    // is passed along.
    unsafe {
        bpf_redirect_neigh(
            cfg.underlay_ifindex,
            &mut next_hop,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

/// Same host: address the frame to the other container and hand it to its namespace.
fn deliver_local(ctx: &TcContext, route: &Route) -> Result<i32, Counter> {
    let macs: [[u8; 6]; 2] = [route.dst_mac, route.src_mac];
    ctx.store(0, &macs, 0)
        .map_err(|_| Counter::DropHeaderWriteFailed)?;
    count(ctx, Counter::DeliveredLocal);
    // SAFETY: plain helper call; an unknown ifindex makes the kernel drop the packet.
    Ok(unsafe { bpf_redirect_peer(route.ifindex, 0) } as i32)
}

/// Another host: push outer IPv4 + UDP + VXLAN and send it to the peer's underlay address.
#[inline(always)]
fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    vni: u32,
    route: &Route,
    flags: u64,
) -> Result<i32, Counter> {
    // A socket's packets carry their flow's hash; only others need the flow dissector.
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let flow_hash = match unsafe { (*ctx.skb.skb).hash } {
        // SAFETY: as above.
        0 => unsafe { bpf_get_hash_recalc(ctx.skb.skb) },
        hash => hash,
    };
    let inner_len = ctx.len() as usize - ETH_LEN;
    ctx.adjust_room(ENCAP_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| Counter::DropAdjustRoomFailed)?;

    let ip_total = (ENCAP_OVERHEAD + inner_len) as u16;
    let outer_ip = outer_ipv4(cfg, route, IPPROTO_UDP, ip_total);
    let udp_len = ip_total - IPV4_LEN as u16;
    let headers = VxlanHeaders {
        outer_eth: OUTER_ETH,
        outer_ip,
        outer_udp: UdpHdr {
            src: udp_src_port(flow_hash).to_be_bytes(),
            dst: cfg.vxlan_port.to_be_bytes(),
            len: udp_len.to_be_bytes(),
            check: [0, 0], // allowed over IPv4 (RFC 7348), as every VXLAN peer does
        },
        vxlan: VxlanHdr::new(vni),
        inner_eth: inner_eth(cfg, route),
    };
    if !write(ctx.data(), ctx.data_end(), 0, headers) {
        return Err(Counter::DropHeaderWriteFailed);
    }
    Ok(send_to_peer(ctx, cfg, vni, route.underlay_addr))
}

/// Another host over GRE: push outer IPv4 + GRE (key = the network's VNI).
#[inline(always)]
fn encapsulate_gre(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    vni: u32,
    route: &Route,
    flags: u64,
) -> Result<i32, Counter> {
    let inner_len = ctx.len() as usize - ETH_LEN;
    ctx.adjust_room(GRE_ENCAP_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| Counter::DropAdjustRoomFailed)?;
    let ip_total = (GRE_ENCAP_OVERHEAD + inner_len) as u16;
    let headers = GreHeaders {
        outer_eth: OUTER_ETH,
        outer_ip: outer_ipv4(cfg, route, IPPROTO_GRE, ip_total),
        gre_flags: GRE_FLAGS_KEY.to_be_bytes(),
        gre_proto: ETH_P_TEB.to_be_bytes(),
        gre_key: vni.to_be_bytes(),
        inner_eth: inner_eth(cfg, route),
    };
    if !write(ctx.data(), ctx.data_end(), 0, headers) {
        return Err(Counter::DropHeaderWriteFailed);
    }
    Ok(send_to_peer(ctx, cfg, vni, route.underlay_addr))
}

/// The outer Ethernet header: `bpf_redirect_neigh` fills in the MACs from the
/// underlay's neighbour table.
const OUTER_ETH: EthHdr = EthHdr {
    dst_addr: [0; 6],
    src_addr: [0; 6],
    ether_type: ETH_P_IPV4.to_be(),
};

/// The inner Ethernet header: from this host's VTEP MAC to the peer's.
#[inline(always)]
fn inner_eth(cfg: &DatapathConfig, route: &Route) -> EthHdr {
    EthHdr {
        dst_addr: route.dst_mac,
        src_addr: cfg.vtep_mac,
        ether_type: ETH_P_IPV4.to_be(),
    }
}

/// The outer IPv4 header from this host to the route's peer, its checksum set.
#[inline(always)]
fn outer_ipv4(cfg: &DatapathConfig, route: &Route, proto: u8, total_len: u16) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len: total_len.to_be_bytes(),
        id: [0, 0],
        frags: 0x4000u16.to_be_bytes(), // DF: containers' MTU leaves room for the headers
        ttl: OUTER_TTL,
        proto,
        check: [0, 0],
        src_addr: cfg.underlay_addr,
        dst_addr: route.underlay_addr,
    };
    // SAFETY: Ipv4Hdr is 20 bytes of plain u8 fields, so it can be viewed as [u8; 20].
    let raw: &[u8; IPV4_LEN] = unsafe { &*(&ip as *const Ipv4Hdr as *const [u8; IPV4_LEN]) };
    ip.check = checksum::ipv4_header(raw).to_be_bytes();
    ip
}

/// Counts the packet (also in its network's traffic) and sends it out of the underlay
/// (`bpf_redirect_neigh` fills in the outer MACs from the underlay's neighbour table),
/// or to be encrypted when this host and the peer use WireGuard.
#[inline(always)]
fn send_to_peer(ctx: &TcContext, cfg: &DatapathConfig, vni: u32, peer: [u8; 4]) -> i32 {
    count_in(ctx, Counter::Encapsulated, vni);
    count_network(ctx, vni, Direction::Encapsulated);
    if let Some(device) = wireguard::device_to(cfg, peer) {
        return wireguard::send(ctx, device);
    }
    // SAFETY: plain helper call with no parameters struct; an unknown ifindex makes the
    // kernel drop the packet.
    (unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) }) as i32
}
