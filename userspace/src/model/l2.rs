//! Layer-2 networks in the store: where a network sits on the physical LAN (its
//! gateway, the range oxlay hands out, its VLAN), and the claim that gives each VLAN to
//! one network only (every host's `[l2] parent` is one LAN: one network per VLAN).
use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::keys::L2_VLANS;
use crate::{net::Ipv4Net, store::Store};

/// The highest 802.1Q VLAN id (4095 is reserved).
pub const VLAN_MAX: u16 = 4094;
/// Blocks hosts lease from a layer-2 range when no size is given: small, because a
/// LAN's range is small and shared by every host.
pub const L2_BLOCK_PREFIX: u8 = 28;

/// A layer-2 network's place on the physical network (`--mode l2`): its containers'
/// frames leave by each host's `[l2] parent` NIC as they are, with their own MACs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2Settings {
    /// The LAN's router: the containers' default gateway, never handed out.
    pub gateway: Ipv4Addr,
    /// The part of the subnet oxlay hands out (all of it if absent); the rest is the
    /// LAN's own machines'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv4Net>,
    /// 802.1Q VLAN id the frames carry on the wire; 0 for untagged.
    #[serde(default)]
    pub vlan: u16,
}

impl L2Settings {
    /// What a network on `subnet` may use: the gateway a usable address of the subnet,
    /// the range inside it, the VLAN an 802.1Q id.
    pub fn check(&self, subnet: Ipv4Net) -> Result<()> {
        if !subnet.is_usable_host(self.gateway) {
            bail!(
                "gateway {} is not a usable address of subnet {subnet}: give the LAN router's address (--gateway)",
                self.gateway
            );
        }
        if let Some(range) = self.ip_range {
            if !subnet.contains(range.addr()) || range.prefix_len() < subnet.prefix_len() {
                bail!("ip range {range} is not inside subnet {subnet}: give a part of it (--ip-range)");
            }
        }
        if self.vlan > VLAN_MAX {
            bail!(
                "VLAN {} is out of range: use 1 to {VLAN_MAX}, or 0 for untagged",
                self.vlan
            );
        }
        Ok(())
    }

    /// The addresses oxlay hands out on `subnet`.
    pub fn pool(&self, subnet: Ipv4Net) -> Ipv4Net {
        self.ip_range.unwrap_or(subnet)
    }
}

/// Claims `vlan` for `network` (a compare-and-put on a key that must not exist).
pub(super) async fn claim_vlan(store: &dyn Store, network: &str, vlan: u16) -> Result<()> {
    let key = format!("{L2_VLANS}{vlan}");
    if store
        .compare_and_put(&key, 0, network, None)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let owner = store
        .get(&key)
        .await?
        .map(|kv| kv.value)
        .unwrap_or_default();
    let which = if vlan == 0 {
        "the untagged LAN".to_owned()
    } else {
        format!("VLAN {vlan}")
    };
    bail!("{which} is already layer-2 network {owner:?}'s: give another --vlan (one network per VLAN)")
}

/// Gives back the VLAN `network` claimed, if it did.
pub(super) async fn release_vlan(store: &dyn Store, network: &str, vlan: u16) -> Result<()> {
    let key = format!("{L2_VLANS}{vlan}");
    if let Some(kv) = store.get(&key).await? {
        if kv.value == network {
            store.compare_and_delete(&key, kv.mod_revision).await?;
        }
    }
    Ok(())
}
