//! Encryption between hosts (`[wireguard]`): traffic between two hosts that encrypt
//! crosses the wire only inside WireGuard (counted on the switch between the hosts),
//! a host without it is still reached in plain, a forged plaintext VXLAN packet from an
//! encrypting peer is dropped, and the key survives a restart. The machine's kernel has
//! no WireGuard, so these run inside the 6.1 and 6.12 VMs of `cargo xtask vm-test`.
use std::{net::UdpSocket, time::Duration};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{
    eventually, oxlay_bin, skip_without_root, tcp_transfer, StoreCluster, TempDir, Underlay,
};

const MB: u64 = 1024 * 1024;
const WG_PORT: u16 = 51871;

/// The direct network's subnet: its packets cross the wire without encapsulation.
const DIRECT_SUBNET: &str = "10.85.0.0/16";

/// Counters on the switch between the hosts (bridge family, so bridged frames count):
/// plain overlay packets between hosts 0 and 1 either way (VXLAN, GRE, a direct
/// network's), and WireGuard packets from host 0 to host 1.
fn count_on_the_wire(ul: &Underlay) -> Result<()> {
    let pair =
        "ip saddr { 192.168.50.11, 192.168.50.12 } ip daddr { 192.168.50.11, 192.168.50.12 }";
    let rules = format!(
        "table bridge oxlaywire {{\n chain counting {{\n  type filter hook forward priority 0;\n  {pair} udp dport 4789 counter comment \"plain\"\n  {pair} ip protocol 47 counter comment \"plain\"\n  ip saddr {DIRECT_SUBNET} counter comment \"plain\"\n  ip saddr 192.168.50.11 ip daddr 192.168.50.12 udp dport {WG_PORT} counter comment \"wireguard\"\n }}\n}}\n"
    );
    let mut nft = ul
        .ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("nft")?;
    use std::io::Write;
    nft.stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    ensure!(nft.wait()?.success(), "nft refused the counting rules");
    Ok(())
}

/// (plain overlay packets, WireGuard packets) counted on the wire (see
/// `count_on_the_wire`).
fn wire_counts(ul: &Underlay) -> Result<(u64, u64)> {
    let listed = ul
        .ns
        .exec(&["nft", "-j", "list", "table", "bridge", "oxlaywire"])?;
    let json: serde_json::Value = serde_json::from_str(&listed)?;
    let (mut plain, mut wireguard, mut rules) = (0, 0, 0);
    for item in json["nftables"].as_array().context("nft -j")? {
        let rule = &item["rule"];
        let Some(exprs) = rule["expr"].as_array() else {
            continue;
        };
        let packets = exprs
            .iter()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .context("a rule without its counter")?;
        match rule["comment"].as_str() {
            Some("plain") => plain += packets,
            Some("wireguard") => wireguard += packets,
            _ => continue,
        }
        rules += 1;
    }
    ensure!(rules == 4, "{rules} counting rules: {listed}");
    Ok((plain, wireguard))
}

fn wireguard_toml(dir: &TempDir, host: usize) -> String {
    format!(
        "[wireguard]\nkey_file = \"{}\"\n",
        dir.path.join(format!("host{host}.key")).display()
    )
}

