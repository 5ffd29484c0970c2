//! One scrape: a sample of the daemon, in Prometheus' text format. Names follow the
//! conventions: `oxlay_` prefix, `_total` on counters, base units, labels for the
//! dimension (a drop's reason, a forwarding event).
use std::sync::atomic::AtomicU64;

use anyhow::Result;
use oxlay_common::{CounterInfo, CounterKind};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// What a scrape reports, read from the daemon.
#[derive(Debug, Default)]
pub struct Sample {
    /// Every datapath counter, summed over CPUs, in table order.
    pub counters: Vec<(&'static CounterInfo, u64)>,
    pub store_reachable: bool,
    /// How long the store has been unreachable (0 while it answers).
    pub store_down_seconds: f64,
    pub endpoints: usize,
    pub routes: usize,
    pub route_capacity: u32,
    pub peers: usize,
    pub map_write_failures: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Event {
    event: String,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The sample in Prometheus' text exposition format.
pub fn render(sample: &Sample) -> Result<String> {
    let mut registry = Registry::default();
    let drops = Family::<Reason, Counter>::default();
    let packets = Family::<Event, Counter>::default();
    for (info, value) in &sample.counters {
        match info.kind {
            CounterKind::Drop => drops.get_or_create(&Reason {
                reason: info.name.to_owned(),
            }),
            CounterKind::Forward => packets.get_or_create(&Event {
                event: info.name.to_owned(),
            }),
        }
        .inc_by(*value);
    }
    registry.register(
        "oxlay_datapath_drops",
        "Packets the datapath dropped, by reason (the meanings: `oxlay stats`)",
        drops,
    );
    registry.register(
        "oxlay_datapath_packets",
        "Packets the datapath handled, by what it did with them",
        packets,
    );
    let reachable = if sample.store_reachable { 1.0 } else { 0.0 };
    gauge(
        &mut registry,
        "oxlay_store_reachable",
        "1 while the store answers",
        reachable,
    );
    gauge(
        &mut registry,
        "oxlay_store_down_seconds",
        "How long the store has not answered (0 while it does)",
        sample.store_down_seconds,
    );
    gauge(
        &mut registry,
        "oxlay_endpoints",
        "Containers' endpoints on this host",
        sample.endpoints as f64,
    );
    gauge(
        &mut registry,
        "oxlay_routes",
        "Entries of the route map",
        sample.routes as f64,
    );
    gauge(
        &mut registry,
        "oxlay_peers",
        "Peer hosts whose packets are accepted",
        sample.peers as f64,
    );
    let fill = sample.routes as f64 / f64::from(sample.route_capacity.max(1));
    gauge(
        &mut registry,
        "oxlay_route_map_fill_ratio",
        "Entries of the route map over its capacity",
        fill,
    );
    let failures = Counter::<u64>::default();
    failures.inc_by(sample.map_write_failures);
    registry.register(
        "oxlay_map_write_failures",
        "Map entries that could not be written since the daemon started (retried)",
        failures,
    );
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
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
                .map(|c| (c, c.counter as u64 * 10))
                .collect(),
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
            text.contains("oxlay_datapath_packets_total{event=\"encapsulated\"} 0"),
            "{text}"
        );
        assert!(text.contains("oxlay_store_reachable 1"), "{text}");
        assert!(text.contains("oxlay_route_map_fill_ratio 0.5"), "{text}");
        assert!(text.contains("# HELP oxlay_datapath_drops Packets the datapath dropped"));
        assert!(text.ends_with("# EOF\n"));
    }
}
