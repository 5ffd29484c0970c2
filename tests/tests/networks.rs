//! Networks, endpoints and sandboxes over a shared store with real daemons: isolation
//! between networks with the same subnet, a sandbox on two networks, hosts that vanish
//! and come back.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use oxlay_testbed::{eventually, skip_without_root_or_etcd, Netns, StoreCluster};

/// Whether a TCP connection from `from` to `addr:port` is accepted by a listener that
/// `listen_in` holds (true), or refused/lost (false). The client connects only once the
/// listener is bound, and a probe from the listener's own namespace must then be
/// accepted too: a "not reached" answer means the listener was up and did not get it.
fn reaches(from: &Netns, listen_in: &Netns, addr: Ipv4Addr, port: u16) -> Result<bool> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = listen_in.spawn(move || -> Result<Vec<SocketAddr>> {
        let l = TcpListener::bind(SocketAddr::from((addr, port)))?;
        l.set_nonblocking(true)?;
        ready_tx.send(()).ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut peers = Vec::new();
        while Instant::now() < deadline {
            match l.accept() {
                // The probe comes from the listener's own address: it is the last one.
                Ok((_, peer)) if peer.ip() == addr => {
                    peers.push(peer);
                    break;
                }
                Ok((_, peer)) => peers.push(peer),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        Ok(peers)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the listener did not start")?;
    let client = from.spawn(move || -> Result<()> {
        let _ = TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(1));
        Ok(())
    });
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    let probe = listen_in.spawn(move || -> Result<()> {
        TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(1))
            .context("the probe from the listener's own namespace was not accepted")?;
        Ok(())
    });
    probe
        .join()
        .map_err(|_| anyhow::anyhow!("probe panicked"))??;
    let peers = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    ensure!(
        peers.iter().any(|p| p.ip() == addr),
        "the listener never saw the probe: it was not up"
    );
    Ok(peers.iter().any(|p| p.ip() != addr))
}

#[test]
fn networks_over_etcd() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    networks_with_the_same_subnet_stay_isolated_and_hosts_come_and_go(true)
}

#[test]
fn networks_over_the_embedded_store() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    networks_with_the_same_subnet_stay_isolated_and_hosts_come_and_go(false)
}

