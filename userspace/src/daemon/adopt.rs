//! Taking back, at start, the endpoints a previous daemon wired.

use anyhow::Result;
use log::{info, warn};

#[allow(unused_imports)]
use super::*;
use crate::{
    model::local::{self, LocalEndpoint},
    model::{self},
    net::netlink,
};
impl State {
    /// Takes back the endpoints the store says are on this host (a daemon that died
    /// left them wired): re-attaches the program and fills the endpoint map. Endpoints
    /// whose interface is gone are released.
    pub(super) async fn adopt_endpoints(&mut self) -> Result<()> {
        // The static network's endpoints, from the state file.
        let recorded = read_state_file(&self.state_path)?;
        for mut ep in recorded {
            let Some(link) = netlink::link_by_name(&self.handle, &ep.host_ifname).await? else {
                warn!("static endpoint {} {} is gone", ep.netns, ep.address);
                continue;
            };
            ep.host_ifindex = link.index;
            ep.host_mac = link.mac;
            wiring::adopt(&mut self.datapath, &ep)?;
            wiring::tune_adopted(&ep).await;
            info!(
                "adopted static endpoint {} {} on {}",
                ep.netns, ep.address, ep.host_ifname
            );
            self.endpoints.insert((ep.netns.clone(), None), ep);
        }
        self.save_static_endpoints()?;
        let store = self.store.clone();
        for ep in model::endpoints(&*store, None).await? {
            if ep.host != self.host.name {
                continue;
            }
            let host_ifname = local::host_ifname(&ep.sandbox, Some(&ep.network));
            let link = netlink::link_by_name(&self.handle, &host_ifname).await?;
            // A store error stops the start (nothing is released); only a network the
            // store says is gone releases the address.
            crate::fault::inject(crate::fault::step::ADOPT_NETWORK_READ)?;
            let net = model::find_network(&*store, &ep.network).await?;
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
                model::remove_endpoint(&*store, &ep.network, ep.address).await?;
                continue;
            };
            let link = link.clone();
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
                mtu: self.container_mtu,
                // Not recorded in the store; only the CNI result right after creation
                // reports it.
                routes_only: None,
            };
            wiring::adopt(&mut self.datapath, &local)?;
            wiring::tune_adopted(&local).await;
            info!(
                "adopted endpoint {} {} on {}",
                ep.sandbox, ep.address, host_ifname
            );
            self.endpoints.insert((ep.sandbox, Some(ep.network)), local);
        }
        Ok(())
    }
}
