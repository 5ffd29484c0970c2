//! The daemon's side of `oxlay monitor`: the task that reads the ring buffer (and
//! keeps the programs' switch equal to what listeners want), and the stream each
//! listener gets over the local API.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use oxlay_common::{
    monitor::{DRAIN_EVERY_MS, SWITCH_HOLDS_NS},
    Counter,
};
use serde_json::json;
use tokio::{
    io::{unix::AsyncFd, AsyncRead, AsyncReadExt, AsyncWriteExt, Interest},
    net::unix::OwnedWriteHalf,
    time::MissedTickBehavior,
};

use super::{Daemon, State};
use crate::{
    api::{MonitorLine, Response},
    monitor::{decode, Context, Filter},
};

/// Reads the ring buffer for as long as the daemon runs.
pub(super) fn start(d: &Arc<Daemon>) -> tokio::task::JoinHandle<()> {
    let d = d.clone();
    tokio::spawn(async move {
        if let Err(e) = read_events(&d).await {
            log::warn!("oxlay monitor is not available: {e:#}");
        }
        // Nobody reads the ring any more: listeners are told, the programs stop.
        d.monitor.close();
        if let Err(e) = d
            .state
            .lock()
            .await
            .datapath
            .set_monitor(Default::default())
        {
            log::warn!("cannot turn the monitor's switch off: {e:#} (it lapses by itself)");
        }
    })
}

/// Writes the switch the listeners ask for, to hold until a while from now.
fn write_switch(d: &Daemon, s: &mut State) -> Result<bool> {
    let mut switch = d.monitor.switch();
    if switch.counters != 0 {
        switch.until_ns =
            (monotonic_now() + Duration::from_nanos(SWITCH_HOLDS_NS)).as_nanos() as u64;
    }
    s.datapath.set_monitor(switch)?;
    Ok(switch.counters != 0)
}

async fn read_events(d: &Daemon) -> Result<()> {
    let ring = d.state.lock().await.datapath.take_events()?;
    // SAFETY: the ring buffer owns its map's file descriptor, which stays open and the
    // same for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("cannot poll the monitor's ring buffer")?;
    let mut cx = Fresh::new(&*d.state.lock().await);
    // Timers idle while nobody listens: no burst of missed ticks when someone comes.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut drain = tokio::time::interval(Duration::from_millis(DRAIN_EVERY_MS));
    drain.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut listening = false;
    let mut failing = false;
    loop {
        tokio::select! {
            // Woken by the programs when a batch waits; drained on the timer otherwise.
            guard = ring.readable_mut() => guard?.clear_ready(),
            _ = drain.tick(), if listening => {}
            _ = d.monitor.changed.notified() => {
                let mut s = d.state.lock().await;
                listening = renew(d, &mut s, &mut failing);
                // A new listener may ask about what changed since the last tick.
                cx = Fresh::new(&s);
            }
            _ = tick.tick(), if listening => {
                let mut s = d.state.lock().await;
                // Renewed while the daemon runs: it lapses when the daemon is gone.
                listening = renew(d, &mut s, &mut failing);
                cx = Fresh::new(&s);
                match s.datapath.counters() {
                    Ok(c) => d.monitor.set_kernel_lost(c[Counter::MonitorLost as usize].1.packets),
                    Err(e) => log::warn!("oxlay monitor: cannot read the lost events' counter: {e:#}"),
                }
            }
        }
        // A flood is read a batch per turn (the programs wake the reader again while
        // it lasts, and the switch is still renewed); what does not fit the ring
        // meanwhile is counted as lost.
        drain_ring(d, ring.get_mut(), &mut cx);
    }
}

/// Writes the switch; a failure is logged once (until it works again) and tried on
/// the next tick, while the switch written last lapses by itself. Whether to go on
/// ticking: somebody listens.
fn renew(d: &Daemon, s: &mut State, failing: &mut bool) -> bool {
    match write_switch(d, s) {
        Ok(listening) => {
            *failing = false;
            listening
        }
        Err(e) => {
            if !*failing {
                log::warn!("oxlay monitor: cannot write the programs' switch (trying again every second): {e:#}");
            }
            *failing = true;
            d.monitor.switch().counters != 0
        }
    }
}

