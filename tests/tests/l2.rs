//! Layer-2 networks end to end: two oxlay hosts whose second NIC (`eth1`, their
//! `[l2] parent`) is on a LAN with a router (192.168.77.1) that is not an oxlay host.
//! Containers get LAN addresses from the distributed IPAM (never the router's), talk
//! to each other on one host and across hosts, to the router and beyond it, and the
//! router reaches them; a VLAN network is isolated from the untagged one; spoofed
//! frames are dropped and counted; a daemon restart loses nothing; `oxlay uninstall`
//! leaves the NIC as it was.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{
    eventually, sh, skip_without_root, tcp_transfer, Lan, Netns, PacedUdp, StoreCluster,
};

const ROUTER: &str = "192.168.77.1";
/// An address beyond the router (on its loopback): reached by the default route.
const BEYOND: &str = "198.51.100.1";
/// VLAN 100's router (in the VMs: this machine's kernel has no 802.1Q devices).
const VLAN_GATEWAY: &str = "192.168.78.1";

/// A LAN set up for layer-2 networks.
struct LanCluster {
    c: StoreCluster,
    lan: Lan,
    router: Netns,
    /// Host 0's `eth1` before its daemon started (see `nic_state`).
    nic_before: String,
}

/// Two hosts with `eth1` on a LAN, the router on it, and network `lan` (untagged,
/// addresses handed out from 192.168.77.0/25, whose first is the router's).
fn lan_cluster() -> Result<LanCluster> {
    let mut lan = Lan::new()?;
    let addrs: Vec<String> = ["192.168.50.11", "192.168.50.12"].map(String::from).into();
    let extra = vec!["[l2]\nparent = \"eth1\"\n".to_owned(); 2];
    let mut nic_before = String::new();
    let c = StoreCluster::with_setup(&addrs, false, 10, extra, |hosts| {
        hosts.iter().try_for_each(|h| lan.plug(&h.ns, "eth1"))?;
        nic_before = nic_state(&hosts[0].ns)?;
        Ok(())
    })?;
    let router = lan.machine("router", &format!("{ROUTER}/24"), None)?;
    router.ip(&["addr", "add", &format!("{BEYOND}/32"), "dev", "lo"])?;
    c.daemons[0].cli(&[
        "network",
        "create",
        "lan",
        "--mode",
        "l2",
        "--subnet",
        "192.168.77.0/24",
        "--gateway",
        ROUTER,
        "--ip-range",
        "192.168.77.0/25",
    ])?;
    Ok(LanCluster {
        c,
        lan,
        router,
        nic_before,
    })
}

/// Network `lan100`: layer-2 on VLAN 100, 192.168.78.0/24.
fn create_lan100(c: &StoreCluster) -> Result<String> {
    c.daemons[0].cli(&[
        "network",
        "create",
        "lan100",
        "--mode",
        "l2",
        "--subnet",
        "192.168.78.0/24",
        "--gateway",
        VLAN_GATEWAY,
        "--vlan",
        "100",
    ])
}

fn counter(c: &StoreCluster, host: usize, name: &str) -> u64 {
    c.daemons[host].counter(name).unwrap_or(0)
}

