//! `oxlay daemon`: loads the datapath for one node, registers the node in the store,
//! keeps the maps in step with the store and the config, serves the local API, and
//! removes everything it made on SIGTERM or SIGINT.
use std::{
    collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use log::{info, warn};
use oxlay_common::{CounterKind, DatapathConfig, RouteKind};
use rtnetlink::Handle;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};

use crate::{
    api::{self, CounterView, Request, Response, RouteView},
    config::Config,
    datapath::Datapath,
    endpoint::{self, LocalEndpoint, GATEWAY},
    model::{self, HostRecord, NetworkSpec},
    net::{Ipv4Net, MacAddr},
    netlink::{self, ContainerRoute, EndpointSpec},
    reconcile::{self, Snapshot},
    store::{embedded::EmbeddedStore, etcd::EtcdStore, LeaseId, Store},
};

mod docker_driver;

/// Local endpoints by (namespace, store network; None for the static network).
type EndpointKey = (String, Option<String>);

/// Whether the store answers; kept apart from `State` so that `oxlay status` answers
/// even while a store call holds the state.
#[derive(Default)]
struct StoreHealth {
    down_since: Option<std::time::SystemTime>,
    last_error: Option<String>,
}

type Health = Arc<std::sync::Mutex<StoreHealth>>;

fn store_failed(health: &Health, what: &str, e: &anyhow::Error) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if h.down_since.is_none() {
        warn!("store unreachable ({what}: {e:#}); forwarding continues on the routes already in the maps");
        h.down_since = Some(std::time::SystemTime::now());
    }
    h.last_error = Some(format!("{what}: {e:#}"));
}

fn store_ok(health: &Health) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(since) = h.down_since.take() {
        let secs = since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
        info!("store reachable again after {secs:.1} s; reconciling");
    }
}

struct State {
    config: Config,
    handle: Handle,
    datapath: Datapath,
    container_mtu: u32,
    store: Arc<dyn Store>,
    host: HostRecord,
    lease: LeaseId,
    endpoints: BTreeMap<EndpointKey, LocalEndpoint>,
    /// The store's routing view, as last read.
    snapshot: Snapshot,
    /// The underlay subnet (direct routing reaches peers inside it).
    underlay_subnet: Ipv4Net,
    /// Where the static network's endpoints are recorded for the next daemon.
    state_path: std::path::PathBuf,
    /// Signalled by the `uninstall` request.
    uninstall: Arc<tokio::sync::Notify>,
    /// Which oxlay network each Docker network is.
    docker: docker_driver::DockerState,
}

impl State {
    /// Re-reads the store and brings the maps in step, changing only what differs.
    async fn reconcile(&mut self) -> Result<()> {
        let store = self.store.clone();
        self.snapshot = Snapshot {
            hosts: model::hosts(&*store).await?,
            networks: model::networks(&*store).await?,
            blocks: model::all_blocks(&*store).await?,
        };
        let local: Vec<&LocalEndpoint> = self.endpoints.values().collect();
        let me = reconcile::Me {
            name: &self.config.node_name,
            underlay_subnet: self.underlay_subnet,
        };
        let want = reconcile::desired(&me, &self.config, &self.snapshot, &local)?;
        let changes = reconcile::apply(&mut self.datapath, &want)?;
        if changes != reconcile::Changes::default() {
            info!(
                "maps updated: {} added or changed, {} removed",
                changes.added, changes.removed
            );
        }
        Ok(())
    }

