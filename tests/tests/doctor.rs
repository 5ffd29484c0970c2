//! `oxlay doctor` against real daemons: a healthy pair has nothing wrong (exit 0), and
//! each fault made on purpose is named with its fix and its exit code (1 warning, 2
//! failure): a peer's link with a smaller MTU, a firewall between the hosts dropping
//! the VXLAN port, a kernel vxlan device on
//! oxlay's port, one with TX checksum offload on, forwarding off, strict reverse path
//! filtering, a stopped store.
use std::{process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{
    eventually, oxlay_bin, skip_without_root, skip_without_root_or_etcd, StoreCluster,
};
use serde_json::Value;

/// `oxlay doctor --json` on host 0: its exit status and findings by check name.
fn doctor(c: &StoreCluster) -> Result<(bool, Vec<Value>)> {
    let out = Command::new(oxlay_bin())
        .args(["doctor", "--json", "--socket"])
        .arg(&c.daemons[0].socket)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{text}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    let findings = v["findings"].as_array().context("no findings")?.clone();
    // Monitoring plugins' codes: 0 ok, 1 warnings, 2 failures.
    let code = ["ok", "warn", "fail"]
        .iter()
        .position(|s| v["status"] == *s);
    ensure!(
        out.status.code().map(|c| c as usize) == code,
        "exit status {} with status {}",
        out.status,
        v["status"]
    );
    Ok((out.status.success(), findings))
}

/// The finding of `check` (a prefix of its name).
fn finding<'a>(findings: &'a [Value], check: &str) -> Result<&'a Value> {
    findings
        .iter()
        .find(|f| f["check"].as_str().is_some_and(|c| c.starts_with(check)))
        .with_context(|| format!("no finding {check} in {findings:#?}"))
}

/// Runs doctor until finding `check` has `status` and mentions `words`; unless it is
/// ok, checks that a fix comes with it and that the exit status says so.
fn names(c: &StoreCluster, check: &str, status: &str, words: &str) -> Result<()> {
    eventually(Duration::from_secs(15), || {
        let (ok, findings) = doctor(c)?;
        let f = finding(&findings, check)?;
        ensure!(f["status"] == status, "{check}: {f}");
        ensure!(
            f["detail"].as_str().is_some_and(|d| d.contains(words)),
            "{check}: {f}"
        );
        if status != "ok" {
            ensure!(
                f["fix"].as_str().is_some_and(|x| !x.is_empty()),
                "{check}: no fix in {f}"
            );
            ensure!(!ok, "doctor exited 0 with {check} {status}");
        }
        Ok(())
    })
}

/// With the embedded store (also in the VMs, which have no etcd): the peer probes, the
/// host's settings.
#[test]
fn doctor_probes_peers_and_names_each_fault_of_a_host() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = StoreCluster::new(2, false, 10)?;
    let peer = format!("peer {}", c.daemons[1].node);
    // Once host 0 knows its peer (the store's watch).
    let (ok, findings) = eventually(Duration::from_secs(10), || {
        let (ok, findings) = doctor(&c)?;
        finding(&findings, &peer)?;
        Ok((ok, findings))
    })?;
    let wrong: Vec<&Value> = findings.iter().filter(|f| f["status"] != "ok").collect();
    ensure!(ok && wrong.is_empty(), "a healthy pair: {wrong:#?}");
    for check in [
        "kernel",
        "store",
        "lease",
        "clock",
        "route map",
        "forwarding",
        "rp_filter",
        "vxlan port",
        "offloads",
        &peer,
    ] {
        finding(&findings, check)?;
    }
    let p = finding(&findings, &peer)?;
    ensure!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("100, 1450, 1500")),
        "{p}"
    );

    // The peer's link takes 1400 bytes at most: the MTU probes do not come back.
    let peer_ns = &c.hosts[1].ns;
    peer_ns.ip(&["link", "set", "eth0", "mtu", "1400"])?;
    names(&c, &peer, "fail", "MTU")?;
    peer_ns.ip(&["link", "set", "eth0", "mtu", "1500"])?;
    names(&c, &peer, "ok", "1500")?;

    // A firewall between the hosts (on the switch) drops UDP to the VXLAN port.
    let nft = |script: &str| c.underlay.ns.exec(&["nft", script]);
    nft("add table bridge doctortest")?;
    nft("add chain bridge doctortest pass { type filter hook forward priority 0 ; }")?;
    nft("add rule bridge doctortest pass udp dport 4789 drop")?;
    names(&c, &peer, "fail", "does not answer")?;
    nft("delete table bridge doctortest")?;
    let host = &c.hosts[0].ns;

    // A kernel vxlan device on oxlay's port.
    host.ip(&[
        "link", "add", "vxdoc", "type", "vxlan", "id", "77", "dstport", "4789", "dev", "eth0",
    ])?;
    host.ip(&["link", "set", "vxdoc", "up"])?;
    names(&c, "vxlan port", "fail", "vxdoc")?;
    host.ip(&["link", "del", "vxdoc"])?;

    // A flannel-style vxlan device on its own port, TX checksum offload on (the
    // kernel's default): the offload known to corrupt VXLAN checksums behind NAT.
    host.ip(&[
        "link", "add", "vxflan", "type", "vxlan", "id", "1", "dstport", "8472", "dev", "eth0",
    ])?;
    names(&c, "offloads", "warn", "vxflan")?;
    host.exec(&["ethtool", "-K", "vxflan", "tx-checksum-ip-generic", "off"])?;
    names(&c, "offloads", "ok", "no vxlan device")?;
    host.ip(&["link", "del", "vxflan"])?;

    // Forwarding off; strict reverse path filtering.
    host.sysctl("net.ipv4.ip_forward", "0")?;
    names(&c, "forwarding", "fail", "ip_forward is 0")?;
    host.sysctl("net.ipv4.ip_forward", "1")?;
    host.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
    names(&c, "rp_filter", "warn", "strict")?;
    host.sysctl("net.ipv4.conf.all.rp_filter", "0")?;

    // No daemon to ask: its own exit code.
    let out = Command::new(oxlay_bin())
        .args(["doctor", "--socket", "/run/oxlay/no-such-daemon.sock"])
        .output()?;
    ensure!(out.status.code() == Some(3), "no daemon: {out:?}");

    // Healthy again.
    eventually(Duration::from_secs(10), || {
        let (ok, findings) = doctor(&c)?;
        let wrong: Vec<&Value> = findings.iter().filter(|f| f["status"] != "ok").collect();
        ensure!(ok && wrong.is_empty(), "after the repairs: {wrong:#?}");
        Ok(())
    })
}

/// With etcd: the clock is read against etcd's, and a stopped etcd is named.
#[test]
fn doctor_reads_etcds_clock_and_names_a_stopped_store() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    let mut c = StoreCluster::new(2, true, 10)?;
    names(&c, "clock", "ok", "of http://192.168.50.1:2379's clock")?;
    names(&c, "store", "ok", "etcd http://192.168.50.1:2379 answers")?;
    c.etcd.as_mut().context("no etcd")?.stop()?;
    names(&c, "store", "fail", "has not answered")?;
    names(&c, "clock", "warn", "cannot read")?;
    Ok(())
}
