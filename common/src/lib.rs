//! Types shared by oxlay's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding, because the same bytes are read
//! by the eBPF programs and written by the daemon through BPF maps. The size tests at the
//! bottom pin every layout: changing one is a wire change between the two halves.
//!
//! The crate is `no_std` so the eBPF programs can use it; the `user` feature adds
//! `aya::Pod` so userspace can put the types into maps.
#![cfg_attr(not(test), no_std)]

pub mod counters;
pub mod l2;
pub mod monitor;
pub mod wire;

pub use counters::{
    Counter, CounterInfo, CounterKind, CounterValue, NetworkTraffic, COUNTERS, COUNTER_COUNT,
    DROP_MASK,
};

/// Version of what the maps' keys and values mean. Bump it when entries written by an
/// older build would be wrong under a new meaning at the same size (fields reordered or
/// reused): a starting daemon then does not copy the previous daemon's entries into its
/// own maps, and fills them anew. A field that was zero padding and whose zero means
/// "none" needs no bump (`Route::vni`: an old entry reads as "no network", and the first
/// reconcile writes it). Changes of size, type or capacity are seen without it (see the
/// pin names).
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Name of every map, as the eBPF object declares it and as it is pinned under bpffs.
pub mod map_names {
    pub const CONFIG: &str = "OXLAY_CONFIG";
    pub const ROUTES: &str = "OXLAY_ROUTES";
    pub const ENDPOINTS: &str = "OXLAY_ENDPOINTS";
    pub const PEERS: &str = "OXLAY_PEERS";
    pub const NETWORKS: &str = "OXLAY_NETWORKS";
    pub const COUNTERS: &str = "OXLAY_COUNTERS";
    pub const L2_FDB: &str = "OXLAY_L2_FDB";
    pub const L2_NETWORKS: &str = "OXLAY_L2_NETWORKS";
    pub const L2_VLANS: &str = "OXLAY_L2_VLANS";
    pub const NETWORK_TRAFFIC: &str = "OXLAY_NETWORK_TRAFFIC";
    pub const MONITOR: &str = "OXLAY_MONITOR";
    pub const EVENTS: &str = "OXLAY_EVENTS";
    pub const PROBE: &str = "OXLAY_PROBE";
}

/// Name of every program in the eBPF object.
pub mod program_names {
    /// TC ingress on a container's host-side veth: packets leaving the container.
    pub const FROM_CONTAINER: &str = "oxlay_from_container";
    /// TC ingress on the underlay interface: VXLAN decapsulation.
    pub const DECAP_TC: &str = "oxlay_decap_tc";
    /// XDP on the underlay interface: the same decapsulation.
    pub const DECAP_XDP: &str = "oxlay_decap_xdp";
    /// TC ingress on the underlay interface in XDP mode: delivers what XDP stripped.
    pub const XDP_DELIVER_TC: &str = "oxlay_xdp_deliver_tc";
    /// TC ingress on oxlay's WireGuard device: decrypted packets from peers.
    pub const FROM_WIREGUARD: &str = "oxlay_from_wireguard";
    /// TC ingress on a layer-2 network's parent NIC: frames for local containers.
    pub const L2_FROM_WIRE: &str = "oxlay_l2_from_wire";
    /// Programs that do nothing: the baselines of the per-packet benchmarks.
    pub const NOOP_TC: &str = "oxlay_noop_tc";
    pub const NOOP_XDP: &str = "oxlay_noop_xdp";
    /// Benchmarks only: FROM_CONTAINER on a packet that carries a flow hash, as a
    /// socket's packets do (a test run cannot give it one), and its baseline.
    pub const BENCH_FROM_CONTAINER_HASHED: &str = "oxlay_bench_from_container_hashed";
    pub const BENCH_SET_HASH: &str = "oxlay_bench_set_hash";
}

/// Size limits of the maps. Each says why it has the size it has.
pub mod limits {
    /// Container-subnet routes: one per peer host's block per network plus one /32 per
    /// local endpoint. 131k covers 10,000 hosts on a dozen networks; the trie allocates
    /// per entry, so the cap costs nothing until used.
    pub const MAX_ROUTES: u32 = 131_072;
    /// Local endpoints: containers on one host; far above any realistic pod density.
    pub const MAX_ENDPOINTS: u32 = 4_096;
    /// Peer hosts whose VXLAN packets we accept.
    pub const MAX_PEERS: u32 = 16_384;
    /// Networks (VNIs) present on this host.
    pub const MAX_NETWORKS: u32 = 4_096;
    /// Local containers of layer-2 networks (their MACs), as many as endpoints.
    pub const MAX_L2_MACS: u32 = MAX_ENDPOINTS;
    /// Layer-2 networks on this host, and their (parent, VLAN) pairs: one per VLAN.
    pub const MAX_L2_NETWORKS: u32 = 4_096;
}

