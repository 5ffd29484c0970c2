//! What Docker's calls do to this node: pools are oxlay networks in the store,
//! addresses are endpoint records (the store's address claims), endpoints are veths
//! whose container end Docker moves into its sandbox.
use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use crate::{
    daemon::wiring::{self, UnplacedSpec},
    daemon::{record_local_endpoint, undo_local_endpoint, Daemon, EndpointKey},
    model,
    net::{Ipv4Net, MacAddr},
    plugins::docker::engine as docker_engine,
    plugins::docker::{Driver, NetworkRequest, PoolRequest},
};
use anyhow::{anyhow, bail, Context, Result};
use log::{info, warn};
use serde_json::{json, Value};

use super::options::network_spec;

/// The IPAM option that names the oxlay network (Docker tells drivers no names).
pub const NETWORK_OPTION: &str = "network";
/// The oxlay network of Docker networks that name none and give no subnet.
const DEFAULT_NETWORK: &str = "docker";
/// How long to wait for dockerd to store a new network before reading its labels.
const LABEL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Marks an address handed out but not yet an endpoint.
const PENDING_SANDBOX: &str = "docker-pending";

/// Which oxlay network each Docker network is (kept in the store, as dockerd remembers
/// its networks across restarts of either daemon), and pools not yet claimed.
#[derive(Debug, Default)]
pub(crate) struct DockerState {
    /// Docker network ID → oxlay network name.
    pub networks: BTreeMap<String, String>,
    /// Pools handed out, not yet claimed by a Docker network: (network, subnet).
    pub(crate) pending: Vec<(String, Ipv4Net)>,
}

impl DockerState {
    pub async fn load(store: &dyn crate::store::Store, host: &str) -> Result<Self> {
        Ok(Self {
            networks: model::docker_networks(store, host).await?,
            pending: Vec::new(),
        })
    }
}

/// The endpoint key of a Docker endpoint: its sandbox name is derived from its ID.
fn endpoint_key(endpoint_id: &str, network: &str) -> EndpointKey {
    let short: String = endpoint_id.chars().take(12).collect();
    (format!("docker-{short}"), Some(network.to_owned()))
}

/// The daemon, seen as a Docker plugin. Like the API, it never holds the state's
/// lock across a store call.
pub(crate) struct DaemonDriver(pub(crate) Arc<Daemon>);

impl DaemonDriver {
    /// The oxlay network a Docker network is.
    async fn network_of(&self, network_id: &str) -> Result<String> {
        let s = self.0.state.lock().await;
        s.docker.networks.get(network_id).cloned().ok_or_else(|| {
            anyhow!("Docker network {network_id} is not an oxlay network on this host (was it created with --ipam-driver oxlay?)")
        })
    }

    /// The network `name`, created (with `subnet` and `options`) if it does not exist.
    async fn find_or_create(
        &self,
        name: &str,
        (subnet, ip_range): (Option<Ipv4Net>, Option<Ipv4Net>),
        options: &BTreeMap<String, String>,
    ) -> Result<model::NetworkRecord> {
        let store = &*self.0.store;
        if let Some(net) = model::find_network(store, name).await? {
            return Ok(net);
        }
        let spec = network_spec(name, (subnet, ip_range), options)?;
        match model::create_network(store, spec).await {
            Ok(net) => {
                info!("docker: created network {name} ({})", net.subnet);
                Ok(net)
            }
            // Another host created it at the same moment.
            Err(e) => model::network(store, name).await.map_err(|_| e),
        }
    }
}

#[async_trait::async_trait]
impl Driver for DaemonDriver {
    async fn request_pool(&self, request: PoolRequest) -> Result<(String, Ipv4Net)> {
        let mut options = request.options;
        let name = options
            .remove(NETWORK_OPTION)
            .or_else(|| {
                request
                    .subnet
                    .map(|s| format!("docker-{}-{}", s.addr(), s.prefix_len()).replace('.', "-"))
            })
            .unwrap_or_else(|| DEFAULT_NETWORK.to_owned());
        let net = self
            .find_or_create(&name, (request.subnet, request.ip_range), &options)
            .await?;
        if let Some(subnet) = request.subnet {
            if subnet != net.subnet {
                bail!(
                    "network {name} exists with subnet {}, not {subnet}: leave out --subnet or give the same one",
                    net.subnet
                );
            }
        }
        let asked = network_spec(&name, (request.subnet, request.ip_range), &options)?;
        super::options::check_same_l2(&net, asked.l2)?;
        // dockerd asks again for its networks' pools when it starts: keep one of each.
        let entry = (name.clone(), net.subnet);
        let mut s = self.0.state.lock().await;
        if !s.docker.pending.contains(&entry) {
            s.docker.pending.push(entry);
        }
        Ok((name, net.subnet))
    }

