//! Control-plane convergence, for `cargo xtask bench`; prints one JSON object.
//!
//! 1. New endpoint on a new host: with N hosts running, a host joins, creates an
//!    endpoint, and we time until every other host routes to it and a container
//!    there can ping it.
//! 2. Scale: one daemon with a local endpoint on a network; N synthetic hosts, each
//!    with a block of that network, are written to etcd; we time until the daemon's
//!    route map holds all N, and read the daemon's memory (VmRSS).
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use oxlay::{
    model::{self, HostRecord},
    net::{Ipv4Net, MacAddr},
    store::{etcd::EtcdStore, Store},
};
use oxlay_testbed::{Netns, StoreCluster};

fn route_count(c: &StoreCluster, host: usize) -> Result<usize> {
    let v: serde_json::Value = serde_json::from_str(&c.daemons[host].cli(&["routes", "--json"])?)?;
    Ok(v.as_array().map_or(0, |a| a.len()))
}

fn routes_contain(c: &StoreCluster, host: usize, dest: &str) -> Result<bool> {
    Ok(c.daemons[host].cli(&["routes"])?.contains(dest))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").context("no stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Runs `f` with an etcd store on a runtime in the underlay namespace.
fn with_store<T: Send + 'static>(
    c: &StoreCluster,
    f: impl FnOnce(
            Arc<dyn Store>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>
        + Send
        + 'static,
) -> Result<T> {
    let endpoint = c.etcd.as_ref().context("no etcd")?.endpoint.clone();
    c.underlay
        .ns
        .spawn(move || -> Result<T> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[endpoint]).await?);
                f(store).await
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("store client panicked"))?
}

/// Events per kind in the churn measurement.
const EVENTS: usize = 100;

