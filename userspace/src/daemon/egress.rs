//! What the host gives containers' traffic to the outside: IPv4 forwarding (noted next
//! to the API socket, so that `oxlay uninstall` restores it) and whether `nft` is there
//! for the NAT table.
use log::warn;

use super::State;
use crate::{config::Config, net};

/// What containers' traffic to the outside needs from the host: `nft` for the NAT table
/// (without it, the state says why) and IPv4 forwarding.
pub(super) fn prepare_egress(config: &Config, state: &mut State) {
    if let Err(e) = crate::net::nftables::available() {
        warn!("{e:#}; containers reach only other containers and `-p` publishes nothing (restart the daemon once nft is installed)");
        state.nat_unavailable = Some(format!("{e:#}"));
    }
    net::forwarding::turn_on(&forwarding_marker(config));
}

/// Where the daemon notes that it turned IPv4 forwarding on (for `oxlay uninstall`).
pub(super) fn forwarding_marker(config: &Config) -> std::path::PathBuf {
    config.socket_path().with_extension("forwarding")
}
