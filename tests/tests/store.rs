//! One suite for both stores: the embedded file store and a real etcd server. Whatever
//! the control plane relies on (revisions, compare-and-put, leases, watch) is checked
//! here against both, so the daemon can use either.
use std::{sync::Arc, time::Duration};

use anyhow::{ensure, Context, Result};
use oxlay::store::{embedded::EmbeddedStore, etcd::EtcdStore, Store, WatchEvent};
use oxlay_testbed::{Etcd, TempDir};

const LEASE_TTL: Duration = Duration::from_secs(2);

async fn suite(store: Arc<dyn Store>) -> Result<()> {
    basics(&*store).await.context("basics")?;
    compare_and_put(&*store).await.context("compare-and-put")?;
    leases(&*store).await.context("leases")?;
    watch(&*store).await.context("watch")?;
    concurrent_increments(store.clone())
        .await
        .context("concurrent compare-and-put")?;
    Ok(())
}

async fn basics(s: &dyn Store) -> Result<()> {
    let r1 = s.put("/t/basics/a", "1", None).await?;
    let r2 = s.put("/t/basics/b", "2", None).await?;
    s.put("/t/basicsX", "outside", None).await?;
    ensure!(r2 > r1, "revisions must grow: {r1} then {r2}");
    let a = s.get("/t/basics/a").await?.context("a missing")?;
    ensure!(
        a.value == "1" && a.mod_revision == r1 && a.lease == 0,
        "{a:?}"
    );
    let (kvs, rev) = s.list("/t/basics/").await?;
    let keys: Vec<_> = kvs.iter().map(|k| k.key.as_str()).collect();
    ensure!(keys == ["/t/basics/a", "/t/basics/b"], "list: {keys:?}");
    ensure!(rev > r2, "list revision {rev} older than the last write");
    ensure!(
        s.delete("/t/basics/a").await?,
        "delete of an existing key said false"
    );
    ensure!(
        !s.delete("/t/basics/a").await?,
        "delete of a missing key said true"
    );
    ensure!(s.get("/t/basics/a").await?.is_none());
    Ok(())
}

async fn compare_and_put(s: &dyn Store) -> Result<()> {
    let created = s
        .compare_and_put("/t/cas", 0, "v1", None)
        .await?
        .context("create failed")?;
    ensure!(
        s.compare_and_put("/t/cas", 0, "again", None)
            .await?
            .is_none(),
        "created twice"
    );
    ensure!(
        s.compare_and_put("/t/cas", created + 100, "x", None)
            .await?
            .is_none(),
        "stale revision accepted"
    );
    let updated = s
        .compare_and_put("/t/cas", created, "v2", None)
        .await?
        .context("update failed")?;
    ensure!(s.get("/t/cas").await?.unwrap().value == "v2");
    ensure!(
        !s.compare_and_delete("/t/cas", created).await?,
        "deleted with a stale revision"
    );
    ensure!(
        s.compare_and_delete("/t/cas", updated).await?,
        "delete with the right revision failed"
    );
    ensure!(s.get("/t/cas").await?.is_none());
    Ok(())
}

async fn leases(s: &dyn Store) -> Result<()> {
    let lease = s.grant_lease(LEASE_TTL).await?;
    s.put("/t/lease/host-a", "up", Some(lease)).await?;
    ensure!(s.get("/t/lease/host-a").await?.unwrap().lease == lease);
    s.compare_and_put("/t/lease/block", 0, "claimed", Some(lease))
        .await?
        .context("claim failed")?;
    ensure!(
        s.get("/t/lease/block").await?.unwrap().lease == lease,
        "compare-and-put dropped the lease"
    );
    // Kept alive past its TTL, the key stays.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.keep_alive(lease).await?;
    }
    ensure!(
        s.get("/t/lease/host-a").await?.is_some(),
        "key vanished while its lease was kept alive"
    );
    // Left alone, it goes.
    let deadline = tokio::time::Instant::now() + LEASE_TTL * 4;
    while s.get("/t/lease/host-a").await?.is_some() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "key outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        s.get("/t/lease/block").await?.is_none(),
        "compare-and-put key outlived its lease"
    );
    ensure!(
        s.keep_alive(lease).await.is_err(),
        "an expired lease was renewed"
    );
    ensure!(
        s.put("/t/lease/x", "v", Some(lease)).await.is_err(),
        "put with an expired lease"
    );
    // Revoking deletes at once.
    let lease = s.grant_lease(LEASE_TTL).await?;
    s.put("/t/lease/host-b", "up", Some(lease)).await?;
    s.revoke_lease(lease).await?;
    ensure!(
        s.get("/t/lease/host-b").await?.is_none(),
        "revoked lease left its key"
    );
    Ok(())
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<oxlay::store::WatchItem>) -> Result<WatchEvent> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .context("no watch event within 10 s")?
        .context("watch ended")?
}

