//! The resolver on this host: its address on lo, its sockets, and what `oxlay status`
//! says about it. The watch keeps its directory current (`watch`).
use std::{net::Ipv4Addr, sync::Arc};

use anyhow::{Context, Result};
use log::{info, warn};

use super::{Daemon, EndpointKey};
use crate::{
    config::Config,
    model,
    names::{server, Directory, Resolver, Upstream, RESOLVER},
    net::{netlink, Ipv4Net},
};

/// The resolver of host `host` (its directory filled by the watch), refusing the other
/// machines of `underlay` (its subnet and this host's address on it).
pub(super) fn resolver(
    config: &Config,
    host: &str,
    underlay: (Ipv4Net, Ipv4Addr),
) -> Result<Arc<Resolver>> {
    let upstream = Upstream::new(config.names.upstream_servers()?, "/etc/resolv.conf".into());
    Ok(Arc::new(Resolver::new(
        Directory::new(host),
        upstream,
        underlay,
    )))
}

/// Starts answering containers at [`RESOLVER`]:53, unless the config says not to. A
/// failure (port 53 of that address taken) leaves names off, says why in the log and
/// in `oxlay status`, and the rest of the daemon running.
pub(super) async fn start(d: &Arc<Daemon>) -> Option<tokio::task::JoinHandle<()>> {
    if !d.config.names.enabled {
        d.set_names_status("off (names.enabled = false)".into());
        return None;
    }
    let handle = d.state.lock().await.handle.clone();
    let bound = async {
        netlink::add_local_address(&handle, RESOLVER).await?;
        server::bind().await
    };
    match bound.await {
        Ok((udp, tcp)) => {
            let upstream = d.resolver.upstream();
            info!("names: answering containers at {RESOLVER}:53; other names go to {upstream:?}");
            d.set_names_status(format!("{RESOLVER}:53"));
            Some(tokio::spawn(server::serve(d.resolver.clone(), udp, tcp)))
        }
        Err(e) => {
            warn!("names: not served: {e:#}");
            d.set_names_status(format!("not served: {e:#}"));
            None
        }
    }
}

/// Takes the resolver's address off lo (`oxlay uninstall`).
pub(super) async fn remove(d: &Daemon, handle: &rtnetlink::Handle) -> Result<()> {
    if d.config.names.enabled {
        netlink::remove_local_address(handle, RESOLVER).await?;
    }
    Ok(())
}

impl Daemon {
    fn set_names_status(&self, status: String) {
        *self.names_status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// The resolver's line of `oxlay status`.
    pub(super) fn names_status(&self) -> String {
        let status = self
            .names_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let directory = self.resolver.directory.read();
        let count = directory.map(|d| d.len()).unwrap_or(0);
        format!("{status} ({count} names)")
    }
}

impl Daemon {
    /// Makes `names` the names of a local endpoint, in its store record (the watch
    /// brings them to every host's directory).
    pub(crate) async fn set_names(&self, key: &EndpointKey, names: Vec<String>) -> Result<()> {
        let (network, address) = {
            let s = self.state.lock().await;
            let ep = s
                .endpoints
                .get(key)
                .with_context(|| format!("no endpoint {} on this host", key.0))?;
            (ep.network.clone(), ep.address)
        };
        let network = network.context("endpoints of the static network have no names")?;
        model::modify_endpoint(&*self.store, &network, address, &self.host.name, |r| {
            r.names = names.clone()
        })
        .await
    }
}
