//! oxlay's kernel programs.
//!
//! ```text
//!   container ──veth──▶ [oxlay_from_container]  TC ingress on the host-side veth
//!                          │ route lookup (LPM: network, inner dst)
//!                          ├─ local  ─▶ rewrite MACs, bpf_redirect_peer ─▶ other container
//!                          ├─ remote ─▶ push outer IPv4/UDP/VXLAN (or IPv4/GRE), bpf_redirect_neigh ─▶ underlay
//!                          │            (a peer both encrypt with: bpf_redirect ─▶ oxlay's WireGuard device)
//!                          └─ other  ─▶ host stack
//!
//!   underlay ─▶ [oxlay_decap_tc] TC ingress  or  [oxlay_decap_xdp] XDP
//!                          │ UDP to the VXLAN port (or Ethernet over GRE from a peer),
//!                          │ for this host? else ─▶ host stack
//!                          │ known peer, I flag (GRE: key only), known VNI, inner IPv4,
//!                          │ local endpoint?
//!                          └─ strip 50 (GRE: 42) bytes, rewrite MACs, bpf_redirect_peer ─▶ container
//!                             (XDP strips and marks the frame; TC on the same device delivers)
//!
//!   WireGuard device ─▶ [oxlay_from_wireguard] TC ingress: push an Ethernet header, then
//!                          the same classification and delivery as from the underlay
//! ```
//!
//! Parses: outer Ethernet, IPv4 (options only to reject them), UDP, VXLAN, GRE, inner
//! Ethernet and IPv4. Each entry point is a thin wrapper; the logic lives in one module per concern.
#![no_std]
#![no_main]

mod arp;
mod checksum;
mod counters;
mod decap;
mod echo;
mod encap;
mod l2;
mod maps;
mod monitor;
mod mtu;
mod parse;
mod wireguard;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    helpers::bpf_set_hash,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[classifier]
pub fn oxlay_from_container(ctx: TcContext) -> i32 {
    encap::from_container(&ctx)
}

#[classifier]
pub fn oxlay_decap_tc(ctx: TcContext) -> i32 {
    decap::tc(&ctx)
}

/// `frags`: multi-buffer frames (an MTU above a page, e.g. 9000) are accepted too.
#[xdp(frags)]
pub fn oxlay_decap_xdp(ctx: XdpContext) -> u32 {
    decap::xdp(&ctx)
}

/// TC ingress on oxlay's WireGuard device: decrypted packets from peers.
#[classifier]
pub fn oxlay_from_wireguard(ctx: TcContext) -> i32 {
    wireguard::from_wireguard(&ctx)
}

/// TC ingress on a layer-2 network's parent NIC: frames for its local containers.
#[classifier]
pub fn oxlay_l2_from_wire(ctx: TcContext) -> i32 {
    l2::from_wire(&ctx)
}

/// With `oxlay_decap_xdp`: delivers what it stripped (see `XdpDeliveryMeta` for why).
#[classifier]
pub fn oxlay_xdp_deliver_tc(ctx: TcContext) -> i32 {
    decap::tc_deliver_marked(&ctx)
}

/// Does nothing: the baseline that benchmarks subtract from the programs above.
#[classifier]
pub fn oxlay_noop_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

/// Benchmarks only: `oxlay_from_container` on a packet with a flow hash, as a socket's
/// packets carry one (a test run cannot give it one).
#[classifier]
pub fn oxlay_bench_from_container_hashed(ctx: TcContext) -> i32 {
    set_bench_hash(&ctx);
    encap::from_container(&ctx)
}

/// Benchmarks only: the baseline of the program above.
#[classifier]
pub fn oxlay_bench_set_hash(ctx: TcContext) -> i32 {
    set_bench_hash(&ctx);
    TC_ACT_OK as i32
}

#[inline(always)]
fn set_bench_hash(ctx: &TcContext) {
    // SAFETY: plain helper call on this program's own packet.
    unsafe { bpf_set_hash(ctx.skb.skb, 0x5eed_f10e) };
}

/// Does nothing: the XDP baseline for benchmarks.
#[xdp]
pub fn oxlay_noop_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
