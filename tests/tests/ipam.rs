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
    // No block was handed to two hosts: the addresses each host got, grouped by the
    // block they lie in, never mix hosts (block keys are unique, so listing the blocks
    // could not show this).
    let mut block_host: BTreeMap<u32, &str> = BTreeMap::new();
    let mut made_by: Vec<(Ipv4Addr, String)> = Vec::new();
    for ep in model::endpoints(&*s, Some("ipam")).await? {
        made_by.push((ep.address, ep.host.clone()));
    }
    for (address, host) in &made_by {
        let block = u32::from(*address) & !63; // /26 blocks
        let first = block_host.entry(block).or_insert(host);
        ensure!(
            *first == host.as_str(),
            "block {} handed to {first} and {host}",
            Ipv4Addr::from(block)
        );
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

/// Two creates of overlapping subnets at the same moment: exactly one wins (the
/// overlap check and the claim are one compare-and-put on the subnet registry).
async fn overlapping_creates_race(s: Arc<dyn Store>) -> Result<()> {
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..4 {
            let s = s.clone();
            let direct = i % 2 == 0;
            tasks.push(tokio::spawn(async move {
                model::create_network(
                    &*s,
                    NetworkSpec {
                        direct,
                        ..spec(
                            &format!("race{round}x{i}"),
                            Some(&format!("10.{}.0.0/16", 200 + round)),
                        )
                    },
                )
                .await
            }));
        }
        let mut won = 0;
        for t in tasks {
            match t.await? {
                Ok(_) => won += 1,
                Err(e) => ensure!(format!("{e:#}").contains("overlaps"), "{e:#}"),
            }
        }
        ensure!(
            won == 1,
            "round {round}: {won} overlapping networks were created"
        );
    }
    Ok(())
}

/// `network rm` racing `endpoint create`: either the endpoint exists on a network
/// that exists, or the network is gone with nothing of it left behind.
async fn remove_races_create(s: Arc<dyn Store>) -> Result<()> {
    let lease = s.grant_lease(Duration::from_secs(60)).await?;
    for round in 0..8 {
        let name = format!("rm{round}");
        model::create_network(
            &*s,
            spec(&name, Some(&format!("10.{}.0.0/16", 150 + round))),
        )
        .await?;
        let (s1, s2, n1, n2) = (s.clone(), s.clone(), name.clone(), name.clone());
        let create = tokio::spawn(async move {
            model::create_endpoint(&*s1, "h1", lease, &n1, "sb", None, BTreeMap::new()).await
        });
        let remove = tokio::spawn(async move { model::remove_network(&*s2, &n2).await });
        let (created, removed) = (create.await?, remove.await?);
        let network = model::find_network(&*s, &name).await?;
        let endpoints = model::endpoints(&*s, Some(&name)).await?;
        let blocks = model::blocks(&*s, &name).await?;
        match (created.is_ok(), removed.is_ok()) {
            (true, true) => {
                anyhow::bail!("round {round}: both the create and the removal succeeded")
            }
            (true, false) => ensure!(
                network.as_ref().is_some_and(|n| !n.removing) && endpoints.len() == 1,
                "round {round}: endpoint created but network {network:?}, endpoints {endpoints:?}"
            ),
            (false, true) => ensure!(
                network.is_none() && endpoints.is_empty() && blocks.is_empty(),
                "round {round}: removed, but left endpoints {endpoints:?} and blocks {blocks:?}"
            ),
            // Both can lose: the removal saw the claim and was refused, the create saw
            // the mark and gave its address back. Then nothing is left of either.
            (false, false) => ensure!(
                network.as_ref().is_some_and(|n| !n.removing) && endpoints.is_empty(),
                "round {round}: both failed ({:?} / {:?}) but left network {network:?}, endpoints {endpoints:?}",
                created.as_ref().err(),
                removed.as_ref().err()
            ),
        }
        if let Ok(ep) = created {
            model::remove_endpoint(&*s, &name, ep.address).await?;
        }
        if network.is_some() {
            model::remove_network(&*s, &name).await?;
        }
    }
    Ok(())
}

/// Records that do not hold what the code relies on are errors, never panics or
/// endless loops; an update never brings back a removed endpoint.
async fn bad_records_and_stale_updates(s: Arc<dyn Store>) -> Result<()> {
    let bad = r#"{"name":"bad","vni":77,"subnet":"10.99.0.0/24","block_prefix":8}"#;
    s.put("/oxlay/networks/bad", bad, None).await?;
    let lease = s.grant_lease(Duration::from_secs(60)).await?;
    let err = model::create_endpoint(&*s, "h1", lease, "bad", "sb", None, BTreeMap::new())
        .await
        .unwrap_err();
    ensure!(
        format!("{err:#}").contains("block size /8 does not fit"),
        "{err:#}"
    );
    ensure!(
        model::networks(&*s).await.is_err(),
        "a bad record listed as valid"
    );
    s.delete("/oxlay/networks/bad").await?;

    model::create_network(&*s, spec("upd", Some("10.98.0.0/16"))).await?;
    let ep = model::create_endpoint(&*s, "h1", lease, "upd", "sb", None, BTreeMap::new()).await?;
    model::remove_endpoint(&*s, "upd", ep.address).await?;
    let wired = model::EndpointRecord {
        interface: Some("eth0".into()),
        ..ep.clone()
    };
    let err = model::update_endpoint(&*s, &wired).await.unwrap_err();
    ensure!(format!("{err:#}").contains("removed meanwhile"), "{err:#}");
    ensure!(
        model::endpoint(&*s, "upd", ep.address).await?.is_none(),
        "a removed endpoint came back"
    );
    model::remove_network(&*s, "upd").await?;

    // A create that stopped after reserving its subnet and VNI (the record never
    // written): the name is refused with what to do, and `network rm` clears it.
    model::create_network(&*s, spec("half", Some("10.97.0.0/16"))).await?;
    s.delete("/oxlay/networks/half").await?;
    let err = model::create_network(&*s, spec("half", Some("10.97.0.0/16")))
        .await
        .unwrap_err();
    ensure!(
        format!("{err:#}").contains("oxlay network rm half"),
        "{err:#}"
    );
    model::remove_network(&*s, "half").await?;
    let again = model::create_network(&*s, spec("half", Some("10.97.0.0/16"))).await?;
    model::remove_network(&*s, "half").await?;
    ensure!(
        model::remove_network(&*s, "half").await.is_err(),
        "removing a network that is gone succeeded"
    );
    let vni_key = format!("/oxlay/vnis/{}", again.vni);
    ensure!(
        s.get(&vni_key).await?.is_none(),
        "VNI {} left claimed",
        again.vni
    );
    Ok(())
}

async fn suite(s: Arc<dyn Store>) -> Result<()> {
    networks(s.clone()).await.context("networks")?;
    overlapping_creates_race(s.clone())
        .await
        .context("overlapping creates")?;
    remove_races_create(s.clone())
        .await
        .context("network rm racing endpoint create")?;
    bad_records_and_stale_updates(s.clone())
        .await
        .context("bad records and stale updates")?;
    concurrent_endpoints(s)
        .await
        .context("concurrent endpoints")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ipam_on_the_embedded_store() -> Result<()> {
    let dir = TempDir::new("ipam")?;
    suite(Arc::new(EmbeddedStore::new(dir.path.join("store.json"))?)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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