#[test]
fn l2_containers_are_on_the_lan() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    // (Every part is bound: one left to `..` would be dropped here, and the LAN with it.)
    let LanCluster {
        c,
        router,
        lan: _lan,
        ..
    } = lan_cluster()?;
    let (a, a_ip) = c.endpoint(0, "lan", "l2a", None)?;
    let (b, b_ip) = c.endpoint(0, "lan", "l2b", None)?;
    let far = Netns::new("l2far")?;
    let (_, far_ip) = c.daemons[1].create_named_endpoint("lan", &far, None, &["far-web"])?;
    for ip in [a_ip, b_ip, far_ip] {
        let in_range = ip.octets()[..3] == [192, 168, 77] && ip.octets()[3] < 128;
        ensure!(
            in_range && ip.to_string() != ROUTER,
            "{ip} is not a free address of the range"
        );
    }
    // On the LAN's subnet, through the LAN's router: no encapsulation, no routing.
    let addr = a.ip(&["-4", "addr", "show", "eth0"])?;
    ensure!(
        addr.contains(&format!("{a_ip}/24")),
        "container address: {addr}"
    );
    let routes = a.ip(&["route", "show", "default"])?;
    ensure!(
        routes.contains(&format!("via {ROUTER}")),
        "default route: {routes}"
    );

    let switched = counter(&c, 0, "l2_switched");
    let (to_wire, from_wire) = (counter(&c, 0, "l2_to_wire"), counter(&c, 1, "l2_from_wire"));
    a.ping(&b_ip.to_string(), 3)?;
    tcp_transfer(&a, &b, b_ip, 4 << 20).context("same host")?;
    ensure!(
        counter(&c, 0, "l2_switched") > switched,
        "same-host frames were not switched"
    );
    a.ping(&far_ip.to_string(), 3)?;
    tcp_transfer(&a, &far, far_ip, 4 << 20).context("across hosts")?;
    tcp_transfer(&far, &a, a_ip, 4 << 20).context("across hosts, back")?;
    ensure!(
        counter(&c, 0, "l2_to_wire") > to_wire,
        "nothing went onto the wire"
    );
    ensure!(
        counter(&c, 1, "l2_from_wire") > from_wire,
        "nothing came from the wire"
    );
    ensure!(counter(&c, 0, "l2_flooded") > 0, "ARP was not flooded");

    // Names, from oxlay's resolver on the host's side of the veth.
    let found = oxlay_testbed::dns::lookup(&a, "far-web", "169.254.1.1")?;
    ensure!(
        found == [far_ip.to_string()],
        "far-web resolved to {found:?}"
    );
    // The router (not an oxlay host) and what lies beyond it, both ways.
    for (from, ip) in [(&a, a_ip), (&far, far_ip)] {
        from.ping(ROUTER, 2)?;
        from.ping(BEYOND, 2)?;
        router.ping(&ip.to_string(), 2)?;
        tcp_transfer(&router, from, ip, 2 << 20).context("router to a container")?;
        tcp_transfer(from, &router, ROUTER.parse()?, 2 << 20).context("container to router")?;
    }
    Ok(())
}

#[test]
fn l2_vlans_isolate_and_spoofing_is_dropped() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let LanCluster {
        c, mut lan, router, ..
    } = lan_cluster()?;
    create_lan100(&c)?;
    let taken = c.daemons[0].cli(&[
        "network",
        "create",
        "again",
        "--mode",
        "l2",
        "--subnet",
        "192.168.79.0/24",
        "--gateway",
        "192.168.79.1",
        "--vlan",
        "100",
    ]);
    ensure!(taken.is_err(), "a second network on VLAN 100 was accepted");
    let (v0, _) = c.endpoint(0, "lan100", "l2v0", None)?;
    let (_v1, v1_ip) = c.endpoint(1, "lan100", "l2v1", None)?;
    let (untagged, _) = c.endpoint(1, "lan", "l2u", None)?;
    // Across the wire tagged 100, and only tagged.
    let file = std::env::temp_dir().join(format!("oxlay-l2-vlan-{}.pcap", std::process::id()));
    let mut capture = capture_lan(&lan, "icmp or vlan", &file)?;
    v0.ping(&v1_ip.to_string(), 2)?;
    ensure!(capture.wait()?.success(), "tshark failed");
    let frames = sh(&[
        "tshark",
        "-r",
        file.to_str().unwrap(),
        "-T",
        "fields",
        "-e",
        "vlan.id",
        "-Y",
        "icmp",
    ])?;
    std::fs::remove_file(&file).ok();
    let ids: Vec<&str> = frames.lines().collect();
    ensure!(
        ids.len() >= 4 && ids.iter().all(|id| *id == "100"),
        "ICMP on the LAN: VLAN ids {ids:?}"
    );

    // An untagged machine with an address of VLAN 100's subnet: up on the untagged LAN
    // (the router reaches it), deaf to VLAN 100 and unheard there.
    let impostor = lan.machine("impostor", "192.168.78.250/24", None)?;
    impostor.ip(&["addr", "add", "192.168.77.250/24", "dev", "eth1"])?;
    router.ping("192.168.77.250", 1)?;
    ensure!(
        impostor.ping(&v1_ip.to_string(), 1).is_err(),
        "untagged reached VLAN 100"
    );
    // Straight onto the LAN, as if the subnets were one: still another VLAN.
    untagged.ip(&["route", "add", "192.168.78.0/24", "dev", "eth0"])?;
    ensure!(
        untagged.ping(&v1_ip.to_string(), 1).is_err(),
        "network lan reached lan100"
    );
    spoofing_is_dropped(&c, &router)
}

