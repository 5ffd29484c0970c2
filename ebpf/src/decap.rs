//! VXLAN and GRE packets from peer hosts: strip the outer headers and deliver to the
//! container.
//! The same classification runs under TC and XDP; only the packet surgery differs.
//! In XDP mode, XDP strips the headers and TC (same interface) does the delivery.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{
        bpf_redirect, bpf_redirect_peer, bpf_xdp_adjust_head, bpf_xdp_adjust_meta,
        bpf_xdp_get_buff_len,
    },
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use network_types::eth::EthHdr;
use oxlay_common::{
    monitor::PROBE_VIA_WIREGUARD, wire::ETH_LEN, Counter, Route, XdpDeliveryMeta,
};

use crate::{
    counters::{count, count_in, count_network, Direction, Frame},
    echo, maps,
    parse::{classify, write, Arrival, Decap, ETH_P_IPV4, IPPROTO_UDP, VXLAN_CLASSIFY_LEN},
};

/// The Ethernet header a decapsulated frame gets: from the container's gateway to it.
#[inline(always)]
fn delivery_eth(route: &Route) -> EthHdr {
    EthHdr {
        dst_addr: route.dst_mac,
        src_addr: route.src_mac,
        ether_type: ETH_P_IPV4.to_be(),
    }
}

/// TC half of XDP mode: delivers frames the XDP program stripped and marked; leaves
/// everything else (already classified and counted by XDP) to the stack.
pub fn tc_deliver_marked(ctx: &TcContext) -> i32 {
    match xdp_delivery(ctx) {
        // SAFETY: plain helper call; an unknown ifindex makes the kernel drop the packet.
        Some(ifindex) => (unsafe { bpf_redirect_peer(ifindex, 0) }) as i32,
        None => TC_ACT_OK as i32,
    }
}

pub fn tc(ctx: &TcContext) -> i32 {
    tc_from(ctx, probe_arrival(ctx))
}

/// Where a packet on the underlay came from: the underlay, unless it is `oxlay
/// explain`'s probe of a packet from a peer that encrypts.
#[inline(always)]
fn probe_arrival(ctx: &TcContext) -> Arrival {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let cb1 = unsafe { (*ctx.skb.skb).cb[1] };
    if cb1 == PROBE_VIA_WIREGUARD && ctx.is_probe() {
        Arrival::Wireguard
    } else {
        Arrival::Underlay
    }
}

/// TC decapsulation of a packet that came `arrival` (its Ethernet header at the front).
#[inline(always)]
pub fn tc_from(ctx: &TcContext, arrival: Arrival) -> i32 {
    let Some(cfg) = maps::config() else {
        return TC_ACT_OK as i32;
    };
    if ctx.data() + VXLAN_CLASSIFY_LEN > ctx.data_end() {
        // Headers may sit in paged data; make them linear (as much as there is: a GRE
        // packet may be shorter). Failure just means the packet is short, which
        // classification handles.
        let _ = ctx.pull_data((VXLAN_CLASSIFY_LEN as u32).min(ctx.len()));
    }
    match classify(ctx.data(), ctx.data_end(), ctx.len() as usize, cfg, arrival) {
        // The device carries peers' overlay packets only: the rest is not let in.
        Decap::Pass if arrival == Arrival::Wireguard => {
            count(ctx, Counter::DropWireguardNotOverlay);
            TC_ACT_SHOT as i32
        }
        Decap::Pass => {
            count(ctx, Counter::PassedToStack);
            TC_ACT_OK as i32
        }
        Decap::Drop(reason) => {
            count(ctx, reason);
            TC_ACT_SHOT as i32
        }
        Decap::Deliver {
            route,
            strip,
            gre,
            vni,
        } => match tc_strip_and_deliver(ctx, &route, strip, gre, vni) {
            Ok(action) => action,
            Err(reason) => {
                count(ctx, reason);
                TC_ACT_SHOT as i32
            }
        },
        Decap::DeliverDirect(route) => {
            if !write(ctx.data(), ctx.data_end(), 0, delivery_eth(&route)) {
                count(ctx, Counter::DropHeaderWriteFailed);
                return TC_ACT_SHOT as i32;
            }
            count(ctx, Counter::DeliveredDirect);
            deliver(route.ifindex, is_gso(ctx))
        }
        Decap::Echo => {
            if !echo::reflect(ctx.data(), ctx.data_end()) {
                count(ctx, Counter::DropHeaderWriteFailed);
                return TC_ACT_SHOT as i32;
            }
            count(ctx, Counter::EchoAnswered);
            // Back out of the interface it came in on.
            // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program;
            // redirecting to its own interface is a plain helper call.
            unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
        }
    }
}