    async fn release_pool(&self, pool_id: &str) -> Result<()> {
        // The network belongs to every host: it stays until `oxlay network rm`.
        info!("docker: released pool of network {pool_id}");
        Ok(())
    }

    async fn request_address(
        &self,
        pool_id: &str,
        wanted: Option<Ipv4Addr>,
    ) -> Result<(Ipv4Addr, u8)> {
        let d = &self.0;
        let net = model::network(&*d.store, pool_id).await?;
        let labels = BTreeMap::from([("runtime".to_owned(), "docker".to_owned())]);
        let lease = d.lease.current();
        let record = model::create_endpoint(
            &*d.store,
            &d.host.name,
            lease,
            pool_id,
            PENDING_SANDBOX,
            wanted,
            labels,
        )
        .await?;
        Ok((record.address, net.subnet.prefix_len()))
    }

    async fn gateway(&self, pool_id: &str, wanted: Option<Ipv4Addr>) -> Result<(Ipv4Addr, u8)> {
        let net = model::network(&*self.0.store, pool_id).await?;
        let Some(l2) = net.l2 else {
            return Ok((crate::model::local::GATEWAY, 32));
        };
        if let Some(wanted) = wanted.filter(|w| *w != l2.gateway) {
            bail!(
                "layer-2 network {pool_id}'s gateway is {}, not {wanted}: leave out --gateway, or remove the network (`oxlay network rm {pool_id}`) and create it again with --ipam-opt gateway={wanted} too (Docker tells the IPAM the gateway only after the pool)",
                l2.gateway
            );
        }
        Ok((l2.gateway, net.subnet.prefix_len()))
    }

    async fn release_address(&self, pool_id: &str, address: Ipv4Addr) -> Result<()> {
        let d = &self.0;
        let claim = model::endpoint(&*d.store, pool_id, address).await?;
        if claim.is_some_and(|e| e.host == d.host.name) {
            model::remove_endpoint(&*d.store, pool_id, address).await?;
        }
        Ok(())
    }

    async fn create_network(&self, request: NetworkRequest) -> Result<()> {
        let d = &self.0;
        let name = {
            let mut s = d.state.lock().await;
            let pending = request
                .pool
                .and_then(|pool| s.docker.pending.iter().position(|(_, p)| *p == pool));
            match pending {
                Some(i) => s.docker.pending.remove(i).0,
                None => bail!(
                    "Docker network {} has no oxlay pool: create it with --ipam-driver oxlay",
                    request.network_id
                ),
            }
        };
        if !request.options.is_empty() {
            model::add_network_labels(&*d.store, &name, &request.options).await?;
        }
        model::bind_docker_network(&*d.store, &d.host.name, &request.network_id, &name).await?;
        info!(
            "docker: network {} is oxlay network {name}",
            request.network_id
        );
        copy_labels_later(d, request.network_id.clone(), name.clone());
        d.state
            .lock()
            .await
            .docker
            .networks
            .insert(request.network_id, name);
        Ok(())
    }

    async fn delete_network(&self, network_id: &str) -> Result<()> {
        let d = &self.0;
        model::unbind_docker_network(&*d.store, &d.host.name, network_id).await?;
        if let Some(name) = d.state.lock().await.docker.networks.remove(network_id) {
            info!("docker: network {network_id} ({name}) removed");
        }
        Ok(())
    }

