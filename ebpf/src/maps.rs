//! The maps shared with userspace. All are pinned by name so that a restarting daemon
//! finds them again; sizes are explained in `oxlay_common::limits`.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf},
};
use oxlay_common::{
    l2::{L2Key, L2Network, L2Vlan},
    limits,
    monitor::{MonitorConfig, EVENTS_BYTES},
    CounterValue, DatapathConfig, Endpoint, Network, NetworkTraffic, Peer, Route, RouteDest,
    COUNTER_COUNT,
};

/// One entry: settings common to every packet.
#[map]
pub static OXLAY_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// (network, container address) -> where to send it. LPM so a peer's whole subnet is
/// one entry and a local container is a /32.
#[map]
pub static OXLAY_ROUTES: LpmTrie<RouteDest, Route> = LpmTrie::pinned(limits::MAX_ROUTES, 0);

/// Host-side veth ifindex -> the local endpoint behind it.
#[map]
pub static OXLAY_ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(limits::MAX_ENDPOINTS, 0);

/// Underlay IPv4 address -> peer host allowed to send us VXLAN.
#[map]
pub static OXLAY_PEERS: HashMap<[u8; 4], Peer> = HashMap::pinned(limits::MAX_PEERS, 0);

/// VNI -> network present on this host.
#[map]
pub static OXLAY_NETWORKS: HashMap<u32, Network> = HashMap::pinned(limits::MAX_NETWORKS, 0);

/// (layer-2 network, MAC) -> host-side veth of the local container with that MAC.
#[map]
pub static OXLAY_L2_FDB: HashMap<L2Key, u32> = HashMap::pinned(limits::MAX_L2_MACS, 0);

/// Layer-2 network id -> its parent NIC, VLAN and local containers.
#[map]
pub static OXLAY_L2_NETWORKS: HashMap<u32, L2Network> = HashMap::pinned(limits::MAX_L2_NETWORKS, 0);

/// (parent NIC, VLAN) -> the layer-2 network there.
#[map]
pub static OXLAY_L2_VLANS: HashMap<L2Vlan, u32> = HashMap::pinned(limits::MAX_L2_NETWORKS, 0);

/// Per-CPU packet and byte counters, indexed by `oxlay_common::Counter`.
#[map]
pub static OXLAY_COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::pinned(COUNTER_COUNT, 0);

/// VNI -> that overlay network's encapsulated and decapsulated traffic, per CPU.
#[map]
/// Entries are allocated as networks see traffic (BPF_F_NO_PREALLOC), not for all
/// MAX_NETWORKS x CPUs up front.
pub static OXLAY_NETWORK_TRAFFIC: PerCpuHashMap<u32, NetworkTraffic> =
    PerCpuHashMap::pinned(limits::MAX_NETWORKS, BPF_F_NO_PREALLOC);

/// Whether `oxlay monitor` listens, and for what (written by the daemon).
#[map]
pub static OXLAY_MONITOR: Array<MonitorConfig> = Array::pinned(1, 0);

/// What `oxlay explain`'s probe was counted under, + 1 (0: nothing), per CPU.
#[map]
pub static OXLAY_PROBE: PerCpuArray<u32> = PerCpuArray::pinned(1, 0);

/// Events for `oxlay monitor` (see `monitor.rs`).
#[map]
pub static OXLAY_EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    OXLAY_CONFIG.get(0).filter(|c| c.ready != 0)
}

#[inline(always)]
pub fn route(net_id: u32, addr: [u8; 4]) -> Option<&'static Route> {
    OXLAY_ROUTES.get(Key::new(64, RouteDest::new(net_id, addr)))
}

#[inline(always)]
pub fn endpoint(ifindex: u32) -> Option<&'static Endpoint> {
    // SAFETY: the value is only read; userspace replaces entries whole, so a concurrent
    // update can at worst give us the old or the new endpoint.
    unsafe { OXLAY_ENDPOINTS.get(ifindex) }
}

#[inline(always)]
pub fn is_peer(underlay_addr: [u8; 4]) -> bool {
    OXLAY_PEERS.get_ptr(underlay_addr).is_some()
}

/// The peer's [`oxlay_common::Peer::flags`] (0 for no peer).
#[inline(always)]
pub fn peer_flags(underlay_addr: [u8; 4]) -> u32 {
    // SAFETY: the value is a plain u32 copied out; userspace replaces entries whole.
    unsafe { OXLAY_PEERS.get(&underlay_addr) }.map_or(0, |p| p.flags)
}

#[inline(always)]
pub fn has_network(vni: u32) -> bool {
    OXLAY_NETWORKS.get_ptr(vni).is_some()
}

/// The host-side veth of the local container with `mac` on layer-2 network `net_id`.
#[inline(always)]
pub fn l2_port(net_id: u32, mac: [u8; 6]) -> Option<u32> {
    let key = L2Key {
        net_id,
        mac,
        _pad: [0; 2],
    };
    // SAFETY: the value is a plain u32 copied out; userspace replaces entries whole.
    unsafe { OXLAY_L2_FDB.get(&key) }.copied()
}

#[inline(always)]
pub fn l2_network(net_id: u32) -> Option<&'static L2Network> {
    // SAFETY: the value is only read; userspace replaces entries whole, so a concurrent
    // update gives the old or the new network.
    unsafe { OXLAY_L2_NETWORKS.get(&net_id) }
}

/// The layer-2 network on VLAN `vlan` (0: untagged) of parent NIC `ifindex`.
#[inline(always)]
pub fn l2_network_on(ifindex: u32, vlan: u16) -> Option<u32> {
    let key = L2Vlan {
        ifindex,
        vlan,
        _pad: 0,
    };
    // SAFETY: the value is a plain u32 copied out.
    unsafe { OXLAY_L2_VLANS.get(&key) }.copied()
}
