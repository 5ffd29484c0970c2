//! Wire-format constants of VXLAN over IPv4 (RFC 7348) and of Ethernet over GRE with a
//! key (RFC 2890; what Linux's `gretap` sends).

/// The containers' gateway (link-local): the host's side of every container's veth,
/// where oxlay's resolver answers.
pub const GATEWAY: [u8; 4] = [169, 254, 1, 1];
/// IANA's VXLAN port; the default.
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN "I" flag: the VNI field is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const VXLAN_LEN: usize = 8;
/// Bytes added in front of the inner Ethernet frame: outer IPv4 + UDP + VXLAN + the
/// inner Ethernet header that the container's frame keeps.
pub const ENCAP_OVERHEAD: usize = IPV4_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN;
/// IPv4's protocol number for GRE.
pub const IPPROTO_GRE: u8 = 47;
/// GRE header with the key present: flags and version, protocol, key.
pub const GRE_LEN: usize = 8;
/// GRE flags and version with only the key present (K bit), version 0.
pub const GRE_FLAGS_KEY: u16 = 0x2000;
/// GRE protocol type of Transparent Ethernet Bridging: an Ethernet frame follows.
pub const ETH_P_TEB: u16 = 0x6558;
/// Bytes GRE adds in front of the inner Ethernet frame, with its Ethernet header:
/// outer IPv4 + GRE + inner Ethernet (8 fewer than VXLAN: no UDP).
pub const GRE_ENCAP_OVERHEAD: usize = IPV4_LEN + GRE_LEN + ETH_LEN;
/// Outer UDP source ports carry flow entropy in this range (RFC 7348 section 5).
pub const SRC_PORT_MIN: u16 = 49152;
pub const SRC_PORT_MAX: u16 = 65535;
/// TTL of outer IPv4 headers.
pub const OUTER_TTL: u8 = 64;
/// `oxlay doctor`'s probe: a VXLAN header with no flags (no I flag: never valid
/// traffic) and these bytes in its first reserved field; a peer's program sends it
/// back.
pub const ECHO_MAGIC: [u8; 3] = *b"oxd";

/// Largest valid VNI (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// Maps a flow hash onto the source-port range, as Linux's `udp_flow_src_port` does
/// (multiply-shift, so the whole range is used evenly).
pub const fn udp_src_port(flow_hash: u32) -> u16 {
    let range = (SRC_PORT_MAX - SRC_PORT_MIN + 1) as u64;
    SRC_PORT_MIN + ((flow_hash as u64 * range) >> 32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_is_fifty_bytes_and_gre_forty_two() {
        assert_eq!(ENCAP_OVERHEAD, 50);
        assert_eq!(GRE_ENCAP_OVERHEAD, 42);
    }

    #[test]
    fn src_port_spans_the_range() {
        assert_eq!(udp_src_port(0), SRC_PORT_MIN);
        assert_eq!(udp_src_port(u32::MAX), SRC_PORT_MAX);
        assert!(udp_src_port(0x8000_0000) > SRC_PORT_MIN);
    }
}
