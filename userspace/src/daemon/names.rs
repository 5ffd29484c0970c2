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
        d.set_names_status(NamesStatus::Off);
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
            d.set_names_status(NamesStatus::Serving);
            Some(tokio::spawn(server::serve(d.resolver.clone(), udp, tcp)))
        }
        Err(e) => {
            warn!("names: not served: {e:#}");
            d.set_names_status(NamesStatus::Failed(format!("{e:#}")));
            None
        }
    }
}

/// Takes the resolver's address off lo (`oxlay uninstall`).
/// (Whatever the config says now: an earlier daemon may have served names.)
pub(super) async fn remove(handle: &rtnetlink::Handle) -> Result<()> {
    netlink::remove_local_address(handle, RESOLVER).await
}

/// Whether the resolver answers, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NamesStatus {
    Starting,
    Off,
    Serving,
    Failed(String),
}

impl std::fmt::Display for NamesStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamesStatus::Starting => write!(f, "starting"),
            NamesStatus::Off => write!(f, "off (names.enabled = false)"),
            NamesStatus::Serving => write!(f, "{RESOLVER}:53"),
            NamesStatus::Failed(why) => write!(f, "not served: {why}"),
        }
    }
}

impl Daemon {
    fn set_names_status(&self, status: NamesStatus) {
        *self.names_status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn current_names_status(&self) -> NamesStatus {
        let status = self.names_status.lock();
        status.unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The resolver's line of `oxlay status`.
    pub(super) fn names_status(&self) -> String {
        let count = self.resolver.directory().len();
        format!("{} ({count} names)", self.current_names_status())
    }

    /// The resolver's address, when it answers (what a runtime gives containers).
    pub(crate) fn resolver_address(&self) -> Option<Ipv4Addr> {
        (self.current_names_status() == NamesStatus::Serving).then_some(RESOLVER)
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
        let (host, sandbox) = (&self.host.name, Some(key.0.as_str()));
        model::modify_endpoint(&*self.store, &network, address, host, sandbox, |r| {
            r.names = names.clone()
        })
        .await
    }
}
