//! `oxlay monitor` against real daemons: each drop arrives with its reason, network,
//! interface and addresses; filters hide the rest; forwarded packets are traced when
//! asked; the programs stop emitting when the last listener goes; and when the ring
//! buffer overflows, the losses are counted and shown, never silent.
use std::{net::UdpSocket, time::Duration};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{eventually, skip_without_root, CliStream, StoreCluster};
use serde_json::Value;

const VNI: u32 = 4242;

/// A VXLAN packet (VNI `VNI`) around UDP `inner_src:sport -> 10.83.200.2:2222`.
fn vxlan_payload(inner_src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend(&VNI.to_be_bytes()[1..]);
    p.push(0);
    p.extend([0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend(inner_src);
    ip.extend([10, 83, 200, 2]);
    p.extend(ip);
    p.extend(sport.to_be_bytes());
    p.extend(2222u16.to_be_bytes());
    p.extend([0, 16, 0, 0]);
    p.extend(*b"monitor!");
    p
}

/// Sends `count` such packets to host 0 from the underlay's own address (no peer).
fn send_from_stranger(c: &StoreCluster, packets: Vec<Vec<u8>>) -> Result<()> {
    c.underlay
        .ns
        .spawn(move || {
            let sock = UdpSocket::bind("192.168.50.1:0")?;
            for p in packets {
                sock.send_to(&p, "192.168.50.11:4789")?;
            }
            anyhow::Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?
}

/// The next event line of a `--json` monitor (lost-lines skipped).
fn next_event(m: &CliStream, limit: Duration) -> Result<Value> {
    loop {
        let line = m.next_line(limit)?;
        let v: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
        if let Some(e) = v.get("event") {
            return Ok(e.clone());
        }
    }
}

fn cluster() -> Result<StoreCluster> {
    let c = StoreCluster::new(2, false, 10)?;
    let d = &c.daemons[0];
    d.cli(&[
        "network",
        "create",
        "blue",
        "--subnet",
        "10.83.0.0/16",
        "--vni",
        "4242",
    ])?;
    Ok(c)
}

#[test]
fn each_drop_arrives_with_its_reason_network_interface_and_addresses() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = cluster()?;
    let m = c.daemons[0].cli_stream(&["monitor", "--json", "--address", "10.83.200.1"])?;
    // Until the monitor listens, packets go unseen: send until one is seen.
    let first = eventually(Duration::from_secs(10), || {
        send_from_stranger(&c, vec![vxlan_payload([10, 83, 200, 1], 1111)])?;
        next_event(&m, Duration::from_millis(300))
    })?;
    ensure!(
        first["kind"] == "drop" && first["reason"] == "drop_unknown_peer",
        "{first}"
    );
    ensure!(
        first["interface"] == "eth0" && first["network"] == "blue",
        "{first}"
    );
    ensure!(first["vni"] == VNI, "{first}");
    ensure!(first["length"] == 14 + 20 + 8 + 8 + 14 + 36, "{first}");
    let outer = &first["outer"];
    ensure!(
        outer["src"] == "192.168.50.1" && outer["dst"] == "192.168.50.11",
        "{first}"
    );
    ensure!(
        outer["protocol"] == "udp" && outer["dport"] == 4789,
        "{first}"
    );
    let packet = &first["packet"];
    ensure!(
        packet["src"] == "10.83.200.1" && packet["dst"] == "10.83.200.2",
        "{first}"
    );
    ensure!(
        packet["sport"] == 1111 && packet["dport"] == 2222,
        "{first}"
    );
    ensure!(first["meaning"]
        .as_str()
        .is_some_and(|m| m.contains("not a known peer")));
    // Warm-up packets seen late are drained; then another address is filtered out,
    // and the next ones arrive in order, each once.
    while m.next_line(Duration::from_millis(500)).is_ok() {}
    let mut packets = vec![vxlan_payload([10, 83, 201, 1], 999)];
    packets.extend((0..3).map(|i| vxlan_payload([10, 83, 200, 1], 3000 + i)));
    send_from_stranger(&c, packets)?;
    for i in 0..3 {
        let e = next_event(&m, Duration::from_secs(5))?;
        ensure!(e["packet"]["sport"] == 3000 + i, "event {i}: {e}");
    }
    ensure!(
        m.next_line(Duration::from_millis(500)).is_err(),
        "an extra line"
    );
    Ok(())
}

/// The switch the programs read (the counters reported, the sampling), from the
/// pinned map.
fn switch(c: &StoreCluster) -> Result<(u64, u64)> {
    let maps = c.daemons[0].pin_path().context("no pin path")?.join("maps");
    let pin = std::fs::read_dir(&maps)?
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("OXLAY_MONITOR_")
        })
        .context("no monitor map pinned")?
        .path();
    let out = oxlay_testbed::sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        pin.to_str().unwrap(),
    ])?;
    let v: Value = serde_json::from_str(&out)?;
    // The value's bytes, as hex strings: counters (u64), until (u64), sample (u32), pad.
    let bytes: Vec<u8> = v[0]["value"]
        .as_array()
        .context(out.clone())?
        .iter()
        .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect();
    ensure!(bytes.len() == 24, "{out}");
    let counters = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
    let sample = u64::from(u32::from_le_bytes(bytes[16..20].try_into().unwrap()));
    Ok((counters, sample))
}