/// The daemon's CPU time per store event: `EVENTS / 2` keys from `kv` written and
/// deleted again, 30 ms apart so that each is handled alone.
fn cpu_per_event(
    c: &StoreCluster,
    pid: u32,
    kv: impl Fn(usize) -> (String, String) + Send + 'static,
) -> Result<f64> {
    let cpu = cpu_secs(pid)?;
    with_store(c, move |store| {
        Box::pin(async move {
            let lease = store.grant_lease(Duration::from_secs(300)).await?;
            for i in 0..EVENTS / 2 {
                let (key, value) = kv(i);
                store.put(&key, &value, Some(lease)).await?;
                tokio::time::sleep(Duration::from_millis(30)).await;
                store.delete(&key).await?;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Ok(())
        })
    })?;
    std::thread::sleep(Duration::from_secs(2));
    Ok((cpu_secs(pid)? - cpu) / EVENTS as f64)
}

/// Block `i` of `network` (10.`octet`.`i`.0/24, held by synthetic-0) as a store key
/// and record.
fn block_event(network: &str, octet: u8, i: usize) -> (String, String) {
    let block = Ipv4Net::new(Ipv4Addr::new(10, octet, i as u8, 0), 24).expect("a /24");
    let record = model::BlockRecord {
        network: network.into(),
        block,
        host: "synthetic-0".into(),
    };
    let key = model::block_key(network, block);
    (key, serde_json::to_string(&record).expect("a record"))
}

/// Time for a new host's endpoint to be routed and pingable from `others` hosts.
fn new_host(others: usize) -> Result<(f64, f64)> {
    let mut c = StoreCluster::new(others + 1, true, 10)?;
    // The newest host (index `others`) runs already; stop it, set up the rest, restart.
    c.daemons[others].stop()?;
    c.daemons[0].cli(&["network", "create", "conv", "--subnet", "10.30.0.0/16"])?;
    let mut sandboxes = Vec::new();
    for h in 0..others {
        let (ns, _) = c.endpoint(h, "conv", &format!("conv{h}"), None)?;
        sandboxes.push(ns);
    }
    let joiner = Netns::new("joiner")?;
    let start = Instant::now();
    c.restart_daemon(others)?;
    // The joiner's namespace was made before the clock started: only the endpoint counts.
    let (_, addr) = c.daemons[others].create_endpoint("conv", &joiner, None)?;
    let addr = addr.to_string();
    let block = format!("{}.0/24", addr.rsplit_once('.').unwrap().0);
    // Routed everywhere:
    let deadline = start + Duration::from_secs(30);
    for h in 0..others {
        while !routes_contain(&c, h, &block)? {
            if Instant::now() > deadline {
                bail!("host {h} never routed {block}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let routed = start.elapsed().as_secs_f64();
    for ns in &sandboxes {
        while ns.exec(&["ping", "-c", "1", "-W", "1", &addr]).is_err() {
            if Instant::now() > deadline {
                bail!("{addr} never answered");
            }
        }
    }
    Ok((routed, start.elapsed().as_secs_f64()))
}

/// Time and memory for one daemon to route `n` synthetic hosts written to etcd.
fn scale(n: usize) -> Result<serde_json::Value> {
    let c = StoreCluster::new(1, true, 30)?;
    c.daemons[0].cli(&[
        "network",
        "create",
        "scale",
        "--subnet",
        "10.0.0.0/8",
        "--block-size",
        "/24",
    ])?;
    let (ns, _) = c.endpoint(0, "scale", "scale", None)?;
    let pid = c.daemons[0].pid().context("daemon not running")?;
    let rss_before = rss_kib(pid)?;
    let base = route_count(&c, 0)?;
    let cpu_before = cpu_secs(pid)?;
    let start = Instant::now();
    let written = with_store(&c, move |store| {
        Box::pin(async move {
            let lease = store.grant_lease(Duration::from_secs(300)).await?;
            let t = Instant::now();
            let mut tasks = Vec::new();
            for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(32)) {
                let (store, chunk) = (store.clone(), chunk.to_vec());
                tasks.push(tokio::spawn(async move {
                    for i in chunk {
                        let name = format!("synthetic-{i}");
                        let host = HostRecord {
                            name: name.clone(),
                            underlay_address: Ipv4Addr::from(0x6400_0000u32 + i as u32),
                            vtep_mac: MacAddr::derived(&name),
                            gre: true,
                            wireguard: None,
                        };
                        model::register_host(&*store, &host, lease).await?;
                        // Blocks 10.1.0.0/24 upwards; the daemon's own is 10.0.0.0/24.
                        let block =
                            Ipv4Net::new(Ipv4Addr::from(0x0a01_0000u32 + ((i as u32) << 8)), 24)?;
                        let record = model::BlockRecord {
                            network: "scale".into(),
                            block,
                            host: name.clone(),
                        };
                        let key = model::block_key("scale", block);
                        store
                            .put(&key, &serde_json::to_string(&record)?, Some(lease))
                            .await?;
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            Ok(t.elapsed().as_secs_f64())
        })
    })?;
    let deadline = start + Duration::from_secs(300);
    loop {
        if route_count(&c, 0)? >= base + n {
            break;
        }
        if Instant::now() > deadline {
            bail!("the daemon never routed all {n} hosts");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let converged = start.elapsed().as_secs_f64();
    let cpu_converge = cpu_secs(pid)? - cpu_before;
    let rss_after = rss_kib(pid)?;

    // Churn on a cluster of n hosts: keys that do not affect routing (endpoints of
    // other hosts), blocks of this host's network, blocks of a network it has no
    // endpoint on. The daemon's CPU per event shows whether its cost follows the
    // change or the cluster.
    let endpoint_key = |i: usize| {
        (
            format!("{}scale/10.9.{}.{}", model::ENDPOINTS, i / 200, i % 200 + 1),
            "{}".to_owned(),
        )
    };
    let cpu_unrelated = cpu_per_event(&c, pid, endpoint_key)?;
    let cpu_block = cpu_per_event(&c, pid, |i| block_event("scale", 200, i))?;
    let cpu_other_block = cpu_per_event(&c, pid, |i| block_event("elsewhere", 201, i))?;
    if route_count(&c, 0)? != base + n {
        bail!("routes did not settle back to {} after the churn", base + n);
    }
    drop(ns);
    Ok(serde_json::json!({
        "hosts": n,
        "write_s": written,
        "converged_s": converged,
        "cpu_converge_s": cpu_converge,
        "cpu_ms_per_unrelated_event": cpu_unrelated * 1000.0,
        "cpu_ms_per_block_event": cpu_block * 1000.0,
        "cpu_ms_per_other_network_block_event": cpu_other_block * 1000.0,
        "rss_before_mib": rss_before as f64 / 1024.0,
        "rss_after_mib": rss_after as f64 / 1024.0,
    }))
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1000, 10000]
    } else {
        sizes
    };
    let mut joins = BTreeMap::new();
    for others in [2usize, 4] {
        let (routed, pingable) = new_host(others)?;
        eprintln!(
            "new host seen by {others} others: routed {routed:.3} s, pingable {pingable:.3} s"
        );
        joins.insert(
            others.to_string(),
            serde_json::json!({ "routed_s": routed, "pingable_s": pingable }),
        );
    }
    let mut scales = Vec::new();
    for n in sizes {
        let s = scale(n)?;
        eprintln!("scale: {s}");
        scales.push(s);
    }
    println!("{}", serde_json::json!({ "join": joins, "scale": scales }));
    Ok(())
}
