//! Route churn: while a paced UDP flow runs between two containers, 5,000 routes of a
//! peer appear and vanish again (10,000 route changes on each daemon, written to etcd in
//! batches); the flow loses nothing, and the maps end as they began.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use oxlay::{
    model::{self, BlockRecord, HostRecord},
    net::{Ipv4Net, MacAddr},
};
use oxlay_testbed::{skip_without_root_or_etcd, Netns, PacedUdp, StoreCluster};

const BLOCKS: u32 = 5000;
const BATCH: usize = 100;

/// One route as `oxlay routes` shows it: (VNI, destination, kind, via).
type RouteRow = (u64, String, String, String);

fn routes(c: &StoreCluster, h: usize) -> Result<BTreeSet<RouteRow>> {
    let v: serde_json::Value = serde_json::from_str(&c.daemons[h].cli(&["routes", "--json"])?)?;
    let rows = v.as_array().context("routes --json is not a list")?;
    rows.iter()
        .map(|r| {
            Ok((
                r["vni"].as_u64().context("vni")?,
                r["destination"].as_str().context("destination")?.to_owned(),
                r["kind"].as_str().context("kind")?.to_owned(),
                r["via"].as_str().context("via")?.to_owned(),
            ))
        })
        .collect()
}

/// The routes the churn peer's blocks must give, network `vni`.
fn churn_routes(vni: u64) -> BTreeSet<RouteRow> {
    (0..BLOCKS)
        .map(|i| {
            let block = Ipv4Net::new(Ipv4Addr::from(0x0a01_0000u32 + (i << 8)), 24).unwrap();
            (
                vni,
                block.to_string(),
                "remote".to_owned(),
                "192.168.50.99".to_owned(),
            )
        })
        .collect()
}

/// Waits until host `h` routes exactly `want`: the contents, not only the count.
fn wait_for(
    c: &StoreCluster,
    h: usize,
    want: &BTreeSet<RouteRow>,
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let have = routes(c, h)?;
        if have == *want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            let missing = want.difference(&have).next();
            let extra = have.difference(want).next();
            bail!(
                "host {h} has {} routes, expected {}; first missing {missing:?}, first unexpected {extra:?}",
                have.len(),
                want.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes (or deletes) the churn peer's blocks in transactions of `BATCH`.
async fn churn(endpoint: String, add: bool) -> Result<f64> {
    let mut client = Client::connect([endpoint], None).await?;
    let start = Instant::now();
    let lease = if add {
        client.lease_grant(300, None).await?.id()
    } else {
        0
    };
    if add {
        let host = HostRecord {
            name: "churn-peer".into(),
            underlay_address: Ipv4Addr::new(192, 168, 50, 99),
            vtep_mac: MacAddr::derived("churn-peer"),
            gre: true,
            wireguard: None,
        };
        client
            .put(
                format!("{}churn-peer", model::HOSTS),
                serde_json::to_string(&host)?,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
    }
    let keys: Vec<(String, String)> = (0..BLOCKS)
        .map(|i| {
            let block = Ipv4Net::new(Ipv4Addr::from(0x0a01_0000u32 + (i << 8)), 24).unwrap();
            let record = BlockRecord {
                network: "churn".into(),
                block,
                host: "churn-peer".into(),
            };
            let key = format!("{}churn/{}_24", model::BLOCKS, block.addr());
            (key, serde_json::to_string(&record).unwrap())
        })
        .collect();
    for batch in keys.chunks(BATCH) {
        let ops: Vec<TxnOp> = batch
            .iter()
            .map(|(k, v)| {
                if add {
                    TxnOp::put(
                        k.as_str(),
                        v.as_str(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                } else {
                    TxnOp::delete(k.as_str(), None)
                }
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn run_churn(ns: &Netns, endpoint: &str, add: bool) -> Result<f64> {
    let endpoint = endpoint.to_owned();
    ns.spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(churn(endpoint, add))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("churn writer panicked"))?
}

#[test]
fn route_churn_loses_no_packet() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    let c = StoreCluster::new(2, true, 10)?;
    c.daemons[0].cli(&[
        "network",
        "create",
        "churn",
        "--subnet",
        "10.0.0.0/8",
        "--block-size",
        "/24",
    ])?;
    let (a, _) = c.endpoint(0, "churn", "churn-a", Some("10.0.0.5"))?;
    let (b, _) = c.endpoint(1, "churn", "churn-b", Some("10.0.1.5"))?;
    let b_addr = Ipv4Addr::new(10, 0, 1, 5);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.ping("10.0.1.5", 1).is_err() {
        ensure!(
            Instant::now() < deadline,
            "no connectivity before the churn"
        );
    }
    let base = [routes(&c, 0)?, routes(&c, 1)?];
    let vni = base[0]
        .iter()
        .next()
        .context("no route before the churn")?
        .0;
    let with_churn: Vec<BTreeSet<RouteRow>> = base
        .iter()
        .map(|b| b.union(&churn_routes(vni)).cloned().collect())
        .collect();

    let stream = PacedUdp::start(&a, &b, b_addr, 9191)?;

    let endpoint = c.etcd.as_ref().context("etcd")?.endpoint.clone();
    let wrote = run_churn(&c.underlay.ns, &endpoint, true)?;
    let settled_add = wait_for(&c, 0, &with_churn[0], Duration::from_secs(60))?;
    wait_for(&c, 1, &with_churn[1], Duration::from_secs(60))?;
    let deleted = run_churn(&c.underlay.ns, &endpoint, false)?;
    let settled_del = wait_for(&c, 0, &base[0], Duration::from_secs(60))?;
    wait_for(&c, 1, &base[1], Duration::from_secs(60))?;
    eprintln!(
        "{BLOCKS} routes added in {wrote:.2} s (+{:.2} s to settle), removed in {deleted:.2} s (+{:.2} s)",
        settled_add.as_secs_f64(),
        settled_del.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(200));
    let (sent, missing, lost) = stream.stop()?;
    eprintln!("sent {sent}, lost {lost}");
    ensure!(
        lost == 0,
        "{lost} of {sent} datagrams lost during the churn, first: {missing:?}"
    );
    Ok(())
}
