//! The datapath's traffic as `oxlay stats` and the metrics endpoint both report it: one
//! reading of the maps, so a reader gets the same values from either.
use anyhow::Result;
use oxlay_common::{CounterInfo, CounterKind, CounterValue, NetworkTraffic};

use super::State;
use crate::api::{CounterView, NetworkTrafficView, StatsView};

/// The counters by reason and each overlay network's traffic, summed over CPUs.
pub(crate) struct Traffic {
    pub counters: Vec<(&'static CounterInfo, CounterValue)>,
    /// (network name, VNI, traffic), in VNI order.
    pub networks: Vec<(String, u32, NetworkTraffic)>,
}

impl Traffic {
    pub(crate) fn read(s: &State) -> Result<Self> {
        let networks = s
            .datapath
            .network_traffic()?
            .into_iter()
            .map(|(vni, t)| (network_name(s, vni), vni, t))
            .collect();
        Ok(Self {
            counters: s.datapath.counters()?,
            networks,
        })
    }

    pub(crate) fn view(&self) -> StatsView {
        StatsView {
            counters: self
                .counters
                .iter()
                .map(|(info, value)| CounterView {
                    name: info.name.to_owned(),
                    kind: match info.kind {
                        CounterKind::Forward => "forward",
                        CounterKind::Drop => "drop",
                        CounterKind::Monitor => "monitor",
                    }
                    .to_owned(),
                    packets: value.packets,
                    bytes: value.bytes,
                    help: info.help.to_owned(),
                })
                .collect(),
            networks: self
                .networks
                .iter()
                .map(|(name, vni, t)| NetworkTrafficView {
                    network: name.clone(),
                    vni: *vni,
                    encapsulated_packets: t.encapsulated.packets,
                    encapsulated_bytes: t.encapsulated.bytes,
                    decapsulated_packets: t.decapsulated.packets,
                    decapsulated_bytes: t.decapsulated.bytes,
                })
                .collect(),
        }
    }
}

/// The name of the network with `vni`: a store network's, "static" for the config's
/// own, or the VNI itself for one this host no longer knows.
fn network_name(s: &State, vni: u32) -> String {
    if let Some(n) = s.snapshot.networks.values().find(|n| n.vni == vni) {
        return n.name.clone();
    }
    if s.config.vni == Some(vni) {
        return "static".to_owned();
    }
    format!("vni-{vni}")
}