/// Another address, another MAC: dropped at the container's veth, counted.
fn spoofing_is_dropped(c: &StoreCluster, router: &Netns) -> Result<()> {
    let (a, a_ip) = c.endpoint(0, "lan", "l2spoof", None)?;
    a.ping(ROUTER, 1)?;
    let spoofed = counter(c, 0, "drop_spoofed_source");
    let other: Ipv4Addr = Ipv4Addr::from(u32::from(a_ip) + 50);
    a.ip(&["addr", "add", &format!("{other}/32"), "dev", "eth0"])?;
    // The router answers `other` without asking: only the check of the source address
    // stands between the ping and its reply.
    let a_mac = mac_of(&a, "eth0")?;
    let other_ip = other.to_string();
    router.ip(&[
        "neigh", "replace", &other_ip, "lladdr", &a_mac, "dev", "eth1",
    ])?;
    let sent_as_other = a.exec(&["ping", "-c", "2", "-W", "1", "-I", &other_ip, ROUTER]);
    ensure!(
        sent_as_other.is_err(),
        "a packet from another address got through"
    );
    let by_address = counter(c, 0, "drop_spoofed_source") - spoofed;
    ensure!(
        by_address >= 2,
        "{by_address} packets from another address counted"
    );
    a.ip(&["link", "set", "eth0", "down"])?;
    a.ip(&["link", "set", "eth0", "address", "02:00:00:00:77:77", "up"])?;
    ensure!(
        a.ping(ROUTER, 1).is_err(),
        "a frame from another MAC got through"
    );
    let dropped = counter(c, 0, "drop_spoofed_source") - spoofed - by_address;
    ensure!(dropped >= 1, "{dropped} frames from another MAC counted");
    Ok(())
}

/// Captures up to 8 frames matching `filter` on the LAN's bridge for up to 6 s.
fn capture_lan(lan: &Lan, filter: &str, file: &std::path::Path) -> Result<std::process::Child> {
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.ns.name,
            "tshark",
            "-q",
            "-i",
            "br0",
            "-f",
            filter,
        ])
        .args(["-a", "duration:6", "-c", "8", "-w"])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2)); // tshark needs a moment to start capturing
    Ok(child)
}

fn mac_of(ns: &Netns, dev: &str) -> Result<String> {
    let link = ns.ip(&["-br", "link", "show", dev])?;
    link.split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .with_context(|| format!("no MAC in {link}"))
}

/// What oxlay may change on the parent NIC, to compare before and after.
fn nic_state(ns: &Netns) -> Result<String> {
    nic_state_of(ns, "eth1")
}

fn nic_state_of(ns: &Netns, dev: &'static str) -> Result<String> {
    let link = ns.ip(&["-d", "link", "show", dev])?;
    // The flags oxlay could set; not the carrier's (a new veth may still lack it).
    let flags: Vec<&str> = link
        .split('<')
        .nth(1)
        .and_then(|s| s.split('>').next())
        .unwrap_or("")
        .split(',')
        .filter(|f| !["NO-CARRIER", "LOWER_UP"].contains(f))
        .collect();
    let promisc = link
        .split("promiscuity ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next());
    let fdb = ns.exec(&["bridge", "fdb", "show", "dev", dev])?;
    let unicast: Vec<&str> = fdb
        .lines()
        .filter(|l| !l.starts_with("33:33") && !l.starts_with("01:"))
        .collect();
    let programs = ns.tc_ingress(dev)?;
    let qdiscs = ns.exec(&["tc", "qdisc", "show", "dev", dev])?;
    Ok(format!(
        "{flags:?} promiscuity {promisc:?} unicast {unicast:?} programs {programs:?} qdiscs {qdiscs:?}"
    ))
}

#[test]
fn l2_restart_loses_nothing_and_uninstall_leaves_the_nic() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let LanCluster {
        mut c,
        router,
        nic_before: before,
        lan: _lan,
    } = lan_cluster()?;
    let (a, _) = c.endpoint(0, "lan", "l2r", None)?;
    let (far, far_ip) = c.endpoint(1, "lan", "l2rfar", None)?;
    let a_mac = mac_of(&a, "eth0")?;
    let during = nic_state(&c.hosts[0].ns)?;
    ensure!(
        during.contains(&a_mac),
        "the container's MAC is not in eth1's filter: {during}"
    );

    let stream = PacedUdp::start(&a, &far, far_ip, 9191)?;
    std::thread::sleep(Duration::from_millis(300));
    c.restart_daemon(0)?;
    c.restart_daemon(1)?;
    std::thread::sleep(Duration::from_millis(300));
    let (sent, lost, count) = stream.stop()?;
    ensure!(
        count == 0,
        "{count} of {sent} datagrams lost across restarts, first {lost:?}"
    );
    router.ping(&far_ip.to_string(), 1)?;

    c.daemons[0].uninstall()?;
    let after = eventually(Duration::from_secs(3), || {
        let after = nic_state(&c.hosts[0].ns)?;
        ensure!(
            after == before,
            "eth1 after uninstall: {after}\nbefore oxlay: {before}"
        );
        Ok(after)
    })?;
    ensure!(!after.contains(&a_mac));
    Ok(())
}

