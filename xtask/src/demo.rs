//! `cargo xtask demo [--store embedded|etcd]`: three hosts on one underlay segment, a
//! daemon per host sharing a store, two networks with the same subnet, containers on
//! both; pings, a checked TCP transfer, the routes and counters. Cleans up on exit and
//! on Ctrl-C.
use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context, Result};
use oxlay_testbed::{tcp_transfer, Netns, StoreCluster};

use crate::step;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C stops the demo between steps; the drops then remove everything.
pub fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}

/// Whether Ctrl-C was pressed since `catch_interrupt`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Prints a command as a user would type it, runs it on host `h`, prints its output.
fn show(c: &StoreCluster, h: usize, args: &[&str]) -> Result<String> {
    check_interrupt()?;
    println!("$ oxlay {}        # on host {h}", args.join(" "));
    let out = c.daemons[h].cli(args)?;
    for line in out.lines() {
        println!("    {line}");
    }
    Ok(out)
}

/// The address an endpoint of `ns` got on `network`.
fn address_of(c: &StoreCluster, network: &str, ns: &Netns) -> Result<String> {
    let eps: serde_json::Value = serde_json::from_str(&c.daemons[0].cli(&[
        "endpoint",
        "ls",
        "--network",
        network,
        "--json",
    ])?)?;
    eps.as_array()
        .and_then(|a| a.iter().find(|e| e["sandbox"] == ns.name.as_str()))
        .and_then(|e| e["address"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no endpoint of {} on {network}", ns.name))
}

fn ping(from: &Netns, what: &str, to: &str) -> Result<()> {
    check_interrupt()?;
    step(&format!("ping {what}: {} -> {to}", from.name));
    let out = from.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", to])?;
    for line in out.lines().filter(|l| l.contains("packet loss")) {
        println!("    {line}");
    }
    Ok(())
}

pub fn run(oxlay: &Path, etcd: bool) -> Result<()> {
    std::env::set_var("OXLAY_BIN", oxlay);
    catch_interrupt();
    let store = if etcd {
        "etcd (on the underlay, 192.168.50.1:2379)"
    } else {
        "the embedded store"
    };
    step(&format!(
        "3 hosts on underlay 192.168.50.0/24, one daemon each, sharing {store}"
    ));
    let c = StoreCluster::new(3, etcd, 10)?;
    show(&c, 0, &["hosts"])?;

    step("two networks with the same subnet: isolated by VNI");
    show(
        &c,
        0,
        &[
            "network",
            "create",
            "blue",
            "--subnet",
            "10.10.0.0/16",
            "--label",
            "tier=web",
        ],
    )?;
    show(
        &c,
        1,
        &[
            "network",
            "create",
            "red",
            "--subnet",
            "10.10.0.0/16",
            "--allow-overlap",
        ],
    )?;
    show(&c, 2, &["network", "ls"])?;

    step("containers: on every host one on blue and one on red, plus a second blue one on host 0");
    let mut blue = Vec::new();
    let mut red = Vec::new();
    for h in 0..3 {
        let b = Netns::new(&format!("blue{h}"))?;
        let r = Netns::new(&format!("red{h}"))?;
        show(
            &c,
            h,
            &[
                "endpoint",
                "create",
                "--network",
                "blue",
                "--netns",
                &b.name,
            ],
        )?;
        show(
            &c,
            h,
            &["endpoint", "create", "--network", "red", "--netns", &r.name],
        )?;
        blue.push(b);
        red.push(r);
    }
    let blue_b = Netns::new("blue0b")?;
    show(
        &c,
        0,
        &[
            "endpoint",
            "create",
            "--network",
            "blue",
            "--netns",
            &blue_b.name,
        ],
    )?;
    show(&c, 0, &["endpoint", "ls"])?;
    show(&c, 0, &["routes"])?;

    let b1 = address_of(&c, "blue", &blue[1])?;
    let b2 = address_of(&c, "blue", &blue[2])?;
    let bb = address_of(&c, "blue", &blue_b)?;
    let r2 = address_of(&c, "red", &red[2])?;
    ping(&blue[0], "blue, host 0 to host 1", &b1)?;
    ping(&blue[0], "blue, host 0 to host 2", &b2)?;
    ping(&blue[0], "blue, same host", &bb)?;
    ping(&red[0], "red, host 0 to host 2", &r2)?;
    ping(
        &blue[0],
        "container to its own host",
        &c.hosts[0].addr.to_string(),
    )?;

    check_interrupt()?;
    const BYTES: u64 = 512 * 1024 * 1024;
    step(&format!(
        "TCP on blue: 512 MiB from host 0 to host 1 ({b1}), every byte checked on arrival"
    ));
    let t = tcp_transfer(&blue[0], &blue[1], b1.parse()?, BYTES)?;
    println!(
        "    {:.2} Gbit/s ({:.2} s)",
        BYTES as f64 * 8.0 / t.as_secs_f64() / 1e9,
        t.as_secs_f64()
    );

    check_interrupt()?;
    for h in [0, 1] {
        step(&format!("oxlay stats (host {h}), non-zero counters"));
        for line in c.daemons[h].cli(&["stats"])?.lines().skip(1) {
            if line.split_whitespace().nth(1).unwrap_or("0") != "0" {
                println!("    {line}");
            }
        }
    }
    step("cleaning up: `oxlay uninstall` on every host (endpoints, programs, pins), namespaces go");
    drop((blue, red, blue_b));
    drop(c);
    step("demo done");
    Ok(())
}
