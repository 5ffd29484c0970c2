//! `oxlay daemon`: loads the datapath for one node, registers the node in the store,
//! keeps the maps in step with the store and the config, serves the local API, and
//! removes everything it made on SIGTERM or SIGINT.
use std::{
    collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use log::{info, warn};
use oxlay_common::{CounterKind, DatapathConfig, Route, RouteKind};
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
    model::{self, BlockRecord, HostRecord, NetworkSpec},
    net::{Ipv4Net, MacAddr},
    netlink::{self, ContainerRoute, EndpointSpec},
    reconcile::{self, Snapshot},
    store::{embedded::EmbeddedStore, etcd::EtcdStore, Store},
};

mod docker_driver;
mod lease;

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
    store_failed_inner(health, what, e)
}

fn store_failed_inner(health: &std::sync::Mutex<StoreHealth>, what: &str, e: &anyhow::Error) {
    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
    if h.down_since.is_none() {
        warn!("store unreachable ({what}: {e:#}); forwarding continues on the routes already in the maps");
        h.down_since = Some(std::time::SystemTime::now());
    }
    h.last_error = Some(format!("{what}: {e:#}"));
}

fn store_ok(health: &Health) {
    store_ok_inner(health)
}

fn store_ok_inner(health: &std::sync::Mutex<StoreHealth>) {
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
    /// The lease the host's registration and blocks hang on (renewed on its own task).
    lease: Arc<lease::HostLease>,
    endpoints: BTreeMap<EndpointKey, LocalEndpoint>,
    /// The store's routing records, listed at start and kept current by the watch.
    snapshot: Snapshot,
    /// What the route, peer and network maps hold, as last written (None: read them).
    shadow: Option<reconcile::Desired>,
    /// The last desired maps and the part of them blocks do not change (base, want).
    desired: Option<(reconcile::Desired, reconcile::Desired)>,
    /// Tells the watch loop that a reconcile outside it failed and wants a retry.
    retry: Arc<tokio::sync::Notify>,
    /// The underlay subnet (direct routing reaches peers inside it).
    underlay_subnet: Ipv4Net,
    /// Where the static network's endpoints are recorded for the next daemon.
    state_path: std::path::PathBuf,
    /// Signalled by the `uninstall` request.
    uninstall: Arc<tokio::sync::Notify>,
    /// Which oxlay network each Docker network is.
    docker: docker_driver::DockerState,
    /// Map writes that failed since start (e.g. a full route map), and the last
    /// reconcile error, for `oxlay status`.
    map_failures: u64,
    last_reconcile_error: Option<String>,
}

impl State {
    /// Lists the store's routing records anew (at start, and when a watch starts
    /// over); returns the revision from which to watch. A record that does not decode
    /// is left out with a warning.
    async fn relist(&mut self) -> Result<crate::store::Revision> {
        let mut snapshot = Snapshot::default();
        let mut start = None;
        for prefix in [model::HOSTS, model::NETWORKS, model::BLOCKS] {
            let (kvs, revision) = self.store.list(prefix).await?;
            // Watching from the first listing's revision replays whatever changed
            // while the others were read.
            start.get_or_insert(revision);
            for kv in kvs {
                if let Err(e) = snapshot.apply(&crate::store::WatchEvent::Put(kv)) {
                    warn!("{e:#}");
                }
            }
        }
        self.snapshot = snapshot;
        Ok(start.unwrap_or(0))
    }