/// A machine on VLAN 100 that is not an oxlay host (a router on an 802.1Q
/// sub-interface) reaches a container of the VLAN network, and the container reaches
/// it; the untagged router does not. Needs the kernel's 802.1Q (`8021q`), which the
/// machine's kernel lacks: run in the 6.1 and 6.12 VMs by `cargo xtask vm-test`.
#[test]
#[ignore = "needs 802.1Q VLAN devices: run by cargo xtask vm-test"]
fn l2_tagged_machines_reach_vlan_containers() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let LanCluster {
        c, mut lan, router, ..
    } = lan_cluster()?;
    create_lan100(&c)?;
    let vlan_router = lan.machine("vrouter", &format!("{VLAN_GATEWAY}/24"), Some(100))?;
    vlan_router.ip(&["addr", "add", &format!("{BEYOND}/32"), "dev", "lo"])?;
    let (v, v_ip) = c.endpoint(1, "lan100", "l2tag", None)?;
    v.ping(VLAN_GATEWAY, 2)?;
    v.ping(BEYOND, 2)?;
    vlan_router.ping(&v_ip.to_string(), 2)?;
    tcp_transfer(&vlan_router, &v, v_ip, 4 << 20).context("VLAN router to the container")?;
    tcp_transfer(&v, &vlan_router, VLAN_GATEWAY.parse()?, 4 << 20)
        .context("container to the VLAN router")?;
    // The untagged router is up, and does not reach VLAN 100.
    router.ping(&c.endpoint(0, "lan", "l2untag", None)?.1.to_string(), 1)?;
    router.ip(&["addr", "add", "192.168.78.200/24", "dev", "eth1"])?;
    ensure!(
        router.ping(&v_ip.to_string(), 1).is_err(),
        "untagged reached VLAN 100"
    );
    Ok(())
}

/// A broadcast is copied to each container of a layer-2 network on a host: 32 of them
/// at most; the 33rd is refused, saying why, and leaves nothing behind.
#[test]
fn a_host_takes_at_most_32_containers_of_a_layer2_network() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let LanCluster {
        c,
        router,
        lan: _lan,
        ..
    } = lan_cluster()?;
    let mut sandboxes = Vec::new();
    for i in 0..32 {
        sandboxes.push(c.endpoint(0, "lan", &format!("l2n{i}"), None)?);
    }
    let extra = Netns::new("l2n32")?;
    let refused = c.daemons[0].create_endpoint("lan", &extra, None);
    let why = format!(
        "{:#}",
        refused.err().context("a 33rd container was accepted")?
    );
    ensure!(why.contains("the most one host takes"), "{why}");
    let listed = c.daemons[0].cli(&["endpoint", "ls", "--network", "lan"])?;
    ensure!(
        listed.lines().filter(|l| l.contains("192.168.77.")).count() == 32,
        "{listed}"
    );
    // The last of the 32 still gets broadcasts (ARP): the router reaches it.
    router.ping(&sandboxes[31].1.to_string(), 1)?;
    Ok(())
}

/// A host's `[l2] parent` changes from eth1 to eth2 (both on the LAN): after the
/// restart eth1 is as it was before oxlay (no program, no MAC, no qdisc of oxlay's),
/// eth2 carries the container, whose address and traffic stay.
#[test]
fn changing_the_parent_takes_oxlay_off_the_old_nic() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let LanCluster {
        mut c,
        router,
        mut lan,
        nic_before,
    } = lan_cluster()?;
    let (a, a_ip) = c.endpoint(0, "lan", "l2mv", None)?;
    let a_mac = mac_of(&a, "eth0")?;
    router.ping(&a_ip.to_string(), 1)?;
    lan.plug(&c.hosts[0].ns, "eth2")?;
    c.set_extra_toml(0, "[l2]\nparent = \"eth2\"\n".to_owned());
    c.restart_daemon(0)?;
    let eth1 = nic_state(&c.hosts[0].ns)?;
    ensure!(
        eth1 == nic_before,
        "eth1 after the move: {eth1}\nbefore oxlay: {nic_before}"
    );
    let eth2 = nic_state_of(&c.hosts[0].ns, "eth2")?;
    ensure!(
        eth2.contains(&a_mac) && eth2.contains("oxlay"),
        "eth2: {eth2}"
    );
    // The LAN's switch learns the container's new port from its first frame.
    a.ping(ROUTER, 1)?;
    router.ping(&a_ip.to_string(), 1)?;
    Ok(())
}
