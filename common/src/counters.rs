//! The one table of datapath counters and drop reasons.
//!
//! The kernel programs index a per-CPU array with [`Counter`]; the CLI, the API and the
//! tests name them through [`COUNTERS`]. Add a counter by adding a variant and a row.

/// Whether a counter counts forwarded packets or a reason for dropping one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Forward,
    Drop,
    /// About `oxlay monitor` itself, not about packets' fate.
    Monitor,
}

/// Index into the counters map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Encapsulated = 0,
    Decapsulated,
    DeliveredLocal,
    RoutedDirect,
    DeliveredDirect,
    PassedToStack,
    DropUnknownPeer,
    DropUnknownVni,
    DropBadVxlanFlags,
    DropTruncatedVxlan,
    DropTruncatedInner,
    DropInnerNotIpv4,
    DropNoLocalEndpoint,
    DropOuterFragment,
    DropOuterIpOptions,
    DropAdjustRoomFailed,
    DropHeaderWriteFailed,
    DropSpoofedSource,
    DropSpoofedPeerSource,
    DropTooBig,
    DropBadLength,
    ArpReplied,
    // Append new counters here: a counter's index is its identity across upgrades.
    DropContainerNotIpv4,
    DropDirectOtherNetwork,
    DropUdpGsoTunnelState,
    DropBadGre,
    L2Switched,
    L2ToWire,
    L2FromWire,
    L2Flooded,
    DropL2NoParent,
    L2ToHost,
    MonitorLost,
    EchoAnswered,
    DropUnencrypted,
    SentEncrypted,
    ReceivedEncrypted,
    DropWireguardNotOverlay,
}

/// Name and meaning of one counter.
#[derive(Clone, Copy, Debug)]
pub struct CounterInfo {
    pub counter: Counter,
    /// Stable snake_case name used by the CLI, the API and metrics.
    pub name: &'static str,
    pub kind: CounterKind,
    pub help: &'static str,
}

const fn row(
    counter: Counter,
    name: &'static str,
    kind: CounterKind,
    help: &'static str,
) -> CounterInfo {
    CounterInfo {
        counter,
        name,
        kind,
        help,
    }
}

use CounterKind::{Drop, Forward};