async fn watch(s: &dyn Store) -> Result<()> {
    let (_, start) = s.list("/t/watch/").await?;
    let mut rx = s.watch("/t/watch/", start).await?;
    let r1 = s.put("/t/watch/a", "1", None).await?;
    s.put("/t/other", "not watched", None).await?;
    s.put("/t/watch/b", "2", None).await?;
    s.delete("/t/watch/a").await?;
    let lease = s.grant_lease(LEASE_TTL).await?;
    s.put("/t/watch/leased", "x", Some(lease)).await?;

    let e = next(&mut rx).await?;
    ensure!(
        matches!(&e, WatchEvent::Put(kv) if kv.key == "/t/watch/a" && kv.value == "1" && kv.mod_revision == r1),
        "{e:?}"
    );
    let e = next(&mut rx).await?;
    ensure!(
        matches!(&e, WatchEvent::Put(kv) if kv.key == "/t/watch/b"),
        "{e:?}"
    );
    let e = next(&mut rx).await?;
    ensure!(
        matches!(&e, WatchEvent::Delete { key, .. } if key == "/t/watch/a"),
        "{e:?}"
    );
    let e = next(&mut rx).await?;
    ensure!(
        matches!(&e, WatchEvent::Put(kv) if kv.key == "/t/watch/leased"),
        "{e:?}"
    );
    // An expiring lease shows up as a delete.
    let e = next(&mut rx).await?;
    ensure!(
        matches!(&e, WatchEvent::Delete { key, .. } if key == "/t/watch/leased"),
        "{e:?}"
    );

    // Watching from an old revision replays what happened since.
    let mut replay = s.watch("/t/watch/", start).await?;
    let e = next(&mut replay).await?;
    ensure!(
        e.key() == "/t/watch/a" && e.revision() == r1,
        "replay started at {e:?}"
    );
    Ok(())
}

/// Many writers race on one counter with compare-and-put: no update may be lost.
async fn concurrent_increments(s: Arc<dyn Store>) -> Result<()> {
    s.put("/t/counter", "0", None).await?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 10 {
                let kv = s.get("/t/counter").await?.context("counter missing")?;
                let n: u64 = kv.value.parse()?;
                if s.compare_and_put("/t/counter", kv.mod_revision, &(n + 1).to_string(), None)
                    .await?
                    .is_some()
                {
                    done += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let total = s.get("/t/counter").await?.unwrap().value;
    ensure!(
        total == "80",
        "counter is {total}, expected 80: updates were lost"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store() -> Result<()> {
    let dir = TempDir::new("store")?;
    suite(Arc::new(EmbeddedStore::new(dir.path.join("store.json"))?)).await
}

/// Two handles on one file behave as one store (as two daemons on a machine do).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_is_shared_between_handles() -> Result<()> {
    let dir = TempDir::new("store")?;
    let a = EmbeddedStore::new(dir.path.join("store.json"))?;
    let b = EmbeddedStore::new(dir.path.join("store.json"))?;
    let mut rx = b.watch("/hosts/", 0).await?;
    a.put("/hosts/a", "1", None).await?;
    ensure!(b.get("/hosts/a").await?.unwrap().value == "1");
    ensure!(next(&mut rx).await?.key() == "/hosts/a");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_store() -> Result<()> {
    if oxlay_testbed::skip_without_etcd() {
        return Ok(());
    }
    let etcd = Etcd::start()?;
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await?;
    suite(Arc::new(store)).await
}

/// A stalled etcd (frozen: connections open, nothing answers) does not stall lease
/// renewal: keep-alive gives up within its own timeout, and says the store did not
/// answer, not that the lease expired (which would make the host register again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_gives_up_on_a_stalled_etcd() -> Result<()> {
    if oxlay_testbed::skip_without_etcd() {
        return Ok(());
    }
    let etcd = Etcd::start()?;
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await?;
    let lease = store.grant_lease(Duration::from_secs(60)).await?;
    store.keep_alive(lease).await?;
    etcd.pause()?;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(20), store.keep_alive(lease)).await;
    etcd.resume()?;
    let answer =
        answer.map_err(|_| anyhow::anyhow!("keep-alive hung for 20 s on a stalled etcd"))?;
    let took = started.elapsed();
    let Err(e) = answer else {
        anyhow::bail!("keep-alive succeeded against a frozen etcd");
    };
    anyhow::ensure!(
        !oxlay::store::is_lease_expired(&e),
        "a stalled store was reported as an expired lease: {e:#}"
    );
    anyhow::ensure!(
        took < Duration::from_secs(10),
        "gave up only after {took:?}"
    );
    store.keep_alive(lease).await?;
    Ok(())
}