fn networks_with_the_same_subnet_stay_isolated_and_hosts_come_and_go(etcd: bool) -> Result<()> {
    let mut c = StoreCluster::new(3, etcd, 3)?;

    // Every host sees every host.
    eventually(Duration::from_secs(5), || {
        let hosts: serde_json::Value =
            serde_json::from_str(&c.daemons[0].cli(&["hosts", "--json"])?)?;
        ensure!(
            hosts.as_array().map(|a| a.len()) == Some(3),
            "hosts: {hosts}"
        );
        Ok(())
    })?;

    c.daemons[0].cli(&[
        "network",
        "create",
        "blue",
        "--subnet",
        "10.10.0.0/16",
        "--vni",
        "100",
        "--label",
        "team=a",
    ])?;
    let err = c.daemons[0]
        .cli(&["network", "create", "red", "--subnet", "10.10.0.0/16"])
        .unwrap_err();
    ensure!(
        format!("{err:#}").contains("overlaps network blue"),
        "{err:#}"
    );
    c.daemons[0].cli(&[
        "network",
        "create",
        "red",
        "--subnet",
        "10.10.0.0/16",
        "--vni",
        "200",
        "--allow-overlap",
    ])?;
    c.daemons[0].cli(&["network", "create", "green", "--subnet", "10.20.0.0/16"])?;
    let ls = c.daemons[1].cli(&["network", "ls"])?;
    ensure!(
        ls.contains("blue") && ls.contains("red") && ls.contains("team=a"),
        "{ls}"
    );

    // On each host: one sandbox on blue and one on red, with the same address.
    let mut blue = Vec::new();
    let mut red = Vec::new();
    for h in 0..3 {
        let ip = format!("10.10.{}.5", h + 1);
        let (b, _) = c.endpoint(h, "blue", &format!("blue{h}"), Some(&ip))?;
        let (r, _) = c.endpoint(h, "red", &format!("red{h}"), Some(&ip))?;
        blue.push(b);
        red.push(r);
    }
    let target: Ipv4Addr = "10.10.2.5".parse()?;
    eventually(Duration::from_secs(3), || blue[0].ping("10.10.2.5", 1))?;
    eventually(Duration::from_secs(3), || red[0].ping("10.10.3.5", 1))?;
    // Same address, two networks: each connection lands in its own network only.
    ensure!(
        reaches(&blue[0], &blue[1], target, 7001)?,
        "blue did not reach blue"
    );
    ensure!(
        !reaches(&blue[0], &red[1], target, 7002)?,
        "blue reached red"
    );
    ensure!(
        reaches(&red[0], &red[1], target, 7003)?,
        "red did not reach red"
    );
    ensure!(
        !reaches(&red[0], &blue[1], target, 7004)?,
        "red reached blue"
    );

    // A sandbox on a second network gets a second interface.
    let g1 = Netns::new("green1")?;
    let (out, _) = c.daemons[1].create_endpoint("green", &g1, None)?;
    ensure!(out.contains("eth0"), "{out}");
    let (out, _) = c.daemons[0].create_endpoint("green", &blue[0], None)?;
    ensure!(out.contains("eth1"), "second interface: {out}");
    let eps: serde_json::Value = serde_json::from_str(&c.daemons[0].cli(&[
        "endpoint",
        "ls",
        "--network",
        "green",
        "--json",
    ])?)?;
    let g1_addr = eps
        .as_array()
        .and_then(|a| a.iter().find(|e| e["host"] == c.name(1)))
        .and_then(|e| e["address"].as_str())
        .context("green endpoint of host 1")?
        .to_owned();
    eventually(Duration::from_secs(3), || blue[0].ping(&g1_addr, 1))?;
    eventually(Duration::from_secs(3), || blue[0].ping("10.10.2.5", 1))?;

    // Removing a network with endpoints is refused.
    let err = c.daemons[0].cli(&["network", "rm", "green"]).unwrap_err();
    ensure!(
        format!("{err:#}").contains("still has 2 endpoint"),
        "{err:#}"
    );

    // Host 2 dies without cleanup: after the lease TTL its routes vanish elsewhere.
    c.daemons[2].kill()?;
    let host2_block = "10.10.3.0/24";
    eventually(Duration::from_secs(10), || {
        let routes = c.daemons[0].cli(&["routes"])?;
        if routes.contains(host2_block) {
            bail!("host 2's block is still routed: {routes}");
        }
        Ok(())
    })?;
    ensure!(
        !c.daemons[0].cli(&["hosts"])?.contains(c.name(2)),
        "host 2 still registered"
    );
    // It comes back: it re-registers, adopts its endpoints, and traffic resumes.
    c.restart_daemon(2)?;
    eventually(Duration::from_secs(5), || red[0].ping("10.10.3.5", 1))
        .with_context(|| format!("after host 2 returned; its log:\n{}", c.daemons[2].log()))?;
    eventually(Duration::from_secs(5), || blue[1].ping("10.10.3.5", 1))?;

    // Everything is released afterwards.
    for h in 0..3 {
        c.daemons[h].cli(&[
            "endpoint",
            "rm",
            "--network",
            "blue",
            "--netns",
            &blue[h].name,
        ])?;
        c.daemons[h].cli(&[
            "endpoint",
            "rm",
            "--network",
            "red",
            "--netns",
            &red[h].name,
        ])?;
    }
    c.daemons[0].cli(&[
        "endpoint",
        "rm",
        "--network",
        "green",
        "--netns",
        &blue[0].name,
    ])?;
    c.daemons[1].cli(&["endpoint", "rm", "--network", "green", "--netns", &g1.name])?;
    for n in ["blue", "red", "green"] {
        c.daemons[0].cli(&["network", "rm", n])?;
    }
    let inspect = c.daemons[0].cli(&["network", "ls", "--json"])?;
    ensure!(inspect.trim() == "[]", "networks left: {inspect}");
    Ok(())
}

/// A direct network: hosts on the same underlay subnet exchange plain, unencapsulated
/// packets; a host on another subnet is still reached through VXLAN.
#[test]
fn direct_networks_route_without_encapsulation_on_one_subnet() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    let addrs = ["192.168.50.11", "192.168.50.12", "192.168.60.13"].map(String::from);
    let c = StoreCluster::with_hosts(&addrs, false, 5)?;
    let out = c.daemons[0].cli(&[
        "network",
        "create",
        "fast",
        "--subnet",
        "10.40.0.0/16",
        "--direct",
    ])?;
    ensure!(out.contains("direct"), "{out}");
    let mut sandboxes = Vec::new();
    for h in 0..3 {
        let ip = format!("10.40.{}.5", h + 1);
        let (ns, _) = c.endpoint(h, "fast", &format!("fast{h}"), Some(&ip))?;
        sandboxes.push(ns);
    }
    let counter = |h: usize, name: &str| c.daemons[h].counter(name);
    // Same subnet: routed directly both ways, nothing encapsulated.
    eventually(Duration::from_secs(3), || sandboxes[0].ping("10.40.2.5", 1))?;
    let (direct0, encap0) = (counter(0, "routed_direct")?, counter(0, "encapsulated")?);
    sandboxes[0].ping("10.40.2.5", 3)?;
    ensure!(
        counter(0, "routed_direct")? >= direct0 + 3,
        "host 0 did not route directly"
    );
    ensure!(
        counter(0, "encapsulated")? == encap0,
        "host 0 encapsulated traffic to a same-subnet peer"
    );
    ensure!(
        counter(1, "delivered_direct")? >= 3,
        "host 1 did not deliver direct packets"
    );
    oxlay_testbed::tcp_transfer(&sandboxes[0], &sandboxes[1], "10.40.2.5".parse()?, 16 << 20)?;
    // Another subnet: VXLAN.
    eventually(Duration::from_secs(3), || sandboxes[0].ping("10.40.3.5", 1))?;
    let encap0 = counter(0, "encapsulated")?;
    sandboxes[0].ping("10.40.3.5", 3)?;
    ensure!(
        counter(0, "encapsulated")? >= encap0 + 3,
        "host 0 did not fall back to VXLAN for the far host"
    );
    Ok(())
}

