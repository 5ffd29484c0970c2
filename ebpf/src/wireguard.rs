//! oxlay's WireGuard device: packets to a peer that encrypts go through it, and what it
//! decrypts comes back through `oxlay_from_wireguard`.
//!
//! The device is a layer-3 device (no Ethernet header). `bpf_redirect` to it drops the
//! frame's Ethernet header by itself; WireGuard picks the peer by the outer destination
//! (a peer's allowed IPs are its underlay address and its direct blocks) and sends the
//! packet encrypted over UDP. Coming back, the program puts an Ethernet header in front
//! of the decrypted packet, so the underlay's classification and delivery apply as they
//! are. WireGuard has authenticated the sender: only that peer's key can send from its
//! allowed IPs.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_head},
    programs::TcContext,
};
use network_types::eth::EthHdr;
use oxlay_common::{wire::ETH_LEN, Counter, DatapathConfig, PEER_WIREGUARD};

use crate::{
    counters::{count, count_also},
    decap, maps,
    parse::{write, Arrival, ETH_P_IPV4},
};

/// oxlay's WireGuard device, when packets to `peer` are to be encrypted.
#[inline(always)]
pub fn device_to(cfg: &DatapathConfig, peer: [u8; 4]) -> Option<u32> {
    if cfg.wireguard_ifindex == 0 || maps::peer_flags(peer) & PEER_WIREGUARD == 0 {
        return None;
    }
    Some(cfg.wireguard_ifindex)
}

/// Hands a frame for a peer to the WireGuard device (already counted as encapsulated or
/// routed direct).
#[inline(always)]
pub fn send(ctx: &TcContext, device: u32) -> i32 {
    count_also(ctx, Counter::SentEncrypted);
    // SAFETY: plain helper call; an unknown ifindex makes the kernel drop the packet.
    (unsafe { bpf_redirect(device, 0) }) as i32
}

/// Whether a packet from `peer` must be dropped for arriving unencrypted: both hosts
/// encrypt, so it can only be forged (or the peer lost its WireGuard setup).
#[inline(always)]
pub fn arrived_unencrypted(cfg: &DatapathConfig, peer: [u8; 4], arrival: Arrival) -> bool {
    arrival == Arrival::Underlay
        && cfg.wireguard_ifindex != 0
        && maps::peer_flags(peer) & PEER_WIREGUARD != 0
}

pub fn from_wireguard(ctx: &TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    let protocol = unsafe { (*ctx.skb.skb).protocol };
    if protocol != u32::from(ETH_P_IPV4.to_be()) {
        // Peers' allowed IPs are IPv4 only; nothing else is oxlay's.
        count(ctx, Counter::DropWireguardNotOverlay);
        return TC_ACT_SHOT as i32;
    }
    count_also(ctx, Counter::ReceivedEncrypted);
    // SAFETY: ctx.skb.skb is this program's packet; the helper grows its headroom and
    // moves the MAC header to the new front (the network header stays).
    if unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_LEN as u32, 0) } != 0 {
        count(ctx, Counter::DropAdjustRoomFailed);
        return TC_ACT_SHOT as i32;
    }
    let eth = EthHdr {
        dst_addr: [0; 6],
        src_addr: [0; 6],
        ether_type: ETH_P_IPV4.to_be(),
    };
    if !write(ctx.data(), ctx.data_end(), 0, eth) {
        count(ctx, Counter::DropHeaderWriteFailed);
        return TC_ACT_SHOT as i32;
    }
    decap::tc_from(ctx, Arrival::Wireguard)
}
