//! Published ports (Docker's `-p`): ports of this host that lead to a local endpoint.
//! They are recorded with the endpoint in the store (a restarted daemon adopts them
//! with it) and written as DNAT rules by the NAT reconcile.
use anyhow::{bail, Context, Result};
use log::info;

use super::{Daemon, EndpointKey, State};
use crate::model::{self, PublishedPort};

/// A port another local endpoint publishes already, if any.
fn taken(s: &State, key: &EndpointKey, ports: &[PublishedPort]) -> Option<PublishedPort> {
    let clash = |a: &PublishedPort, b: &PublishedPort| {
        a.proto == b.proto
            && a.host_port == b.host_port
            && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
    };
    s.endpoints
        .iter()
        .filter(|(k, _)| *k != key)
        .flat_map(|(_, ep)| ep.published.iter())
        .find(|theirs| ports.iter().any(|ours| clash(ours, theirs)))
        .copied()
}

/// Records `ports` as the published ports of the store's endpoint record.
async fn record_ports(
    store: &dyn crate::store::Store,
    host: &str,
    sandbox: &str,
    network: &str,
    address: std::net::Ipv4Addr,
    ports: &[PublishedPort],
) -> Result<()> {
    model::modify_endpoint(store, network, address, host, Some(sandbox), |r| {
        r.published = ports.to_vec()
    })
    .await
}

impl Daemon {
    /// Makes `ports` the endpoint's published ports (none: unpublish): checked against
    /// the other endpoints', recorded in the store, then written to the NAT table.
    pub(crate) async fn set_published(
        &self,
        key: &EndpointKey,
        ports: Vec<PublishedPort>,
    ) -> Result<()> {
        let (network, address, before) = {
            let s = self.state.lock().await;
            if let (Some(why), false) = (&s.nat_unavailable, ports.is_empty()) {
                bail!("this host cannot publish ports: {why}");
            }
            if s.closing {
                bail!("this node is uninstalling");
            }
            if let Some(p) = taken(&s, key, &ports) {
                bail!(
                    "host port {}/{} is published by another container already",
                    p.host_port,
                    p.proto.name()
                );
            }
            let ep = s
                .endpoints
                .get(key)
                .with_context(|| format!("no endpoint {} on this host", key.0))?;
            (ep.network.clone(), ep.address, ep.published.clone())
        };
        if let Some(network) = &network {
            record_ports(
                &*self.store,
                &self.host.name,
                &key.0,
                network,
                address,
                &ports,
            )
            .await?;
        }
        let mut s = self.state.lock().await;
        if let Some(p) = taken(&s, key, &ports) {
            drop(s);
            // Put the store's record back as it was, so that no restart adopts both.
            if let Some(network) = &network {
                if let Err(e) = record_ports(
                    &*self.store,
                    &self.host.name,
                    &key.0,
                    network,
                    address,
                    &before,
                )
                .await
                {
                    log::warn!("restoring the ports of {address}: {e:#}");
                }
            }
            bail!(
                "host port {}/{} was published by another container meanwhile",
                p.host_port,
                p.proto.name()
            );
        }
        let ep = s
            .endpoints
            .get_mut(key)
            .with_context(|| format!("endpoint {} went away", key.0))?;
        ep.published = ports;
        let count = ep.published.len();
        s.save_static_endpoints()?;
        // On failure the ports stay recorded, and the watch loop retries the NAT.
        if let Err(e) = s.reconcile_nat() {
            s.retry.notify_one();
            return Err(e);
        }
        info!("endpoint {} {address}: {count} ports published", key.0);
        Ok(())
    }
}
