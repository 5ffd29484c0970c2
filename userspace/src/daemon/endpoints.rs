//! Creating and removing this host's endpoints. A store network's endpoint is made in
//! three steps: its address is claimed in the store (no lock), it is wired and the maps
//! are reconciled under the state lock (no store call), then it is recorded in the
//! store (no lock). A failing step undoes the earlier ones, so no address or interface
//! is left half-made.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{anyhow, bail, Result};
use log::{info, warn};

use super::{wiring, Daemon, EndpointKey, State};
use crate::{
    model::{
        self,
        local::{self, LocalEndpoint, GATEWAY},
        EndpointRecord,
    },
    net::{
        veth::{ContainerRoute, EndpointSpec, Lan},
        Ipv4Net,
    },
    store::Store,
};

/// A namespace to wire an endpoint into, and the name the endpoint goes by.
pub(crate) struct Sandbox {
    pub(crate) name: String,
    /// A name under /run/netns or a path.
    pub(crate) netns: String,
}

/// `oxlay endpoint create` (and the CNI plugin's ADD).
pub(crate) struct NewEndpoint {
    pub(crate) network: String,
    pub(crate) sandbox: Sandbox,
    pub(crate) ip: Option<Ipv4Addr>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) ifname: Option<String>,
    /// Names the network's other containers find it by.
    pub(crate) names: Vec<String>,
}

/// What a sandbox's new interface routes: everything for its first one, else only its
/// network's subnet.
fn container_route(s: &State, sandbox: &str, subnet: Ipv4Net) -> ContainerRoute {
    if s.endpoints.keys().any(|(n, _)| n == sandbox) {
        ContainerRoute::Subnet(subnet)
    } else {
        ContainerRoute::Default
    }
}

/// A create in progress: while it lives, no other create and no removal of its key
/// runs, so no step of a create meets a half-made or half-removed endpoint. Released
/// when dropped, on every exit.
pub(crate) struct Reservation<'a> {
    daemon: &'a Daemon,
    key: EndpointKey,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut creating = self
            .daemon
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        creating.remove(&self.key);
    }
}

fn describe(key: &EndpointKey) -> String {
    format!(
        "namespace {} on {}",
        key.0,
        key.1.as_deref().unwrap_or("the static network")
    )
}

impl Daemon {
    /// Reserves `key` for a create: refused while the endpoint exists, while another
    /// create of it runs, and once the node is uninstalling.
    pub(crate) async fn reserve(&self, key: EndpointKey) -> Result<Reservation<'_>> {
        let s = self.state.lock().await;
        if s.closing {
            bail!("this node is uninstalling: it wires no new endpoints");
        }
        if s.endpoints.contains_key(&key) {
            bail!(
                "{} exists already; remove that endpoint first",
                describe(&key)
            );
        }
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if !creating.insert(key.clone()) {
            bail!(
                "{} is being created; retry when that is done",
                describe(&key)
            );
        }
        Ok(Reservation { daemon: self, key })
    }

    /// Attaches a namespace to the config's static network (no store involved).
    pub(crate) async fn attach_static(
        &self,
        netns: String,
        address: Ipv4Addr,
        ifname: Option<String>,
    ) -> Result<LocalEndpoint> {
        let (vni, subnet) = self.config.static_network().ok_or_else(|| {
            anyhow!("this node has no static network (vni, pod_subnet); use `oxlay endpoint create --network NAME`")
        })?;
        let mut s = self.state.lock().await;
        let statics = s.endpoints.values().filter(|e| e.network.is_none());
        local::check_address(subnet, address, statics)?;
        let route = container_route(&s, &netns, subnet);
        let sandbox = Sandbox {
            name: netns.clone(),
            netns,
        };
        let target = Target {
            network: None,
            vni,
            lan: None,
            mtu: s.container_mtu,
        };
        add_local_endpoint(&mut s, target, sandbox, address, ifname, route).await
    }

    /// Gives a sandbox an interface on a store network: claim, wire, record.
    pub(crate) async fn create_endpoint(&self, new: NewEndpoint) -> Result<LocalEndpoint> {
        let NewEndpoint {
            network,
            sandbox,
            ip,
            labels,
            ifname,
            names,
        } = new;
        let key = (sandbox.name.clone(), Some(network.clone()));
        let _reserved = self.reserve(key).await?;
        let store = &*self.store;
        let net = model::network(store, &network).await?;
        let (host, lease) = (&self.host.name, self.lease.current());
        let claim =
            model::create_endpoint(store, host, lease, &network, &sandbox.name, ip, labels).await?;
        let wired = async {
            let mut s = self.state.lock().await;
            let route = container_route(&s, &sandbox.name, net.subnet);
            let target = Target {
                network: Some(network.clone()),
                vni: net.vni,
                lan: s.lan_for(&net)?,
                mtu: s.mtu_on(&net),
            };
            add_local_endpoint(&mut s, target, sandbox, claim.address, ifname, route).await
        }
        .await;
        let local = match wired {
            Ok(local) => local,
            Err(e) => {
                // The endpoint never came to be: its address goes back.
                give_back_address(store, &network, claim.address).await;
                return Err(e);
            }
        };
        let wired = EndpointRecord {
            interface: Some(local.container_ifname.clone()),
            mac: Some(local.container_mac),
            names,
            ..claim
        };
        let recorded = async {
            crate::fault::inject(crate::fault::step::ENDPOINT_RECORD)?;
            model::update_endpoint(store, &wired).await
        };
        if let Err(e) = recorded.await {
            // Unwire first, then give the address back: no container keeps an address
            // the pool hands out again.
            let key = (local.netns.clone(), Some(network.clone()));
            undo_local_endpoint(&mut *self.state.lock().await, &key).await;
            give_back_address(store, &network, wired.address).await;
            return Err(e);
        }
        Ok(local)
    }

    /// Removes a local endpoint, then gives its address back to the store. With
    /// `missing_ok`, an endpoint that is not there is `None`, not an error (checked and
    /// removed under one hold of the lock). An endpoint being created is not removed:
    /// the caller retries.
    pub(crate) async fn remove_endpoint(
        &self,
        key: &EndpointKey,
        missing_ok: bool,
    ) -> Result<Option<LocalEndpoint>> {
        let record = {
            let mut s = self.state.lock().await;
            if self
                .creating
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(key)
            {
                bail!("{} is being created; retry in a moment", describe(key));
            }
            if missing_ok && !s.endpoints.contains_key(key) {
                return Ok(None);
            }
            remove_local_endpoint(&mut s, key).await?
        };
        if let Some(network) = &record.network {
            model::remove_endpoint(&*self.store, network, record.address).await?;
        }
        Ok(Some(record))
    }
}

