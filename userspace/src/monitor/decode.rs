//! A ring buffer record to what `oxlay monitor` shows: the counter's name and meaning,
//! the interface and network, and the addresses read from the captured headers
//! (outer IPv4 and UDP/VXLAN or GRE when encapsulated, then the packet inside).
use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use oxlay_common::{
    monitor::{MonitorEvent, CAPTURE_LEN},
    CounterKind, COUNTERS,
};
use serde::{Deserialize, Serialize};

/// One event as the CLI prints it (`--json`: one per line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// RFC 3339, microseconds, UTC.
    pub time: String,
    /// "drop" or "trace" (a forwarded packet).
    pub kind: String,
    /// The counter: a drop reason, or what was done with the packet.
    pub reason: String,
    pub meaning: String,
    pub interface: String,
    pub ifindex: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The frame's length in bytes.
    pub length: u32,
    /// The underlay headers of an encapsulated packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<Flow>,
    /// The packet: the container's (inside the tunnel when encapsulated), or the
    /// host's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<Flow>,
}

/// Addresses, protocol and ports of one IPv4 header (and the ARP sender and target).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// "tcp", "udp", "icmp", "gre", "arp", or the protocol number.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
}

/// What decoding needs from the daemon: its VXLAN port, which network each local
/// container's veth is on, network names, interface names.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub vxlan_port: u16,
    /// Host-side veth ifindex -> the container's VNI.
    pub endpoint_vni: BTreeMap<u32, u32>,
    pub network_names: BTreeMap<u32, String>,
    pub interfaces: BTreeMap<u32, String>,
}

const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_TEB: u16 = 0x6558;
const VXLAN_LEN: usize = 8;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// The flow of the IPv4 header at `at`, and where its payload starts.
fn ipv4_flow(b: &[u8], at: usize) -> Option<(Flow, usize, u8)> {
    let ihl = usize::from(b.get(at)? & 0x0f) * 4;
    let proto = *b.get(at + 9)?;
    let l4 = at + ihl.max(20);
    let ports = matches!(proto, 6 | 17);
    let flow = Flow {
        src: ipv4_at(b, at + 12)?,
        dst: ipv4_at(b, at + 16)?,
        protocol: match proto {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            47 => "gre".into(),
            n => n.to_string(),
        },
        sport: u16_at(b, l4).filter(|_| ports),
        dport: u16_at(b, l4 + 2).filter(|_| ports),
    };
    Some((flow, l4, proto))
}

/// The flow of the Ethernet frame at `at`: IPv4, or ARP's sender and target.
fn frame_flow(b: &[u8], at: usize) -> Option<(Flow, usize, u8)> {
    match u16_at(b, at + 12)? {
        ETH_P_IPV4 => ipv4_flow(b, at + ETH_LEN),
        ETH_P_ARP => {
            let arp = at + ETH_LEN;
            let flow = Flow {
                src: ipv4_at(b, arp + 14)?,
                dst: ipv4_at(b, arp + 24)?,
                protocol: "arp".into(),
                sport: None,
                dport: None,
            };
            Some((flow, arp, 0))
        }
        _ => None,
    }
}

/// (outer, packet, VNI) of captured headers.
pub fn flows(b: &[u8], vxlan_port: u16) -> (Option<Flow>, Option<Flow>, Option<u32>) {
    let Some((first, l4, proto)) = frame_flow(b, 0) else {
        return (None, None, None);
    };
    let vni_at = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes([
            0,
            *b.get(at)?,
            *b.get(at + 1)?,
            *b.get(at + 2)?,
        ]))
    };
    let tunnel = match proto {
        17 if first.dport == Some(vxlan_port) => {
            vni_at(l4 + 8 + 4).map(|vni| (vni, l4 + 8 + VXLAN_LEN))
        }
        // GRE with a key (the VNI, all 32 bits), carrying Ethernet: flags, protocol, key.
        47 if u16_at(b, l4 + 2) == Some(ETH_P_TEB) => {
            let key = b.get(l4 + 4..l4 + 8).and_then(|k| k.try_into().ok());
            key.map(|k| (u32::from_be_bytes(k), l4 + 8))
        }
        _ => None,
    };
    match tunnel {
        Some((vni, inner)) => {
            let packet = frame_flow(b, inner).map(|(f, _, _)| f);
            (Some(first), packet, Some(vni))
        }
        None => (None, Some(first), None),
    }
}