#[test]
#[ignore = "needs the wireguard module: runs in `cargo xtask vm-test`"]
fn wireguard_encrypts_between_hosts_that_both_use_it() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let keys = TempDir::new("wgkeys")?;
    let addrs: Vec<String> = ["192.168.50.11", "192.168.50.12", "192.168.50.13"]
        .map(String::from)
        .into();
    // Hosts 0 and 1 encrypt; host 2 does not (a cluster turning it on host by host).
    let extra = vec![
        wireguard_toml(&keys, 0),
        wireguard_toml(&keys, 1),
        String::new(),
    ];
    let mut c = StoreCluster::with_config(&addrs, false, 10, extra)?;
    count_on_the_wire(&c.underlay)?;
    c.daemons[0].cli(&["network", "create", "w", "--subnet", "10.83.0.0/16"])?;
    let (a, a_ip) = c.endpoint(0, "w", "wga", None)?;
    let (b, b_ip) = c.endpoint(1, "w", "wgb", None)?;
    let (p, p_ip) = c.endpoint(2, "w", "wgp", None)?;

    // The device and its MTU: the underlay's less WireGuard's 60 bytes; containers
    // another 50 less.
    let dev = c.hosts[0].ns.ip(&["-d", "link", "show", "oxlay-wg"])?;
    ensure!(
        dev.contains("mtu 1440") && dev.contains("wireguard"),
        "{dev}"
    );
    let eth0 = a.ip(&["link", "show", "eth0"])?;
    ensure!(eth0.contains("mtu 1390"), "container MTU: {eth0}");

    eventually(Duration::from_secs(10), || a.ping(&b_ip.to_string(), 1))?;
    let status = c.daemons[0].cli(&["status"])?;
    ensure!(
        status.contains("WireGuard on oxlay-wg (UDP 51871): 1 of 2 other hosts encrypt"),
        "{status}"
    );
    // Full-size packets fit: 1390 bytes.
    a.exec(&[
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "-s",
        "1362",
        &b_ip.to_string(),
    ])?;
    tcp_transfer(&a, &b, b_ip, 4 * MB).context("a -> b")?;
    tcp_transfer(&b, &a, a_ip, 4 * MB).context("b -> a")?;
    // A GRE network and a direct one (the hosts share a subnet) go inside too.
    c.daemons[0].cli(&[
        "network",
        "create",
        "wgre",
        "--subnet",
        "10.84.0.0/16",
        "--encap",
        "gre",
    ])?;
    c.daemons[0].cli(&[
        "network",
        "create",
        "wdir",
        "--subnet",
        DIRECT_SUBNET,
        "--direct",
    ])?;
    for net in ["wgre", "wdir"] {
        let (x, x_ip) = c.endpoint(0, net, &format!("{net}0"), None)?;
        let (y, y_ip) = c.endpoint(1, net, &format!("{net}1"), None)?;
        eventually(Duration::from_secs(10), || x.ping(&y_ip.to_string(), 1))
            .with_context(|| format!("network {net}"))?;
        tcp_transfer(&x, &y, y_ip, MB).with_context(|| format!("{net}: x -> y"))?;
        tcp_transfer(&y, &x, x_ip, MB).with_context(|| format!("{net}: y -> x"))?;
    }
    ensure!(
        c.daemons[0].counter("routed_direct")? > 0,
        "the direct network routed nothing"
    );
    let (plain, wireguard) = wire_counts(&c.underlay)?;
    ensure!(
        plain == 0,
        "{plain} overlay packets crossed the wire in plain between hosts that encrypt"
    );
    ensure!(
        wireguard > 1000,
        "only {wireguard} WireGuard packets on the wire for 8 MiB"
    );
    let sent = c.daemons[0].counter("sent_encrypted")?;
    let received = c.daemons[1].counter("received_encrypted")?;
    // Sent: what the programs handed over, TCP super-packets (GSO) among them, which
    // WireGuard cuts into wire-size packets; received: one per wire packet.
    ensure!(
        sent > 100 && received > 1000,
        "sent {sent}, received {received}"
    );
    let delivered =
        c.daemons[1].counter("decapsulated")? + c.daemons[1].counter("delivered_direct")?;
    ensure!(delivered > 1000, "host 1 delivered {delivered}");
    ensure!(c.daemons[1].counter("drop_wireguard_not_overlay")? == 0);
    let kernel = c.hosts[0]
        .ns
        .exec(&["cat", "/sys/class/net/oxlay-wg/statistics/tx_packets"])?;
    ensure!(
        kernel.trim().parse::<u64>()? >= sent,
        "the device sent {kernel}"
    );

    // doctor: the peer that encrypts shook hands; the one that does not is named.
    // (Exit status 1: the plain host is a warning.)
    let out = std::process::Command::new(oxlay_bin())
        .args(["doctor", "--json", "--socket"])
        .arg(&c.daemons[0].socket)
        .output()?;
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    let status_of = |host: &str| {
        doctor["findings"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["check"] == format!("wireguard {host}")))
            .map(|f| f["status"].as_str().unwrap_or_default().to_owned())
    };
    ensure!(
        status_of(c.name(1)).as_deref() == Some("ok"),
        "doctor on the encrypting peer: {doctor:#}"
    );
    ensure!(
        status_of(c.name(2)).as_deref() == Some("warn"),
        "doctor on the plain host: {doctor:#}"
    );

    // explain: the packet to b goes into the device; b's packet comes out of it and is
    // delivered (on the underlay it would be drop_unencrypted).
    let (a_s, b_s) = (a_ip.to_string(), b_ip.to_string());
    let send = c.daemons[0].cli(&["explain", "--network", "w", "--from", &a_s, "--to", &b_s])?;
    ensure!(
        send.contains("encapsulated") && send.contains("encrypted: into WireGuard device oxlay-wg"),
        "{send}"
    );
    let receive = c.daemons[0].cli(&[
        "explain",
        "--network",
        "w",
        "--from",
        &b_s,
        "--to",
        &a_s,
        "--receive",
    ])?;
    ensure!(
        receive.contains("delivered")
            && receive.contains("encrypted: from WireGuard device oxlay-wg"),
        "{receive}"
    );

    // A host without WireGuard: plain VXLAN, both ways.
    eventually(Duration::from_secs(10), || a.ping(&p_ip.to_string(), 1))?;
    p.ping(&a_ip.to_string(), 1)?;
    ensure!(c.daemons[2].counter("decapsulated")? > 0);
    ensure!(c.daemons[2].counter("received_encrypted")? == 0);

    // Plaintext VXLAN from host 1's address: forged (host 1 encrypts), dropped.
    let before = c.daemons[0].counter("drop_unencrypted")?;
    c.hosts[1]
        .ns
        .spawn(|| {
            let sock = UdpSocket::bind("192.168.50.12:0")?;
            // I flag, some VNI, then padding where the inner frame would be.
            let mut packet = vec![0x08, 0, 0, 0, 0, 0x10, 0, 0];
            packet.extend([0u8; 60]);
            for _ in 0..3 {
                sock.send_to(&packet, "192.168.50.11:4789")?;
            }
            anyhow::Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    eventually(Duration::from_secs(3), || {
        let dropped = c.daemons[0].counter("drop_unencrypted")? - before;
        ensure!(
            dropped == 3,
            "{dropped} forged packets dropped as unencrypted"
        );
        Ok(())
    })?;

    // A restart keeps the key (the store record's) and the traffic. (doctor's probes
    // crossed in plain: they test the underlay's path, and carry nothing.)
    let (vxlan_before, _) = wire_counts(&c.underlay)?;
    let key_before = std::fs::read_to_string(keys.path.join("host0.key"))?;
    c.restart_daemon(0)?;
    ensure!(std::fs::read_to_string(keys.path.join("host0.key"))? == key_before);
    eventually(Duration::from_secs(10), || a.ping(&b_ip.to_string(), 1))?;
    tcp_transfer(&b, &a, a_ip, MB).context("b -> a after the restart")?;
    let (vxlan_after, _) = wire_counts(&c.underlay)?;
    ensure!(
        vxlan_after == vxlan_before,
        "{} plain VXLAN packets after the restart",
        vxlan_after - vxlan_before
    );

    // Host 2 turns encryption on. A device of that name that is not its own is
    // refused, not taken over; once it is gone, host 2 encrypts with both others.
    c.hosts[2]
        .ns
        .ip(&["link", "add", "oxlay-wg", "type", "wireguard"])?;
    c.set_extra_toml(2, wireguard_toml(&keys, 2));
    let refused = c.restart_daemon(2);
    ensure!(
        refused.is_err(),
        "host 2 took over a WireGuard device it did not make"
    );
    let why = format!("{:#}", refused.unwrap_err());
    ensure!(why.contains("not this node's oxlay device"), "{why}");
    c.hosts[2].ns.ip(&["link", "del", "oxlay-wg"])?;
    c.restart_daemon(2)?;
    eventually(Duration::from_secs(10), || {
        let status = c.daemons[0].cli(&["status"])?;
        ensure!(status.contains("2 of 2 other hosts encrypt"), "{status}");
        Ok(())
    })?;
    eventually(Duration::from_secs(10), || a.ping(&p_ip.to_string(), 1))?;
    p.ping(&a_ip.to_string(), 1)?;
    ensure!(c.daemons[2].counter("received_encrypted")? > 0);

    // Uninstall takes the device away.
    c.daemons[0].uninstall()?;
    ensure!(
        c.hosts[0].ns.ip(&["link", "show", "oxlay-wg"]).is_err(),
        "oxlay-wg is still there after uninstall"
    );
    Ok(())
}
