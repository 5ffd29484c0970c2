//! The host's network plumbing: address types, netlink (links and addresses), network
//! namespaces, a container's veth, the veth offloads (ethtool), IPv4 forwarding and
//! oxlay's nftables table (NAT).
pub mod addr;
pub mod ethtool;
pub mod forwarding;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod veth;

pub use addr::{Ipv4Net, MacAddr};
