//! The host's network plumbing: address types, netlink (links and addresses), network
//! namespaces, a container's veth, the veth offloads (ethtool), IPv4 forwarding and
//! oxlay's nftables table (NAT), and the WireGuard device's generic netlink.
pub mod addr;
pub mod ethtool;
pub mod forwarding;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod veth;
pub mod wireguard;

pub use addr::{Ipv4Net, MacAddr};

/// The index of interface `name` in this namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
