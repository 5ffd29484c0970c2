//! `oxlay uninstall`: everything this node made goes, locally and in the store.
use anyhow::Result;
use log::warn;

use super::{egress, endpoints, give_back_address, l2, names, wireguard, Daemon, EndpointKey};
use crate::{model, net};

impl Daemon {
    /// Removes everything this node made: endpoints (their addresses go back to the
    /// store), the programs and pins, the state file, its registration and its Docker
    /// bindings. The local part first, under the lock (which also stops new endpoints);
    /// then the store's, which runs whatever the local part met.
    pub(super) async fn uninstall_all(&self) -> Result<()> {
        let (removed, bindings, unpinned) = {
            let mut s = self.state.lock().await;
            s.closing = true;
            let mut removed = Vec::new();
            let keys: Vec<EndpointKey> = s.endpoints.keys().cloned().collect();
            for key in keys {
                match endpoints::remove_local_endpoint(&mut s, &key).await {
                    Ok(record) => removed.push(record),
                    Err(e) => warn!("removing endpoint {key:?}: {e:#}"),
                }
            }
            let unpinned = s.datapath.unpin();
            if let Err(e) = l2::restore_parent(&s.handle, &self.config).await {
                warn!("restoring the layer-2 parent NIC: {e:#}");
            }
            if let Err(e) = names::remove(&s.handle).await {
                warn!("removing the resolver's address: {e:#}");
            }
            if let Some(e) = &s.encryption {
                if let Err(e) = wireguard::remove_device(&s.handle, &self.config, &e.device).await {
                    warn!("removing the WireGuard device: {e:#}");
                }
            }
            std::fs::remove_file(&s.state_path).ok();
            if s.nat_unavailable.is_none() {
                if let Err(e) = net::nftables::remove() {
                    warn!("removing the NAT table: {e:#}");
                }
            }
            let docker = self.config.docker.enabled.then_some(
                "Docker runs on this host and its bridge networks need it; turn it off by hand if not",
            );
            net::forwarding::restore(&egress::forwarding_marker(&self.config), docker);
            let bindings: Vec<String> = s.docker.networks.keys().cloned().collect();
            (removed, bindings, unpinned)
        };
        for record in removed {
            if let Some(network) = &record.network {
                give_back_address(&*self.store, network, record.address).await;
            }
        }
        if let Err(e) = self.store.revoke_lease(self.lease.current()).await {
            warn!("deregistering from the store: {e:#}");
        }
        for id in bindings {
            model::unbind_docker_network(&*self.store, &self.host.name, &id)
                .await
                .ok();
        }
        unpinned
    }
}