    /// Takes back the endpoints the store says are on this host (a daemon that died
    /// left them wired): re-attaches the program and fills the endpoint map. Endpoints
    /// whose interface is gone are released.
    async fn adopt_endpoints(&mut self) -> Result<()> {
        // The static network's endpoints, from the state file.
        let recorded: Vec<LocalEndpoint> = match std::fs::read(&self.state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("the state file {} is corrupt", self.state_path.display())
            })?,
            Err(_) => Vec::new(),
        };
        for mut ep in recorded {
            let Some(link) = netlink::link_by_name(&self.handle, &ep.host_ifname).await? else {
                warn!("static endpoint {} {} is gone", ep.netns, ep.address);
                continue;
            };
            ep.host_ifindex = link.index;
            ep.host_mac = link.mac;
            endpoint::adopt(&mut self.datapath, &ep)?;
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
            let host_ifname = endpoint::host_ifname(&ep.sandbox, Some(&ep.network));
            let link = netlink::link_by_name(&self.handle, &host_ifname).await?;
            let net = model::network(&*store, &ep.network).await;
            let (Some(link), Some(interface), Some(mac), Ok(net)) =
                (&link, ep.interface.clone(), ep.mac, &net)
            else {
                warn!(
                    "endpoint {} of {} is gone (interface {host_ifname}: {}, wired: {}, network: {}); releasing {}",
                    ep.network,
                    ep.sandbox,
                    if link.is_some() { "present" } else { "missing" },
                    ep.mac.is_some(),
                    if net.is_ok() { "present" } else { "missing" },
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
            };
            endpoint::adopt(&mut self.datapath, &local)?;
            info!(
                "adopted endpoint {} {} on {}",
                ep.sandbox, ep.address, host_ifname
            );
            self.endpoints.insert((ep.sandbox, Some(ep.network)), local);
        }
        Ok(())
    }

    /// Records the static network's endpoints (the store keeps the others) so that the
    /// next daemon can adopt them; written atomically.
    fn save_static_endpoints(&self) -> Result<()> {
        let statics: Vec<&LocalEndpoint> = self
            .endpoints
            .values()
            .filter(|e| e.network.is_none())
            .collect();
        let tmp = self.state_path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&statics)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_path)
            .with_context(|| format!("cannot write {}", self.state_path.display()))
    }

    /// Grants a lease, registers the host under it and re-claims the blocks of this
    /// host's endpoints (they went with an expired lease).
    async fn register(&mut self) -> Result<()> {
        let ttl = Duration::from_secs(self.config.store.lease_ttl_secs);
        self.lease = self.store.grant_lease(ttl).await?;
        model::register_host(&*self.store, &self.host, self.lease).await?;
        for ep in self.endpoints.values() {
            if let Some(network) = &ep.network {
                model::reclaim_block(
                    &*self.store,
                    &self.host.name,
                    self.lease,
                    network,
                    ep.address,
                )
                .await?;
            }
        }
        Ok(())
    }
}

async fn connect_store(config: &Config) -> Result<Arc<dyn Store>> {
    Ok(if config.store.etcd_endpoints.is_empty() {
        Arc::new(EmbeddedStore::new(&config.store.path)?)
    } else {
        Arc::new(EtcdStore::connect(&config.store.etcd_endpoints).await?)
    })
}