/// Every counter, in index order.
pub const COUNTERS: [CounterInfo; 38] = [
    row(
        Counter::Encapsulated,
        "encapsulated",
        Forward,
        "container packets wrapped in VXLAN (or GRE) and sent to a peer host",
    ),
    row(
        Counter::Decapsulated,
        "decapsulated",
        Forward,
        "VXLAN (or GRE) packets from a peer stripped and delivered to a local container",
    ),
    row(
        Counter::DeliveredLocal,
        "delivered_local",
        Forward,
        "container packets delivered straight to a container on the same host",
    ),
    row(
        Counter::RoutedDirect,
        "routed_direct",
        Forward,
        "container packets routed unencapsulated to a peer on the same underlay subnet (direct networks)",
    ),
    row(
        Counter::DeliveredDirect,
        "delivered_direct",
        Forward,
        "unencapsulated packets from a direct peer delivered to a local container",
    ),
    row(
        Counter::PassedToStack,
        "passed_to_stack",
        Forward,
        "packets not for the overlay, handed to the host's network stack",
    ),
    row(
        Counter::DropUnknownPeer,
        "drop_unknown_peer",
        Drop,
        "VXLAN packet from an underlay address that is not a known peer",
    ),
    row(
        Counter::DropUnknownVni,
        "drop_unknown_vni",
        Drop,
        "VXLAN packet carrying a VNI of no network on this host",
    ),
    row(
        Counter::DropBadVxlanFlags,
        "drop_bad_vxlan_flags",
        Drop,
        "VXLAN header without the VNI-valid (I) flag",
    ),
    row(
        Counter::DropTruncatedVxlan,
        "drop_truncated_vxlan",
        Drop,
        "UDP packet to the VXLAN port too short for a VXLAN header",
    ),
    row(
        Counter::DropTruncatedInner,
        "drop_truncated_inner",
        Drop,
        "VXLAN packet too short for its inner Ethernet and IPv4 headers",
    ),
    row(
        Counter::DropInnerNotIpv4,
        "drop_inner_not_ipv4",
        Drop,
        "VXLAN packet whose inner frame is not IPv4",
    ),
    row(
        Counter::DropNoLocalEndpoint,
        "drop_no_local_endpoint",
        Drop,
        "VXLAN packet for an inner address with no container on this host",
    ),
    row(
        Counter::DropOuterFragment,
        "drop_outer_fragment",
        Drop,
        "fragmented VXLAN packet (peers never fragment; reassembly is not done)",
    ),
    row(
        Counter::DropOuterIpOptions,
        "drop_outer_ip_options",
        Drop,
        "VXLAN packet whose outer IPv4 header has options",
    ),
    row(
        Counter::DropAdjustRoomFailed,
        "drop_adjust_room_failed",
        Drop,
        "the kernel refused to grow or shrink the packet",
    ),
    row(
        Counter::DropHeaderWriteFailed,
        "drop_header_write_failed",
        Drop,
        "writing the new headers into the packet failed",
    ),
    row(
        Counter::DropSpoofedSource,
        "drop_spoofed_source",
        Drop,
        "container packet whose source address or MAC is not the container's own",
    ),
    row(
        Counter::DropSpoofedPeerSource,
        "drop_spoofed_peer_source",
        Drop,
        "VXLAN packet whose inner source lies outside the sending peer's address blocks",
    ),
    row(
        Counter::DropTooBig,
        "drop_too_big",
        Drop,
        "container packet too big for the underlay once encapsulated; answered with ICMP fragmentation needed when DF is set",
    ),
    row(
        Counter::DropBadLength,
        "drop_bad_length",
        Drop,
        "VXLAN packet whose outer IPv4 or UDP length disagrees with the frame",
    ),
    row(
        Counter::ArpReplied,
        "arp_replied",
        Forward,
        "ARP requests from containers answered with their host-side veth's MAC",
    ),
    row(
        Counter::DropContainerNotIpv4,
        "drop_container_not_ipv4",
        Drop,
        "container frame that is neither IPv4 nor ARP (IPv6, VLAN-tagged, other ethertypes): oxlay networks carry IPv4 only",
    ),
    row(
        Counter::DropDirectOtherNetwork,
        "drop_direct_other_network",
        Drop,
        "plain packet from a container of one direct network to a local container of another",
    ),
    row(
        Counter::DropUdpGsoTunnelState,
        "drop_udp_gso_tunnel_state",
        Drop,
        "UDP GSO packet that reached TC decapsulation whole (a virtual underlay, or GRE coalesced by the underlay's GRO): kernels up to 6.18 cannot reset its tunnel offload state, and the container's socket would lose it; use decap = \"xdp\" or turn GSO (GRO for GRE) off on the underlay",
    ),
    row(
        Counter::DropBadGre,
        "drop_bad_gre",
        Drop,
        "Ethernet-over-GRE packet from a peer too short for its GRE header, without a key, or with a checksum, sequence number, routing or a version other than 0",
    ),
    row(
        Counter::L2Switched,
        "l2_switched",
        Forward,
        "layer-2 frames from a container delivered straight to another container of its network on this host",
    ),
    row(
        Counter::L2ToWire,
        "l2_to_wire",
        Forward,
        "layer-2 frames from a container sent out of its network's parent NIC (tagged with its VLAN, if any)",
    ),
    row(
        Counter::L2FromWire,
        "l2_from_wire",
        Forward,
        "frames from a parent NIC delivered to the local container they were addressed to",
    ),
    row(
        Counter::L2Flooded,
        "l2_flooded",
        Forward,
        "broadcast and multicast frames of a layer-2 network copied to its local containers (and the wire or the host)",
    ),
    row(
        Counter::DropL2NoParent,
        "drop_l2_no_parent",
        Drop,
        "frame from a container of a layer-2 network that has no parent NIC on this host (its [l2] parent is not set up)",
    ),
    row(
        Counter::L2ToHost,
        "l2_to_host",
        Forward,
        "packets from a container of a layer-2 network to its gateway on the host's side of the veth, 169.254.1.1 (oxlay's resolver)",
    ),
    row(
        Counter::MonitorLost,
        "monitor_lost",
        CounterKind::Monitor,
        "packets whose `oxlay monitor` event was lost: the ring buffer was full (the packets themselves went on)",
    ),
    row(
        Counter::EchoAnswered,
        "echo_answered",
        Forward,
        "`oxlay doctor` probes from a peer sent back to it (the VXLAN port answers)",
    ),
    row(
        Counter::DropUnencrypted,
        "drop_unencrypted",
        Drop,
        "VXLAN, GRE or direct packet from a peer that encrypts with WireGuard, arriving unencrypted on the underlay: forged, or that peer lost its WireGuard setup",
    ),
    row(
        Counter::SentEncrypted,
        "sent_encrypted",
        Forward,
        "packets to a peer handed to oxlay's WireGuard device, which encrypts them (also counted as encapsulated or routed_direct)",
    ),
    row(
        Counter::ReceivedEncrypted,
        "received_encrypted",
        Forward,
        "packets that arrived through oxlay's WireGuard device, decrypted and authenticated as a peer's",
    ),
    row(
        Counter::DropWireguardNotOverlay,
        "drop_wireguard_not_overlay",
        Drop,
        "packet through oxlay's WireGuard device that is no overlay traffic for this host (a peer's own traffic belongs on the underlay)",
    ),
];

