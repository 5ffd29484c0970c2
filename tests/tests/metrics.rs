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
    // Nothing moves between the scrape and `oxlay stats`: the same values.
    let d = &c.daemons[0];
    for (series, counter) in [
        (
            "oxlay_datapath_drops_total{reason=\"drop_unknown_peer\"}",
            "drop_unknown_peer",
        ),
        (
            "oxlay_datapath_packets_total{event=\"encapsulated\"}",
            "encapsulated",
        ),
        (
            "oxlay_datapath_packets_total{event=\"decapsulated\"}",
            "decapsulated",
        ),
    ] {
        let scraped = value(&text, series)?;
        ensure!(
            scraped == d.counter(counter)? as f64,
            "{series} {scraped} vs oxlay stats"
        );
    }
    ensure!(
        value(
            &text,
            "oxlay_datapath_packets_total{event=\"encapsulated\"}"
        )? >= 2.0
    );
    ensure!(value(&text, "oxlay_store_reachable")? == 1.0, "{text}");
    ensure!(value(&text, "oxlay_endpoints")? == 1.0, "{text}");
    ensure!(value(&text, "oxlay_peers")? == 1.0, "{text}");
    let fill = value(&text, "oxlay_route_map_fill_ratio")?;
    ensure!(fill > 0.0 && fill < 0.01, "fill ratio {fill}");
    Ok(())
}
