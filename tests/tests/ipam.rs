//! Networks and the distributed IPAM, against both stores: hosts racing for blocks and
//! addresses never get the same one; everything is released afterwards.
use std::{collections::BTreeMap, collections::HashSet, net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::{ensure, Context, Result};
use oxlay::{
    model::{self, NetworkSpec},
    store::{embedded::EmbeddedStore, etcd::EtcdStore, Store},
};
use oxlay_testbed::{Etcd, TempDir};

fn spec(name: &str, subnet: Option<&str>) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        subnet: subnet.map(|s| s.parse().unwrap()),
        ..Default::default()
    }
}

async fn networks(arc: Arc<dyn Store>) -> Result<()> {
    let s = &*arc;
    let blue = model::create_network(
        s,
        NetworkSpec {
            vni: Some(42),
            ..spec("blue", Some("10.50.0.0/16"))
        },
    )
    .await?;
    ensure!(blue.vni == 42 && blue.block_prefix == 24, "{blue:?}");
    let err = model::create_network(
        s,
        NetworkSpec {
            vni: Some(42),
            ..spec("green", Some("10.60.0.0/16"))
        },
    )
    .await
    .unwrap_err();
    ensure!(
        format!("{err:#}").contains("VNI 42 is already used"),
        "{err:#}"
    );
    let err = model::create_network(s, spec("red", Some("10.50.128.0/17")))
        .await
        .unwrap_err();
    ensure!(
        format!("{err:#}").contains("overlaps network blue"),
        "{err:#}"
    );
    let red = model::create_network(
        s,
        NetworkSpec {
            allow_overlap: true,
            ..spec("red", Some("10.50.0.0/16"))
        },
    )
    .await?;
    ensure!(red.vni >= model::FIRST_AUTO_VNI, "auto VNI {}", red.vni);
    let auto = model::create_network(s, spec("auto", None)).await?;
    ensure!(
        auto.subnet.to_string() == "10.240.0.0/16",
        "auto subnet {}",
        auto.subnet
    );
    let err = model::create_network(s, spec("blue", Some("10.70.0.0/16")))
        .await
        .unwrap_err();
    ensure!(format!("{err:#}").contains("already exists"), "{err:#}");
    let err = model::create_network(s, spec("bad name", None))
        .await
        .unwrap_err();
    ensure!(format!("{err:#}").contains("not valid"), "{err:#}");

    // Concurrent creates get distinct VNIs.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = arc.clone();
        tasks.push(tokio::spawn(async move {
            model::create_network(
                &*s,
                spec(&format!("par{i}"), Some(&format!("10.{}.0.0/16", 100 + i))),
            )
            .await
        }));
    }
    let mut vnis = HashSet::new();
    for t in tasks {
        ensure!(vnis.insert(t.await??.vni), "two networks got one VNI");
    }

    // Removal is refused while endpoints exist.
    let lease = s.grant_lease(Duration::from_secs(30)).await?;
    let ep = model::create_endpoint(s, "h1", lease, "blue", "sb1", None, BTreeMap::new()).await?;
    let err = model::remove_network(s, "blue").await.unwrap_err();
    ensure!(
        format!("{err:#}").contains("still has 1 endpoint"),
        "{err:#}"
    );
    model::remove_endpoint(s, "blue", ep.address).await?;
    model::remove_network(s, "blue").await?;
    ensure!(
        s.get("/oxlay/vnis/42").await?.is_none(),
        "VNI 42 not released"
    );
    let again = model::create_network(
        s,
        NetworkSpec {
            vni: Some(42),
            ..spec("blue2", Some("10.51.0.0/16"))
        },
    )
    .await?;
    ensure!(again.vni == 42);
    Ok(())
}

