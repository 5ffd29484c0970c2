//! The host's lease: it holds the host's registration and its blocks. Renewed on its
//! own task, never behind the daemon's state lock (a busy daemon must not let its lease
//! lapse), and given up only when the store says it is gone.
use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use log::warn;

use crate::{
    model::{self, HostRecord},
    store::{is_lease_expired, LeaseId, Store},
};

/// A block this host must hold: (network, an address of one of its endpoints in it).
pub type HeldBlock = (String, Ipv4Addr);

pub struct HostLease {
    store: Arc<dyn Store>,
    host: HostRecord,
    ttl: Duration,
    /// The lease the host's records hang on; changes only once a registration under a
    /// new lease has fully succeeded.
    current: AtomicI64,
}

impl HostLease {
    pub fn new(store: Arc<dyn Store>, host: HostRecord, ttl: Duration) -> Self {
        Self {
            store,
            host,
            ttl,
            current: AtomicI64::new(0),
        }
    }

    pub fn current(&self) -> LeaseId {
        self.current.load(Ordering::SeqCst)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Grants a new lease, registers the host under it and re-claims `blocks` (they
    /// went with an expired lease). Only when every step succeeded does the new lease
    /// become current; otherwise it is revoked and the old one stays, so renewal keeps
    /// renewing the lease that actually holds the records.
    pub async fn register(&self, blocks: &[HeldBlock]) -> Result<LeaseId> {
        let lease = self.store.grant_lease(self.ttl).await?;
        let registered = async {
            model::register_host(&*self.store, &self.host, lease).await?;
            for (network, address) in blocks {
                model::reclaim_block(&*self.store, &self.host.name, lease, network, *address)
                    .await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = registered.await {
            if let Err(revoke) = self.store.revoke_lease(lease).await {
                warn!("giving back lease {lease} of a failed registration: {revoke:#}");
            }
            return Err(e);
        }
        self.current.store(lease, Ordering::SeqCst);
        Ok(lease)
    }

    /// Renews the current lease. `Ok(false)` when the store says it is gone (the host
    /// must register again); an error when the store could not be asked.
    pub async fn renew(&self) -> Result<bool> {
        match self.store.keep_alive(self.current()).await {
            Ok(()) => Ok(true),
            Err(e) if is_lease_expired(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// What the keep-alive loop reports.
pub trait LeaseEvents: Send + Sync {
    fn renewed(&self);
    fn failed(&self, what: &str, e: &anyhow::Error);
    /// The store said the lease had expired (the host registers again).
    fn expired(&self) {}
}

/// Renews the lease every third of its TTL. When the store says the lease is gone (an
/// outage longer than the TTL), registers again with the blocks `held` returns; a store
/// that does not answer is reported and asked again next round, the lease untouched.
pub async fn keep_alive<F, Fut>(lease: Arc<HostLease>, held: F, events: Arc<dyn LeaseEvents>)
where
    F: Fn() -> Fut + Send,
    Fut: std::future::Future<Output = Vec<HeldBlock>> + Send,
{
    loop {
        tokio::time::sleep(lease.ttl() / 3).await;
        match lease.renew().await {
            Ok(true) => events.renewed(),
            Ok(false) => {
                events.expired();
                warn!(
                    "lease {} expired (the store was out of reach longer than its TTL); registering again",
                    lease.current()
                );
                let blocks = held().await;
                match lease.register(&blocks).await {
                    Ok(new) => {
                        log::info!("registered again under lease {new}");
                        events.renewed();
                    }
                    Err(e) => events.failed("registering", &e),
                }
            }
            Err(e) => events.failed("keep-alive", &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::NetworkSpec,
        net::MacAddr,
        store::faulty::{temp_embedded, Fault, FaultyStore},
    };

    fn host() -> HostRecord {
        HostRecord {
            name: "a".into(),
            underlay_address: Ipv4Addr::new(192, 168, 50, 11),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 11]),
            gre: true,
            wireguard: None,
        }
    }

    /// After the lease expired, a registration whose block re-claim fails leaves the
    /// expired lease current, so the next renewal says so and registers again; the
    /// half-used new lease is given back. (Storing the new lease first, as before,
    /// made the next renewal succeed on a lease that held no block.)
    #[tokio::test]
    async fn a_failed_registration_is_retried_not_renewed() {
        let (_dir, inner) = temp_embedded();
        let store = Arc::new(FaultyStore::new(inner));
        let dyn_store: Arc<dyn Store> = store.clone();
        let spec = NetworkSpec {
            name: "blue".into(),
            subnet: Some("10.10.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        model::create_network(&*dyn_store, spec).await.unwrap();
        let lease = HostLease::new(dyn_store.clone(), host(), Duration::from_secs(30));
        let first = lease.register(&[]).await.unwrap();
        let ep = model::create_endpoint(
            &*dyn_store,
            "a",
            first,
            "blue",
            "c1",
            None,
            Default::default(),
        )
        .await
        .unwrap();
        let held = [("blue".to_owned(), ep.address)];
        // The lease runs out (a long store outage): the host and its block are gone.
        dyn_store.revoke_lease(first).await.unwrap();
        assert!(model::blocks(&*dyn_store, "blue").await.unwrap().is_empty());
        // Registering again fails half-way: the block re-claim is refused once.
        store.set(Fault {
            writes_under: Some(model::BLOCKS.into()),
            times: 1,
            ..Default::default()
        });
        let err = lease.register(&held).await.unwrap_err();
        assert!(format!("{err:#}").contains("injected fault"), "{err:#}");
        assert_eq!(
            lease.current(),
            first,
            "a half-done registration is not current"
        );
        assert!(
            !lease.renew().await.unwrap(),
            "renewal reports the lease gone, not healthy"
        );
        let host_key = format!("{}a", model::HOSTS);
        assert!(
            dyn_store.get(&host_key).await.unwrap().is_none(),
            "the half-used lease was given back"
        );
        // The retry succeeds: host and block hang on the new lease.
        let second = lease.register(&held).await.unwrap();
        assert_ne!(second, first);
        assert!(lease.renew().await.unwrap());
        assert_eq!(
            dyn_store.get(&host_key).await.unwrap().unwrap().lease,
            second
        );
        let (kvs, _) = dyn_store.list(model::BLOCKS).await.unwrap();
        assert_eq!(kvs.len(), 1);
        assert_eq!(kvs[0].lease, second);
    }

    struct Counting(std::sync::Mutex<(usize, usize)>);
    impl LeaseEvents for Counting {
        fn renewed(&self) {
            self.0.lock().unwrap().0 += 1;
        }
        fn failed(&self, _: &str, _: &anyhow::Error) {
            self.0.lock().unwrap().1 += 1;
        }
    }

    /// The daemon's state lock held for longer than the TTL (a slow store call) does
    /// not let the lease expire: renewal never waits for it.
    #[tokio::test]
    async fn renewal_does_not_wait_for_a_busy_daemon() {
        let (_dir, inner) = temp_embedded();
        let store: Arc<dyn Store> = Arc::new(inner);
        let lease = Arc::new(HostLease::new(
            store.clone(),
            host(),
            Duration::from_millis(900),
        ));
        lease.register(&[]).await.unwrap();
        let state = Arc::new(tokio::sync::Mutex::new(()));
        let busy = state.clone().lock_owned().await;
        let events = Arc::new(Counting(Default::default()));
        let held_state = state.clone();
        let task = tokio::spawn(keep_alive(
            lease.clone(),
            move || {
                let s = held_state.clone();
                async move {
                    let _g = s.lock().await;
                    Vec::new()
                }
            },
            events.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let host_kv = store.get(&format!("{}a", model::HOSTS)).await.unwrap();
        task.abort();
        drop(busy);
        assert!(
            host_kv.is_some(),
            "the host's registration expired while the daemon was busy"
        );
        let (renewed, failed) = *events.0.lock().unwrap();
        assert!(
            renewed >= 3 && failed == 0,
            "renewed {renewed}, failed {failed}"
        );
    }
}
