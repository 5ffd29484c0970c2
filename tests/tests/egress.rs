//! Containers reach the world. A namespace on the underlay that is not an oxlay host and
//! knows no container route stands for the outside: a container's TCP, UDP and ICMP
//! reach it with the host's address (masquerade), and ICMP errors come back. Switched
//! off per network, or for listed destinations, the container's own address goes out.
//! The NAT is kept across a daemon restart, with the connections through it, and gone
//! after `oxlay uninstall`.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{skip_without_root, Host, Netns, PacedUdp, StoreCluster};

const OUTSIDE: &str = "192.168.50.100";
const WHOAMI: u16 = 8000;
const UDP_ECHO: u16 = 8001;
const CLOSED: u16 = 8009;

fn outside() -> Ipv4Addr {
    OUTSIDE.parse().unwrap()
}

/// An outside host with a TCP server that tells each client the address it saw and a
/// UDP server that answers likewise; both run until the namespace goes.
fn outside_host(c: &mut StoreCluster) -> Result<Host> {
    let host = c.underlay.add_host_at("outside", OUTSIDE)?;
    let (tcp_up, tcp_ready) = std::sync::mpsc::channel();
    let _tcp = host.ns.spawn(move || {
        let listener = TcpListener::bind((outside(), WHOAMI))?;
        tcp_up.send(())?;
        for stream in listener.incoming() {
            let mut stream = stream?;
            let peer = stream.peer_addr()?.ip().to_string();
            // Echo what the client sends after the first line, so that a long-lived
            // connection can be exercised.
            stream.write_all(format!("{peer}\n").as_bytes())?;
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        anyhow::Ok(())
    });
    let (udp_up, udp_ready) = std::sync::mpsc::channel();
    let _udp = host.ns.spawn(move || -> Result<()> {
        let sock = UdpSocket::bind((outside(), UDP_ECHO))?;
        udp_up.send(())?;
        let mut buf = [0u8; 64];
        loop {
            let (_, from) = sock.recv_from(&mut buf)?;
            sock.send_to(from.ip().to_string().as_bytes(), from)?;
        }
    });
    tcp_ready.recv_timeout(Duration::from_secs(5))?;
    udp_ready.recv_timeout(Duration::from_secs(5))?;
    Ok(host)
}

/// The address the outside saw for a TCP connection from `ns`.
fn seen_over_tcp(ns: &Netns) -> Result<String> {
    ns.spawn(|| {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((outside(), WHOAMI)),
            Duration::from_secs(3),
        )
        .context("TCP to the outside")?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut line = [0u8; 32];
        let n = s.read(&mut line)?;
        Ok(String::from_utf8_lossy(&line[..n]).trim().to_owned())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// What host 0 says about its NAT, for failure messages.
fn diagnosis(c: &StoreCluster) -> String {
    let ns = &c.hosts[0].ns;
    format!(
        "ip_forward={:?}\nnft: {:?}\nroutes: {:?}\ndaemon log:\n{}",
        ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]),
        ns.exec(&["nft", "list", "ruleset"]),
        ns.ip(&["route"]),
        c.daemons[0].log()
    )
}

fn network(c: &StoreCluster, name: &str, subnet: &str, extra: &[&str]) -> Result<()> {
    let mut args = vec!["network", "create", name, "--subnet", subnet];
    args.extend(extra);
    c.daemons[0].cli(&args)?;
    Ok(())
}

#[test]
fn containers_reach_the_outside_with_the_hosts_address() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut c = StoreCluster::new(2, false, 30)?;
    let _outside = outside_host(&mut c)?;
    network(&c, "web", "10.70.0.0/16", &[])?;
    let (a, _) = c.endpoint(0, "web", "egress-a", Some("10.70.0.5"))?;
    let host = c.hosts[0].addr.to_string();

    let seen = seen_over_tcp(&a).with_context(|| diagnosis(&c))?;
    ensure!(seen == host, "TCP left as {seen}, not {host}");
    let (udp_seen, refused) = a
        .spawn(|| {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            sock.send_to(b"who", (outside(), UDP_ECHO))?;
            let mut buf = [0u8; 32];
            let (n, _) = sock
                .recv_from(&mut buf)
                .context("no UDP answer from the outside")?;
            let seen = String::from_utf8_lossy(&buf[..n]).into_owned();
            // A closed port answers with ICMP port unreachable, which must find its
            // way back through the NAT to this socket.
            let closed = UdpSocket::bind("0.0.0.0:0")?;
            closed.set_read_timeout(Some(Duration::from_secs(3)))?;
            closed.connect((outside(), CLOSED))?;
            closed.send(b"x")?;
            let refused = closed.recv(&mut buf).map_err(|e| e.kind());
            Ok((seen, refused))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    ensure!(udp_seen == host, "UDP left as {udp_seen}, not {host}");
    ensure!(
        refused == Err(std::io::ErrorKind::ConnectionRefused),
        "the ICMP error did not come back through the NAT: {refused:?}"
    );
    a.ping(OUTSIDE, 1).context("ICMP echo to the outside")?;

    let table = c.hosts[0]
        .ns
        .exec(&["nft", "list", "table", "ip", "oxlay"])?;
    ensure!(
        table.contains("masquerade") && table.contains("10.70.0.0/16"),
        "{table}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&c.daemons[0].cli(&["status", "--json"])?)?;
    ensure!(
        status["egress"]
            .as_str()
            .unwrap_or("")
            .starts_with("masquerade"),
        "status: {status}"
    );
    Ok(())
}

#[test]
fn masquerade_is_switched_off_per_network_and_per_destination() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut c = StoreCluster::new(2, false, 30)?;
    let out = outside_host(&mut c)?;
    network(&c, "dc", "10.71.0.0/16", &["--masquerade=false"])?;
    network(
        &c,
        "ex",
        "10.72.0.0/16",
        &["--masquerade-except", "192.168.50.0/24"],
    )?;
    network(&c, "web", "10.73.0.0/16", &[])?;
    let (dc, _) = c.endpoint(0, "dc", "egress-dc", Some("10.71.0.5"))?;
    let (ex, _) = c.endpoint(0, "ex", "egress-ex", Some("10.72.0.5"))?;
    let (web, _) = c.endpoint(0, "web", "egress-web", Some("10.73.0.5"))?;
    // The outside routes these networks (a data centre's routed ranges) to host 0.
    let via = c.hosts[0].addr.to_string();
    for net in ["10.71.0.0/16", "10.72.0.0/16"] {
        out.ns.ip(&["route", "add", net, "via", &via])?;
    }
    // The masquerading network proves the server answers.
    let seen = seen_over_tcp(&web).with_context(|| diagnosis(&c))?;
    ensure!(seen == via, "web left as {seen}, not {via}");
    ensure!(
        seen_over_tcp(&dc)? == "10.71.0.5",
        "--masquerade=false translated anyway"
    );
    ensure!(
        seen_over_tcp(&ex)? == "10.72.0.5",
        "--masquerade-except 192.168.50.0/24 translated anyway"
    );
    Ok(())
}

#[test]
fn nat_is_kept_across_a_restart_and_gone_after_uninstall() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut c = StoreCluster::new(2, false, 30)?;
    let out = outside_host(&mut c)?;
    network(&c, "web", "10.74.0.0/16", &[])?;
    let (a, _) = c.endpoint(0, "web", "egress-r", Some("10.74.0.5"))?;
    let forwarding =
        |c: &StoreCluster| c.hosts[0].ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    ensure!(
        forwarding(&c)?.trim() == "1",
        "the daemon did not turn forwarding on"
    );

    // A paced stream and a TCP connection through the NAT, across a restart.
    let stream = PacedUdp::start(&a, &out.ns, outside(), 9393)?;
    let (to_conn, conn_rx) = std::sync::mpsc::channel::<u8>();
    let (from_conn, conn_tx) = std::sync::mpsc::channel::<Result<()>>();
    let _conn = a.spawn(move || {
        let mut s = TcpStream::connect((outside(), WHOAMI))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut line = [0u8; 32];
        let _ = s.read(&mut line)?;
        while let Ok(byte) = conn_rx.recv() {
            let echoed = s.write_all(&[byte]).and_then(|()| {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).map(|()| b[0])
            });
            let _ = from_conn.send(match echoed {
                Ok(b) if b == byte => Ok(()),
                Ok(b) => Err(anyhow::anyhow!("echo {b} for {byte}")),
                Err(e) => Err(e.into()),
            });
        }
        anyhow::Ok(())
    });
    let echo = |byte: u8| -> Result<()> {
        to_conn.send(byte)?;
        conn_tx.recv_timeout(Duration::from_secs(5))?
    };
    echo(1).context("the connection through the NAT before the restart")?;
    c.daemons[0].stop()?;
    let kept = c.hosts[0]
        .ns
        .exec(&["nft", "list", "table", "ip", "oxlay"])?;
    ensure!(
        kept.contains("masquerade"),
        "a stopped daemon flushed its NAT table: {kept}"
    );
    c.restart_daemon(0)?;
    echo(2).context("the connection through the NAT after the restart")?;
    std::thread::sleep(Duration::from_millis(500));
    let (sent, first_lost, lost) = stream.stop()?;
    ensure!(sent > 500, "only {sent} datagrams sent");
    ensure!(
        lost == 0,
        "{lost} of {sent} datagrams through the NAT lost across the restart: {first_lost:?}"
    );

    c.daemons[0].cli(&["uninstall"])?;
    let gone = c.hosts[0].ns.exec(&["nft", "list", "tables"])?;
    ensure!(
        !gone.contains("oxlay"),
        "uninstall left the NAT table: {gone}"
    );
    ensure!(
        forwarding(&c)?.trim() == "0",
        "uninstall left forwarding on, which oxlay had turned on"
    );
    Ok(())
}
