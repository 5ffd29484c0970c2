//! Where each record lives in the store (the layout is in the module comment of
//! `model`).
use std::net::Ipv4Addr;

use crate::net::Ipv4Net;

/// Everything oxlay keeps in the store lives under this prefix.
pub const PREFIX: &str = "/oxlay/";
pub const HOSTS: &str = "/oxlay/hosts/";
pub const NETWORKS: &str = "/oxlay/networks/";
pub const VNIS: &str = "/oxlay/vnis/";
pub const BLOCKS: &str = "/oxlay/blocks/";
/// Which layer-2 network each VLAN is (0: untagged): L2_VLANS/<vlan> holds its name.
pub const L2_VLANS: &str = "/oxlay/l2vlans/";
pub const ENDPOINTS: &str = "/oxlay/endpoints/";
/// Which oxlay network each host's Docker networks are: DOCKER/<host>/<docker id>.
pub const DOCKER: &str = "/oxlay/docker/";
/// Every network's subnet in one record, so that overlap checks and claims are one
/// compare-and-put.
pub const SUBNETS: &str = "/oxlay/subnets";

pub fn block_key(network: &str, block: Ipv4Net) -> String {
    format!("{BLOCKS}{network}/{}_{}", block.addr(), block.prefix_len())
}

pub(super) fn endpoint_key(network: &str, address: Ipv4Addr) -> String {
    format!("{ENDPOINTS}{network}/{address}")
}
