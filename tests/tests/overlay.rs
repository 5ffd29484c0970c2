//! End to end: real daemons in host namespaces, real containers, real traffic.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use oxlay_testbed::{
    sh, skip_without_root, tcp_transfer, Cluster, Daemon, NodeConfig, TempDir, Underlay,
};

const MB: u64 = 1024 * 1024;

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
    assert!(
        enc_a >= 6,
        "host A encapsulated {enc_a} packets, expected at least 6"
    );
    assert!(
        dec_b >= 3,
        "host B decapsulated {dec_b} packets, expected at least 3"
    );
    assert!(
        local_a >= 6,
        "host A delivered {local_a} packets locally, expected at least 6"
    );

    let t = tcp_transfer(a0, b0, addr(1, 0), 64 * MB)?;
    eprintln!("{decap}: A->B 64 MiB in {t:?}");
    let t = tcp_transfer(b0, a0, addr(0, 0), 64 * MB)?;
    eprintln!("{decap}: B->A 64 MiB in {t:?}");
    for d in &c.daemons {
        for drop in [
            "drop_adjust_room_failed",
            "drop_header_write_failed",
            "drop_no_local_endpoint",
            // Containers have no IPv6, so they send no IPv6 chatter to drop.
            "drop_container_not_ipv4",
        ] {
            assert_eq!(d.counter(drop)?, 0, "{} counted {drop}", d.node);
        }
    }
    Ok(())
}

#[test]
fn three_hosts_tc_decap() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    three_hosts("tc")
}

#[test]
fn three_hosts_xdp_decap() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    three_hosts("xdp")
}

/// One oxlay host and one host running the kernel's own `vxlan` device, configured as
/// flannel does (nolearning, static fdb and neigh entries, port 4789): traffic flows both
/// ways, and a capture on the underlay shows valid VXLAN both ways.
#[test]
fn interoperates_with_the_linux_vxlan_device() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut ul = Underlay::new()?;
    let host_a = ul.add_host("oxlay", 11)?;
    let host_b = ul.add_host("linux", 12)?;
    const A_VTEP: &str = "02:aa:00:00:00:0a";
    const B_VTEP: &str = "02:bb:00:00:00:0b";

    // Host B: Linux vxlan, flannel style, with a routed container behind it.
    host_b.linux_vxlan(B_VTEP, [10, 244, 2], &[(host_a.addr, [10, 244, 1], A_VTEP)])?;
    let cb = host_b.routed_container("cb", "10.244.2.2".parse()?, "10.244.2.1".parse()?, 1450)?;

    // Host A: oxlay, with B's vxlan MAC as the peer's VTEP MAC.
    let cfg = NodeConfig {
        node: &format!("interop-a-{}", std::process::id()),
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
    let daemon = Daemon::start(
        &host_a,
        cfg.node,
        &format!("vtep_mac = \"{A_VTEP}\"\n{}", cfg.toml()),
    )?;
    let ca = host_a.container("ca")?;
    daemon.attach(&ca, "10.244.1.2")?;

    // Capture on the underlay while traffic flows both ways.
    let pcap = TempDir::new("pcap")?;
    let file = pcap.path.join("vxlan.pcap");
    let mut capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ul.ns.name,
            "tshark",
            "-q",
            "-i",
            "br0",
            "-f",
            "udp port 4789",
            "-a",
            "duration:20",
            "-c",
            "8",
            "-w",
        ])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2)); // tshark needs a moment to start capturing
    ca.ping("10.244.2.2", 2)?;
    cb.ping("10.244.1.2", 2)?;
    let status = capture.wait()?;
    assert!(status.success(), "tshark failed: {status}");

    tcp_transfer(&ca, &cb, "10.244.2.2".parse()?, 16 * MB)?;
    tcp_transfer(&cb, &ca, "10.244.1.2".parse()?, 16 * MB)?;

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
        "ip.src",
        "-e",
        "ip.dst",
        "-e",
        "udp.dstport",
        "-e",
        "vxlan.flags",
        "-e",
        "vxlan.vni",
        "-e",
        "icmp.type",
    ])?;
    let lines: Vec<&str> = fields.lines().collect();
    assert_eq!(
        lines.len(),
        8,
        "expected 8 VXLAN packets, captured: {fields}"
    );
    let mut directions = std::collections::BTreeSet::new();
    for line in &lines {
        let f: Vec<&str> = line.split(',').collect();
        // ip.src and ip.dst hold the outer then the inner address, '/'-separated.
        assert_eq!(f[2], "4789", "UDP destination port in {line}");
        assert_eq!(f[3], "0x0800", "VXLAN flags (only I set) in {line}");
        assert_eq!(f[4], "42", "VNI in {line}");
        assert!(!f[5].is_empty(), "no inner ICMP dissected in {line}");
        let outer_src = f[0].split('/').next().unwrap_or_default();
        directions.insert(outer_src.to_owned());
    }
    assert_eq!(
        directions.len(),
        2,
        "VXLAN seen from only one side: {directions:?}\n{fields}"
    );
    let from_oxlay = daemon.counter("encapsulated")?;
    let into_oxlay = daemon.counter("decapsulated")?;
    assert!(
        from_oxlay >= 4 && into_oxlay >= 4,
        "encapsulated {from_oxlay}, decapsulated {into_oxlay}"
    );
    Ok(())
}