/// The network a new endpoint goes on, as wiring needs it.
struct Target {
    /// None: the static network.
    network: Option<String>,
    vni: u32,
    /// On a layer-2 network: how the container meets the LAN.
    lan: Option<Lan>,
    mtu: u32,
}

/// Wires an endpoint into a namespace and records it (see [`record_local_endpoint`]).
async fn add_local_endpoint(
    s: &mut State,
    target: Target,
    sandbox: Sandbox,
    address: Ipv4Addr,
    ifname: Option<String>,
    route: ContainerRoute,
) -> Result<LocalEndpoint> {
    let Sandbox {
        name: netns,
        netns: netns_path,
    } = sandbox;
    let Target {
        network,
        vni,
        lan,
        mtu,
    } = target;
    let key = (netns.clone(), network.clone());
    if s.closing {
        bail!("this node is uninstalling: it wires no new endpoints");
    }
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
        sandbox: netns,
        container_ifname: ifname,
        address,
        mtu,
        gateway: GATEWAY,
        lan,
    };
    let record = wiring::attach(&s.handle, &mut s.datapath, network, vni, spec).await?;
    record_local_endpoint(s, key, record).await
}

/// Makes a wired endpoint part of the state and reconciles, so that the maps carry
/// its entry and its route (reconcile is the only map writer). Undone, with an error,
/// when those entries could not be written; anything else the reconcile could not
/// write is retried later and does not fail the endpoint.
pub(crate) async fn record_local_endpoint(
    s: &mut State,
    key: EndpointKey,
    record: LocalEndpoint,
) -> Result<LocalEndpoint> {
    if s.closing {
        if let Err(e) = wiring::detach(&s.handle, &mut s.datapath, &record).await {
            warn!("unwiring {} {}: {e:#}", record.netns, record.address);
        }
        bail!("this node is uninstalling: it wires no new endpoints");
    }
    s.endpoints.insert(key.clone(), record.clone());
    if let Err(e) = s.save_static_endpoints() {
        undo_local_endpoint(s, &key).await;
        return Err(e);
    }
    s.reconcile_or_retry_later().await;
    if !s.maps_hold(&record) {
        let why = match (&s.shadow, &s.last_reconcile_error) {
            (None, _) => "the maps could not be read".to_owned(),
            (Some(_), Some(e)) => e.clone(),
            (Some(_), None) => {
                "its entries are taken by another endpoint or route with the same key".to_owned()
            }
        };
        undo_local_endpoint(s, &key).await;
        bail!(
            "endpoint {} {} could not be entered in the datapath's maps ({why}); it was removed again",
            record.netns,
            record.address
        );
    }
    info!(
        "endpoint {} {} (vni {}) on {}",
        record.netns, record.address, record.vni, record.host_ifname
    );
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
    // What the endpoint brought into the maps (its entries, its network, peers'
    // routes) goes too.
    s.reconcile_or_retry_later().await;
}

/// Forgets a local endpoint, reconciles (its map entries go), then unwires it (its
/// program and veth). If the unwiring fails, the endpoint is put back as it was and
/// the error returned. Its store record is the caller's (see
/// [`Daemon::remove_endpoint`]).
pub(crate) async fn remove_local_endpoint(
    s: &mut State,
    key: &EndpointKey,
) -> Result<LocalEndpoint> {
    let record = s
        .endpoints
        .remove(key)
        .ok_or_else(|| anyhow!("{} is not attached on this node", describe(key)))?;
    s.reconcile_or_retry_later().await;
    let unwired = async {
        s.save_static_endpoints()?;
        wiring::detach(&s.handle, &mut s.datapath, &record).await
    };
    if let Err(e) = unwired.await {
        s.endpoints.insert(key.clone(), record);
        s.reconcile_or_retry_later().await;
        if let Err(e) = s.save_static_endpoints() {
            warn!("{e:#}");
        }
        return Err(e);
    }
    info!("removed endpoint {} {}", record.netns, record.address);
    Ok(record)
}

/// Releases an address whose endpoint never came to be; a failure is logged (the
/// address then shows in `oxlay endpoint ls` without an interface, and removing that
/// endpoint releases it).
pub(crate) async fn give_back_address(store: &dyn Store, network: &str, address: Ipv4Addr) {
    if let Err(e) = model::remove_endpoint(store, network, address).await {
        warn!("giving back {address} of {network}: {e:#}");
    }
}
