//! Restarting daemons never costs a packet: a paced UDP stream between containers on
//! two hosts is counted at the receiver while the daemons are stopped and started
//! (SIGTERM), killed and started (SIGKILL), and each start replaces the programs with
//! freshly loaded ones (the upgrade path); a TCP connection lives through all of it.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{skip_without_root, Cluster, PacedUdp};

#[test]
fn restarts_lose_no_packet_and_break_no_connection() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut c = Cluster::new(2, 1, "tc")?;
    let b_addr = Cluster::container_addr(1, 0);
    c.containers[0][0].ping(&b_addr.to_string(), 1)?;

    // TCP echo in B; one connection from A that must survive.
    let echo = c.containers[1][0].spawn(move || -> Result<()> {
        let l = TcpListener::bind(SocketAddr::from((b_addr, 7070)))?;
        let (mut s, _) = l.accept()?;
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (res_tx, res_rx) = std::sync::mpsc::channel::<Result<()>>();
    let tcp = c.containers[0][0].spawn(move || -> Result<()> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((b_addr, 7070)), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        // One round trip now, and one after every restart.
        while rx.recv().is_ok() {
            let check = (|| -> Result<()> {
                s.write_all(b"still here")?;
                let mut buf = [0u8; 10];
                s.read_exact(&mut buf)?;
                ensure!(&buf == b"still here", "echo garbled");
                Ok(())
            })();
            res_tx.send(check).ok();
        }
        Ok(())
    });
    let round_trip = |what: &str| -> Result<()> {
        tx.send(()).ok();
        res_rx
            .recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("no TCP answer {what}"))?
            .with_context(|| format!("TCP connection broken {what}"))
    };
    round_trip("before the restarts")?;

    // Paced UDP: one datagram per millisecond, sequence-numbered.
    let stream = PacedUdp::start(&c.containers[0][0], &c.containers[1][0], b_addr, 9090)?;

    let before = c.hosts[0].ns.tc_ingress("eth0")?;
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM + start, on both hosts.
    for h in [0, 1] {
        c.daemons[h].stop()?;
        std::thread::sleep(Duration::from_millis(200));
        c.restart_daemon(h)?;
    }
    round_trip("after SIGTERM and start")?;
    // SIGKILL + start.
    for h in [1, 0] {
        c.daemons[h].kill()?;
        std::thread::sleep(Duration::from_millis(200));
        c.restart_daemon(h)?;
    }
    round_trip("after SIGKILL and start")?;
    let after = c.hosts[0].ns.tc_ingress("eth0")?;
    ensure!(
        after.len() == 1 && before.len() == 1,
        "decap programs: {before:?} -> {after:?}"
    );
    ensure!(
        after[0].1 != before[0].1,
        "the programs were not replaced by the new daemons"
    );
    std::thread::sleep(Duration::from_millis(300));

    let (sent, missing, lost) = stream.stop()?;
    eprintln!("sent {sent}, lost {lost}");
    ensure!(sent > 1000, "only {sent} datagrams sent");
    ensure!(
        lost == 0,
        "{lost} of {sent} datagrams lost, first: {missing:?}"
    );
    drop(tx);
    tcp.join()
        .map_err(|_| anyhow::anyhow!("tcp client panicked"))??;
    drop(c);
    let _ = echo.join();
    Ok(())
}