pub async fn run(config: Config) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("oxlay daemon needs root (it loads eBPF programs and creates interfaces): run it with sudo");
    }
    let handle = netlink::connect()?;
    let underlay = netlink::link_by_name(&handle, &config.underlay_interface)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "underlay_interface {:?} does not exist in this network namespace: check `ip link` and the config",
                config.underlay_interface
            )
        })?;
    let underlay_addr = match config.underlay_address {
        Some(a) => a,
        None => netlink::first_ipv4(&handle, underlay.index)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "{} has no IPv4 address: add one or set underlay_address in the config",
                    underlay.name
                )
            })?,
    };
    let container_mtu = Config::container_mtu(underlay.mtu);
    let underlay_subnet = netlink::subnet_of(&handle, underlay.index, underlay_addr).await?;
    let store = connect_store(&config).await?;

    // Claim the API socket first: a second daemon for the same node stops here, before
    // it touches the first one's pinned maps.
    let socket_path = config.socket_path();
    let listener = bind_api(&socket_path)?;
    // Pinned maps and links of a previous daemon are re-used: the traffic they carry
    // keeps flowing while this one starts (programs are replaced atomically).
    let pin_path = config.pin_path();
    let fresh = !pin_path.exists();
    let datapath = match load_datapath(&config, &underlay, underlay_addr) {
        Ok(d) => d,
        Err(e) => {
            std::fs::remove_file(&socket_path).ok();
            if fresh {
                // Leave nothing behind when nothing was there.
                std::fs::remove_dir_all(&pin_path).ok();
            }
            return Err(e.context("if an older oxlay left incompatible pins, `oxlay uninstall` (or removing the pin path) starts afresh"));
        }
    };
    let host = HostRecord {
        name: config.node_name.clone(),
        underlay_address: underlay_addr,
        vtep_mac: config.vtep_mac(),
    };
    let mut state = State {
        config,
        handle,
        datapath,
        container_mtu,
        store,
        host,
        lease: 0,
        endpoints: BTreeMap::new(),
        snapshot: Snapshot::default(),
        underlay_subnet,
        state_path: socket_path.with_extension("endpoints.json"),
        uninstall: Arc::new(tokio::sync::Notify::new()),
        docker: docker_driver::DockerState::default(),
    };
    let started = async {
        state.docker = docker_driver::DockerState::load(&*state.store, &state.host.name).await?;
        state.adopt_endpoints().await?;
        state.register().await?;
        state.reconcile().await
    };
    if let Err(e) = started.await {
        std::fs::remove_file(&socket_path).ok();
        state.datapath.unpin().ok();
        return Err(e.context("cannot register this host in the store"));
    }
    info!(
        "node {} ready: underlay {} ({}), static network {:?}, {} static peers, store {}, decap {:?}, api {}",
        state.config.node_name,
        underlay.name,
        underlay_addr,
        state.config.static_network().map(|(vni, subnet)| format!("vni {vni} {subnet}")),
        state.config.peers.len(),
        if state.config.store.etcd_endpoints.is_empty() {
            format!("embedded {}", state.config.store.path.display())
        } else {
            format!("etcd {}", state.config.store.etcd_endpoints.join(","))
        },
        state.config.decap,
        socket_path.display()
    );
    let ttl = Duration::from_secs(state.config.store.lease_ttl_secs);
    let store = state.store.clone();
    let state = Arc::new(Mutex::new(state));
    let health: Health = Arc::default();
    let keepalive = tokio::spawn(keep_alive(state.clone(), ttl, health.clone()));
    let docker = state.lock().await.config.docker.clone();
    let docker_plugin = docker.enabled.then(|| {
        let driver = Arc::new(docker_driver::DaemonDriver(state.clone()));
        let socket = docker.socket.clone();
        info!(
            "serving the Docker network and IPAM driver \"oxlay\" on {}",
            socket.display()
        );
        tokio::spawn(async move {
            if let Err(e) = crate::docker::serve(&socket, driver).await {
                warn!("docker plugin: {e:#}");
            }
        })
    });
    let watcher = tokio::spawn(watch_store(state.clone(), store, health.clone()));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let uninstall_request = state.lock().await.uninstall.clone();
    let mut uninstall_requested = false;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let (state, health) = (state.clone(), health.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(stream, &state, &health).await {
                            warn!("api connection: {e:#}");
                        }
                    });
                }
                Err(e) => warn!("api accept failed: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = uninstall_request.notified() => {
                uninstall_requested = true;
                break;
            }
        }
    }
    keepalive.abort();
    watcher.abort();
    if let Some(plugin) = docker_plugin {
        plugin.abort();
        // Docker finds the plugin again when a daemon serves the socket anew.
        std::fs::remove_file(&docker.socket).ok();
    }
    let mut s = state.lock().await;
    if uninstall_requested {
        info!("uninstalling: removing endpoints, deregistering, detaching programs, removing pins");
        uninstall(&mut s).await?;
    } else {
        // A restart: programs stay attached and maps pinned, endpoints stay wired, and
        // the lease runs out only if no daemon comes back within its TTL.
        info!("stopping; the datapath keeps forwarding (`oxlay uninstall` removes it)");
    }
    std::fs::remove_file(&socket_path).ok();
    Ok(())
}

/// Removes everything this node made: endpoints (their addresses go back to the
/// store), its registration, the programs and pins, the state file.
async fn uninstall(s: &mut State) -> Result<()> {
    let keys: Vec<EndpointKey> = s.endpoints.keys().cloned().collect();
    for key in keys {
        if let Err(e) = remove_local_endpoint(s, &key).await {
            warn!("removing endpoint {key:?}: {e:#}");
        }
    }
    if let Err(e) = s.store.revoke_lease(s.lease).await {
        warn!("deregistering from the store: {e:#}");
    }
    s.datapath.unpin()?;
    std::fs::remove_file(&s.state_path).ok();
    let bindings: Vec<String> = s.docker.networks.keys().cloned().collect();
    for id in bindings {
        model::unbind_docker_network(&*s.store, &s.host.name, &id)
            .await
            .ok();
    }
    Ok(())
}