    /// Applies watch events to the snapshot and says what routing needs: nothing, the
    /// routes of some blocks, or everything. A block of a network with no endpoint
    /// here changes no route of this host.
    fn apply_events(&mut self, events: &[crate::store::WatchEvent]) -> Routing {
        let local_networks: std::collections::BTreeSet<&str> = self
            .endpoints
            .values()
            .filter_map(|e| e.network.as_deref())
            .collect();
        // By VNI too: a store network may share the static network's VNI.
        let local_vnis: std::collections::BTreeSet<u32> =
            self.endpoints.values().map(|e| e.vni).collect();
        let mut all = false;
        let mut blocks = Vec::new();
        for event in events.iter().filter(|e| Snapshot::tracks(e.key())) {
            let key = event.key();
            let before = self.snapshot.blocks.get(key).cloned();
            match self.snapshot.apply(event) {
                Ok(false) => {}
                Ok(true) if key.starts_with(model::BLOCKS) => {
                    let after = self.snapshot.blocks.get(key);
                    let snapshot = &self.snapshot;
                    let ours = [before.as_ref(), after].into_iter().flatten().any(|b| {
                        local_networks.contains(b.network.as_str())
                            || snapshot
                                .networks
                                .get(&b.network)
                                .is_some_and(|net| local_vnis.contains(&net.vni))
                    });
                    // Blocks of direct networks also fill the direct table.
                    let direct = [before.as_ref(), after]
                        .into_iter()
                        .flatten()
                        .any(|b| snapshot.networks.get(&b.network).is_some_and(|n| n.direct));
                    if ours || direct {
                        blocks.push((key.to_owned(), before));
                    }
                }
                Ok(true) => all = true,
                Err(e) => {
                    warn!("{e:#}");
                    all = true;
                }
            }
        }
        match (all, blocks.is_empty()) {
            (true, _) => Routing::All,
            (false, false) => Routing::Blocks(blocks),
            (false, true) => Routing::Unchanged,
        }
    }

    /// Brings the maps in step with the snapshot and the local endpoints, changing only
    /// what differs. Compares against the shadow of what was last written (no map
    /// dump); reads the kernel's maps when there is no shadow yet (start, drift check).
    async fn reconcile(&mut self) -> Result<()> {
        // Until this succeeds there is no desired state to update key by key.
        self.desired = None;
        let local: Vec<&LocalEndpoint> = self.endpoints.values().collect();
        let me = reconcile::Me {
            name: &self.config.node_name,
            underlay_subnet: self.underlay_subnet,
        };
        let base = reconcile::desired_base(&me, &self.config, &self.snapshot, &local)?;
        let want = reconcile::with_blocks(&me, &self.snapshot, &base);
        let mut shadow = match self.shadow.take() {
            Some(shadow) => shadow,
            None => reconcile::read_shadow(&self.datapath)?,
        };
        let changes = reconcile::apply(
            &mut reconcile::Shadowed {
                maps: &mut self.datapath,
                shadow: &mut shadow,
            },
            &want,
        );
        // The shadow holds exactly what was written, failed entries excepted.
        self.shadow = Some(shadow);
        self.desired = Some((base, want));
        self.account(changes)
    }

    /// Reconciles after changes of store blocks alone (`changed`: each block's store
    /// key and its record before): only the route keys those blocks write are
    /// recomputed and compared, so the cost follows the change, not the cluster. Falls
    /// back to a full reconcile when there is nothing to start from.
    async fn reconcile_blocks(&mut self, changed: &[(String, Option<BlockRecord>)]) -> Result<()> {
        let (Some((base, mut want)), Some(mut shadow)) = (self.desired.take(), self.shadow.take())
        else {
            return self.reconcile().await;
        };
        let me = reconcile::Me {
            name: &self.config.node_name,
            underlay_subnet: self.underlay_subnet,
        };
        let keys: std::collections::BTreeSet<reconcile::RouteKey> = changed
            .iter()
            .flat_map(|(key, old)| {
                reconcile::block_route_keys(&me, &self.snapshot, &base, old.as_ref(), key)
            })
            .collect();
        let routes: Vec<(reconcile::RouteKey, Option<Route>)> = keys
            .into_iter()
            .map(|key| {
                (
                    key,
                    reconcile::desired_route(&me, &self.snapshot, &base, key),
                )
            })
            .collect();
        for (key, route) in &routes {
            match route {
                Some(route) => want.routes.insert(*key, *route),
                None => want.routes.remove(key),
            };
        }
        let changes = reconcile::apply_routes(
            &mut reconcile::Shadowed {
                maps: &mut self.datapath,
                shadow: &mut shadow,
            },
            &routes,
        );
        self.shadow = Some(shadow);
        self.desired = Some((base, want));
        self.account(changes)
    }