#[test]
fn forwarded_packets_are_traced_when_asked_and_emitting_stops_with_the_last_listener() -> Result<()>
{
    if skip_without_root() {
        return Ok(());
    }
    let c = cluster()?;
    let (a, a_ip) = c.endpoint(0, "blue", "ta", None)?;
    let (_b, b_ip) = c.endpoint(1, "blue", "tb", None)?;
    eventually(Duration::from_secs(5), || a.ping(&b_ip.to_string(), 1))?;
    ensure!(
        switch(&c)? == (0, 0),
        "the programs emit with nobody listening"
    );
    let args = [
        "monitor",
        "--json",
        "--type",
        "all",
        "--reason",
        "encapsulated",
        "--network",
        "blue",
    ];
    let m = c.daemons[0].cli_stream(&args)?;
    eventually(Duration::from_secs(5), || {
        // Only the counter asked for: `encapsulated` is counter 0.
        ensure!(switch(&c)? == (1, 1), "{:?}", switch(&c)?);
        Ok(())
    })?;
    a.ping(&b_ip.to_string(), 1)?;
    let e = next_event(&m, Duration::from_secs(5))?;
    ensure!(e["kind"] == "trace" && e["reason"] == "encapsulated", "{e}");
    ensure!(e["network"] == "blue" && e["vni"] == VNI, "{e}");
    ensure!(e["packet"]["src"] == a_ip.to_string().as_str(), "{e}");
    ensure!(e["packet"]["dst"] == b_ip.to_string().as_str() && e["packet"]["protocol"] == "icmp");
    ensure!(e["outer"]["src"] == "192.168.50.11" && e["outer"]["dst"] == "192.168.50.12");
    drop(m);
    eventually(Duration::from_secs(5), || {
        ensure!(switch(&c)? == (0, 0), "still emitting: {:?}", switch(&c)?);
        Ok(())
    })?;
    // Bad filters are refused with what to do.
    let e = c.daemons[0]
        .cli(&["monitor", "--reason", "encapsulated"])
        .unwrap_err();
    ensure!(format!("{e:#}").contains("--type trace"), "{e:#}");
    Ok(())
}

#[test]
fn when_the_ring_buffer_overflows_the_losses_are_counted_and_shown() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = cluster()?;
    let d = &c.daemons[0];
    let m = d.cli_stream(&["monitor", "--json", "--reason", "drop_unknown_peer"])?;
    eventually(Duration::from_secs(10), || {
        send_from_stranger(&c, vec![vxlan_payload([10, 83, 200, 1], 1)])?;
        next_event(&m, Duration::from_millis(300))
    })?;
    // Drain what the warm-up left, then count from here.
    while m.next_line(Duration::from_millis(500)).is_ok() {}
    let before = d.counter("drop_unknown_peer")?;
    // The daemon stops reading (SIGSTOP): the ring buffer (about 3300 events) fills.
    let pid = d.pid().context("daemon not running")? as libc::pid_t;
    // SAFETY: kill signals our own child process.
    ensure!(unsafe { libc::kill(pid, libc::SIGSTOP) } == 0);
    let sent = send_from_stranger(
        &c,
        (0..6000)
            .map(|i| vxlan_payload([10, 83, 200, 1], i))
            .collect(),
    );
    // SAFETY: as above.
    ensure!(unsafe { libc::kill(pid, libc::SIGCONT) } == 0);
    sent?;
    let (mut events, mut lost) = (0u64, 0u64);
    while let Ok(line) = m.next_line(Duration::from_secs(3)) {
        let v: Value = serde_json::from_str(&line)?;
        match (v.get("event"), v.get("lost")) {
            (Some(_), _) => events += 1,
            (_, Some(n)) => lost = n.as_u64().context("lost is no number")?,
            _ => anyhow::bail!("unexpected line {line}"),
        }
    }
    // Read once the stream went quiet: every packet sent has been through the programs.
    let dropped = d.counter("drop_unknown_peer")? - before;
    ensure!(
        lost > 0,
        "{dropped} drops, {events} events and no loss reported"
    );
    ensure!(
        events + lost == dropped,
        "{events} events + {lost} lost != {dropped} drops"
    );
    ensure!(
        d.counter("monitor_lost")? >= lost,
        "oxlay stats shows fewer losses"
    );
    Ok(())
}