/// Bit `i` set: counter `i` is a drop reason (for the programs, which cannot walk the
/// table cheaply).
pub const DROP_MASK: u64 = {
    let mut mask = 0u64;
    let mut i = 0;
    while i < COUNTERS.len() {
        if matches!(COUNTERS[i].kind, CounterKind::Drop) {
            mask |= 1 << i;
        }
        i += 1;
    }
    mask
};

/// One counter's value on one CPU: `OXLAY_COUNTERS` holds one per counter and CPU.
/// `bytes` is the frame's length when the counter is bumped: what went to the wire for
/// `encapsulated`, what the container got for `decapsulated`, the frame as dropped for
/// a drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

impl core::ops::AddAssign for CounterValue {
    fn add_assign(&mut self, other: Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// One overlay network's traffic on one CPU (`OXLAY_NETWORK_TRAFFIC`, keyed by VNI):
/// what this host wrapped and sent to peers, and what it unwrapped and delivered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkTraffic {
    pub encapsulated: CounterValue,
    pub decapsulated: CounterValue,
}

impl core::ops::AddAssign for NetworkTraffic {
    fn add_assign(&mut self, other: Self) {
        self.encapsulated += other.encapsulated;
        self.decapsulated += other.decapsulated;
    }
}

/// Number of counters; the size of the counters map.
pub const COUNTER_COUNT: u32 = COUNTERS.len() as u32;

impl Counter {
    /// Looks a counter up by its stable name.
    pub fn by_name(name: &str) -> Option<Counter> {
        COUNTERS.iter().find(|c| c.name == name).map(|c| c.counter)
    }

    pub fn info(self) -> &'static CounterInfo {
        &COUNTERS[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_index_order_with_unique_names() {
        for (i, c) in COUNTERS.iter().enumerate() {
            assert_eq!(c.counter as usize, i, "row {} is out of order", c.name);
            assert_eq!(Counter::by_name(c.name), Some(c.counter));
            let is_drop_name = c.name.starts_with("drop_");
            assert_eq!(is_drop_name, c.kind == CounterKind::Drop, "{}", c.name);
        }
        let mut names: std::vec::Vec<_> = COUNTERS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COUNTERS.len());
        assert!(COUNTERS.len() <= 64, "DROP_MASK holds 64 counters");
        for c in COUNTERS {
            let bit = DROP_MASK >> (c.counter as u32) & 1 == 1;
            assert_eq!(bit, c.kind == CounterKind::Drop, "{}", c.name);
        }
    }
}
