//! Packets too big for the underlay once encapsulated. GSO packets are fine: their
//! segments are cut to fit (see `encap.rs`). A single packet with DF set is answered
//! with ICMP "fragmentation needed" carrying the MTU that fits, so path MTU discovery
//! works even in a container whose MTU was left at 1500; without DF it is dropped.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
// The ICMP error comes from the gateway containers route through.
use oxlay_common::{wire::ENCAP_OVERHEAD, wire::ETH_LEN, wire::GATEWAY, Counter};

use crate::{checksum, counters::count};

const IPPROTO_ICMP: u8 = 1;
/// Bytes of the offending packet quoted in the error: its IPv4 header and 8 more.
const QUOTE: usize = 28;

#[repr(C)]
struct FragNeeded {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp_type: u8,
    icmp_code: u8,
    icmp_check: [u8; 2],
    unused: [u8; 2],
    next_hop_mtu: [u8; 2],
    quote: [u8; QUOTE],
}
const REPLY_LEN: usize = core::mem::size_of::<FragNeeded>();
const _: () = assert!(REPLY_LEN == ETH_LEN + 20 + 8 + QUOTE);

/// Whether an IPv4 packet of `ip_len` bytes fits once encapsulated.
#[inline(always)]
pub fn fits(ip_len: usize, underlay_mtu: u16) -> bool {
    ip_len + ENCAP_OVERHEAD <= underlay_mtu as usize
}

/// Turns the packet into an ICMP "fragmentation needed" for the sender (DF set) and
/// sends it back out of the interface it came in on; drops it otherwise.
pub fn too_big(ctx: &TcContext, eth: &EthHdr, ip: &Ipv4Hdr, underlay_mtu: u16) -> i32 {
    count(ctx, Counter::DropTooBig);
    let df = u16::from_be_bytes(ip.frags) & 0x4000 != 0;
    if !df || ip.vihl != 0x45 {
        return TC_ACT_SHOT as i32;
    }
    let Ok(quote) = ctx.load::<[u8; QUOTE]>(ETH_LEN) else {
        return TC_ACT_SHOT as i32;
    };
    let next_hop_mtu = underlay_mtu.saturating_sub(ENCAP_OVERHEAD as u16);
    let mut reply = FragNeeded {
        eth: EthHdr {
            dst_addr: eth.src_addr,
            src_addr: eth.dst_addr,
            ether_type: eth.ether_type,
        },
        ip: Ipv4Hdr {
            vihl: 0x45,
            tos: 0xc0, // internetwork control, as Linux sends ICMP errors
            tot_len: ((REPLY_LEN - ETH_LEN) as u16).to_be_bytes(),
            id: [0, 0],
            frags: [0, 0],
            ttl: 64,
            proto: IPPROTO_ICMP,
            check: [0, 0],
            src_addr: GATEWAY,
            dst_addr: ip.src_addr,
        },
        icmp_type: 3,
        icmp_code: 4,
        icmp_check: [0, 0],
        unused: [0, 0],
        next_hop_mtu: next_hop_mtu.to_be_bytes(),
        quote,
    };
    // SAFETY: Ipv4Hdr is 20 bytes of plain u8 fields, so it can be viewed as [u8; 20].
    let raw: &[u8; 20] = unsafe { &*(&reply.ip as *const Ipv4Hdr as *const [u8; 20]) };
    reply.ip.check = checksum::ipv4_header(raw).to_be_bytes();
    reply.icmp_check = icmp_checksum(&reply).to_be_bytes();
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN as u32, 0) } != 0 {
        return TC_ACT_SHOT as i32;
    }
    if ctx.store(0, &reply, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program; plain
    // helper call that sends the reply out of the veth the packet came in on.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
}

/// The checksum of the ICMP part (type .. end of quote), checksum field zero.
#[inline(always)]
fn icmp_checksum(r: &FragNeeded) -> u16 {
    let mut sum: u32 = ((r.icmp_type as u32) << 8) | r.icmp_code as u32;
    sum += u16::from_be_bytes(r.unused) as u32;
    sum += u16::from_be_bytes(r.next_hop_mtu) as u32;
    checksum::finish(checksum::add_words(sum, &r.quote))
}
