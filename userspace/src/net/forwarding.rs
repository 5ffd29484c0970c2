//! IPv4 forwarding, which containers' traffic to the outside needs (the host routes it
//! and masquerades it). oxlay turns it on when it is off, says so, and remembers that
//! it did, so that `oxlay uninstall` turns it off again; a host that forwarded already
//! is left as it was.
use std::path::Path;

use anyhow::{Context, Result};
use log::{info, warn};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns forwarding on if it is off; `marker` records that oxlay did. A host where it
/// cannot be turned on still runs the overlay: this says why containers do not reach
/// the outside, and goes on.
pub fn turn_on(marker: &Path) {
    if let Err(e) = try_turn_on(marker) {
        warn!("{e:#}; containers reach only other containers until forwarding is on");
    }
}

fn try_turn_on(marker: &Path) -> Result<()> {
    let now =
        std::fs::read_to_string(IP_FORWARD).with_context(|| format!("cannot read {IP_FORWARD}"))?;
    if now.trim() == "1" {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, "1")
        .with_context(|| format!("cannot turn on IPv4 forwarding ({IP_FORWARD})"))?;
    std::fs::write(marker, "oxlay turned net.ipv4.ip_forward on\n")
        .with_context(|| format!("cannot write {}", marker.display()))?;
    info!("turned on IPv4 forwarding (net.ipv4.ip_forward=1): this host routes its containers' traffic to the outside; `oxlay uninstall` turns it off again");
    Ok(())
}

/// Turns forwarding off again if oxlay turned it on, unless `still_needed` says why
/// not (another network stack on the host, such as Docker's bridge, may rely on it).
pub fn restore(marker: &Path, still_needed: Option<&str>) {
    if !marker.exists() {
        return;
    }
    if let Some(why) = still_needed {
        info!("leaving IPv4 forwarding on ({why})");
        std::fs::remove_file(marker).ok();
        return;
    }
    match std::fs::write(IP_FORWARD, "0") {
        Ok(()) => info!("turned IPv4 forwarding off again, as oxlay found it"),
        Err(e) => warn!("cannot turn IPv4 forwarding off again ({IP_FORWARD}): {e}"),
    }
    std::fs::remove_file(marker).ok();
}
