//! `oxlay explain`: what the datapath does with a packet, found by running the loaded
//! program on a probe packet against the live maps (BPF_PROG_TEST_RUN). The probe is
//! marked so that the programs record the counter they would bump instead of bumping
//! it: it never shows in `oxlay stats`, the metrics or the monitor. The packets are
//! built here (`packet`), the daemon runs them (`daemon/explain.rs`).
mod packet;

use oxlay_common::{CounterInfo, CounterKind};
use serde::{Deserialize, Serialize};

pub use packet::{container_frame, tunnelled_frame, Spec, Tunnel, L4};

use crate::monitor::Flow;

/// The answer of `oxlay explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainView {
    /// "send" (from a local container) or "receive" (from a peer).
    pub direction: String,
    pub network: String,
    pub vni: u32,
    /// The probe packet (inside the tunnel, for "receive").
    pub probe: Flow,
    /// The interface the probe came in by.
    pub entered: String,
    /// The route entry the destination matched (none: no route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteMatch>,
    /// encapsulated, routed, delivered, to the host, answered, dropped.
    pub verdict: String,
    /// What the program returned: redirect, drop, pass (or the number).
    pub action: String,
    /// The counter the program counted it under, and its meaning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meaning: Option<String>,
    /// The outer headers it left with (encapsulated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<Flow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer_vni: Option<u32>,
    /// The container's interface it is delivered by (delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_to: Option<String>,
    /// oxlay's WireGuard device, when the peer and this host encrypt: the packet
    /// leaves through it (send) or arrives through it (receive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMatch {
    pub prefix: String,
    /// local, remote, remote-gre, direct.
    pub kind: String,
    /// A local container's host-side veth, or a peer's underlay address.
    pub via: String,
    /// The peer host's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// What the program did, from the counter it counted the probe under.
pub fn verdict(counter: Option<&CounterInfo>) -> &'static str {
    let Some(c) = counter else {
        return "not counted";
    };
    match (c.kind, c.name) {
        (CounterKind::Drop, _) => "dropped",
        (_, "encapsulated") => "encapsulated",
        (_, "routed_direct") => "routed",
        (_, "passed_to_stack" | "l2_to_host") => "to the host",
        (_, "arp_replied") => "answered",
        _ => "delivered",
    }
}

/// `oxlay explain` for a person.
pub fn render(v: &ExplainView) -> String {
    let flow = |f: &Flow| {
        let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}{} -> {}{} {}",
            f.src,
            port(f.sport),
            f.dst,
            port(f.dport),
            f.protocol
        )
    };
    let mut t = format!(
        "{} {} in network {} (vni {}), entering by {}\n",
        v.direction,
        flow(&v.probe),
        v.network,
        v.vni,
        v.entered
    );
    match &v.route {
        Some(r) => {
            let host = r
                .host
                .as_ref()
                .map(|h| format!(" (host {h})"))
                .unwrap_or_default();
            t += &format!("  route    {} {} via {}{host}\n", r.prefix, r.kind, r.via);
        }
        None => t += "  route    none in this network\n",
    }
    t += &format!(
        "  verdict  {} (the program returned {})\n",
        v.verdict, v.action
    );
    if let (Some(c), Some(m)) = (&v.counter, &v.meaning) {
        t += &format!("  counter  {c}: {m}\n");
    }
    if let Some(o) = &v.outer {
        let vni = v
            .outer_vni
            .map(|n| format!(", vni {n}"))
            .unwrap_or_default();
        t += &format!("  outer    {}{vni}\n", flow(o));
    }
    if let Some(w) = &v.encrypted_by {
        let way = if v.direction == "receive" {
            "from"
        } else {
            "into"
        };
        t += &format!("  wire     encrypted: {way} WireGuard device {w}\n");
    }
    if let Some(d) = &v.delivered_to {
        t += &format!("  to       {d}\n");
    }
    t.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxlay_common::Counter;

    #[test]
    fn verdicts_follow_the_counter() {
        assert_eq!(verdict(Some(Counter::Encapsulated.info())), "encapsulated");
        assert_eq!(verdict(Some(Counter::DropTooBig.info())), "dropped");
        assert_eq!(verdict(Some(Counter::DeliveredLocal.info())), "delivered");
        assert_eq!(verdict(Some(Counter::Decapsulated.info())), "delivered");
        assert_eq!(verdict(Some(Counter::PassedToStack.info())), "to the host");
        assert_eq!(verdict(None), "not counted");
    }
}