/// The destination left by the XDP program in the frame's metadata, if any.
#[inline(always)]
fn xdp_delivery(ctx: &TcContext) -> Option<u32> {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    let data = ctx.data();
    if meta + core::mem::size_of::<XdpDeliveryMeta>() > data {
        return None;
    }
    // SAFETY: the check above proves the metadata lies between data_meta and data.
    let m = unsafe { (meta as *const XdpDeliveryMeta).read_unaligned() };
    (m.magic == XdpDeliveryMeta::MAGIC).then_some(m.ifindex)
}

/// `BPF_F_ADJ_ROOM_DECAP_L4_UDP` and `_GRE` (kernels after 6.18): the shrink also
/// resets the tunnel GSO state (`SKB_GSO_UDP_TUNNEL` or `SKB_GSO_GRE`,
/// `skb->encapsulation`) of a GSO packet.
const DECAP_L4_UDP: u64 = 1 << 10;
const DECAP_L4_GRE: u64 = 1 << 9;

/// Removes the `strip` bytes in front of the inner Ethernet header (GRE's or VXLAN's
/// outer headers) and delivers. (Inlined: six arguments are more than a BPF call
/// takes, and two programs use it.)
#[inline(always)]
fn tc_strip_and_deliver(
    ctx: &TcContext,
    route: &Route,
    strip: usize,
    gre: bool,
    vni: u32,
) -> Result<i32, Counter> {
    let shrink = -(strip as i32);
    let decap_l4 = if gre { DECAP_L4_GRE } else { DECAP_L4_UDP };
    // FIXED_GSO: the inner segments keep their size (without it the kernel grows
    // gso_size by the 50 bytes removed, wrong for a container that forwards, and it
    // refuses UDP GSO packets outright).
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64;
    let gso = is_gso(ctx);
    // A GSO packet (it reached us whole: a virtual underlay such as veth, VM to VM, or
    // for GRE any underlay, whose GRO coalesces GRE) keeps its tunnel GSO state unless
    // the kernel can reset it.
    let reset = gso
        && ctx
            .adjust_room(shrink, BPF_ADJ_ROOM_MAC, flags | decap_l4)
            .is_ok();
    if !reset {
        // The stale state breaks the segmentation a UDP socket does on receive: the
        // datagrams would vanish in the container. Say so instead. (TCP takes the
        // packet whole.)
        if gso && ctx.load::<u8>(strip + ETH_LEN + 9) == Ok(IPPROTO_UDP) {
            return Err(Counter::DropUdpGsoTunnelState);
        }
        // DECAP_L3_IPV4 (6.3+) is refused by older kernels; there the shrink goes alone.
        if ctx.adjust_room(shrink, BPF_ADJ_ROOM_MAC, flags).is_err() {
            ctx.adjust_room(shrink, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO as u64)
                .map_err(|_| Counter::DropAdjustRoomFailed)?;
        }
    }
    if !write(ctx.data(), ctx.data_end(), 0, delivery_eth(route)) {
        return Err(Counter::DropHeaderWriteFailed);
    }
    count_in(ctx, Counter::Decapsulated, vni);
    count_network(ctx, vni, Direction::Decapsulated);
    Ok(deliver(route.ifindex, gso))
}

