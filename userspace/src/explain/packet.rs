//! The packets `oxlay explain` probes with: a container's frame as it leaves the
//! container, or that frame inside VXLAN or GRE from a peer.
use std::net::Ipv4Addr;

/// The probe's own packet: addresses, protocol, ports, and its IPv4 length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
    pub protocol: L4,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 total length (headers and payload).
    pub size: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Icmp,
}

impl std::str::FromStr for L4 {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "tcp" => Ok(L4::Tcp),
            "udp" => Ok(L4::Udp),
            "icmp" => Ok(L4::Icmp),
            _ => anyhow::bail!("protocol {s:?}: use tcp, udp or icmp"),
        }
    }
}

impl Spec {
    /// The smallest IPv4 length the protocol's header fits in.
    pub fn min_size(protocol: L4) -> u16 {
        20 + match protocol {
            L4::Tcp => 20,
            L4::Udp | L4::Icmp => 8,
        }
    }
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + payload.len()) as u16).to_be_bytes());
    // DF, as a container's TCP and most UDP send it.
    ip.extend([0, 0, 0x40, 0, 64, proto, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(payload);
    ip
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    [&dst[..], &src, &ethertype.to_be_bytes(), payload].concat()
}

/// The probe's IPv4 packet (its L4 checksum left 0: no program checks it).
pub fn ip_packet(spec: &Spec) -> Vec<u8> {
    let size = spec.size.max(Spec::min_size(spec.protocol)) as usize;
    let mut l4 = vec![0u8; size - 20];
    let proto = match spec.protocol {
        L4::Tcp => {
            l4[..2].copy_from_slice(&spec.sport.to_be_bytes());
            l4[2..4].copy_from_slice(&spec.dport.to_be_bytes());
            l4[12] = 5 << 4; // data offset
            l4[13] = 0x02; // SYN
            6
        }
        L4::Udp => {
            l4[..2].copy_from_slice(&spec.sport.to_be_bytes());
            l4[2..4].copy_from_slice(&spec.dport.to_be_bytes());
            l4[4..6].copy_from_slice(&((size - 20) as u16).to_be_bytes());
            17
        }
        L4::Icmp => {
            l4[0] = 8; // echo request
            1
        }
    };
    ipv4(spec.from, spec.to, proto, &l4)
}

/// The frame a container sends: from its MAC to its gateway's.
pub fn container_frame(spec: &Spec, container_mac: [u8; 6], gateway_mac: [u8; 6]) -> Vec<u8> {
    ethernet(gateway_mac, container_mac, 0x0800, &ip_packet(spec))
}

/// How a peer wraps the frame.
pub struct Tunnel {
    pub peer: Ipv4Addr,
    pub local: Ipv4Addr,
    pub vni: u32,
    /// None: GRE (key = VNI); Some(port): VXLAN to this UDP port.
    pub vxlan_port: Option<u16>,
    pub peer_vtep: [u8; 6],
    pub local_vtep: [u8; 6],
}

/// The frame a peer sends for `spec`: outer Ethernet and IPv4, VXLAN or GRE, inner
/// Ethernet from its VTEP to ours.
pub fn tunnelled_frame(spec: &Spec, t: &Tunnel) -> Vec<u8> {
    let inner = ethernet(t.local_vtep, t.peer_vtep, 0x0800, &ip_packet(spec));
    let outer_ip = match t.vxlan_port {
        Some(port) => {
            let mut udp = Vec::new();
            udp.extend(49152u16.to_be_bytes());
            udp.extend(port.to_be_bytes());
            udp.extend(((8 + 8 + inner.len()) as u16).to_be_bytes());
            udp.extend([0, 0]);
            udp.extend([0x08, 0, 0, 0]);
            udp.extend(&t.vni.to_be_bytes()[1..]);
            udp.push(0);
            udp.extend(inner);
            ipv4(t.peer, t.local, 17, &udp)
        }
        None => {
            let mut gre = vec![0x20, 0, 0x65, 0x58];
            gre.extend(t.vni.to_be_bytes());
            gre.extend(inner);
            ipv4(t.peer, t.local, 47, &gre)
        }
    };
    ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 0x0800, &outer_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::flows;

    fn spec(protocol: L4) -> Spec {
        Spec {
            from: Ipv4Addr::new(10, 1, 0, 2),
            to: Ipv4Addr::new(10, 1, 1, 3),
            protocol,
            sport: 40000,
            dport: 80,
            size: 100,
        }
    }

    #[test]
    fn frames_read_back_as_what_was_asked() {
        let f = container_frame(&spec(L4::Tcp), [2; 6], [4; 6]);
        assert_eq!(f.len(), 14 + 100);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
        let (outer, packet, vni) = flows(&f, 4789);
        assert_eq!((outer, vni), (None, None));
        let p = packet.unwrap();
        assert_eq!(
            (p.protocol.as_str(), p.sport, p.dport),
            ("tcp", Some(40000), Some(80))
        );
        let t = Tunnel {
            peer: Ipv4Addr::new(192, 168, 50, 12),
            local: Ipv4Addr::new(192, 168, 50, 11),
            vni: 42,
            vxlan_port: Some(4789),
            peer_vtep: [6; 6],
            local_vtep: [8; 6],
        };
        let (outer, packet, vni) = flows(&tunnelled_frame(&spec(L4::Udp), &t), 4789);
        assert_eq!(vni, Some(42));
        assert_eq!(outer.unwrap().src, t.peer);
        assert_eq!(packet.unwrap().dport, Some(80));
        let gre = Tunnel {
            vxlan_port: None,
            ..t
        };
        let (outer, packet, vni) = flows(&tunnelled_frame(&spec(L4::Icmp), &gre), 4789);
        assert_eq!((outer.unwrap().protocol.as_str(), vni), ("gre", Some(42)));
        assert_eq!(packet.unwrap().protocol, "icmp");
        assert!("sctp".parse::<L4>().is_err());
    }
}
