//! `cargo xtask demo`: three hosts on one underlay segment, two containers each, a
//! daemon per host; pings, a TCP transfer, the counters. Cleans up on exit and Ctrl-C.
use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Result};
use oxlay_testbed::{tcp_transfer, Cluster};

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

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

pub fn run(oxlay: &Path) -> Result<()> {
    // SAFETY (of intent): single-threaded at this point; the testbed reads it later.
    std::env::set_var("OXLAY_BIN", oxlay);
    catch_interrupt();
    step("creating 3 hosts on underlay 192.168.50.0/24, a daemon and 2 containers each");
    let c = Cluster::new(3, 2, "tc")?;
    for (i, host) in c.hosts.iter().enumerate() {
        println!(
            "    host {i}: {} underlay {} pod subnet 10.244.{}.0/24, containers {}",
            c.daemons[i].node,
            host.addr,
            i + 1,
            (0..2)
                .map(|j| Cluster::container_addr(i, j).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    check_interrupt()?;
    step("oxlay routes (host 0)");
    print!("{}", c.daemons[0].cli(&["routes"])?);
    step("oxlay endpoints (host 0)");
    print!("{}", c.daemons[0].cli(&["endpoints"])?);

    let a0 = &c.containers[0][0];
    for (what, target) in [
        (
            "cross-host: 10.244.1.2 -> 10.244.2.2",
            Cluster::container_addr(1, 0).to_string(),
        ),
        (
            "cross-host: 10.244.1.2 -> 10.244.3.3",
            Cluster::container_addr(2, 1).to_string(),
        ),
        (
            "same host:  10.244.1.2 -> 10.244.1.3",
            Cluster::container_addr(0, 1).to_string(),
        ),
        (
            "to its own host: 10.244.1.2 -> 192.168.50.11",
            c.hosts[0].addr.to_string(),
        ),
    ] {
        check_interrupt()?;
        step(&format!("ping {what}"));
        let out = a0.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &target])?;
        for line in out
            .lines()
            .filter(|l| l.contains("bytes from") || l.contains("packet loss"))
        {
            println!("    {line}");
        }
    }
    check_interrupt()?;
    const BYTES: u64 = 512 * 1024 * 1024;
    step("TCP: 512 MiB from 10.244.1.2 to 10.244.2.2, every byte checked on arrival");
    let t = tcp_transfer(
        a0,
        &c.containers[1][0],
        Cluster::container_addr(1, 0),
        BYTES,
    )?;
    println!(
        "    {:.2} Gbit/s ({:.2} s)",
        BYTES as f64 * 8.0 / t.as_secs_f64() / 1e9,
        t.as_secs_f64()
    );
    check_interrupt()?;
    for i in [0, 1] {
        step(&format!("oxlay stats (host {i})"));
        for line in c.daemons[i].cli(&["stats"])?.lines() {
            let value = line.split_whitespace().nth(1).unwrap_or("0");
            if value != "0" {
                println!("    {line}");
            }
        }
    }
    step("cleaning up: daemons stop (SIGTERM), namespaces go");
    drop(c);
    step("demo done");
    Ok(())
}

/// Whether Ctrl-C was pressed since `catch_interrupt`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
