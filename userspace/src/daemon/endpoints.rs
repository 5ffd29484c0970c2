//! Creating and removing this host's endpoints: wire, record, reconcile; undo on
//! failure so that no address or interface is left half-made.

use anyhow::{anyhow, bail, Result};
use log::{info, warn};

#[allow(unused_imports)]
use super::*;
use crate::{
    model::local::{self, LocalEndpoint, GATEWAY},
    model::{self},
    net::veth::{ContainerRoute, EndpointSpec},
    store::Store,
};

/// A namespace to wire an endpoint into, and the name the endpoint goes by.
pub(crate) struct Sandbox {
    pub(crate) name: String,
    /// A name under /run/netns or a path.
    pub(crate) netns: String,
}

impl Sandbox {
    pub(crate) fn named_by_netns(netns: String) -> Self {
        Self {
            name: netns.clone(),
            netns,
        }
    }
}

/// Wires an endpoint into a namespace and records it; the maps follow by reconciling.
pub(crate) async fn add_local_endpoint(
    s: &mut State,
    network: Option<String>,
    vni: u32,
    sandbox: Sandbox,
    address: std::net::Ipv4Addr,
    ifname: Option<String>,
    route: ContainerRoute,
) -> Result<LocalEndpoint> {
    let Sandbox {
        name: netns,
        netns: netns_path,
    } = sandbox;
    let key = (netns.clone(), network.clone());
    if s.endpoints.contains_key(&key) {
        bail!("namespace {netns} is already on this network here; remove that endpoint first");
    }
    // A sandbox's first interface is eth0; each further network adds eth1, eth2, ...
    let taken = s.endpoints.keys().filter(|(n, _)| *n == netns).count();
    let ifname = ifname.unwrap_or_else(|| format!("eth{taken}"));
    local::check_ifname(&ifname)?;
    let spec = EndpointSpec {
        route,
        host_ifname: local::host_ifname(&netns, network.as_deref()),
        netns: netns_path,
        sandbox: netns.clone(),
        container_ifname: ifname,
        address,
        mtu: s.container_mtu,
        gateway: GATEWAY,
    };
    let record = wiring::attach(&s.handle, &mut s.datapath, network, vni, spec).await?;
    s.endpoints.insert(key.clone(), record.clone());
    if let Err(e) = s.save_static_endpoints() {
        undo_local_endpoint(s, &key).await;
        return Err(e);
    }
    info!(
        "endpoint {netns} {address} (vni {vni}) on {}",
        record.host_ifname
    );
    // The endpoint is complete: its own route and entry are in the maps (attach wrote
    // them); peers and networks follow, now or at the next resync.
    s.reconcile_or_retry_later().await;
    Ok(record)
}

/// Takes back a local endpoint whose creation failed after it was wired: unwires it
/// and forgets it. Errors are logged (the caller reports the original failure).
pub(crate) async fn undo_local_endpoint(s: &mut State, key: &EndpointKey) {
    let Some(record) = s.endpoints.remove(key) else {
        return;
    };
    if let Err(e) = wiring::detach(&s.handle, &mut s.datapath, &record).await {
        warn!(
            "undoing endpoint {} {}: {e:#}",
            record.netns, record.address
        );
    }
    if let Err(e) = s.save_static_endpoints() {
        warn!(
            "undoing endpoint {} {}: {e:#}",
            record.netns, record.address
        );
    }
    // What the endpoint brought into the maps (its network, peers' routes) goes too.
    s.reconcile_or_retry_later().await;
}

pub(crate) async fn remove_local_endpoint(
    s: &mut State,
    key: &EndpointKey,
) -> Result<LocalEndpoint> {
    let record = s.endpoints.get(key).cloned().ok_or_else(|| {
        anyhow!(
            "namespace {} is not attached to {} on this node",
            key.0,
            key.1.as_deref().unwrap_or("the static network")
        )
    })?;
    wiring::detach(&s.handle, &mut s.datapath, &record).await?;
    s.endpoints.remove(key);
    s.save_static_endpoints()?;
    if let Some(network) = &record.network {
        model::remove_endpoint(&*s.store, network, record.address).await?;
    }
    s.reconcile_or_retry_later().await;
    info!("removed endpoint {} {}", record.netns, record.address);
    Ok(record)
}

/// Releases an address whose endpoint never came to be; a failure is logged (the
/// address then shows in `oxlay endpoint ls` without an interface, and removing that
/// endpoint releases it).
pub(crate) async fn give_back_address(
    store: &dyn Store,
    network: &str,
    address: std::net::Ipv4Addr,
) {
    if let Err(e) = model::remove_endpoint(store, network, address).await {
        warn!("giving back {address} of {network}: {e:#}");
    }
}