/// Hands a frame addressed to a container to it, `host_veth` being the host's end of its
/// veth. A frame off the wire goes out through that veth, whose NAPI on the container's
/// end coalesces a flow's frames (GRO; see `ethtool.rs` in the daemon for the settings
/// this needs) before the container's stack sees them. A GSO packet is whole already
/// and enters the container's namespace directly.
#[inline(always)]
fn deliver(host_veth: u32, gso: bool) -> i32 {
    if gso {
        // SAFETY: plain helper call; an unknown ifindex makes the kernel drop it.
        (unsafe { bpf_redirect_peer(host_veth, 0) }) as i32
    } else {
        // SAFETY: as above.
        (unsafe { bpf_redirect(host_veth, 0) }) as i32
    }
}

/// Whether the kernel holds this packet as a GSO super-packet.
#[inline(always)]
fn is_gso(ctx: &TcContext) -> bool {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    unsafe { (*ctx.skb.skb).gso_size != 0 }
}

pub fn xdp(ctx: &XdpContext) -> u32 {
    let Some(cfg) = maps::config() else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: plain helper call on this program's own context; with frags, the first
    // buffer (data..data_end) may be only part of the frame.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.as_ptr() as *mut _) } as usize;
    match classify(ctx.data(), ctx.data_end(), frame_len, cfg, Arrival::Underlay) {
        Decap::Pass => {
            count(ctx, Counter::PassedToStack);
            xdp_action::XDP_PASS
        }
        Decap::Drop(reason) => {
            count(ctx, reason);
            xdp_action::XDP_DROP
        }
        Decap::Deliver {
            route, strip, vni, ..
        } => match xdp_strip_and_deliver(ctx, &route, strip as i32) {
            Ok(action) => {
                count_in(ctx, Counter::Decapsulated, vni);
                count_network(ctx, vni, Direction::Decapsulated);
                action
            }
            Err(reason) => {
                count(ctx, reason);
                xdp_action::XDP_DROP
            }
        },
        Decap::Echo => {
            if !echo::reflect(ctx.data(), ctx.data_end()) {
                count(ctx, Counter::DropHeaderWriteFailed);
                return xdp_action::XDP_DROP;
            }
            count(ctx, Counter::EchoAnswered);
            xdp_action::XDP_TX
        }
        Decap::DeliverDirect(route) => match xdp_strip_and_deliver(ctx, &route, 0) {
            Ok(action) => {
                count(ctx, Counter::DeliveredDirect);
                action
            }
            Err(reason) => {
                count(ctx, reason);
                xdp_action::XDP_DROP
            }
        },
    }
}

/// Removes `strip` bytes (the outer headers; 0 for a direct packet), addresses the frame
/// to the container and leaves metadata for the TC program that delivers it.
fn xdp_strip_and_deliver(ctx: &XdpContext, route: &Route, strip: i32) -> Result<u32, Counter> {
    // Dropping the outer headers leaves the inner Ethernet header at the front.
    // SAFETY: plain helper call on this program's own context.
    if strip != 0 && unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, strip) } != 0 {
        return Err(Counter::DropAdjustRoomFailed);
    }
    let meta_len = core::mem::size_of::<XdpDeliveryMeta>() as i32;
    // SAFETY: plain helper call on this program's own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.as_ptr() as *mut _, -meta_len) } != 0 {
        return Err(Counter::DropAdjustRoomFailed);
    }
    let (meta, data, data_end) = (ctx.metadata(), ctx.data(), ctx.data_end());
    if meta + meta_len as usize > data || data + core::mem::size_of::<EthHdr>() > data_end {
        return Err(Counter::DropTruncatedInner);
    }
    // SAFETY: the checks above prove both writes lie inside the metadata and packet.
    unsafe {
        (meta as *mut XdpDeliveryMeta).write_unaligned(XdpDeliveryMeta {
            magic: XdpDeliveryMeta::MAGIC,
            ifindex: route.ifindex,
        });
        (data as *mut EthHdr).write_unaligned(delivery_eth(route));
    }
    // The TC program on this interface delivers it (see XdpDeliveryMeta for why).
    Ok(xdp_action::XDP_PASS)
}
