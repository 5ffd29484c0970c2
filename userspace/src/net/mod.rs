//! The host's network plumbing: address types, netlink (links and addresses), network
//! namespaces, a container's veth, and the veth offloads (ethtool).
pub mod addr;
pub mod ethtool;
pub mod netlink;
pub mod netns;
pub mod veth;

pub use addr::{Ipv4Net, MacAddr};