/// SIGTERM stops the daemon but not the datapath: traffic flows while no daemon runs,
/// and a new daemon adopts what is there. `oxlay uninstall` removes everything.
#[test]
fn sigterm_keeps_the_datapath_and_uninstall_removes_it() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut c = Cluster::new(2, 1, "tc")?;
    let far = Cluster::container_addr(1, 0).to_string();
    c.containers[0][0].ping(&far, 1)?;
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/oxlay-test/{}", c.daemons[0].node));
    assert!(pins.exists(), "maps are not pinned at {}", pins.display());

    // Without TCX (before 6.6) the daemon says how it attaches instead.
    let tcx = aya::util::KernelVersion::current()? >= aya::util::KernelVersion::new(6, 6, 0);
    let log = c.daemons[0].log();
    assert_eq!(
        log.contains("has no TCX"),
        !tcx,
        "the TC attach fallback is not reported as it should be: {log}"
    );
    let before = c.hosts[0].ns.tc_ingress("eth0")?;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].0, "oxlay_decap_tc");
    c.daemons[0].stop()?;
    assert!(pins.exists(), "SIGTERM removed the pins");
    let during = c.hosts[0].ns.tc_ingress("eth0")?;
    assert_eq!(during, before, "decapsulation changed while no daemon ran");
    c.containers[0][0]
        .ping(&far, 3)
        .context("traffic stopped with the daemon")?;

    c.restart_daemon(0)?;
    let eps = c.daemons[0].cli(&["endpoints"])?;
    assert!(
        eps.contains(&Cluster::container_addr(0, 0).to_string()),
        "endpoint not adopted: {eps}"
    );
    c.containers[0][0].ping(&far, 1)?;
    let after = c.hosts[0].ns.tc_ingress("eth0")?;
    assert_eq!(after.len(), 1, "decapsulation attached twice: {after:?}");
    assert_ne!(
        after[0].1, before[0].1,
        "the new daemon did not replace the program"
    );

    c.daemons[0].uninstall()?;
    assert!(!pins.exists(), "pins left at {}", pins.display());
    assert!(!c.daemons[0].socket.exists(), "API socket left behind");
    let links = c.hosts[0].ns.ip(&["-o", "link"])?;
    assert!(!links.contains("oxl"), "endpoint veth left behind: {links}");
    let left = c.hosts[0].ns.tc_ingress("eth0")?;
    assert!(left.is_empty(), "programs still attached: {left:?}");
    Ok(())
}

/// Containers whose MTU was left at 1500: too-big packets are answered with ICMP
/// "fragmentation needed" (mtu 1450), so ping -M do learns the path MTU and TCP with
/// large writes works, per packet (offloads off) and with GSO (segments cut to fit).
#[test]
fn path_mtu_discovery_works_for_containers_left_at_1500() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = Cluster::new(2, 2, "tc")?;
    for h in 0..2 {
        let eps: serde_json::Value =
            serde_json::from_str(&c.daemons[h].cli(&["endpoints", "--json"])?)?;
        for (i, ct) in c.containers[h].iter().enumerate() {
            let host_if = eps[i]["host_interface"]
                .as_str()
                .context("host interface")?
                .to_owned();
            ct.ip(&["link", "set", "eth0", "mtu", "1500"])?;
            c.hosts[h]
                .ns
                .ip(&["link", "set", &host_if, "mtu", "1500"])?;
        }
    }
    let addr = Cluster::container_addr;
    // TCP, per packet: b0 sends 1500-byte segments until ICMP tells it better. (Each
    // pair below is fresh: a stack that learned the path MTU advertises a smaller MSS.)
    let (a0, b0) = (&c.containers[0][0], &c.containers[1][0]);
    b0.exec(&["ethtool", "-K", "eth0", "tso", "off", "gso", "off"])?;
    tcp_transfer(b0, a0, addr(0, 0), 16 * MB).context("per-packet TCP at MTU 1500")?;
    assert!(
        c.daemons[1].counter("drop_too_big")? >= 1,
        "b0's host never answered a too-big segment"
    );

    // TCP with GSO: the super-packets' segments are cut to fit on encapsulation, so
    // only the odd single segment (sent before GSO kicks in) needs an ICMP answer.
    // (veth and bridges do not enforce the MTU on GSO packets, so the cut itself is not
    // observable here; a NIC's TSO would put over-long frames on the wire.)
    let (a1, b1) = (&c.containers[0][1], &c.containers[1][1]);
    let before = c.daemons[0].counter("drop_too_big")?;
    tcp_transfer(a1, b1, addr(1, 1), 16 * MB).context("GSO TCP at MTU 1500")?;
    let answered = c.daemons[0].counter("drop_too_big")? - before;
    assert!(
        answered <= 3,
        "{answered} too-big answers during a GSO transfer"
    );

    // ping -M do at the boundary: 1422 + 28 = 1450 bytes fit; 1423 do not.
    a0.exec(&[
        "ping",
        "-M",
        "do",
        "-c",
        "1",
        "-W",
        "2",
        "-s",
        "1422",
        &addr(1, 0).to_string(),
    ])?;
    let out = Command::new("ip")
        .args([
            "netns", "exec", &a0.name, "ping", "-M", "do", "-c", "2", "-i", "0.3", "-W", "1", "-s",
            "1423",
        ])
        .arg(addr(1, 0).to_string())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a 1451-byte DF packet crossed a 1500-byte underlay: {text}"
    );
    assert!(
        text.contains("1450"),
        "no fragmentation-needed with mtu 1450 reached ping: {text}"
    );
    Ok(())
}

