//! Faults around the datapath: the store going away for a minute, and the underlay link
//! going down and up. Forwarding on known routes goes on; nothing needs a restart.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{eventually, skip_without_root_or_etcd, Netns, PacedUdp, StoreCluster};

const OUTAGE: Duration = Duration::from_secs(60);

fn status(c: &StoreCluster, h: usize) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &c.daemons[h].cli(&["status", "--json"])?,
    )?)
}

/// Resumes a paused etcd when dropped, also when the test fails.
struct Paused<'a>(&'a oxlay_testbed::Etcd);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

/// No request waits for another one's store call: while etcd stalls and an endpoint
/// create hangs on it, the host's datapath answers at once (`routes`, `endpoints`,
/// `stats`, `status`), since the daemon never holds its state's lock across a store
/// call. When etcd comes back, the create completes.
#[test]
fn a_request_waiting_on_the_store_holds_up_no_other() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    let c = StoreCluster::new(2, true, 30)?;
    let (_a, _b) = setup(&c)?;
    let late = Netns::new("fault-stalled")?;
    let etcd = c.etcd.as_ref().context("etcd")?;
    let paused = Paused(etcd);
    etcd.pause()?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| -> Result<()> {
        let (daemon, late) = (&c.daemons[0], &late);
        scope.spawn(move || {
            let _ = done_tx.send(daemon.create_endpoint("f", late, None));
        });
        std::thread::sleep(Duration::from_secs(1));
        ensure!(
            done_rx.try_recv().is_err(),
            "the create did not wait for the stalled store: the test proves nothing"
        );
        for args in [
            &["routes", "--json"][..],
            &["endpoints", "--json"],
            &["stats", "--json"],
            &["status", "--json"],
        ] {
            let (tx, rx) = std::sync::mpsc::channel();
            let daemon = &c.daemons[0];
            scope.spawn(move || {
                let _ = tx.send(daemon.cli(args).map(|_| ()));
            });
            rx.recv_timeout(Duration::from_secs(3)).map_err(|_| {
                anyhow::anyhow!("`oxlay {args:?}` waited for a create's store call")
            })??;
        }
        drop(paused);
        let created = done_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the create did not finish after etcd came back")?;
        created.context("the create failed after etcd came back")?;
        Ok(())
    })
}

fn setup(c: &StoreCluster) -> Result<(Netns, Netns)> {
    c.daemons[0].cli(&["network", "create", "f", "--subnet", "10.60.0.0/16"])?;
    let (a, _) = c.endpoint(0, "f", "fault-a", Some("10.60.0.5"))?;
    let (b, _) = c.endpoint(1, "f", "fault-b", Some("10.60.1.5"))?;
    eventually(Duration::from_secs(5), || a.ping("10.60.1.5", 1))?;
    Ok((a, b))
}

#[test]
fn a_store_outage_of_a_minute_does_not_stop_forwarding() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    let mut c = StoreCluster::new(2, true, 5)?;
    let (a, b) = setup(&c)?;
    let stream = PacedUdp::start(&a, &b, Ipv4Addr::new(10, 60, 1, 5), 9292)?;

    c.etcd.as_mut().context("etcd")?.stop()?;
    let outage = Instant::now();
    // The daemons notice and say so, and keep forwarding.
    eventually(Duration::from_secs(10), || {
        let s = status(&c, 0)?;
        ensure!(
            s["store_reachable"] == false,
            "status still says reachable: {s}"
        );
        Ok(())
    })?;
    ensure!(
        c.daemons[0].log().contains("store unreachable"),
        "no outage in the log"
    );
    while outage.elapsed() < OUTAGE {
        a.ping("10.60.1.5", 1)
            .context("forwarding stopped during the store outage")?;
        std::thread::sleep(Duration::from_secs(5));
    }
    c.etcd.as_mut().context("etcd")?.restart()?;
    eventually(Duration::from_secs(20), || {
        let s = status(&c, 0)?;
        ensure!(s["store_reachable"] == true, "status: {s}");
        Ok(())
    })?;
    ensure!(
        c.daemons[0].log().contains("store reachable again"),
        "no recovery in the log"
    );
    // Reconciling resumed: a change made now reaches the other host.
    let (_late, _) = c.endpoint(1, "f", "fault-late", Some("10.60.1.9"))?;
    eventually(Duration::from_secs(10), || a.ping("10.60.1.9", 1))?;

    let (sent, _, lost) = stream.stop()?;
    eprintln!("store outage of {OUTAGE:?}: sent {sent}, lost {lost}");
    ensure!(
        sent > OUTAGE.as_millis() as u32 / 2,
        "only {sent} datagrams sent"
    );
    ensure!(
        lost == 0,
        "{lost} of {sent} datagrams lost during the store outage"
    );
    Ok(())
}

#[test]
fn traffic_resumes_after_the_underlay_link_flaps() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    let c = StoreCluster::new(2, false, 5)?;
    let (a, _b) = setup(&c)?;
    let pids = (c.daemons[0].pid(), c.daemons[1].pid());
    c.hosts[0].ns.ip(&["link", "set", "eth0", "down"])?;
    ensure!(
        a.ping("10.60.1.5", 1).is_err(),
        "traffic flowed with the underlay down"
    );
    std::thread::sleep(Duration::from_secs(2));
    c.hosts[0].ns.ip(&["link", "set", "eth0", "up"])?;
    eventually(Duration::from_secs(10), || a.ping("10.60.1.5", 1))
        .context("traffic did not resume")?;
    a.ping("10.60.1.5", 3)?;
    ensure!(
        (c.daemons[0].pid(), c.daemons[1].pid()) == pids,
        "a daemon restarted"
    );
    ensure!(c.daemons[0].counter("drop_adjust_room_failed")? == 0);
    Ok(())
}