/// The host-side interfaces oxlay made on host `i` (their names start with "oxl").
fn oxlay_links(c: &StoreCluster, i: usize) -> Result<Vec<String>> {
    let out = c.hosts[i].ns.ip(&["-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with("oxl"))
        .collect())
}

/// An endpoint whose store record cannot be written after its veth was wired is undone
/// whole: no veth, no map entry, no local record, and its address goes back to the pool
/// (the next endpoint gets it). Before, the address went back while the veth and the
/// map entry stayed: a later container got an address a wired one still held.
#[test]
fn a_failed_endpoint_creation_is_undone() -> Result<()> {
    if oxlay_testbed::skip_without_root() {
        return Ok(());
    }
    let mut c = StoreCluster::new(1, false, 10)?;
    c.daemons[0].cli(&["network", "create", "undo", "--subnet", "10.61.0.0/16"])?;
    c.restart_daemon_with_env(0, &[("OXLAY_FAULT", oxlay::fault::step::ENDPOINT_RECORD)])?;
    let ns = Netns::new("undo")?;
    let create = [
        "endpoint",
        "create",
        "--network",
        "undo",
        "--netns",
        &ns.name,
    ];
    let err = c.daemons[0].cli(&create).unwrap_err();
    ensure!(format!("{err:#}").contains("injected fault"), "{err:#}");
    ensure!(
        oxlay_links(&c, 0)?.is_empty(),
        "veths left: {:?}",
        oxlay_links(&c, 0)?
    );
    let local: serde_json::Value =
        serde_json::from_str(&c.daemons[0].cli(&["endpoints", "--json"])?)?;
    ensure!(
        local.as_array().is_some_and(|a| a.is_empty()),
        "local endpoints left: {local}"
    );
    let stored: serde_json::Value =
        serde_json::from_str(&c.daemons[0].cli(&["endpoint", "ls", "--json"])?)?;
    ensure!(
        stored.as_array().is_some_and(|a| a.is_empty()),
        "addresses left claimed: {stored}"
    );
    let routes = c.daemons[0].cli(&["routes"])?;
    ensure!(!routes.contains("10.61.0.1/32"), "route left: {routes}");
    // The fault fires once: the same request now works, with the same address.
    let out = c.daemons[0].cli(&create)?;
    ensure!(out.contains("as 10.61.0.1 "), "{out}");
    ensure!(oxlay_links(&c, 0)?.len() == 1, "{:?}", oxlay_links(&c, 0)?);
    // Removing it leaves the maps as they were, and no map write failed on the way
    // (the endpoint's own route goes with it; reconcile must not choke on that).
    c.daemons[0].cli(&["endpoint", "rm", "--network", "undo", "--netns", &ns.name])?;
    let routes: serde_json::Value =
        serde_json::from_str(&c.daemons[0].cli(&["routes", "--json"])?)?;
    ensure!(
        routes.as_array().is_some_and(|a| a.is_empty()),
        "routes left: {routes}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let status: serde_json::Value =
        serde_json::from_str(&c.daemons[0].cli(&["status", "--json"])?)?;
    ensure!(
        status["map_update_failures"] == 0 && status["last_reconcile_error"].is_null(),
        "{status}"
    );
    Ok(())
}

/// A restart whose store read fails while it adopts endpoints stops, and releases no
/// address a wired container holds; the next start adopts the endpoint. Before, any
/// error reading the network was taken as "network gone" and the address released.
#[test]
fn a_store_error_at_start_releases_no_address() -> Result<()> {
    if oxlay_testbed::skip_without_root() {
        return Ok(());
    }
    let mut c = StoreCluster::new(1, false, 10)?;
    c.daemons[0].cli(&["network", "create", "keep", "--subnet", "10.62.0.0/16"])?;
    let (_ns, _) = c.endpoint(0, "keep", "keep", None)?;
    c.daemons[0].stop()?;
    let failed = c.start_daemon_with_env(
        0,
        &[("OXLAY_FAULT", oxlay::fault::step::ADOPT_NETWORK_READ)],
    );
    let err = match failed {
        Ok(_) => bail!("the daemon started although it could not read the endpoint's network"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("injected fault"), "{err}");
    c.restart_daemon(0)?;
    let local: serde_json::Value =
        serde_json::from_str(&c.daemons[0].cli(&["endpoints", "--json"])?)?;
    let adopted = local.as_array().map(|a| a.len()).unwrap_or(0);
    ensure!(adopted == 1, "the endpoint was not adopted: {local}");
    let stored = c.daemons[0].cli(&["endpoint", "ls"])?;
    ensure!(
        stored.contains("10.62.0.1"),
        "the address was released: {stored}"
    );
    Ok(())
}
