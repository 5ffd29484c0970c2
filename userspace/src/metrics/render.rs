//! One scrape: a sample of the daemon, in Prometheus' text format. Names follow the
//! conventions: `oxlay_` prefix, `_total` on counters, base units, labels for the
//! dimension (a drop's reason, a forwarding event).
use std::sync::atomic::AtomicU64;

use anyhow::Result;
use oxlay_common::{CounterInfo, CounterKind, CounterValue, NetworkTraffic};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::ControlMetrics;

/// What a scrape reports, read from the daemon.
#[derive(Default)]
pub struct Sample {
    /// Every datapath counter, summed over CPUs, in table order.
    pub counters: Vec<(&'static CounterInfo, CounterValue)>,
    /// Each overlay network's traffic: (name, VNI, traffic).
    pub networks: Vec<(String, u32, NetworkTraffic)>,
    pub store_reachable: bool,
    /// How long the store has been unreachable (0 while it answers).
    pub store_down_seconds: f64,
    pub endpoints: usize,
    pub routes: usize,
    pub route_capacity: u32,
    pub peers: usize,
    pub map_write_failures: u64,
    /// Since the host's lease was last renewed (or registered).
    pub lease_age_seconds: f64,
    pub lease_expiries: u64,
    pub lease_ttl_seconds: f64,
    pub control: ControlMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Event {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabels {
    network: String,
    vni: u32,
    /// "encapsulated" (sent to peers) or "decapsulated" (delivered from them).
    direction: &'static str,
}

/// Registers a counter family of packets and one of bytes under `packets` and
/// `bytes` (each gets `_total`); `help` follows "Packets" or "Bytes".
fn packets_and_bytes<L>(
    registry: &mut Registry,
    (packets, bytes): (&str, &str),
    help: &str,
    series: impl IntoIterator<Item = (L, CounterValue)>,
) where
    L: Clone + std::fmt::Debug + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + 'static,
{
    let p = Family::<L, Counter>::default();
    let b = Family::<L, Counter>::default();
    for (labels, value) in series {
        p.get_or_create(&labels).inc_by(value.packets);
        b.get_or_create(&labels).inc_by(value.bytes);
    }
    registry.register(packets, format!("Packets {help}"), p);
    registry.register(bytes, format!("Bytes {help}"), b);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// A counter whose value the daemon keeps (`_total` is added).
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The sample in Prometheus' text exposition format.
pub fn render(sample: &Sample) -> Result<String> {
    let mut registry = Registry::default();
    let of_kind = |kind| {
        sample
            .counters
            .iter()
            .filter(move |(info, _)| info.kind == kind)
    };
    packets_and_bytes(
        &mut registry,
        ("oxlay_datapath_drops", "oxlay_datapath_drop_bytes"),
        "the datapath dropped, by reason (the meanings: `oxlay stats`)",
        of_kind(CounterKind::Drop).map(|(info, v)| {
            let reason = info.name.to_owned();
            (Reason { reason }, *v)
        }),
    );
    packets_and_bytes(
        &mut registry,
        ("oxlay_datapath_packets", "oxlay_datapath_bytes"),
        "the datapath handled, by what it did with them",
        of_kind(CounterKind::Forward).map(|(info, v)| {
            let event = info.name.to_owned();
            (Event { event }, *v)
        }),
    );
    let lost = of_kind(CounterKind::Monitor).map(|(_, v)| v.packets).sum();
    counter(
        &mut registry,
        "oxlay_monitor_events_lost",
        "Events `oxlay monitor` listeners asked for that the ring buffer had no room for",
        lost,
    );
    let networks = sample.networks.iter().flat_map(|(name, vni, t)| {
        [
            ("encapsulated", t.encapsulated),
            ("decapsulated", t.decapsulated),
        ]
        .map(|(direction, v)| {
            let network = name.clone();
            let labels = NetworkLabels {
                network,
                vni: *vni,
                direction,
            };
            (labels, v)
        })
    });
    packets_and_bytes(
        &mut registry,
        ("oxlay_network_packets", "oxlay_network_bytes"),
        "of each overlay network's traffic with peers (encapsulated: sent, with the outer headers; decapsulated: delivered to containers)",
        networks,
    );
    control_plane(&mut registry, sample);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

fn control_plane(registry: &mut Registry, sample: &Sample) {
    let reachable = if sample.store_reachable { 1.0 } else { 0.0 };
    gauge(
        registry,
        "oxlay_store_reachable",
        "1 while the store answers",
        reachable,
    );
    gauge(
        registry,
        "oxlay_store_down_seconds",
        "How long the store has not answered (0 while it does)",
        sample.store_down_seconds,
    );
    gauge(
        registry,
        "oxlay_endpoints",
        "Containers' endpoints on this host",
        sample.endpoints as f64,
    );
    gauge(
        registry,
        "oxlay_routes",
        "Entries of the route map",
        sample.routes as f64,
    );
    gauge(
        registry,
        "oxlay_peers",
        "Peer hosts whose packets are accepted",
        sample.peers as f64,
    );
    let fill = sample.routes as f64 / f64::from(sample.route_capacity.max(1));
    gauge(
        registry,
        "oxlay_route_map_fill_ratio",
        "Entries of the route map over its capacity",
        fill,
    );
    counter(
        registry,
        "oxlay_map_write_failures",
        "Map entries that could not be written since the daemon started (retried)",
        sample.map_write_failures,
    );
    gauge(
        registry,
        "oxlay_lease_age_seconds",
        "Since the host's lease in the store was last renewed (it expires at its TTL)",
        sample.lease_age_seconds,
    );
    gauge(
        registry,
        "oxlay_lease_ttl_seconds",
        "The TTL of the host's lease",
        sample.lease_ttl_seconds,
    );
    counter(
        registry,
        "oxlay_lease_expiries",
        "Times the host's lease expired (the store dropped the host and its routes until it registered again)",
        sample.lease_expiries,
    );
    let c = &sample.control;
    registry.register(
        "oxlay_reconcile_duration_seconds",
        "How long reconciling the maps with the store takes (scope: full, or the routes of changed blocks)",
        c.reconcile_seconds.clone(),
    );
    registry.register(
        "oxlay_watch_lag_seconds",
        "From a store change's arrival to the maps holding it",
        c.watch_lag_seconds.clone(),
    );
    registry.register(
        "oxlay_watch_revision",
        "The store revision whose changes the maps hold (hosts behind the others lag)",
        c.watch_revision.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxlay_common::{Counter as C, COUNTERS};

    #[test]
    fn counters_become_series_by_reason_and_event() {
        let sample = Sample {
            counters: COUNTERS
                .iter()
                .map(|c| {
                    let packets = c.counter as u64 * 10;
                    let bytes = packets * 100;
                    (c, CounterValue { packets, bytes })
                })
                .collect(),
            networks: vec![(
                "blue".into(),
                42,
                NetworkTraffic {
                    encapsulated: CounterValue {
                        packets: 3,
                        bytes: 300,
                    },
                    decapsulated: CounterValue {
                        packets: 4,
                        bytes: 400,
                    },
                },
            )],
            store_reachable: true,
            routes: 5,
            route_capacity: 10,
            ..Default::default()
        };
        let text = render(&sample).unwrap();
        let unknown = C::DropUnknownPeer as u64 * 10;
        assert!(
            text.contains(&format!(
                "oxlay_datapath_drops_total{{reason=\"drop_unknown_peer\"}} {unknown}"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "oxlay_datapath_drop_bytes_total{{reason=\"drop_unknown_peer\"}} {}",
                unknown * 100
            )),
            "{text}"
        );
        assert!(
            text.contains("oxlay_datapath_packets_total{event=\"encapsulated\"} 0"),
            "{text}"
        );
        for line in [
            "oxlay_network_packets_total{network=\"blue\",vni=\"42\",direction=\"encapsulated\"} 3",
            "oxlay_network_bytes_total{network=\"blue\",vni=\"42\",direction=\"decapsulated\"} 400",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains("oxlay_store_reachable 1"), "{text}");
        assert!(text.contains("oxlay_route_map_fill_ratio 0.5"), "{text}");
        assert!(text.contains("# HELP oxlay_datapath_drops Packets the datapath dropped"));
        assert!(text.ends_with("# EOF\n"));
    }
}