/// Microseconds since the epoch, RFC 3339.
fn rfc3339(wall: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(wall).to_string()
}

/// Decodes one ring buffer record. `monotonic_now` and `wall_now` are read together,
/// to turn the kernel's monotonic time into wall-clock time.
pub fn decode(
    raw: &[u8],
    cx: &Context,
    monotonic_now: Duration,
    wall_now: std::time::SystemTime,
) -> Option<EventView> {
    if raw.len() < std::mem::size_of::<MonitorEvent>() {
        return None;
    }
    // SAFETY: `raw` holds at least a MonitorEvent's bytes (checked above), a plain
    // repr(C) type for which every bit pattern is valid; read_unaligned copies it.
    let e: MonitorEvent = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let info = COUNTERS.get(e.counter as usize)?;
    let captured = &e.headers[..(e.captured as usize).min(CAPTURE_LEN)];
    let (outer, packet, tunnel_vni) = flows(captured, cx.vxlan_port);
    // The program's word first (it knows it after decapsulation too), then the
    // tunnel's header, then the container's veth.
    let vni = (e.vni != 0)
        .then_some(e.vni)
        .or(tunnel_vni)
        .or_else(|| cx.endpoint_vni.get(&e.ifindex).copied());
    let age = monotonic_now.saturating_sub(Duration::from_nanos(e.time_ns));
    Some(EventView {
        time: rfc3339(wall_now - age),
        kind: match info.kind {
            CounterKind::Drop => "drop",
            CounterKind::Forward | CounterKind::Monitor => "trace",
        }
        .into(),
        reason: info.name.into(),
        meaning: info.help.into(),
        interface: cx
            .interfaces
            .get(&e.ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{}", e.ifindex)),
        ifindex: e.ifindex,
        network: vni.and_then(|v| cx.network_names.get(&v).cloned()),
        vni,
        length: e.len,
        outer,
        packet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxlay_common::Counter;

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        ip.extend(src);
        ip.extend(dst);
        ip.extend(l4);
        ip
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2; 12];
        f.extend(ethertype.to_be_bytes());
        f.extend(payload);
        f
    }

    fn event(counter: Counter, frame: &[u8]) -> Vec<u8> {
        let mut e = MonitorEvent {
            time_ns: 5_000_000_000,
            counter: counter as u32,
            ifindex: 7,
            len: frame.len() as u32 + 1000,
            captured: frame.len().min(CAPTURE_LEN) as u32,
            ..Default::default()
        };
        let n = frame.len().min(CAPTURE_LEN);
        e.headers[..n].copy_from_slice(&frame[..n]);
        // SAFETY: MonitorEvent is plain repr(C) data; viewed as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                (&e as *const MonitorEvent).cast::<u8>(),
                std::mem::size_of::<MonitorEvent>(),
            )
        }
        .to_vec()
    }

    fn cx() -> Context {
        Context {
            vxlan_port: 4789,
            endpoint_vni: [(7, 42)].into(),
            network_names: [(42, "blue".to_owned())].into(),
            interfaces: [(7, "ox1234".to_owned())].into(),
        }
    }

    #[test]
    fn a_vxlan_drop_shows_outer_and_inner_flows_and_the_vni() {
        let tcp = [0x30, 0x39, 0, 80, 0, 0, 0, 0];
        let inner = eth(ETH_P_IPV4, &ipv4([10, 1, 0, 2], [10, 1, 1, 3], 6, &tcp));
        let mut udp = vec![0xc0, 0x00, 0x12, 0xb5, 0, 0, 0, 0];
        udp.extend([0x08, 0, 0, 0, 0, 0, 99, 0]);
        udp.extend(inner);
        let frame = eth(
            ETH_P_IPV4,
            &ipv4([192, 168, 50, 1], [192, 168, 50, 11], 17, &udp),
        );
        let wall = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let v = decode(
            &event(Counter::DropUnknownPeer, &frame),
            &cx(),
            Duration::from_secs(6),
            wall,
        )
        .unwrap();
        assert_eq!(v.kind, "drop");
        assert_eq!(v.reason, "drop_unknown_peer");
        assert_eq!(v.time, "2027-01-15T07:59:59.000000Z");
        assert_eq!(v.vni, Some(99), "the VNI of the header, not the veth's");
        assert_eq!(v.network, None);
        let outer = v.outer.as_ref().unwrap();
        assert_eq!(
            (outer.src, outer.dport),
            (Ipv4Addr::new(192, 168, 50, 1), Some(4789))
        );
        let p = v.packet.as_ref().unwrap();
        assert_eq!(
            (p.src, p.dst, p.protocol.as_str(), p.sport, p.dport),
            (
                Ipv4Addr::new(10, 1, 0, 2),
                Ipv4Addr::new(10, 1, 1, 3),
                "tcp",
                Some(12345),
                Some(80)
            )
        );
        assert_eq!(v.interface, "ox1234");
        assert!(super::super::line(&v).contains("drop drop_unknown_peer on ox1234 vni 99: 10.1.0.2:12345 -> 10.1.1.3:80 tcp (outer 192.168.50.1:49152 -> 192.168.50.11:4789 udp)"), "{}", super::super::line(&v));
    }

    #[test]
    fn a_containers_packet_takes_the_network_of_its_veth() {
        let frame = eth(
            ETH_P_IPV4,
            &ipv4([10, 1, 0, 2], [10, 1, 1, 3], 1, &[8, 0, 0, 0]),
        );
        let v = decode(
            &event(Counter::Encapsulated, &frame),
            &cx(),
            Duration::from_secs(5),
            std::time::SystemTime::now(),
        )
        .unwrap();
        assert_eq!(v.kind, "trace");
        assert_eq!((v.vni, v.network.as_deref()), (Some(42), Some("blue")));
        assert_eq!(v.outer, None);
        assert_eq!(v.packet.unwrap().protocol, "icmp");
    }

    #[test]
    fn gre_arp_and_short_or_unknown_records_decode_as_far_as_they_go() {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend([2; 6]);
        arp.extend([10, 1, 0, 2]);
        arp.extend([0; 6]);
        arp.extend([10, 1, 0, 1]);
        let arp_frame = eth(ETH_P_ARP, &arp);
        let mut gre = vec![0x20, 0, 0x65, 0x58, 0, 0, 0, 42];
        gre.extend(&arp_frame);
        let frame = eth(
            ETH_P_IPV4,
            &ipv4([192, 168, 50, 12], [192, 168, 50, 11], 47, &gre),
        );
        let v = decode(
            &event(Counter::DropBadGre, &frame),
            &cx(),
            Duration::ZERO,
            std::time::SystemTime::now(),
        )
        .unwrap();
        assert_eq!(v.vni, Some(42));
        assert_eq!(v.network.as_deref(), Some("blue"));
        let p = v.packet.unwrap();
        assert_eq!(
            (p.protocol.as_str(), p.dst),
            ("arp", Ipv4Addr::new(10, 1, 0, 1))
        );
        // Only 20 bytes captured: no flow, but the event.
        let short = decode(
            &event(Counter::DropTruncatedInner, &frame[..20]),
            &cx(),
            Duration::ZERO,
            std::time::SystemTime::now(),
        )
        .unwrap();
        assert_eq!((short.outer, short.packet), (None, None));
        // A counter this build does not know, or a record too short: nothing.
        let mut unknown = event(Counter::DropBadGre, &frame);
        unknown[8..12].copy_from_slice(&999u32.to_ne_bytes());
        assert!(decode(
            &unknown,
            &cx(),
            Duration::ZERO,
            std::time::SystemTime::now()
        )
        .is_none());
        assert!(decode(
            &[0; 10],
            &cx(),
            Duration::ZERO,
            std::time::SystemTime::now()
        )
        .is_none());
    }
}
