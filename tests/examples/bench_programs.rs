//! Per-packet cost of the kernel programs under BPF_PROG_TEST_RUN, next to no-op
//! programs of the same types; prints one JSON object (ns per run) for `cargo xtask bench`.
//!
//! Every run is a separate `repeat = 1` call: with repeat > 1 the kernel reruns on the
//! same, already modified packet (an encap would keep pushing headers), so the average
//! of many single runs is what is measured. The no-op figure carries the same timer
//! overhead and is reported beside it.
//!
//! At 10 routes the forwarding programs are also measured with `oxlay monitor`
//! listening: for drops (what forwarded packets then pay is the switch's check), and
//! tracing every packet (each one an event, read from the ring buffer meanwhile).
use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{ensure, Result};
use oxlay::{datapath::Datapath, net::Ipv4Net};
use oxlay_common::{
    monitor::MonitorConfig, program_names as prog, DatapathConfig, Endpoint, Peer, Route,
};

const RUNS: u32 = 20_000;
/// Route counts the lookups are measured at.
const ROUTE_COUNTS: [u32; 3] = [10, 10_000, 100_000];

fn main() -> Result<()> {
    let mut result = serde_json::Map::new();
    for routes in ROUTE_COUNTS {
        let pins = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/oxlay-bench-{}-{routes}",
            std::process::id()
        ));
        let measured = measure(&pins, routes);
        let _ = std::fs::remove_dir_all(&pins);
        result.insert(routes.to_string(), measured?);
    }
    println!("{}", serde_json::Value::Object(result));
    Ok(())
}

