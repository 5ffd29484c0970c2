//! Taking back, at start, the endpoints a previous daemon wired: the program is
//! attached again; their map entries (still pinned) are kept by the first reconcile.
use anyhow::Result;
use log::{info, warn};

use super::{state::read_state_file, wiring, State};
use crate::{
    model::{
        self,
        local::{self, LocalEndpoint},
        EndpointRecord,
    },
    net::netlink,
    store::Store,
};

impl State {
    /// Takes back this host's endpoints: the static network's from the state file,
    /// the others from the store. Endpoints whose interface is gone are released.
    /// Runs before the state is shared (no lock is held across its store calls).
    pub(super) async fn adopt_endpoints(&mut self, store: &dyn Store, host: &str) -> Result<()> {
        self.adopt_static_endpoints().await?;
        for ep in model::endpoints(store, None).await? {
            if ep.host == host {
                self.adopt_store_endpoint(store, ep).await?;
            }
        }
        Ok(())
    }

    async fn adopt_static_endpoints(&mut self) -> Result<()> {
        for mut ep in read_state_file(&self.state_path)? {
            let Some(link) = netlink::link_by_name(&self.handle, &ep.host_ifname).await? else {
                warn!("static endpoint {} {} is gone", ep.netns, ep.address);
                continue;
            };
            ep.host_ifindex = link.index;
            ep.host_mac = link.mac;
            wiring::adopt(&self.handle, &mut self.datapath, &ep).await?;
            wiring::tune_adopted(&ep).await;
            info!(
                "adopted static endpoint {} {} on {}",
                ep.netns, ep.address, ep.host_ifname
            );
            self.endpoints.insert((ep.netns.clone(), None), ep);
        }
        self.save_static_endpoints()
    }

    async fn adopt_store_endpoint(&mut self, store: &dyn Store, ep: EndpointRecord) -> Result<()> {
        let host_ifname = local::host_ifname(&ep.sandbox, Some(&ep.network));
        let link = netlink::link_by_name(&self.handle, &host_ifname).await?;
        // A store error stops the start (nothing is released); only a network the
        // store says is gone releases the address.
        crate::fault::inject(crate::fault::step::ADOPT_NETWORK_READ)?;
        let net = model::find_network(store, &ep.network).await?;
        let (Some(link), Some(interface), Some(mac), Some(net)) =
            (&link, ep.interface.clone(), ep.mac, &net)
        else {
            warn!(
                "endpoint {} of {} is gone (interface {host_ifname}: {}, wired: {}, network: {}); releasing {}",
                ep.network,
                ep.sandbox,
                if link.is_some() { "present" } else { "missing" },
                ep.mac.is_some(),
                if net.is_some() { "present" } else { "missing" },
                ep.address
            );
            // A layer-2 container's MAC leaves the parent NIC with it (absent is fine:
            // the network may have been an overlay).
            let parents = [self.datapath.l2_parent(), self.old_l2_parent];
            for parent in parents.into_iter().flatten() {
                let Some(mac) = ep.mac else { break };
                if let Err(e) = netlink::remove_unicast_filter(&self.handle, parent, mac).await {
                    warn!("endpoint {} of {}: {e:#}", ep.network, ep.sandbox);
                }
            }
            return model::remove_endpoint(store, &ep.network, ep.address)
                .await
                .map(drop);
        };
        let local = LocalEndpoint {
            network: Some(ep.network.clone()),
            vni: net.vni,
            netns: ep.sandbox.clone(),
            address: ep.address,
            host_ifname: host_ifname.clone(),
            host_ifindex: link.index,
            host_mac: link.mac,
            container_ifname: interface,
            container_mac: mac,
            mtu: self.mtu_on(net),
            // Not recorded in the store; only the CNI result right after creation
            // reports it.
            routes_only: None,
            published: ep.published.clone(),
            lan: super::l2::lan_of(net),
        };
        wiring::adopt(&self.handle, &mut self.datapath, &local).await?;
        if let Some(old) = self.old_l2_parent.filter(|_| local.is_l2()) {
            if let Err(e) = netlink::remove_unicast_filter(&self.handle, old, mac).await {
                warn!(
                    "endpoint {} {}: the old parent NIC: {e:#}",
                    ep.sandbox, ep.address
                );
            }
        }
        wiring::tune_adopted(&local).await;
        info!(
            "adopted endpoint {} {} on {}",
            ep.sandbox, ep.address, host_ifname
        );
        self.endpoints.insert((ep.sandbox, Some(ep.network)), local);
        Ok(())
    }
}
