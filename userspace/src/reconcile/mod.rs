//! Turns what the store, the config and the local endpoints say into the datapath's
//! maps, changing only what differs: a route, peer or network that is already right is
//! never touched, so traffic on it never sees a gap.
//!
//! The flow, one file a stage: `snapshot` (the store's routing records, kept current
//! from the watch) -> `desired` (a pure function: what the maps should hold) ->
//! `apply` (the only code that writes a map; removals first, then additions). Beside
//! the maps, `nat` computes the host's NAT (masquerade), which `net/nftables` writes,
//! and `wireguard` the peers of oxlay's WireGuard device, which `net/wireguard` writes.
mod apply;
mod desired;
mod kernel;
mod nat;
mod snapshot;
mod wireguard;

pub use apply::*;
pub use desired::*;
pub use nat::{desired_nat, Nat};
pub use snapshot::*;
pub use wireguard::{decode_key, desired_wireguard_peers, encode_key};

#[cfg(test)]
mod tests;
