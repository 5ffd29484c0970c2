//! The Prometheus endpoint (`[metrics] listen`): a scrape of a real daemon reports the
//! datapath's counters by reason, with the values `oxlay stats` gives, and the control
//! plane's state. Drops are caused on purpose: VXLAN from an underlay address that is
//! no peer.
use std::{
    io::{Read, Write},
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{eventually, skip_without_root, Netns, StoreCluster};

const LISTEN: &str = "127.0.0.1:9742";

/// `GET /metrics` from inside `ns` (each host has its own loopback).
fn scrape(ns: &Netns) -> Result<String> {
    ns.spawn(|| {
        let mut s = TcpStream::connect(LISTEN).context("connect to the metrics endpoint")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        ensure!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );
        ensure!(answer.contains("application/openmetrics-text"), "{answer}");
        Ok(answer)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("scrape thread panicked"))?
}

/// The value of the series `name` (with its labels) in a scrape.
fn value(text: &str, series: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no series {series} in:\n{text}"))?
        .trim()
        .parse()
        .with_context(|| format!("series {series} is not a number"))
}

/// Checks that every counter and network of `oxlay stats --json` has the same packets
/// and bytes in the scrape; how many series were compared.
fn same_as_stats(text: &str, stats: &serde_json::Value) -> Result<usize> {
    let mut compared = 0;
    let mut same = |series: String, want: &serde_json::Value| -> Result<()> {
        let want = want
            .as_u64()
            .with_context(|| format!("{series}: no number in stats"))?;
        let got = value(text, &series)?;
        ensure!(
            got == want as f64,
            "{series}: scraped {got}, oxlay stats {want}"
        );
        compared += 1;
        Ok(())
    };
    for c in stats["counters"].as_array().context("no counters")? {
        let name = c["name"].as_str().context("a counter without a name")?;
        let (packets, bytes, label) = match c["kind"].as_str() {
            Some("drop") => ("drops", "drop_bytes", "reason"),
            // The monitor's own losses: a series of their own, no bytes.
            Some("monitor") => {
                same("oxlay_monitor_events_lost_total".into(), &c["packets"])?;
                continue;
            }
            _ => ("packets", "bytes", "event"),
        };
        same(
            format!("oxlay_datapath_{packets}_total{{{label}=\"{name}\"}}"),
            &c["packets"],
        )?;
        same(
            format!("oxlay_datapath_{bytes}_total{{{label}=\"{name}\"}}"),
            &c["bytes"],
        )?;
    }
    for n in stats["networks"].as_array().context("no networks")? {
        let labels = |direction| {
            format!(
                "{{network={},vni=\"{}\",direction=\"{direction}\"}}",
                n["network"], n["vni"]
            )
        };
        for direction in ["encapsulated", "decapsulated"] {
            for what in ["packets", "bytes"] {
                let series = format!("oxlay_network_{what}_total{}", labels(direction));
                same(series, &n[format!("{direction}_{what}")])?;
            }
        }
    }
    Ok(compared)
}

/// Network blue's VNI, from `oxlay stats --json`.
fn blue_vni(stats: &serde_json::Value) -> u64 {
    stats["networks"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["network"] == "blue"))
        .and_then(|n| n["vni"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_scrape_reports_what_oxlay_stats_reports() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let addrs: Vec<String> = ["192.168.50.11", "192.168.50.12"].map(String::from).into();
    let extra = vec![format!("[metrics]\nlisten = \"{LISTEN}\"\n"); 2];
    let c = StoreCluster::with_config(&addrs, false, 10, extra)?;
    c.daemons[0].cli(&["network", "create", "blue", "--subnet", "10.81.0.0/16"])?;
    let (a, _) = c.endpoint(0, "blue", "ma", None)?;
    let (_b, b_ip) = c.endpoint(1, "blue", "mb", None)?;
    // Once host 0 has host 1's route (the store's watch), two packets each way.
    eventually(Duration::from_secs(5), || a.ping(&b_ip.to_string(), 1))?;
    a.ping(&b_ip.to_string(), 2)?;

    // Five VXLAN packets from the underlay's own address, which is no peer.
    c.underlay
        .ns
        .spawn(|| {
            let sock = UdpSocket::bind("192.168.50.1:0")?;
            let mut packet = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
            packet.extend([0u8; 60]);
            for _ in 0..5 {
                sock.send_to(&packet, "192.168.50.11:4789")?;
            }
            anyhow::Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let host = &c.hosts[0].ns;
    let text = eventually(Duration::from_secs(3), || {
        let text = scrape(host)?;
        let dropped = value(
            &text,
            "oxlay_datapath_drops_total{reason=\"drop_unknown_peer\"}",
        )?;
        ensure!(dropped >= 5.0, "{dropped} drops from an unknown peer");
        Ok(text)
    })?;
    // Nothing moves between the scrape and `oxlay stats`: the same values, for every
    // counter and network, packets and bytes.
    let stats: serde_json::Value = serde_json::from_str(&c.daemons[0].cli(&["stats", "--json"])?)?;
    let compared = same_as_stats(&text, &stats)?;
    let counters = oxlay_common::COUNTERS.len();
    ensure!(
        compared == 2 * (counters - 1) + 1 + 4,
        "{compared} series compared"
    );
    // Each dropped frame: 14 + 20 + 8 + 68 bytes.
    let unknown = "{reason=\"drop_unknown_peer\"}";
    ensure!(value(&text, &format!("oxlay_datapath_drops_total{unknown}"))? == 5.0);
    ensure!(value(&text, &format!("oxlay_datapath_drop_bytes_total{unknown}"))? == 550.0);
    // Three pings went out in blue (one may have waited for the route) and came back.
    let blue = |what: &str, direction: &str| {
        let labels = format!(
            "{{network=\"blue\",vni=\"{}\",direction=\"{direction}\"}}",
            blue_vni(&stats)
        );
        value(&text, &format!("oxlay_network_{what}_total{labels}"))
    };
    let sent = blue("packets", "encapsulated")?;
    ensure!(sent >= 2.0, "{sent} packets sent in blue");
    // An echo request: 14 + 20 + 8 + 56 bytes, + 50 of VXLAN around it.
    ensure!(blue("bytes", "encapsulated")? == sent * 148.0);
    ensure!(blue("bytes", "decapsulated")? == blue("packets", "decapsulated")? * 98.0);
    // The control plane: the lease fresh, reconciles timed, the peer's changes applied.
    ensure!(value(&text, "oxlay_lease_age_seconds")? < value(&text, "oxlay_lease_ttl_seconds")?);
    ensure!(
        value(
            &text,
            "oxlay_reconcile_duration_seconds_count{scope=\"full\"}"
        )? >= 1.0
    );
    ensure!(
        value(&text, "oxlay_watch_lag_seconds_count")? >= 1.0,
        "{text}"
    );
    ensure!(value(&text, "oxlay_watch_revision")? > 0.0, "{text}");
    ensure!(value(&text, "oxlay_store_reachable")? == 1.0, "{text}");
    ensure!(value(&text, "oxlay_endpoints")? == 1.0, "{text}");
    ensure!(value(&text, "oxlay_peers")? == 1.0, "{text}");
    let fill = value(&text, "oxlay_route_map_fill_ratio")?;
    ensure!(fill > 0.0 && fill < 0.01, "fill ratio {fill}");
    Ok(())
}
