//! `oxlay doctor`'s probes: a VXLAN packet from a peer without the I flag and with
//! `ECHO_MAGIC` in the first reserved bytes goes back to where it came from, so the
//! peer learns that this host's program answers on the VXLAN port and which sizes
//! pass the path. (Without the I flag it is no valid VXLAN: no real traffic looks so.)
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::parse::{read, write};

/// The outer headers, read and written as one (one bounds check the verifier follows).
#[repr(C)]
#[derive(Clone, Copy)]
struct Outer {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
}

/// Swaps the Ethernet, IPv4 and UDP source and destination in place (the IPv4 and UDP
/// checksums stay valid: their sums do not depend on the order). Whether it could.
#[inline(always)]
pub fn reflect(data: usize, data_end: usize) -> bool {
    let Some(o) = read::<Outer>(data, data_end, 0) else {
        return false;
    };
    let swapped = Outer {
        eth: EthHdr {
            dst_addr: o.eth.src_addr,
            src_addr: o.eth.dst_addr,
            ..o.eth
        },
        ip: Ipv4Hdr {
            src_addr: o.ip.dst_addr,
            dst_addr: o.ip.src_addr,
            ..o.ip
        },
        udp: UdpHdr {
            src: o.udp.dst,
            dst: o.udp.src,
            ..o.udp
        },
    };
    write(data, data_end, 0, swapped)
}
