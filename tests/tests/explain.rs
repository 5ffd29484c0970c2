//! `oxlay explain` against real daemons: the loaded program run on a probe against the
//! live maps says where a packet goes (route, peer, VNI, outer headers) or which check
//! drops it, for packets from a container and from a peer; probes show in no counter.
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{eventually, skip_without_root, StoreCluster};
use serde_json::Value;

fn explain(c: &StoreCluster, host: usize, args: &[&str]) -> Result<Value> {
    let mut all = vec!["explain", "--json", "--network", "blue"];
    all.extend(args);
    let out = c.daemons[host].cli(&all)?;
    serde_json::from_str(&out).with_context(|| out.clone())
}

/// Every counter and network of `oxlay stats --json` (packets and bytes).
fn stats(c: &StoreCluster, host: usize) -> Result<Value> {
    Ok(serde_json::from_str(
        &c.daemons[host].cli(&["stats", "--json"])?,
    )?)
}

/// The counters (host, name, packets before, after) that differ.
fn changes(before: &[Value; 2], after: &[Value; 2]) -> Vec<(usize, String, Value, Value)> {
    let mut changed = Vec::new();
    for host in 0..2 {
        let (b, a) = (&before[host]["counters"], &after[host]["counters"]);
        for (x, y) in b
            .as_array()
            .into_iter()
            .flatten()
            .zip(a.as_array().into_iter().flatten())
        {
            if x != y {
                changed.push((
                    host,
                    x["name"].to_string(),
                    x["packets"].clone(),
                    y["packets"].clone(),
                ));
            }
        }
        if before[host]["networks"] != after[host]["networks"] {
            changed.push((
                host,
                "networks".into(),
                before[host]["networks"].clone(),
                after[host]["networks"].clone(),
            ));
        }
    }
    changed
}

