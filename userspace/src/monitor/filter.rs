//! What one `oxlay monitor` asks for: which kinds of events (they decide what the
//! programs emit), and which of those it shows (reasons, network, address).
use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{bail, Result};
use oxlay_common::{monitor::MonitorConfig, Counter, CounterInfo, CounterKind, COUNTERS};

use super::EventView;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub drops: bool,
    pub traces: bool,
    /// One forwarded packet in this many is traced (>= 1).
    pub sample: u32,
    /// Counter names; empty: all of the kinds asked for.
    pub reasons: BTreeSet<&'static str>,
    pub vni: Option<u32>,
    /// Shown when it is the packet's (or the outer header's) source or destination.
    pub address: Option<Ipv4Addr>,
}

impl Filter {
    /// Checks the request: known counter names of the kinds asked for.
    pub fn new(
        drops: bool,
        traces: bool,
        sample: Option<u32>,
        reasons: &[String],
        vni: Option<u32>,
        address: Option<Ipv4Addr>,
    ) -> Result<Self> {
        if !drops && !traces {
            bail!("nothing to monitor: ask for drops, traces or both (--type drop|trace|all)");
        }
        if sample == Some(0) {
            bail!("--sample 0: trace one packet in N, with N at least 1");
        }
        let mut names = BTreeSet::new();
        for reason in reasons {
            let Some(info) = COUNTERS.iter().find(|c| c.name == reason) else {
                let all: Vec<&str> = COUNTERS.iter().map(|c| c.name).collect();
                bail!("no counter {reason:?}; the reasons are: {}", all.join(", "));
            };
            match info.kind {
                CounterKind::Drop if !drops => {
                    bail!("{reason} is a drop reason: add --type drop (or all)")
                }
                CounterKind::Forward if !traces => {
                    bail!("{reason} counts forwarded packets, not drops: add --type trace (or all)")
                }
                CounterKind::Monitor => {
                    bail!("{reason} counts the monitor's own losses, not packets")
                }
                _ => names.insert(info.name),
            };
        }
        Ok(Self {
            drops,
            traces,
            sample: sample.unwrap_or(1),
            reasons: names,
            vni,
            address,
        })
    }

    pub fn matches(&self, e: &EventView) -> bool {
        let kind = if e.kind == "drop" {
            self.drops
        } else {
            self.traces
        };
        let reason = self.reasons.is_empty() || self.reasons.contains(e.reason.as_str());
        let network = self.vni.is_none() || self.vni == e.vni;
        let address = self.address.is_none_or(|a| {
            [&e.packet, &e.outer]
                .into_iter()
                .flatten()
                .any(|f| f.src == a || f.dst == a)
        });
        kind && reason && network && address
    }

    /// The counters whose packets this listener wants reported: the reasons named, or
    /// every counter of the kinds asked for. Traces leave out `passed_to_stack` unless
    /// named: that is the host's own traffic (an SSH session's among it, which the
    /// monitor's output would feed).
    pub fn counters(&self) -> u64 {
        let bit = |c: &CounterInfo| 1u64 << (c.counter as u32);
        if !self.reasons.is_empty() {
            let named = COUNTERS.iter().filter(|c| self.reasons.contains(c.name));
            return named.map(bit).fold(0, |a, b| a | b);
        }
        COUNTERS
            .iter()
            .filter(|c| match c.kind {
                CounterKind::Drop => self.drops,
                CounterKind::Forward => self.traces && c.counter != Counter::PassedToStack,
                CounterKind::Monitor => false,
            })
            .map(bit)
            .fold(0, |a, b| a | b)
    }

    /// What the programs must report for all of `filters`: the union of their
    /// counters, the densest sampling asked for (the daemon sets how long it holds).
    pub fn switch<'a>(filters: impl IntoIterator<Item = &'a Filter>) -> MonitorConfig {
        let mut cfg = MonitorConfig::default();
        for f in filters {
            cfg.counters |= f.counters();
            if f.traces {
                cfg.sample = match cfg.sample {
                    0 => f.sample,
                    s => s.min(f.sample),
                };
            }
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::decode::Flow;

    fn event(kind: &str, reason: &str, vni: Option<u32>, dst: [u8; 4]) -> EventView {
        EventView {
            time: String::new(),
            kind: kind.into(),
            reason: reason.into(),
            meaning: String::new(),
            interface: "eth0".into(),
            ifindex: 2,
            network: None,
            vni,
            length: 100,
            outer: None,
            packet: Some(Flow {
                src: Ipv4Addr::new(10, 0, 0, 1),
                dst: dst.into(),
                protocol: "udp".into(),
                sport: None,
                dport: None,
            }),
        }
    }

    #[test]
    fn filters_by_kind_reason_network_and_address() {
        let f = Filter::new(
            true,
            false,
            None,
            &["drop_unknown_vni".into()],
            Some(7),
            None,
        )
        .unwrap();
        assert!(f.matches(&event("drop", "drop_unknown_vni", Some(7), [10, 0, 0, 2])));
        assert!(!f.matches(&event("drop", "drop_bad_length", Some(7), [10, 0, 0, 2])));
        assert!(!f.matches(&event("drop", "drop_unknown_vni", Some(8), [10, 0, 0, 2])));
        assert!(!f.matches(&event("trace", "encapsulated", Some(7), [10, 0, 0, 2])));
        let f = Filter::new(
            true,
            true,
            None,
            &[],
            None,
            Some(Ipv4Addr::new(10, 0, 0, 2)),
        )
        .unwrap();
        assert!(f.matches(&event("trace", "encapsulated", None, [10, 0, 0, 2])));
        assert!(!f.matches(&event("drop", "drop_bad_length", None, [10, 0, 0, 3])));
    }

    #[test]
    fn bad_requests_say_what_to_do() {
        let e = Filter::new(true, false, None, &["nope".into()], None, None).unwrap_err();
        assert!(e.to_string().contains("drop_unknown_peer"), "{e}");
        let e = Filter::new(true, false, None, &["encapsulated".into()], None, None).unwrap_err();
        assert!(e.to_string().contains("--type trace"), "{e}");
        assert!(Filter::new(false, false, None, &[], None, None).is_err());
        assert!(Filter::new(false, true, Some(0), &[], None, None).is_err());
    }

    #[test]
    fn the_switch_is_the_union_with_the_densest_sampling() {
        let bit = |c: Counter| 1u64 << (c as u32);
        let drops = Filter::new(true, false, None, &[], None, None).unwrap();
        let sparse = Filter::new(false, true, Some(100), &[], None, None).unwrap();
        let named = ["encapsulated".to_owned()];
        let dense = Filter::new(false, true, Some(10), &named, None, None).unwrap();
        let d = Filter::switch([&drops]);
        assert_eq!((d.counters, d.sample), (oxlay_common::DROP_MASK, 0));
        let t = Filter::switch([&sparse]);
        assert_ne!(t.counters & bit(Counter::Decapsulated), 0);
        assert_eq!(
            t.counters & bit(Counter::PassedToStack),
            0,
            "the host's own traffic"
        );
        assert_eq!(
            t.counters & (oxlay_common::DROP_MASK | bit(Counter::MonitorLost)),
            0
        );
        assert_eq!(
            Filter::switch([&dense]).counters,
            bit(Counter::Encapsulated)
        );
        let all = Filter::switch([&drops, &sparse, &dense]);
        assert_eq!(all.counters, d.counters | t.counters);
        assert_eq!(all.sample, 10);
        assert_eq!(Filter::switch([]).counters, 0, "nobody listens");
    }
}
