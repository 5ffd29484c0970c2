//! The control-plane model in the store, after Docker's libnetwork: hosts, networks
//! (each an overlay with its own VNI and address pool), and endpoints (a container's
//! interface on a network). Key layout, one record type per prefix:
//!
//! ```text
//! /oxlay/hosts/<host>                 HostRecord      leased: gone when the host is
//! /oxlay/networks/<network>           NetworkRecord
//! /oxlay/vnis/<vni>                   network name    claims the VNI
//! /oxlay/blocks/<network>/<a.b.c.d_n> BlockRecord     leased by the owning host
//! /oxlay/endpoints/<network>/<addr>   EndpointRecord  claims the address
//! /oxlay/l2vlans/<vlan>               network name    claims a VLAN for a layer-2 network
//! /oxlay/subnets                      every network's subnet (overlap checks)
//! ```
//!
//! Every claim (VNI, block, address) is a compare-and-put on a key that must not exist,
//! so two hosts acting at the same moment can never both win.
//!
//! One file per part: `keys` (the layout above), `records` (what each key holds),
//! `hosts`, `networks`, `subnets` (the subnet registry), `l2` (layer-2 networks),
//! `ipam` (blocks and addresses), `docker` (Docker network
//! bindings), and `local` (an endpoint as the daemon that wired it remembers it).
mod docker;
mod hosts;
mod ipam;
mod keys;
mod l2;
pub mod local;
mod networks;
mod records;
mod subnets;

pub use docker::*;
pub use hosts::*;
pub use ipam::*;
pub use keys::*;
pub use l2::{L2Settings, VLAN_MAX};
pub use networks::*;
pub use records::*;

#[cfg(test)]
mod tests;