/// Each program's average ns per run with `routes` routes in the trie: /24 blocks of
/// remote hosts, the packets' destinations among them, plus the local container.
fn measure(pins: &std::path::Path, routes: u32) -> Result<serde_json::Value> {
    let mut dp = Datapath::load(pins)?;
    dp.set_config(DatapathConfig {
        underlay_ifindex: 1,
        underlay_addr: [192, 168, 50, 11],
        vxlan_port: 4789,
        vtep_mac: [2, 0, 0, 0, 0, 0xa],
        ready: 1,
        underlay_mtu: 1500,
        _pad: 0,
        wireguard_ifindex: 0,
    })?;
    dp.add_network(42)?;
    dp.set_peer(Ipv4Addr::new(192, 168, 50, 12), Peer::default())?;
    // The packets' peer block 10.244.2.0/24, `routes - 2` other /24 blocks from
    // 11.0.0.0 up, and the local container's /32.
    let remote = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 0xb]);
    dp.set_route(42, Ipv4Net::new(Ipv4Addr::new(10, 244, 2, 0), 24)?, remote)?;
    for i in 0..routes - 2 {
        let block = Ipv4Addr::from(0x0b00_0000 + (i << 8));
        dp.set_route(42, Ipv4Net::new(block, 24)?, remote)?;
    }
    dp.set_route(
        42,
        Ipv4Net::new(Ipv4Addr::new(10, 244, 1, 3), 32)?,
        Route::local(7, [2; 6], [4; 6]),
    )?;
    dp.set_endpoint(
        1,
        Endpoint {
            net_id: 42,
            addr: [10, 244, 1, 2],
            mac: [2, 0, 0, 0, 0, 2], // the source MAC of eth() below: anti-spoofing checks it
            flags: 0,
            _pad: 0,
        },
    )?;

    let payload = [0u8; 64];
    let inner = ipv4_udp([10, 244, 1, 2], [10, 244, 2, 2], &payload);
    let from_container = [eth(0x0800), inner.clone()].concat();
    let inner_back = ipv4_udp([10, 244, 2, 2], [10, 244, 1, 3], &payload);
    let vxlan = [
        eth(0x0800),
        ipv4_udp_header(
            [192, 168, 50, 12],
            [192, 168, 50, 11],
            4789,
            8 + 14 + inner_back.len(),
        ),
        vec![0x08, 0, 0, 0, 0, 0, 42, 0],
        eth(0x0800),
        inner_back,
    ]
    .concat();

    let time = |dp: &Datapath, name: &str, packet: &[u8], verdict: u32| -> Result<f64> {
        // Untimed runs first: the first of each program pay for cold caches and
        // lazily built state.
        for _ in 0..RUNS / 10 {
            dp.test_run(name, packet, 1)?;
        }
        let mut total = 0.0;
        for _ in 0..RUNS {
            let r = dp.test_run(name, packet, 1)?;
            ensure!(
                r.verdict == verdict,
                "{name} returned {} instead of {verdict}",
                r.verdict
            );
            total += r.ns_per_run;
        }
        Ok(total / RUNS as f64)
    };
    let forwarding = |dp: &Datapath| -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "encap_hashed_tc": time(dp, prog::BENCH_FROM_CONTAINER_HASHED, &from_container, 7)?,
            "decap_tc": time(dp, prog::DECAP_TC, &vxlan, 7)?,
            "decap_xdp": time(dp, prog::DECAP_XDP, &vxlan, 2)?,
        }))
    };
    let mut monitored = serde_json::Map::new();
    if routes == ROUTE_COUNTS[0] {
        let mut ring = dp.take_events()?;
        for (name, flags) in [
            ("none", 0),
            ("drops", oxlay_common::DROP_MASK),
            ("trace_all", u64::MAX),
        ] {
            dp.set_monitor(MonitorConfig {
                counters: flags,
                until_ns: u64::MAX,
                sample: 1,
                _pad: 0,
            })?;
            // A listener reads the ring buffer meanwhile, as the daemon does.
            let stop = AtomicBool::new(false);
            let (mut costs, events) = std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    let mut events = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        while ring.next().is_some() {
                            events += 1;
                        }
                    }
                    events
                });
                let costs = forwarding(&dp);
                stop.store(true, Ordering::Relaxed);
                (costs, reader.join().unwrap_or(0))
            });
            if let Ok(serde_json::Value::Object(m)) = &mut costs {
                m.insert("events".into(), events.into());
            }
            monitored.insert(name.into(), costs?);
        }
        dp.set_monitor(MonitorConfig::default())?;
    }
    let encap = time(&dp, prog::FROM_CONTAINER, &from_container, 7)?;
    let encap_hashed = time(&dp, prog::BENCH_FROM_CONTAINER_HASHED, &from_container, 7)?;
    let set_hash = time(&dp, prog::BENCH_SET_HASH, &from_container, 0)?;
    Ok(serde_json::json!({
        "monitor": monitored,
        "noop_tc": time(&dp, prog::NOOP_TC, &from_container, 0)?,
        "encap_tc": encap,
        "set_hash_tc": set_hash,
        "encap_hashed_tc": encap_hashed,
        "decap_tc": time(&dp, prog::DECAP_TC, &vxlan, 7)?,
        "noop_xdp": time(&dp, prog::NOOP_XDP, &vxlan, 2)?,
        "decap_xdp": time(&dp, prog::DECAP_XDP, &vxlan, 2)?,
    }))
}

fn eth(ethertype: u16) -> Vec<u8> {
    [
        &[2u8, 0, 0, 0, 0, 1][..],
        &[2, 0, 0, 0, 0, 2],
        &ethertype.to_be_bytes(),
    ]
    .concat()
}

fn ipv4_udp_header(src: [u8; 4], dst: [u8; 4], dport: u16, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend(((20 + 8 + payload_len) as u16).to_be_bytes());
    h.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    h.extend(src);
    h.extend(dst);
    h.extend(50000u16.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend(((8 + payload_len) as u16).to_be_bytes());
    h.extend([0, 0]);
    h
}

fn ipv4_udp(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    [
        ipv4_udp_header(src, dst, 7777, payload.len()),
        payload.to_vec(),
    ]
    .concat()
}