/// Datapath settings that are the same for every packet; one entry in an array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Interface index of the underlay device that carries VXLAN.
    pub underlay_ifindex: u32,
    /// This host's underlay IPv4 address (network byte order bytes).
    pub underlay_addr: [u8; 4],
    /// UDP destination port of VXLAN (host byte order).
    pub vxlan_port: u16,
    /// Inner source MAC of frames this host encapsulates.
    pub vtep_mac: [u8; 6],
    /// Non-zero once userspace has written the entry; programs pass everything before.
    pub ready: u32,
    /// MTU of the underlay interface: encapsulated packets must fit in it. With
    /// WireGuard, the MTU of oxlay's WireGuard device (the underlay's less its 60 bytes).
    pub underlay_mtu: u16,
    pub _pad: u16,
    /// oxlay's WireGuard device, when this host encrypts (0: it does not): packets to a
    /// peer marked [`PEER_WIREGUARD`] go through it, and packets from such a peer are
    /// accepted only from it.
    pub wireguard_ifindex: u32,
}

/// The data part of a route-map key: a network id and an IPv4 address.
///
/// The LPM trie matches bits in memory order, so the network id comes first and is
/// always matched whole (the key's prefix length is `32 + subnet prefix length`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteDest {
    /// Network id, big-endian bytes so the trie compares it bit by bit.
    pub net: [u8; 4],
    /// IPv4 address (network byte order).
    pub addr: [u8; 4],
}

impl RouteDest {
    pub const fn new(net_id: u32, addr: [u8; 4]) -> Self {
        Self {
            net: net_id.to_be_bytes(),
            addr,
        }
    }

    /// Prefix length of an LPM key for a subnet of `subnet_len` bits in this network.
    pub const fn prefix_len(subnet_len: u8) -> u32 {
        32 + subnet_len as u32
    }
}

/// What a route map entry tells the datapath to do.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// Destination is a container on this host: deliver to `ifindex`'s peer.
    Local = 1,
    /// Destination is on another host: encapsulate towards `underlay_addr`.
    Remote = 2,
    /// Destination is on another host on the same underlay subnet, in a network marked
    /// direct: route the packet unencapsulated with `underlay_addr` as next hop.
    Direct = 3,
    /// Another host over GRE (the network's `encap = gre`); otherwise as `Remote`.
    RemoteGre = 4,
}

/// Network id of the table that direct routing uses on the receiving side: local
/// endpoints of direct networks, and the blocks of direct peers (to check sources).
/// 0 is no valid VNI, so it never clashes with a network.
pub const DIRECT_NET_ID: u32 = 0;

/// A route map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// A [`RouteKind`] as u8.
    pub kind: u8,
    /// The network (24-bit VNI, big-endian) of an entry in the direct table
    /// ([`DIRECT_NET_ID`]), where one table serves every direct network: a plain packet
    /// is delivered only when its source and destination entries name the same network.
    /// Zero elsewhere.
    pub vni: [u8; 3],
    /// Local: the host-side veth of the destination container.
    pub ifindex: u32,
    /// Remote: the peer host's underlay IPv4 address.
    pub underlay_addr: [u8; 4],
    /// Local: the container's MAC. Remote: the peer's VTEP MAC (inner destination).
    pub dst_mac: [u8; 6],
    /// Local: the host-side veth's MAC (the container's gateway). Remote: unused.
    pub src_mac: [u8; 6],
}

impl Route {
    pub const fn local(ifindex: u32, container_mac: [u8; 6], gateway_mac: [u8; 6]) -> Self {
        Self {
            kind: RouteKind::Local as u8,
            vni: [0; 3],
            ifindex,
            underlay_addr: [0; 4],
            dst_mac: container_mac,
            src_mac: gateway_mac,
        }
    }

    pub const fn direct(underlay_addr: [u8; 4]) -> Self {
        Self {
            kind: RouteKind::Direct as u8,
            vni: [0; 3],
            ifindex: 0,
            underlay_addr,
            dst_mac: [0; 6],
            src_mac: [0; 6],
        }
    }