    async fn create_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
        address: Ipv4Addr,
        mac: Option<MacAddr>,
    ) -> Result<(MacAddr, String)> {
        let d = &self.0;
        let name = self.network_of(network_id).await?;
        let key = endpoint_key(endpoint_id, &name);
        let _reserved = d.reserve(key.clone()).await?;
        let net = model::network(&*d.store, &name).await?;
        let claim = model::endpoint(&*d.store, &name, address)
            .await?
            .filter(|e| e.host == d.host.name)
            .with_context(|| {
                format!("address {address} was not handed out here by oxlay's IPAM: use --ipam-driver oxlay")
            })?;
        let local = {
            let mut s = d.state.lock().await;
            let spec = UnplacedSpec {
                network: name.clone(),
                vni: net.vni,
                sandbox: key.0.clone(),
                address,
                mac,
                mtu: s.mtu_on(&net),
                lan: s.lan_for(&net)?,
            };
            let s = &mut *s;
            let wired = wiring::attach_unplaced(&s.handle, &mut s.datapath, spec).await?;
            record_local_endpoint(s, key.clone(), wired).await?
        };
        let wired = model::EndpointRecord {
            sandbox: key.0.clone(),
            interface: Some(local.container_ifname.clone()),
            mac: Some(local.container_mac),
            ..claim
        };
        let recorded = async {
            crate::fault::inject(crate::fault::step::ENDPOINT_RECORD)?;
            model::update_endpoint(&*d.store, &wired).await
        };
        if let Err(e) = recorded.await {
            // Unwire (veth and map entries): Docker will release the address itself
            // (RequestAddress and CreateEndpoint are separate calls for it).
            undo_local_endpoint(&mut *d.state.lock().await, &key).await;
            return Err(e);
        }
        info!(
            "docker: endpoint {} {address} (vni {}) on {}",
            key.0, net.vni, local.host_ifname
        );
        Ok((local.container_mac, local.container_ifname.clone()))
    }

    async fn delete_endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        // By the endpoint's sandbox name alone: removal must work whatever else is lost.
        let sandbox = endpoint_key(endpoint_id, "").0;
        let key = {
            let s = self.0.state.lock().await;
            s.endpoints.keys().find(|(n, _)| *n == sandbox).cloned()
        };
        let removed = match key {
            Some(key) => self.0.remove_endpoint(&key, true).await?,
            None => None,
        };
        if removed.is_none() {
            info!("docker: endpoint {endpoint_id} of {network_id} is gone already");
        }
        Ok(())
    }

    async fn join(
        &self,
        network_id: &str,
        endpoint_id: &str,
        sandbox: &str,
    ) -> Result<(String, Ipv4Addr)> {
        let name = self.network_of(network_id).await?;
        let key = endpoint_key(endpoint_id, &name);
        let (ifname, gateway) = {
            let s = self.0.state.lock().await;
            let ep = s
                .endpoints
                .get(&key)
                .with_context(|| format!("no endpoint {endpoint_id} on this host"))?;
            info!("docker: {} joins sandbox {sandbox}", ep.netns);
            let gateway = ep.lan.map_or(crate::model::local::GATEWAY, |l| l.router);
            (ep.container_ifname.clone(), gateway)
        };
        // Docker tells drivers no container names: they are read from dockerd.
        super::names::record_later(
            self.0.clone(),
            network_id.to_owned(),
            endpoint_id.to_owned(),
            key,
        );
        Ok((ifname, gateway))
    }

    async fn leave(&self, _network_id: &str, _endpoint_id: &str) -> Result<()> {
        // Docker takes the interface out of the sandbox; DeleteEndpoint removes it.
        Ok(())
    }

    async fn publish(
        &self,
        network_id: &str,
        endpoint_id: &str,
        ports: Vec<crate::model::PublishedPort>,
    ) -> Result<()> {
        let name = self.network_of(network_id).await?;
        self.0
            .set_published(&endpoint_key(endpoint_id, &name), ports)
            .await
    }

    async fn unpublish(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let name = self.network_of(network_id).await?;
        let key = endpoint_key(endpoint_id, &name);
        // Gone already (DeleteEndpoint came first): nothing is published.
        if !self.0.state.lock().await.endpoints.contains_key(&key) {
            return Ok(());
        }
        self.0.set_published(&key, Vec::new()).await
    }

    async fn endpoint_info(&self, network_id: &str, endpoint_id: &str) -> Result<Value> {
        let name = self.network_of(network_id).await?;
        let s = self.0.state.lock().await;
        Ok(match s.endpoints.get(&endpoint_key(endpoint_id, &name)) {
            Some(ep) => json!({
                "oxlay.network": name,
                "oxlay.vni": ep.vni,
                "oxlay.host_interface": ep.host_ifname,
            }),
            None => json!({}),
        })
    }
}

/// Docker passes no `--label`s to plugins: asks dockerd for the network's labels once
/// it has stored the network, and copies them to the oxlay network.
fn copy_labels_later(d: &Daemon, docker_id: String, network: String) {
    let engine = d.config.docker.engine_socket.clone();
    let store = d.store.clone();
    tokio::spawn(async move {
        let copied = async {
            let labels = docker_engine::network_labels(&engine, &docker_id, LABEL_WAIT).await?;
            if !labels.is_empty() {
                model::add_network_labels(&*store, &network, &labels).await?;
            }
            anyhow::Ok(labels.len())
        };
        match copied.await {
            Ok(n) => info!("docker: {n} labels of network {docker_id} copied to {network}"),
            Err(e) => warn!("docker: labels of network {docker_id} not copied: {e:#}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keys_are_short_and_stable() {
        let (sandbox, network) = endpoint_key("0123456789abcdef0123", "blue");
        assert_eq!(sandbox, "docker-0123456789ab");
        assert_eq!(network.as_deref(), Some("blue"));
    }
}