/// Jumbo frames: on a 9000-byte underlay, containers get MTU 8950; packets up to that
/// cross, one byte more gets "fragmentation needed" with mtu 8950, and TCP carries
/// jumbo segments in both decap modes.
#[test]
fn jumbo_frames_on_a_9000_byte_underlay() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    for decap in ["tc", "xdp"] {
        let c = Cluster::with_mtu(2, 1, decap, 9000)?;
        let (a, b) = (&c.containers[0][0], &c.containers[1][0]);
        let b_addr = Cluster::container_addr(1, 0);
        let eps: serde_json::Value =
            serde_json::from_str(&c.daemons[0].cli(&["endpoints", "--json"])?)?;
        assert_eq!(eps[0]["mtu"], 8950, "{decap}: container MTU");
        // 8922 + 28 = 8950 bytes: the largest that fits.
        a.exec(&[
            "ping",
            "-M",
            "do",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "-s",
            "8922",
            &b_addr.to_string(),
        ])
        .with_context(|| format!("{decap}: 8950-byte ping"))?;
        b.exec(&["ethtool", "-K", "eth0", "tso", "off", "gso", "off"])?;
        tcp_transfer(b, a, Cluster::container_addr(0, 0), 32 * MB)
            .with_context(|| format!("{decap}: jumbo TCP"))?;
        let decapsulated = c.daemons[0].counter("decapsulated")?;
        assert!(
            decapsulated > 3000,
            "{decap}: only {decapsulated} packets decapsulated"
        );
        assert_eq!(c.daemons[0].counter("drop_too_big")?, 0, "{decap}");
    }
    Ok(())
}