    /// This route, marked as belonging to network `vni` (for the direct table).
    pub const fn in_network(mut self, vni: u32) -> Self {
        let b = vni.to_be_bytes();
        self.vni = [b[1], b[2], b[3]];
        self
    }

    /// Sent over GRE instead of VXLAN.
    pub const fn over_gre(mut self) -> Self {
        self.kind = RouteKind::RemoteGre as u8;
        self
    }

    pub const fn remote(underlay_addr: [u8; 4], peer_vtep_mac: [u8; 6]) -> Self {
        Self {
            kind: RouteKind::Remote as u8,
            vni: [0; 3],
            ifindex: 0,
            underlay_addr,
            dst_mac: peer_vtep_mac,
            src_mac: [0; 6],
        }
    }
}

/// A local endpoint, keyed by the ifindex of its host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Network id the endpoint belongs to.
    pub net_id: u32,
    /// The container's IPv4 address.
    pub addr: [u8; 4],
    /// The container's MAC.
    pub mac: [u8; 6],
    /// [`l2::ENDPOINT_L2`] for an endpoint of a layer-2 network.
    pub flags: u8,
    pub _pad: u8,
}

/// A peer host whose VXLAN packets are accepted, keyed by its underlay IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// [`PEER_WIREGUARD`], or 0.
    pub flags: u32,
    pub _pad: u32,
}

/// [`Peer::flags`]: this host and the peer both encrypt with WireGuard. Packets to it go
/// through oxlay's WireGuard device; its packets arriving unencrypted on the underlay
/// are dropped (`drop_unencrypted`). Zero, as old entries read, means plaintext.
pub const PEER_WIREGUARD: u32 = 1;

/// A network present on this host, keyed by its VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Network {
    /// The network id used in route keys.
    pub net_id: u32,
    pub _pad: u32,
}

/// Metadata the XDP decapsulation leaves in front of a frame it stripped, for the TC
/// program on the same interface, which delivers it with `bpf_redirect_peer`.
///
/// Why not redirect from XDP: an XDP frame carries no checksum state, so a TCP packet
/// whose checksum was left to offload (CHECKSUM_PARTIAL, as on any veth) would arrive
/// with a bad checksum. Passing to TC keeps the skb and its checksum state, and GRO.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpDeliveryMeta {
    /// [`XdpDeliveryMeta::MAGIC`]; anything else means "no metadata of ours".
    pub magic: u32,
    /// Host-side veth of the destination container.
    pub ifindex: u32,
}

impl XdpDeliveryMeta {
    pub const MAGIC: u32 = 0x6f78_6c79; // "oxly"
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte arrays,
    // with explicit padding fields (the layout tests below prove there are no holes),
    // so every bit pattern is a valid value.
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RouteDest {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Route {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for l2::L2Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for l2::L2Network {}
    // SAFETY: as above.
    unsafe impl aya::Pod for l2::L2Vlan {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Peer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Network {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CounterValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NetworkTraffic {}
    // SAFETY: as above.
    unsafe impl aya::Pod for monitor::MonitorConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for monitor::MonitorEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// The sum of field sizes equals the struct size: there is no implicit padding.
    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<DatapathConfig>(), 4 + 4 + 2 + 6 + 4 + 2 + 2 + 4);
        assert_eq!(align_of::<DatapathConfig>(), 4);
        assert_eq!(size_of::<RouteDest>(), 8);
        assert_eq!(size_of::<Route>(), 1 + 3 + 4 + 4 + 6 + 6);
        assert_eq!(align_of::<Route>(), 4);
        assert_eq!(size_of::<Endpoint>(), 4 + 4 + 6 + 2);
        assert_eq!(size_of::<Peer>(), 8);
        assert_eq!(size_of::<Network>(), 8);
        assert_eq!(size_of::<XdpDeliveryMeta>(), 8);
        assert_eq!(size_of::<CounterValue>(), 16);
        assert_eq!(size_of::<NetworkTraffic>(), 32);
        assert_eq!(size_of::<monitor::MonitorConfig>(), 24);
        assert_eq!(
            size_of::<monitor::MonitorEvent>(),
            8 + 4 * 6 + monitor::CAPTURE_LEN
        );
    }

    #[test]
    fn route_dest_orders_network_before_address() {
        let d = RouteDest::new(42, [10, 244, 1, 0]);
        assert_eq!(d.net, [0, 0, 0, 42]);
        assert_eq!(RouteDest::prefix_len(24), 56);
    }
}
