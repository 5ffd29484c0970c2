//! The store on a real etcd v3 cluster.
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::{KeyValue, LeaseId, Revision, Store, WatchEvent, WatchItem};

/// How long one keep-alive may take before it counts as the store not answering.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options))
            .await
            .with_context(|| {
                format!(
                    "cannot connect to etcd at {}: is it running and reachable?",
                    endpoints.join(",")
                )
            })?;
        Ok(Self { client })
    }
}

fn kv(k: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: k.key_str()?.to_owned(),
        value: k.value_str()?.to_owned(),
        mod_revision: k.mod_revision(),
        lease: k.lease(),
    })
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|l| PutOptions::new().with_lease(l))
}

#[async_trait]
impl Store for EtcdStore {
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let kvs = resp.kvs().iter().map(kv).collect::<Result<_>>()?;
        Ok((kvs, revision))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.client.clone().get(key, None).await?;
        resp.kvs().first().map(kv).transpose()
    }

    async fn put(&self, key: &str, value: &str, lease: Option<LeaseId>) -> Result<Revision> {
        let resp = self
            .client
            .clone()
            .put(key, value, put_options(lease))
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Revision,
        value: &str,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, put_options(lease))]);
        let resp = self.client.clone().txn(txn).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.client.clone().txn(txn).await?.succeeded())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.client.clone().delete(key, None).await?.deleted() > 0)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs().max(1) as i64;
        Ok(self.client.clone().lease_grant(secs, None).await?.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let renew = async {
            let (mut keeper, mut stream) = self.client.clone().lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(r) if r.ttl() > 0 => Ok(()),
                // etcd answers TTL 0 for a lease it does not know (expired or revoked).
                Some(_) => Err(anyhow::Error::new(super::LeaseExpired(lease))),
                None => bail!("etcd closed the keep-alive stream of lease {lease}"),
            }
        };
        // The stream has no deadline of its own: a stalled etcd must not stall renewal.
        tokio::time::timeout(KEEP_ALIVE_TIMEOUT, renew)
            .await
            .map_err(|_| anyhow::anyhow!("etcd did not answer the keep-alive of lease {lease} within {KEEP_ALIVE_TIMEOUT:?}"))?
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            // Already gone is what revoking wants.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchItem>> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let mut stream = self.client.clone().watch(prefix, Some(options)).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let resp = match item {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(anyhow!("etcd closed the watch; list again")))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(anyhow!("etcd watch failed: {e}; list again")))
                            .await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    let _ = tx
                        .send(Err(anyhow!(
                            "etcd watch cancelled (compacted at {}); list again",
                            resp.compact_revision()
                        )))
                        .await;
                    return;
                }
                for event in resp.events() {
                    let Some(k) = event.kv() else { continue };
                    let item = match event.event_type() {
                        EventType::Put => kv(k).map(WatchEvent::Put),
                        EventType::Delete => {
                            k.key_str()
                                .map_err(Into::into)
                                .map(|key| WatchEvent::Delete {
                                    key: key.to_owned(),
                                    revision: k.mod_revision(),
                                })
                        }
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
