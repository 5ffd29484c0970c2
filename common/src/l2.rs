//! Layer-2 networks: a network on a second NIC (the "parent"), whose containers' frames
//! go onto the wire as they are, with their own MACs, and which the programs switch by
//! MAC in place of a bridge or macvlan. The map keys and values kernel and userspace
//! share.

/// [`crate::Endpoint::flags`]: the endpoint is on a layer-2 network.
pub const ENDPOINT_L2: u8 = 1;
/// Local containers of one layer-2 network that a broadcast reaches on this host.
pub const MAX_L2_PORTS: usize = 32;

/// A local container of a layer-2 network, by its MAC: the key of `OXLAY_L2_FDB`,
/// whose value is the ifindex of the container's host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct L2Key {
    pub net_id: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// A layer-2 network on this host (`OXLAY_L2_NETWORKS`, keyed by network id): where
/// its frames leave, with which VLAN tag, and the host-side veths of its local
/// containers (a broadcast is copied to each).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Network {
    pub parent_ifindex: u32,
    /// 802.1Q VLAN id, 0 for untagged.
    pub vlan: u16,
    pub ports_len: u16,
    pub ports: [u32; MAX_L2_PORTS],
}

/// A parent NIC and a VLAN on it (0: untagged): the key of `OXLAY_L2_VLANS`, whose
/// value is the network id of the layer-2 network there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct L2Vlan {
    pub ifindex: u32,
    pub vlan: u16,
    pub _pad: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<L2Key>(), 12);
        assert_eq!(size_of::<L2Network>(), 8 + 4 * MAX_L2_PORTS);
        assert_eq!(size_of::<L2Vlan>(), 8);
    }
}