/// The decoding context and when it was read.
struct Fresh {
    cx: Context,
    at: std::time::Instant,
}

impl Fresh {
    fn new(s: &State) -> Self {
        Self {
            cx: context(s),
            at: std::time::Instant::now(),
        }
    }
}

/// Records read in one go before other tasks get their turn.
const BATCH: usize = 1024;

/// Decodes and publishes up to `BATCH` records waiting in the ring buffer.
fn drain_ring(d: &Daemon, ring: &mut RingBuf<MapData>, fresh: &mut Fresh) {
    let (monotonic, wall) = (monotonic_now(), SystemTime::now());
    for _ in 0..BATCH {
        let Some(record) = ring.next() else {
            return;
        };
        let mut event = decode(&record[..], &fresh.cx, monotonic, wall);
        // A network or veth newer than the context: look again (at most every 250 ms,
        // and never waiting for the state).
        let unknown = event.as_ref().is_some_and(|e| {
            e.vni.is_some() && e.network.is_none() || !fresh.cx.interfaces.contains_key(&e.ifindex)
        });
        if unknown && fresh.at.elapsed() > Duration::from_millis(250) {
            if let Ok(s) = d.state.try_lock() {
                *fresh = Fresh::new(&s);
                event = decode(&record[..], &fresh.cx, monotonic, wall);
            }
        }
        if let Some(event) = event {
            d.monitor
                .publish(crate::monitor::Item::Event(Arc::new(event)));
        }
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What decoding needs, read from the state.
fn context(s: &State) -> Context {
    let mut interfaces = BTreeMap::new();
    for name in [
        Some(&s.config.underlay_interface),
        s.config.l2.parent.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(index) = crate::net::ifindex(name) {
            interfaces.insert(index, name.clone());
        }
    }
    let mut endpoint_vni = BTreeMap::new();
    for e in s.endpoints.values() {
        interfaces.insert(e.host_ifindex, e.host_ifname.clone());
        endpoint_vni.insert(e.host_ifindex, e.vni);
    }
    let mut network_names: BTreeMap<u32, String> = s
        .snapshot
        .networks
        .values()
        .map(|n| (n.vni, n.name.clone()))
        .collect();
    if let Some(vni) = s.config.vni {
        network_names.entry(vni).or_insert_with(|| "static".into());
    }
    Context {
        vxlan_port: s.config.vxlan_port,
        endpoint_vni,
        network_names,
        interfaces,
    }
}

async fn write_line(write: &mut OwnedWriteHalf, value: &impl serde::Serialize) -> Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    Ok(())
}

/// Streams what `filter` shows until the client goes (its end of the socket closes:
/// a client keeps it open while it listens). A client that went is no error.
pub(super) async fn stream(
    d: &Daemon,
    filter: Filter,
    read: impl AsyncRead + Unpin,
    mut write: OwnedWriteHalf,
) -> Result<()> {
    if d.monitor.is_closed() {
        let e = "the monitor's reader stopped (the daemon's log says why): restart the daemon";
        return write_line(&mut write, &Response::Error(e.into())).await;
    }
    match follow(d, filter, read, &mut write).await {
        Err(e)
            if e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                )
            }) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn follow(
    d: &Daemon,
    filter: Filter,
    mut read: impl AsyncRead + Unpin,
    write: &mut OwnedWriteHalf,
) -> Result<()> {
    let mut sub = d.monitor.subscribe(filter);
    let answer = json!({ "monitoring": d.config.node_name });
    write_line(write, &Response::Ok(answer)).await?;
    let mut reported_lost = 0;
    let mut byte = [0u8; 1];
    loop {
        let event = tokio::select! {
            // The client sends nothing more: a read that ends means it left.
            _ = read.read(&mut byte) => return Ok(()),
            event = sub.next() => match event {
                Some(event) => event,
                None => return Ok(()),
            },
        };
        if let Some(event) = event {
            write_line(write, &MonitorLine::Event(Box::new((*event).clone()))).await?;
        }
        let lost = sub.lost();
        if lost > reported_lost {
            reported_lost = lost;
            write_line(write, &MonitorLine::Lost(lost)).await?;
        }
    }
}
