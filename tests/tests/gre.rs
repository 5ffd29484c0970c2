//! GRE between hosts (`--encap gre`): oxlay hosts carry a GRE network's traffic as
//! Ethernet over GRE with the VNI as key (checked on the wire), and interoperate with
//! the kernel's `gretap` device. The machine's kernel has no GRE module, which oxlay
//! does not need (its programs do GRE); the interop test needs one on the other side,
//! so it runs inside the 6.1 and 6.12 VMs of `cargo xtask vm-test`.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{
    sh, skip_without_root, tcp_transfer, Daemon, Netns, NodeConfig, StoreCluster, TempDir, Underlay,
};

const MB: u64 = 1024 * 1024;

/// Captures up to `count` GRE packets on the underlay bridge for `secs`; the file.
fn capture_gre(
    ul: &Underlay,
    file: &std::path::Path,
    count: u32,
    secs: u32,
) -> Result<std::process::Child> {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ul.ns.name,
            "tshark",
            "-q",
            "-i",
            "br0",
            "-f",
            "ip proto 47",
        ])
        .args([
            "-a",
            &format!("duration:{secs}"),
            "-c",
            &count.to_string(),
            "-w",
        ])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2)); // tshark needs a moment to start capturing
    Ok(child)
}

#[test]
fn gre_networks_carry_traffic_between_oxlay_hosts() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = StoreCluster::new(2, false, 30)?;
    c.daemons[0].cli(&[
        "network",
        "create",
        "g",
        "--subnet",
        "10.79.0.0/16",
        "--encap",
        "gre",
    ])?;
    let listed = c.daemons[0].cli(&["network", "ls"])?;
    let row = listed
        .lines()
        .find(|l| l.starts_with("g "))
        .unwrap_or_default();
    ensure!(
        row.split_whitespace().nth(4) == Some("gre"),
        "network ls does not show gre: {listed}"
    );
    let (a, a_addr) = c.endpoint(0, "g", "gre-a", None)?;
    let (b, b_addr) = c.endpoint(1, "g", "gre-b", None)?;

    let vni = row.split_whitespace().nth(1).unwrap_or_default().to_owned();

    let pcap = TempDir::new("pcap")?;
    let file = pcap.path.join("gre.pcap");
    let decapsulated = || -> Result<Vec<u64>> {
        (0..2)
            .map(|h| c.daemons[h].counter("decapsulated"))
            .collect()
    };
    let before = decapsulated()?;
    let mut capture = capture_gre(&c.underlay, &file, 4, 20)?;
    a.ping(&b_addr.to_string(), 2)?;
    let status = capture.wait()?;
    ensure!(status.success(), "tshark failed: {status}");
    let after = decapsulated()?;
    for h in 0..2 {
        // Two pings: two requests decapsulated on b, two replies on a.
        ensure!(
            after[h] - before[h] >= 2,
            "host {h} decapsulated {before:?} -> {after:?}"
        );
    }
    tcp_transfer(&a, &b, b_addr, 16 * MB)?;
    tcp_transfer(&b, &a, a_addr, 16 * MB)?;

    let fields = sh(&[
        "tshark",
        "-r",
        file.to_str().unwrap(),
        "-T",
        "fields",
        "-E",
        "separator=,",
        "-E",
        "aggregator=/",
        "-e",
        "ip.proto",
        "-e",
        "gre.flags_and_version",
        "-e",
        "gre.proto",
        "-e",
        "gre.key",
        "-e",
        "icmp.type",
    ])?;
    let lines: Vec<&str> = fields.lines().collect();
    ensure!(
        lines.len() == 4,
        "expected 4 GRE packets, captured: {fields}"
    );
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        ensure!(f[0].starts_with("47"), "not GRE: {line}");
        ensure!(f[1] == "0x2000", "GRE flags (only the key) in {line}");
        ensure!(f[2] == "0x6558", "GRE protocol (Ethernet) in {line}");
        let key = u32::from_str_radix(f[3].trim_start_matches("0x"), 16).ok();
        ensure!(
            key.map(|k| k.to_string()) == Some(vni.clone()),
            "GRE key (the network's VNI {vni}) in {line}"
        );
        ensure!(!f[4].is_empty(), "no inner ICMP dissected in {line}");
    }
    Ok(())
}

/// An oxlay host (static mode, `encap = "gre"`) and a host with the kernel's `gretap`
/// device (key 42): ping and a checked TCP transfer, both ways.
#[test]
#[ignore = "needs the kernel's ip_gre module: runs inside the VMs of cargo xtask vm-test"]
fn interoperates_with_the_linux_gretap_device() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut ul = Underlay::new()?;
    let host_a = ul.add_host("oxlay", 11)?;
    let host_b = ul.add_host("linux", 12)?;
    const A_VTEP: &str = "02:aa:00:00:00:0a";
    const B_VTEP: &str = "02:bb:00:00:00:0b";
    host_b.linux_gretap(B_VTEP, [10, 244, 2], (host_a.addr, [10, 244, 1], A_VTEP))?;
    let cb = host_b.routed_container("cb", "10.244.2.2".parse()?, "10.244.2.1".parse()?, 1450)?;
    let cfg = NodeConfig {
        node: &format!("gretap-a-{}", std::process::id()),
        pod_subnet: "10.244.1.0/24",
        decap: "tc",
        vni: 42,
        peers: vec![(
            "linux-b".into(),
            host_b.addr,
            "10.244.2.0/24".into(),
            Some(B_VTEP.into()),
        )],
    };
    let config = format!("vtep_mac = \"{A_VTEP}\"\nencap = \"gre\"\n{}", cfg.toml());
    let daemon = Daemon::start(&host_a, cfg.node, &config)?;
    let ca: Netns = host_a.container("ca")?;
    daemon.attach(&ca, "10.244.1.2")?;

    ca.ping("10.244.2.2", 2)
        .with_context(|| format!("oxlay to gretap; oxlay log:\n{}", daemon.log()))?;
    let a = (&ca, "10.244.1.2".parse()?);
    oxlay_testbed::both_ways(&daemon, a, (&cb, "10.244.2.2".parse()?))
}