/// Renews the host's lease; when it was lost (store outage longer than the TTL),
/// registers again and re-claims this host's blocks.
async fn keep_alive(state: Arc<Mutex<State>>, ttl: Duration, health: Health) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let (store, lease) = {
            let s = state.lock().await;
            (s.store.clone(), s.lease)
        };
        match store.keep_alive(lease).await {
            Ok(()) => store_ok(&health),
            Err(e) => {
                store_failed(&health, "keep-alive", &e);
                // The lease may have run out meanwhile: register again (this fails too
                // while the store is away, and is retried next round).
                if let Err(e) = state.lock().await.register().await {
                    store_failed(&health, "registering", &e);
                }
            }
        }
    }
}

/// Follows the store and reconciles the maps after every change (batched).
async fn watch_store(state: Arc<Mutex<State>>, store: Arc<dyn Store>, health: Health) {
    loop {
        let start = match store.list(model::PREFIX).await {
            Ok((_, revision)) => {
                store_ok(&health);
                revision
            }
            Err(e) => {
                store_failed(&health, "listing", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = state.lock().await.reconcile().await {
            warn!("reconcile failed: {e:#}");
        }
        let mut events = match store.watch(model::PREFIX, start).await {
            Ok(rx) => rx,
            Err(e) => {
                store_failed(&health, "watch", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            match events.recv().await {
                Some(Ok(_)) => {
                    // Take whatever else arrived with it, then reconcile once.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let mut broken = false;
                    while let Ok(item) = events.try_recv() {
                        broken |= item.is_err();
                    }
                    if let Err(e) = state.lock().await.reconcile().await {
                        warn!("reconcile failed: {e:#}");
                    }
                    if broken {
                        break;
                    }
                }
                Some(Err(e)) => {
                    store_failed(&health, "watch", &e);
                    break;
                }
                None => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Loads the programs, writes the datapath config and attaches decapsulation. Routes,
/// peers and networks come from reconciling.
fn load_datapath(
    config: &Config,
    underlay: &netlink::LinkInfo,
    underlay_addr: std::net::Ipv4Addr,
) -> Result<Datapath> {
    let mut datapath = Datapath::load(&config.pin_path())?;
    datapath.set_config(DatapathConfig {
        underlay_ifindex: underlay.index,
        underlay_addr: underlay_addr.octets(),
        vxlan_port: config.vxlan_port,
        vtep_mac: config.vtep_mac().0,
        ready: 1,
        underlay_mtu: underlay.mtu.min(u16::MAX as u32) as u16,
        _pad: 0,
    })?;
    datapath.attach_decap(&underlay.name, config.decap)?;
    Ok(datapath)
}

fn bind_api(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another daemon already serves {}: each node needs its own node_name or api_socket",
                path.display()
            );
        }
        std::fs::remove_file(path).ok();
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Only root may talk to the daemon: it creates interfaces on request.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve_connection(stream: UnixStream, state: &Mutex<State>, health: &Health) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(api::MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let response = match api::parse_request(&line) {
        Ok(Request::Status(_)) => Response::Ok(status(state, health).await),
        Ok(request) => match handle_request(request, state).await {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(format!("{e:#}")),
        },
        Err(e) => Response::Error(format!("{e:#}")),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// A namespace to wire an endpoint into, and the name the endpoint goes by.
struct Sandbox {
    name: String,
    /// A name under /run/netns or a path.
    netns: String,
}

impl Sandbox {
    fn named_by_netns(netns: String) -> Self {
        Self {
            name: netns.clone(),
            netns,
        }
    }
}

/// Wires an endpoint into a namespace and records it; the maps follow by reconciling.
async fn add_local_endpoint(
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
    endpoint::check_ifname(&ifname)?;
    let spec = EndpointSpec {
        route,
        host_ifname: endpoint::host_ifname(&netns, network.as_deref()),
        netns: netns_path,
        sandbox: netns.clone(),
        container_ifname: ifname,
        address,
        mtu: s.container_mtu,
        gateway: GATEWAY,
    };
    let record = endpoint::attach(&s.handle, &mut s.datapath, network, vni, spec).await?;
    info!(
        "endpoint {netns} {address} (vni {vni}) on {}",
        record.host_ifname
    );
    s.endpoints.insert(key, record.clone());
    s.save_static_endpoints()?;
    s.reconcile().await?;
    Ok(record)
}

async fn remove_local_endpoint(s: &mut State, key: &EndpointKey) -> Result<LocalEndpoint> {
    let record = s.endpoints.get(key).cloned().ok_or_else(|| {
        anyhow!(
            "namespace {} is not attached to {} on this node",
            key.0,
            key.1.as_deref().unwrap_or("the static network")
        )
    })?;
    endpoint::detach(&s.handle, &mut s.datapath, &record).await?;
    s.endpoints.remove(key);
    s.save_static_endpoints()?;
    if let Some(network) = &record.network {
        model::remove_endpoint(&*s.store, network, record.address).await?;
    }
    s.reconcile().await?;
    info!("removed endpoint {} {}", record.netns, record.address);
    Ok(record)
}

fn parse_labels(labels: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    for k in labels.keys() {
        if k.is_empty() || k.len() > 253 {
            bail!("label key {k:?} is not valid: use 1 to 253 characters");
        }
    }
    Ok(labels)
}

/// `oxlay status`: the store's health first (it answers without waiting for the state
/// while a store call is in flight), then what the datapath carries.
async fn status(state: &Mutex<State>, health: &Health) -> serde_json::Value {
    let (down_for, last_error) = {
        let h = health.lock().unwrap_or_else(|p| p.into_inner());
        let down = h
            .down_since
            .map(|t| t.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0));
        (down, h.last_error.clone())
    };
    let mut v = serde_json::json!({
        "store_reachable": down_for.is_none(),
        "store_down_for_secs": down_for,
        "last_store_error": last_error,
    });
    if let Ok(s) = tokio::time::timeout(Duration::from_secs(1), state.lock()).await {
        v["node"] = s.config.node_name.clone().into();
        v["store"] = if s.config.store.etcd_endpoints.is_empty() {
            format!("embedded {}", s.config.store.path.display())
        } else {
            format!("etcd {}", s.config.store.etcd_endpoints.join(","))
        }
        .into();
        v["endpoints"] = s.endpoints.len().into();
        v["routes"] = s.datapath.routes().map(|r| r.len()).unwrap_or(0).into();
    }
    v
}

async fn handle_request(request: Request, state: &Mutex<State>) -> Result<serde_json::Value> {
    let mut guard = state.lock().await;
    let s = &mut *guard;
    let store = s.store.clone();
    Ok(match request {
        Request::Attach {
            netns,
            address,
            ifname,
        } => {
            let (vni, subnet) = s.config.static_network().ok_or_else(|| {
                anyhow!("this node has no static network (vni, pod_subnet); use `oxlay endpoint create --network NAME`")
            })?;
            let statics = s.endpoints.values().filter(|e| e.network.is_none());
            endpoint::check_address(subnet, address, statics)?;
            let first = !s.endpoints.keys().any(|(n, _)| *n == netns);
            let route = if first {
                ContainerRoute::Default
            } else {
                ContainerRoute::Subnet(subnet)
            };
            let sandbox = Sandbox::named_by_netns(netns);
            let record = add_local_endpoint(s, None, vni, sandbox, address, ifname, route).await?;
            serde_json::to_value(record.view())?
        }
        Request::Detach { netns } => {
            let record = remove_local_endpoint(s, &(netns, None)).await?;
            serde_json::to_value(record.view())?
        }
        Request::Endpoints(_) => {
            serde_json::to_value(s.endpoints.values().map(|e| e.view()).collect::<Vec<_>>())?
        }
        Request::Routes(_) => {
            let names: BTreeMap<u32, &str> = s
                .endpoints
                .values()
                .map(|e| (e.host_ifindex, e.host_ifname.as_str()))
                .collect();
            let routes: Vec<RouteView> = s
                .datapath
                .routes()?
                .into_iter()
                .map(|r| {
                    let local = r.route.kind == RouteKind::Local as u8;
                    RouteView {
                        vni: r.net_id,
                        destination: r.dest.to_string(),
                        kind: if local { "local" } else { "remote" }.to_owned(),
                        via: if local {
                            names
                                .get(&r.route.ifindex)
                                .map(|n| n.to_string())
                                .unwrap_or_else(|| format!("ifindex {}", r.route.ifindex))
                        } else {
                            std::net::Ipv4Addr::from(r.route.underlay_addr).to_string()
                        },
                        mac: MacAddr(r.route.dst_mac).to_string(),
                    }
                })
                .collect();
            serde_json::to_value(routes)?
        }
        Request::Stats(_) => {
            let counters: Vec<CounterView> = s
                .datapath
                .counters()?
                .into_iter()
                .map(|(info, value)| CounterView {
                    name: info.name.to_owned(),
                    kind: match info.kind {
                        CounterKind::Forward => "forward",
                        CounterKind::Drop => "drop",
                    }
                    .to_owned(),
                    value,
                    help: info.help.to_owned(),
                })
                .collect();
            serde_json::to_value(counters)?
        }
        Request::Status(_) => unreachable!("answered in serve_connection"),
        Request::Uninstall(_) => {
            // The main loop does the work once this answer is sent.
            s.uninstall.notify_one();
            serde_json::json!({ "uninstalling": s.config.node_name })
        }
        Request::Hosts(_) => serde_json::to_value(model::hosts(&*store).await?)?,
        Request::NetworkCreate {
            name,
            subnet,
            vni,
            block_prefix,
            labels,
            allow_overlap,
            direct,
        } => {
            let spec = NetworkSpec {
                name,
                subnet,
                vni,
                block_prefix,
                labels: parse_labels(labels)?,
                allow_overlap,
                direct,
            };
            serde_json::to_value(model::create_network(&*store, spec).await?)?
        }
        Request::NetworkLs(_) => serde_json::to_value(model::networks(&*store).await?)?,
        Request::NetworkInspect { name } => {
            let network = model::network(&*store, &name).await?;
            serde_json::json!({
                "network": network,
                "blocks": model::blocks(&*store, &name).await?,
                "endpoints": model::endpoints(&*store, Some(&name)).await?,
            })
        }
        Request::NetworkRm { name } => {
            model::remove_network(&*store, &name).await?;
            serde_json::json!({ "removed": name })
        }
        Request::EndpointCreate {
            network,
            netns,
            sandbox,
            ip,
            labels,
            ifname,
        } => {
            let sandbox = sandbox.unwrap_or_else(|| netns.clone());
            let net = model::network(&*store, &network).await?;
            let (host, lease) = (s.host.name.clone(), s.lease);
            let record = model::create_endpoint(
                &*store,
                &host,
                lease,
                &network,
                &sandbox,
                ip,
                parse_labels(labels)?,
            )
            .await?;
            let first = !s.endpoints.keys().any(|(n, _)| *n == sandbox);
            let route = if first {
                ContainerRoute::Default
            } else {
                ContainerRoute::Subnet(net.subnet)
            };
            match add_local_endpoint(
                s,
                Some(network.clone()),
                net.vni,
                Sandbox {
                    name: sandbox,
                    netns,
                },
                record.address,
                ifname,
                route,
            )
            .await
            {
                Ok(local) => {
                    let wired = model::EndpointRecord {
                        interface: Some(local.container_ifname.clone()),
                        mac: Some(local.container_mac),
                        ..record
                    };
                    model::update_endpoint(&*store, &wired).await?;
                    serde_json::to_value(local.view())?
                }
                Err(e) => {
                    // Give the address back: the endpoint never came to be.
                    let _ = model::remove_endpoint(&*store, &network, record.address).await;
                    return Err(e);
                }
            }
        }
        Request::EndpointLs { network } => {
            serde_json::to_value(model::endpoints(&*store, network.as_deref()).await?)?
        }
        Request::EndpointRm {
            network,
            netns,
            missing_ok,
        } => {
            let key = (netns, Some(network));
            if missing_ok && !s.endpoints.contains_key(&key) {
                return Ok(serde_json::json!(null));
            }
            let record = remove_local_endpoint(s, &key).await?;
            serde_json::to_value(record.view())?
        }
    })
}