/// UDP GSO (`UDP_SEGMENT`) across hosts: 20 sends of 8 datagrams of 1000 bytes. The
/// super-packets stay GSO through encapsulation and the veth underlay. Decapsulation
/// keeps their datagram size (FIXED_GSO; before it the kernel refused them). Returns
/// (datagrams received, super-packets counted as drop_udp_gso_tunnel_state).
fn udp_gso_across_hosts(decap: &str) -> Result<(usize, u64)> {
    use std::{net::UdpSocket, os::fd::AsRawFd};
    const DATAGRAM: usize = 1000;
    let c = Cluster::new(2, 1, decap)?;
    let (from, to) = (&c.containers[0][0], &c.containers[1][0]);
    let to_addr = Cluster::container_addr(1, 0);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = to.spawn(move || {
        let sock = UdpSocket::bind("0.0.0.0:7000")?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        ready_tx.send(()).ok();
        let (mut got, mut sizes) = (0usize, std::collections::BTreeSet::new());
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sock.recv(&mut buf) {
            got += 1;
            sizes.insert(n);
        }
        Ok((got, sizes))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the receiver did not start")?;
    let encapsulated_before = c.daemons[0].counter("encapsulated")?;
    let sender = from.spawn(move || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        let segment = DATAGRAM as libc::c_int;
        // SAFETY: setsockopt on an open socket with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                &segment as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(rc == 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        let payload = vec![0x5a; DATAGRAM * UDP_GSO_PER_SEND];
        for _ in 0..UDP_GSO_SENDS {
            sock.send_to(&payload, (to_addr, 7000))?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    });
    sender.join().expect("sender thread")?;
    let (got, sizes) = receiver.join().expect("receiver thread")?;
    let encapsulated = c.daemons[0].counter("encapsulated")? - encapsulated_before;
    let refused = c.daemons[1].counter("drop_adjust_room_failed")?;
    let counted = c.daemons[1].counter("drop_udp_gso_tunnel_state")?;
    anyhow::ensure!(
        encapsulated < (UDP_GSO_SENDS * UDP_GSO_PER_SEND) as u64,
        "the sender's packets reached encapsulation already cut ({encapsulated} packets): GSO was not exercised"
    );
    anyhow::ensure!(
        refused == 0 && sizes.iter().all(|s| *s == DATAGRAM),
        "decap refused {refused} packets; datagram sizes {sizes:?}; counters: sender {}, receiver {}",
        c.daemons[0].cli(&["stats"])?,
        c.daemons[1].cli(&["stats"])?
    );
    Ok((got, counted))
}

const UDP_GSO_SENDS: usize = 20;
const UDP_GSO_PER_SEND: usize = 8;

/// TC decapsulation: every datagram arrives, or (kernels up to 6.18, which cannot
/// reset a whole GSO packet's tunnel state) every super-packet is dropped with its own
/// reason; nothing vanishes silently in the container.
#[test]
fn udp_gso_across_hosts_tc_decap_is_delivered_or_counted() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let (got, counted) = udp_gso_across_hosts("tc")?;
    let all = UDP_GSO_SENDS * UDP_GSO_PER_SEND;
    eprintln!("UDP GSO, TC decap: {got} of {all} datagrams delivered, {counted} super-packets counted as drop_udp_gso_tunnel_state");
    assert!(
        (got, counted) == (all, 0) || (got, counted) == (0, UDP_GSO_SENDS as u64),
        "{got} of {all} datagrams arrived, {counted} super-packets counted as drop_udp_gso_tunnel_state"
    );
    Ok(())
}

/// XDP decapsulation: veth hands XDP single frames, so every datagram arrives.
#[test]
fn udp_gso_across_hosts_xdp_decap_is_delivered() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let (got, counted) = udp_gso_across_hosts("xdp")?;
    assert_eq!((got, counted), (UDP_GSO_SENDS * UDP_GSO_PER_SEND, 0));
    Ok(())
}

/// One counter of a namespace's `/proc/net/{file}` ("snmp" "Ip" "InReceives").
fn snmp(ns: &oxlay_testbed::Netns, file: &str, proto: &str, field: &str) -> Result<u64> {
    let text = ns.exec(&["cat", &format!("/proc/net/{file}")])?;
    let mut rows = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
    let (names, values) = (rows.next(), rows.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no {proto} rows in /proc/net/snmp:\n{text}");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .with_context(|| format!("no {proto} {field} in /proc/net/snmp"))?;
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable {proto} {field}: {values}"))
}

/// A real NIC sends MTU-size frames; the receiver must coalesce a flow's frames (GRO)
/// before its container's stack, or every frame costs a full trip through it. With
/// TSO/GSO off on the hosts' underlay links, a TCP transfer reaches the receiving
/// container in far fewer IP packets than segments: Ip InReceives counts the packets
/// (coalesced or not) the stack handled, IpExt InNoECTPkts the segments in them.
fn wire_size_frames_are_coalesced(decap: &str) -> Result<()> {
    let c = Cluster::new(2, 1, decap)?;
    for h in &c.hosts {
        h.ns.exec(&[
            "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "on",
        ])?;
    }
    let server = &c.containers[1][0];
    let packets = || snmp(server, "snmp", "Ip", "InReceives");
    let segments = || snmp(server, "netstat", "IpExt", "InNoECTPkts");
    let (ip0, tcp0) = (packets()?, segments()?);
    tcp_transfer(
        &c.containers[0][0],
        server,
        Cluster::container_addr(1, 0),
        32 * MB,
    )?;
    let ip = packets()? - ip0;
    let tcp = segments()? - tcp0;
    let frames = 32 * MB / 1400;
    assert!(tcp >= frames, "{decap}: only {tcp} segments for 32 MiB");
    assert!(
        tcp >= 4 * ip,
        "{decap}: the container's stack handled {ip} IP packets for {tcp} segments: \
         the frames were not coalesced"
    );
    eprintln!("{decap}: {tcp} segments arrived as {ip} packets");
    Ok(())
}

#[test]
fn wire_size_frames_are_coalesced_tc_decap() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    wire_size_frames_are_coalesced("tc")
}

#[test]
fn wire_size_frames_are_coalesced_xdp_decap() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    wire_size_frames_are_coalesced("xdp")
}