    /// Logs what a reconcile changed and turns failed entries into an error (counted
    /// for `oxlay status`).
    fn account(&mut self, changes: Result<reconcile::Changes>) -> Result<()> {
        let changes = changes?;
        if changes.added + changes.removed > 0 {
            info!(
                "maps updated: {} added or changed, {} removed",
                changes.added, changes.removed
            );
        }
        if let Some(first) = changes.failed.first() {
            self.map_failures += changes.failed.len() as u64;
            let e = anyhow!(
                "{} map entries could not be written (the others were; retried with backoff): {first}",
                changes.failed.len()
            );
            self.last_reconcile_error = Some(format!("{e:#}"));
            return Err(e);
        }
        self.last_reconcile_error = None;
        Ok(())
    }

    /// Reconciles; a failure is logged and left to the periodic resync (the change
    /// that asked for it is complete either way: the maps follow the store).
    async fn reconcile_or_retry_later(&mut self) {
        if let Err(e) = self.reconcile().await {
            warn!("reconcile failed, retried with backoff: {e:#}");
            self.last_reconcile_error = Some(format!("{e:#}"));
            self.retry.notify_one();
        }
    }

    /// Takes back the endpoints the store says are on this host (a daemon that died
    /// left them wired): re-attaches the program and fills the endpoint map. Endpoints
    /// whose interface is gone are released.
    async fn adopt_endpoints(&mut self) -> Result<()> {
        // The static network's endpoints, from the state file.
        let recorded = read_state_file(&self.state_path)?;
        for mut ep in recorded {
            let Some(link) = netlink::link_by_name(&self.handle, &ep.host_ifname).await? else {
                warn!("static endpoint {} {} is gone", ep.netns, ep.address);
                continue;
            };
            ep.host_ifindex = link.index;
            ep.host_mac = link.mac;
            endpoint::adopt(&mut self.datapath, &ep)?;
            endpoint::tune_adopted(&ep).await;
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
            endpoint::adopt(&mut self.datapath, &local)?;
            endpoint::tune_adopted(&local).await;
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

    /// The blocks this host must hold: one address in each, from its endpoints.
    fn held_blocks(&self) -> Vec<lease::HeldBlock> {
        self.endpoints
            .values()
            .filter_map(|ep| Some((ep.network.clone()?, ep.address)))
            .collect()
    }
}

impl lease::LeaseEvents for std::sync::Mutex<StoreHealth> {
    fn renewed(&self) {
        store_ok_inner(self);
    }
    fn failed(&self, what: &str, e: &anyhow::Error) {
        store_failed_inner(self, what, e);
    }
}

/// The static network's endpoints a previous daemon recorded. No file means none; a
/// file that cannot be read or parsed stops the start rather than being taken as empty
/// (and then overwritten), which would orphan wired containers.
fn read_state_file(path: &Path) -> Result<Vec<LocalEndpoint>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the state file {} is corrupt: fix or remove it (removing it forgets the static endpoints it lists)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read the state file {}", path.display())),
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
    let host_lease = Arc::new(lease::HostLease::new(
        store.clone(),
        host.clone(),
        Duration::from_secs(config.store.lease_ttl_secs),
    ));
    let mut state = State {
        config,
        handle,
        datapath,
        container_mtu,
        store,
        lease: host_lease,
        host,
        endpoints: BTreeMap::new(),
        snapshot: Snapshot::default(),
        shadow: None,
        desired: None,
        retry: Arc::new(tokio::sync::Notify::new()),
        underlay_subnet,
        state_path: socket_path.with_extension("endpoints.json"),
        uninstall: Arc::new(tokio::sync::Notify::new()),
        docker: docker_driver::DockerState::default(),
        map_failures: 0,
        last_reconcile_error: None,
    };
    let started = async {
        state.docker = docker_driver::DockerState::load(&*state.store, &state.host.name).await?;
        state.adopt_endpoints().await?;
        state.lease.register(&state.held_blocks()).await?;
        state.relist().await?;
        // Map entries that cannot be written are retried by the watch loop.
        state.reconcile_or_retry_later().await;
        anyhow::Ok(())
    };
    if let Err(e) = started.await {
        std::fs::remove_file(&socket_path).ok();
        if fresh {
            state.datapath.unpin().ok();
        }
        return Err(e.context("cannot register this host in the store"));
    }
    // Every program of this build is attached and the maps are filled: maps an older
    // build used can go.
    state.datapath.remove_stale_pins();
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
    let store = state.store.clone();
    let host_lease = state.lease.clone();
    let state = Arc::new(Mutex::new(state));
    let health: Health = Arc::default();
    let held_state = state.clone();
    let keepalive = tokio::spawn(lease::keep_alive(
        host_lease,
        move || {
            let state = held_state.clone();
            async move { state.lock().await.held_blocks() }
        },
        health.clone(),
    ));
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
    if let Err(e) = s.store.revoke_lease(s.lease.current()).await {
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

/// What a batch of store events asks of the maps.
enum Routing {
    Unchanged,
    /// Blocks changed (store key, record before): only their routes.
    Blocks(Vec<(String, Option<BlockRecord>)>),
    All,
}

/// When to look at the kernel's maps again without a store event: after a failed
/// reconcile, from 1 s, doubling up to [`RETRY_MAX`]; while all is well, a drift check
/// [`DRIFT_CHECK_EVERY`] after the last one. Each look compares against the kernel's
/// maps themselves (not the shadow), so no divergence outlives it.
#[derive(Debug)]
struct Resync {
    delay: Duration,
    failing: bool,
}

const RETRY_MAX: Duration = Duration::from_secs(30);
/// Events within 20 ms that make a burst worth gathering further.
const BURST_EVENTS: usize = 16;
const DRIFT_CHECK_EVERY: Duration = Duration::from_secs(300);

impl Resync {
    fn new() -> Self {
        Self {
            delay: DRIFT_CHECK_EVERY,
            failing: false,
        }
    }
    /// The delay until the next look, given whether the last reconcile succeeded.
    fn after(&mut self, ok: bool) -> Duration {
        self.delay = match (ok, self.failing) {
            (true, _) => DRIFT_CHECK_EVERY,
            (false, false) => Duration::from_secs(1),
            (false, true) => (self.delay * 2).min(RETRY_MAX),
        };
        self.failing = !ok;
        self.delay
    }
    fn failing(&self) -> bool {
        self.failing
    }
}

/// Reconciles everything, or only the routes of `blocks`; logs a failure; whether it
/// succeeded.
async fn reconcile_logged(
    state: &Mutex<State>,
    blocks: Option<&[(String, Option<BlockRecord>)]>,
) -> bool {
    let mut s = state.lock().await;
    let result = match blocks {
        Some(blocks) => s.reconcile_blocks(blocks).await,
        None => s.reconcile().await,
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            warn!("reconcile failed: {e:#}");
            s.last_reconcile_error = Some(format!("{e:#}"));
            false
        }
    }
}

/// Follows the store: lists its routing records once, then applies each watch event
/// to that snapshot and reconciles the maps (events are batched). A change costs the
/// change: no relisting, no map dump. Failed map writes are retried with backoff; a
/// drift check compares with the kernel's maps every [`DRIFT_CHECK_EVERY`].
async fn watch_store(state: Arc<Mutex<State>>, store: Arc<dyn Store>, health: Health) {
    let mut resync = Resync::new();
    loop {
        let start = match state.lock().await.relist().await {
            Ok(revision) => {
                store_ok(&health);
                revision
            }
            Err(e) => {
                store_failed(&health, "listing", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let ok = reconcile_logged(&state, None).await;
        // A deadline, not a sleep per turn: events do not postpone it.
        let mut due = tokio::time::Instant::now() + resync.after(ok);
        let retry = state.lock().await.retry.clone();
        let mut events = match store.watch(model::PREFIX, start).await {
            Ok(rx) => rx,
            Err(e) => {
                store_failed(&health, "watch", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                // A reconcile on an API path failed: retry soon.
                _ = retry.notified() => {
                    if !resync.failing() {
                        due = tokio::time::Instant::now() + resync.after(false);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(due) => {
                    state.lock().await.shadow = None;
                    due = tokio::time::Instant::now() + resync.after(reconcile_logged(&state, None).await);
                    continue;
                }
            };
            match event {
                Some(Ok(first)) => {
                    // Take whatever else arrived with it, then reconcile once. While a
                    // burst goes on (many hosts joining), keep gathering, up to 250 ms:
                    // one reconcile per burst, not one per few events.
                    let mut batch = vec![first];
                    let mut broken = false;
                    let gathering = std::time::Instant::now();
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let before = batch.len();
                        while let Ok(item) = events.try_recv() {
                            match item {
                                Ok(event) => batch.push(event),
                                Err(_) => broken = true,
                            }
                        }
                        let burst = batch.len() - before >= BURST_EVENTS;
                        if broken || !burst || gathering.elapsed() > Duration::from_millis(250) {
                            break;
                        }
                    }
                    let routing = state.lock().await.apply_events(&batch);
                    let ok = match routing {
                        Routing::Unchanged => None,
                        Routing::Blocks(blocks) => {
                            Some(reconcile_logged(&state, Some(&blocks)).await)
                        }
                        Routing::All => Some(reconcile_logged(&state, None).await),
                    };
                    if let Some(ok) = ok {
                        // A failure starts the retries; a success ends them. Otherwise
                        // the drift check stays where it was.
                        if ok == resync.failing() {
                            due = tokio::time::Instant::now() + resync.after(ok);
                        }
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
async fn undo_local_endpoint(s: &mut State, key: &EndpointKey) {
    let Some(record) = s.endpoints.remove(key) else {
        return;
    };
    if let Err(e) = endpoint::detach(&s.handle, &mut s.datapath, &record).await {
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
    s.reconcile_or_retry_later().await;
    info!("removed endpoint {} {}", record.netns, record.address);
    Ok(record)
}

/// Releases an address whose endpoint never came to be; a failure is logged (the
/// address then shows in `oxlay endpoint ls` without an interface, and removing that
/// endpoint releases it).
async fn give_back_address(store: &dyn Store, network: &str, address: std::net::Ipv4Addr) {
    if let Err(e) = model::remove_endpoint(store, network, address).await {
        warn!("giving back {address} of {network}: {e:#}");
    }
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
        v["map_update_failures"] = s.map_failures.into();
        v["last_reconcile_error"] = s.last_reconcile_error.clone().into();
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
            let (host, lease) = (s.host.name.clone(), s.lease.current());
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
                        ..record.clone()
                    };
                    let recorded = async {
                        crate::fault::inject(crate::fault::step::ENDPOINT_RECORD)?;
                        model::update_endpoint(&*store, &wired).await
                    };
                    if let Err(e) = recorded.await {
                        // Unwire first, then give the address back: no container keeps
                        // an address the pool hands out again.
                        undo_local_endpoint(s, &(local.netns.clone(), Some(network.clone()))).await;
                        give_back_address(&*store, &network, record.address).await;
                        return Err(e);
                    }
                    serde_json::to_value(local.view())?
                }
                Err(e) => {
                    // Give the address back: the endpoint never came to be.
                    give_back_address(&*store, &network, record.address).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_backs_off_after_failures_and_relaxes_after_success() {
        let mut r = Resync::new();
        let secs = |d: Duration| d.as_secs();
        assert_eq!(secs(r.after(false)), 1);
        assert_eq!(secs(r.after(false)), 2);
        assert_eq!(secs(r.after(false)), 4);
        for _ in 0..10 {
            r.after(false);
        }
        assert_eq!(r.after(false), RETRY_MAX, "capped");
        assert!(r.failing());
        assert_eq!(r.after(true), DRIFT_CHECK_EVERY);
        assert!(!r.failing());
        assert_eq!(secs(r.after(false)), 1, "a new failure retries soon");
    }
}
