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
//! ```
//!
//! Every claim (VNI, block, address) is a compare-and-put on a key that must not exist,
//! so two hosts acting at the same moment can never both win.
//!
//! One file per part: `keys` (the layout above), `records` (what each key holds),
//! `hosts`, `networks`, `ipam` (blocks and addresses), `docker` (Docker network
//! bindings), and `local` (an endpoint as the daemon that wired it remembers it).
mod docker;
mod hosts;
mod ipam;
mod keys;
pub mod local;
mod networks;
mod records;

pub use docker::*;
pub use hosts::*;
pub use ipam::*;
pub use keys::*;
pub use networks::*;
pub use records::*;

#[cfg(test)]
mod tests;