async fn concurrent_endpoints(s: Arc<dyn Store>) -> Result<()> {
    // 16 blocks of 62 addresses; 4 hosts x 40 endpoints forces several blocks each.
    model::create_network(
        &*s,
        NetworkSpec {
            block_prefix: Some(26),
            ..spec("ipam", Some("10.80.0.0/22"))
        },
    )
    .await?;
    const HOSTS: [&str; 4] = ["h1", "h2", "h3", "h4"];
    let mut leases = Vec::new();
    for _ in HOSTS {
        leases.push(s.grant_lease(Duration::from_secs(60)).await?);
    }
    // Each host's daemon serialises its own allocations; the hosts race each other.
    let mut tasks = Vec::new();
    for (h, host) in HOSTS.iter().enumerate() {
        let (s, lease) = (s.clone(), leases[h]);
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..40 {
                made.push(
                    model::create_endpoint(
                        &*s,
                        host,
                        lease,
                        "ipam",
                        &format!("{host}-c{i}"),
                        None,
                        BTreeMap::new(),
                    )
                    .await?,
                );
            }
            anyhow::Ok(made)
        }));
    }
    // And a burst within one host at once: still no duplicate.
    for i in 0..10 {
        let (s, lease) = (s.clone(), leases[0]);
        tasks.push(tokio::spawn(async move {
            Ok(vec![
                model::create_endpoint(
                    &*s,
                    "h1",
                    lease,
                    "ipam",
                    &format!("burst{i}"),
                    None,
                    BTreeMap::new(),
                )
                .await?,
            ])
        }));
    }
    let mut addrs = HashSet::new();
    for t in tasks {
        for ep in t.await?? {
            ensure!(
                addrs.insert(ep.address),
                "address {} handed out twice",
                ep.address
            );
        }
    }
    ensure!(addrs.len() == 170, "{} addresses", addrs.len());
    let blocks = model::blocks(&*s, "ipam").await?;
    let mut seen = HashSet::new();
    for b in &blocks {
        ensure!(seen.insert(b.block), "block {} owned twice", b.block);
    }
    for ep in model::endpoints(&*s, Some("ipam")).await? {
        let owner = blocks
            .iter()
            .find(|b| b.block.contains(ep.address))
            .context("address outside every block")?;
        ensure!(
            owner.host == ep.host,
            "{} of {} lies in {}'s block",
            ep.address,
            ep.host,
            owner.host
        );
        let a = u32::from(ep.address);
        ensure!(
            a != u32::from(owner.block.addr()) && a != u32::from(owner.block.broadcast()),
            "edge address {}",
            ep.address
        );
    }
    let per_host = blocks.iter().filter(|b| b.host == "h1").count();
    ensure!(per_host >= 1, "h1 holds no block");

    // A wanted address in someone else's block is refused.
    let foreign = blocks.iter().find(|b| b.host == "h2").unwrap().block;
    let wanted = Ipv4Addr::from(u32::from(foreign.addr()) + 61);
    let err = model::create_endpoint(
        &*s,
        "h1",
        leases[0],
        "ipam",
        "x",
        Some(wanted),
        BTreeMap::new(),
    )
    .await;
    ensure!(err.is_err(), "h1 took an address in h2's block");

    // Release everything, concurrently; all blocks go back.
    let mut tasks = Vec::new();
    for ep in model::endpoints(&*s, Some("ipam")).await? {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            model::remove_endpoint(&*s, "ipam", ep.address).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    ensure!(
        model::endpoints(&*s, Some("ipam")).await?.is_empty(),
        "endpoints left"
    );
    let left = model::blocks(&*s, "ipam").await?;
    ensure!(
        left.is_empty(),
        "blocks left after releasing every address: {left:?}"
    );
    Ok(())
}

async fn suite(s: Arc<dyn Store>) -> Result<()> {
    networks(s.clone()).await.context("networks")?;
    concurrent_endpoints(s)
        .await
        .context("concurrent endpoints")
}

#[tokio::test(flavor = "current_thread")]
async fn ipam_on_the_embedded_store() -> Result<()> {
    let dir = TempDir::new("ipam")?;
    suite(Arc::new(EmbeddedStore::new(dir.path.join("store.json"))?)).await
}

#[tokio::test(flavor = "current_thread")]
async fn ipam_on_etcd() -> Result<()> {
    if oxlay_testbed::skip_without_etcd() {
        return Ok(());
    }
    let etcd = Etcd::start()?;
    suite(Arc::new(
        EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await?,
    ))
    .await
}