#[test]
fn explain_tells_where_a_packet_goes_or_why_it_is_dropped() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = StoreCluster::new(2, false, 10)?;
    let d = &c.daemons[0];
    d.cli(&[
        "network",
        "create",
        "blue",
        "--subnet",
        "10.84.0.0/16",
        "--vni",
        "4343",
    ])?;
    let (a, a_ip) = c.endpoint(0, "blue", "xa", None)?;
    let (_c0, c_ip) = c.endpoint(0, "blue", "xc", None)?;
    let (_b, b_ip) = c.endpoint(1, "blue", "xb", None)?;
    eventually(Duration::from_secs(5), || a.ping(&b_ip.to_string(), 1))?;
    let (a_ip, b_ip, c_ip) = (a_ip.to_string(), b_ip.to_string(), c_ip.to_string());
    let before = [stats(&c, 0)?, stats(&c, 1)?];

    // To a container on the other host: encapsulated to it, VNI and ports as sent.
    let v = explain(
        &c,
        0,
        &[
            "--from", &a_ip, "--to", &b_ip, "--proto", "tcp", "--dport", "8080",
        ],
    )?;
    ensure!(
        v["verdict"] == "encapsulated" && v["counter"] == "encapsulated",
        "{v}"
    );
    let route = &v["route"];
    ensure!(
        route["kind"] == "remote" && route["via"] == "192.168.50.12",
        "{v}"
    );
    ensure!(route["host"] == c.daemons[1].node.as_str(), "{v}");
    let prefix: oxlay::net::Ipv4Net = route["prefix"].as_str().context("prefix")?.parse()?;
    ensure!(
        prefix.contains(b_ip.parse()?) && prefix.prefix_len() < 32,
        "{v}"
    );
    ensure!(v["outer"]["src"] == "192.168.50.11" && v["outer"]["dst"] == "192.168.50.12");
    ensure!(v["outer"]["dport"] == 4789 && v["outer_vni"] == 4343, "{v}");
    ensure!(
        v["probe"]["dport"] == 8080 && v["probe"]["protocol"] == "tcp",
        "{v}"
    );
    ensure!(v["entered"].as_str().is_some_and(|e| !e.is_empty()), "{v}");

    // To a container on this host: delivered by its veth.
    let v = explain(&c, 0, &["--from", &a_ip, "--to", &c_ip])?;
    ensure!(
        v["verdict"] == "delivered" && v["counter"] == "delivered_local",
        "{v}"
    );
    ensure!(v["route"]["kind"] == "local" && v["route"]["prefix"] == format!("{c_ip}/32"));
    ensure!(
        v["delivered_to"].as_str().is_some_and(|t| t.contains("xc")),
        "{v}"
    );

    // Outside every network: the host's to route (and masquerade).
    let v = explain(&c, 0, &["--from", &a_ip, "--to", "192.0.2.7"])?;
    ensure!(v["verdict"] == "to the host" && v["route"].is_null(), "{v}");

    // Too big for the underlay once encapsulated (container MTU 1450).
    let v = explain(&c, 0, &["--from", &a_ip, "--to", &b_ip, "--size", "1460"])?;
    ensure!(
        v["verdict"] == "dropped" && v["counter"] == "drop_too_big",
        "{v}"
    );
    ensure!(
        v["meaning"].as_str().is_some_and(|m| m.contains("too big")),
        "{v}"
    );

    // From the peer: decapsulated and delivered to a's veth.
    let v = explain(
        &c,
        0,
        &[
            "--receive",
            "--from",
            &b_ip,
            "--to",
            &a_ip,
            "--proto",
            "udp",
            "--dport",
            "53",
        ],
    )?;
    ensure!(
        v["verdict"] == "delivered" && v["counter"] == "decapsulated",
        "{v}"
    );
    ensure!(v["entered"] == "eth0" && v["delivered_to"].as_str().is_some_and(|t| t.contains("xa")));
    // From an address that is no peer; to an address with no container.
    let v = explain(
        &c,
        0,
        &[
            "--receive",
            "--from",
            &b_ip,
            "--to",
            &a_ip,
            "--peer",
            "192.168.50.99",
        ],
    )?;
    ensure!(v["counter"] == "drop_unknown_peer", "{v}");
    let v = explain(
        &c,
        0,
        &["--receive", "--from", &b_ip, "--to", "10.84.250.250"],
    )?;
    ensure!(
        v["verdict"] == "dropped" && v["counter"] == "drop_no_local_endpoint",
        "{v}"
    );
    ensure!(
        v["action"].as_str().is_some_and(|a| a.starts_with("drop")),
        "{v}"
    );

    // None of it counted: every counter and network's traffic as before. (The hosts'
    // own traffic, ARP on the underlay, moves passed_to_stack meanwhile: that probe
    // runs 30 more times, and the counter must have moved by less.)
    for _ in 0..30 {
        explain(&c, 0, &["--from", &a_ip, "--to", "192.0.2.7"])?;
    }
    let after = [stats(&c, 0)?, stats(&c, 1)?];
    for (host, name, was, is) in changes(&before, &after) {
        let moved = is
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(was.as_u64().unwrap_or(0));
        ensure!(
            name == "\"passed_to_stack\"" && moved < 30,
            "host {host}: probes were counted: {name} {was} -> {is}"
        );
    }

    // What cannot be explained says what to do.
    let e = c.daemons[0]
        .cli(&[
            "explain",
            "--network",
            "blue",
            "--from",
            &b_ip,
            "--to",
            &a_ip,
        ])
        .unwrap_err();
    ensure!(format!("{e:#}").contains("--receive"), "{e:#}");
    let e = c.daemons[0]
        .cli(&[
            "explain",
            "--network",
            "nope",
            "--from",
            &a_ip,
            "--to",
            &b_ip,
        ])
        .unwrap_err();
    ensure!(format!("{e:#}").contains("oxlay network ls"), "{e:#}");
    Ok(())
}
