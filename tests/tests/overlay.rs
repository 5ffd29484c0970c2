//! End to end: real daemons in host namespaces, real containers, real traffic.
use anyhow::Result;
use oxlay_testbed::{is_root, tcp_transfer, Cluster};

const MB: u64 = 1024 * 1024;

fn skip() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root to create namespaces and load eBPF programs");
        return true;
    }
    false
}

/// Three hosts, two containers each: cross-host and same-host ping, container to its
/// own host, 64 MiB over TCP in both directions with every byte checked.
fn three_hosts(decap: &str) -> Result<()> {
    let c = Cluster::new(3, 2, decap)?;
    let a0 = &c.containers[0][0];
    let a1 = &c.containers[0][1];
    let b0 = &c.containers[1][0];
    let addr = Cluster::container_addr;

    // cross-host, to both other hosts
    a0.ping(&addr(1, 0).to_string(), 3)?;
    a0.ping(&addr(2, 1).to_string(), 3)?;
    c.containers[2][0].ping(&addr(1, 1).to_string(), 3)?;
    // same host
    a0.ping(&addr(0, 1).to_string(), 3)?;
    // container to its own host's address
    a1.ping(&c.hosts[0].addr.to_string(), 3)?;

    let enc_a = c.daemons[0].counter("encapsulated")?;
    let dec_b = c.daemons[1].counter("decapsulated")?;
    let local_a = c.daemons[0].counter("delivered_local")?;
    assert!(enc_a >= 6, "host A encapsulated {enc_a} packets, expected at least 6");
    assert!(dec_b >= 3, "host B decapsulated {dec_b} packets, expected at least 3");
    assert!(local_a >= 6, "host A delivered {local_a} packets locally, expected at least 6");

    let t = tcp_transfer(a0, b0, addr(1, 0), 64 * MB)?;
    eprintln!("{decap}: A->B 64 MiB in {t:?}");
    let t = tcp_transfer(b0, a0, addr(0, 0), 64 * MB)?;
    eprintln!("{decap}: B->A 64 MiB in {t:?}");
    for d in &c.daemons {
        for drop in ["drop_adjust_room_failed", "drop_header_write_failed", "drop_no_local_endpoint"] {
            assert_eq!(d.counter(drop)?, 0, "{} counted {drop}", d.node);
        }
    }
    Ok(())
}

#[test]
fn three_hosts_tc_decap() -> Result<()> {
    if skip() {
        return Ok(());
    }
    three_hosts("tc")
}

#[test]
fn three_hosts_xdp_decap() -> Result<()> {
    if skip() {
        return Ok(());
    }
    three_hosts("xdp")
}
