//! `oxlay daemon`: loads the datapath for one node, registers the node in the store,
//! keeps the maps in step with the store, the config and the local endpoints, serves
//! the local API, and on `oxlay uninstall` removes everything it made.
//!
//! One file a concern: this file (start-up: from config to a running daemon), `egress`
//! and `names` (what the host gives containers: forwarding, the resolver),
//! `state` (what the tasks change, behind one lock), `adopt` (endpoints a previous
//! daemon left), `endpoints` and `wiring` (creating and removing endpoints), `watch`
//! (following the store), `server` (the local API), `lease` and `health` (the store
//! registration and whether the store answers).
//!
//! Lock discipline: the state's lock is never held across a store call. A request
//! reads what it needs under the lock, calls the store without it, then takes the
//! lock again to commit.
use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Result};
use log::{info, warn};
use oxlay_common::DatapathConfig;
use tokio::{
    net::UnixListener,
    signal::unix::{signal, SignalKind},
    sync::{Mutex, Notify},
};

use crate::{
    config::Config,
    datapath::Datapath,
    model::HostRecord,
    net::{netlink, Ipv4Net},
    plugins::docker::driver::{DaemonDriver, DockerState},
    reconcile::Snapshot,
    store::Store,
};

mod adopt;
mod doctor;
mod egress;
mod endpoints;
mod explain;
mod health;
mod l2;
mod lease;
mod monitor;
mod names;
mod ports;
mod server;
mod state;
mod stats;
mod uninstall;
mod watch;
mod wireguard;
pub mod wiring;

pub(crate) use self::{
    endpoints::{give_back_address, record_local_endpoint, undo_local_endpoint},
    health::Health,
    state::{EndpointKey, State},
    stats::Traffic,
};

/// What the daemon's tasks share. The state has its lock; the rest needs none, so that
/// no task holds the lock while it waits for the store.
pub(crate) struct Daemon {
    pub(crate) state: Mutex<State>,
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) host: HostRecord,
    /// The lease the host's registration and blocks hang on (renewed on its own task).
    pub(crate) lease: Arc<lease::HostLease>,
    pub(crate) health: Health,
    /// Endpoints being created, reserved from their first step to their last (see
    /// `Daemon::reserve`). A plain mutex: a reservation is released on drop.
    pub(crate) creating: std::sync::Mutex<std::collections::BTreeSet<EndpointKey>>,
    /// Signalled by the `uninstall` request.
    pub(crate) uninstall: Notify,
    /// The names of the containers that share a network with this host's, and the
    /// resolver that answers them (kept current by the watch).
    pub(crate) resolver: Arc<crate::names::Resolver>,
    /// Where the resolver answers, or why it does not.
    pub(crate) names_status: std::sync::Mutex<names::NamesStatus>,
    /// `oxlay monitor` listeners and the ring buffer's reader.
    pub(crate) monitor: Arc<crate::monitor::Hub>,
}

/// The underlay as the config names it and the kernel knows it.
struct Underlay {
    link: netlink::LinkInfo,
    address: Ipv4Addr,
    subnet: Ipv4Net,
}

impl Underlay {
    async fn find(handle: &rtnetlink::Handle, config: &Config) -> Result<Self> {
        let link = netlink::link_by_name(handle, &config.underlay_interface)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "underlay_interface {:?} does not exist in this network namespace: check `ip link` and the config",
                    config.underlay_interface
                )
            })?;
        let address = match config.underlay_address {
            Some(a) => a,
            None => netlink::first_ipv4(handle, link.index)
                .await?
                .ok_or_else(|| {
                    anyhow!(
                        "{} has no IPv4 address: add one or set underlay_address in the config",
                        link.name
                    )
                })?,
        };
        let subnet = netlink::subnet_of(handle, link.index, address).await?;
        Ok(Self {
            link,
            address,
            subnet,
        })
    }
}

pub async fn run(config: Config) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("oxlay daemon needs root (it loads eBPF programs and creates interfaces): run it with sudo");
    }
    let config = Arc::new(config);
    let handle = netlink::connect()?;
    let underlay = Underlay::find(&handle, &config).await?;
    let store = crate::store::connect(&config.store).await?;
    // Claim the API socket first: a second daemon for the same node stops here, before
    // it touches the first one's pinned maps.
    let socket_path = config.socket_path();
    let listener = server::bind_api(&socket_path)?;
    let daemon = match start(config, handle, &underlay, store).await {
        Ok(daemon) => daemon,
        Err(e) => {
            std::fs::remove_file(&socket_path).ok();
            return Err(e);
        }
    };
    let c = &daemon.config;
    info!(
        "node {} ready: underlay {} ({}), static network {:?}, {} static peers, store {}, decap {:?}, api {}",
        c.node_name,
        underlay.link.name,
        underlay.address,
        c.static_network().map(|(vni, subnet)| format!("vni {vni} {subnet}")),
        c.peers.len(),
        c.store.describe(),
        c.decap,
        socket_path.display()
    );
    let uninstall = serve(daemon.clone(), listener).await?;
    if uninstall {
        info!("uninstalling: removing endpoints, deregistering, detaching programs, removing pins");
        daemon.uninstall_all().await?;
    } else {
        // A restart: programs stay attached and maps pinned, endpoints stay wired, and
        // the lease runs out only if no daemon comes back within its TTL.
        info!("stopping; the datapath keeps forwarding (`oxlay uninstall` removes it)");
    }
    std::fs::remove_file(&socket_path).ok();
    Ok(())
}

/// Loads the datapath and brings this host back to where the store and the previous
/// daemon left it: Docker bindings, adopted endpoints, the registration, the routes.
/// Runs before any task shares the state, so it needs no lock. On failure, a datapath
/// this call created is removed again.
async fn start(
    config: Arc<Config>,
    handle: rtnetlink::Handle,
    underlay: &Underlay,
    store: Arc<dyn Store>,
) -> Result<Arc<Daemon>> {
    // Pinned maps and links of a previous daemon are re-used: the traffic they carry
    // keeps flowing while this one starts (programs are replaced atomically).
    let pin_path = config.pin_path();
    let fresh = !pin_path.exists();
    let (datapath, l2_parent, encryption) = load_or_undo(&config, &handle, underlay, fresh).await?;
    let host = host_record(&config, underlay, encryption.as_ref());
    let ttl = Duration::from_secs(config.store.lease_ttl_secs);
    let lease = Arc::new(lease::HostLease::new(store.clone(), host.clone(), ttl));
    let mut state = State {
        // With WireGuard, encapsulated packets must fit its device.
        container_mtu: Config::container_mtu(
            encryption.as_ref().map_or(underlay.link.mtu, |e| e.mtu),
        ),
        encryption,
        wireguard_peers: None,
        l2_mtu: l2_parent.mtu,
        old_l2_parent: l2_parent.old_ifindex,
        state_path: config.socket_path().with_extension("endpoints.json"),
        config: config.clone(),
        handle,
        datapath,
        endpoints: BTreeMap::new(),
        closing: false,
        nat: None,
        nat_unavailable: None,
        nat_error: None,
        snapshot: Snapshot::default(),
        shadow: None,
        desired: None,
        retry: Arc::new(Notify::new()),
        underlay_subnet: underlay.subnet,
        docker: DockerState::default(),
        map_failures: 0,
        last_reconcile_error: None,
        control: Default::default(),
    };
    egress::prepare_egress(&config, &mut state);
    let restored = async {
        state.docker = DockerState::load(&*store, &host.name).await?;
        state.adopt_endpoints(&*store, &host.name).await?;
        lease.register(&state.held_blocks()).await?;
        state.snapshot = Snapshot::list(&*store).await?.0;
        // Map entries that cannot be written are retried by the watch loop.
        state.reconcile_or_retry_later().await;
        anyhow::Ok(())
    };
    if let Err(e) = restored.await {
        if fresh {
            state.datapath.unpin().ok();
            undo_interfaces(&state.handle, &config).await;
        }
        return Err(e.context("cannot register this host in the store"));
    }
    // Every program of this build is attached and the maps are filled: maps an older
    // build used can go.
    state.datapath.remove_stale_pins();
    let resolver = names::resolver(&config, &host.name, (underlay.subnet, underlay.address))?;
    Ok(Arc::new(Daemon {
        state: Mutex::new(state),
        config,
        store,
        host,
        lease,
        health: health::registered_now(),
        creating: Default::default(),
        uninstall: Notify::new(),
        resolver,
        names_status: std::sync::Mutex::new(names::NamesStatus::Starting),
        monitor: Default::default(),
    }))
}

/// `load_datapath`; when it fails on a first start, nothing is left behind.
async fn load_or_undo(
    config: &Config,
    handle: &rtnetlink::Handle,
    underlay: &Underlay,
    fresh: bool,
) -> Result<(Datapath, l2::ParentAtStart, Option<wireguard::Encryption>)> {
    let loaded = load_datapath(config, handle, &underlay.link, underlay.address).await;
    if loaded.is_err() && fresh {
        std::fs::remove_dir_all(config.pin_path()).ok();
        undo_interfaces(handle, config).await;
    }
    loaded
}

/// What a failed first start made outside the pins goes: the parent NIC's program and
/// clsact, the WireGuard device.
async fn undo_interfaces(handle: &rtnetlink::Handle, config: &Config) {
    l2::restore_parent(handle, config).await.ok();
    if let Some(wg) = &config.wireguard {
        wireguard::remove_device(handle, config, &wg.device)
            .await
            .ok();
    }
}

/// How this host appears to the others in the store.
fn host_record(
    config: &Config,
    underlay: &Underlay,
    encryption: Option<&wireguard::Encryption>,
) -> HostRecord {
    HostRecord {
        name: config.node_name.clone(),
        underlay_address: underlay.address,
        vtep_mac: config.vtep_mac(),
        gre: true,
        wireguard: encryption.map(|e| e.endpoint.clone()),
    }
}

/// Runs the daemon's tasks (lease renewal, the store watch, the Docker plugin, the
/// API) until a signal or an `uninstall` request; whether it was the latter.
async fn serve(daemon: Arc<Daemon>, listener: UnixListener) -> Result<bool> {
    let held = daemon.clone();
    let keepalive = tokio::spawn(lease::keep_alive(
        daemon.lease.clone(),
        move || {
            let daemon = held.clone();
            async move { daemon.state.lock().await.held_blocks() }
        },
        daemon.health.clone(),
    ));
    let docker = daemon.config.docker.clone();
    let docker_plugin = docker.enabled.then(|| {
        let driver = Arc::new(DaemonDriver(daemon.clone()));
        crate::plugins::docker::names::recover_later(daemon.clone());
        let socket = docker.socket.clone();
        info!(
            "serving the Docker network and IPAM driver \"oxlay\" on {}",
            socket.display()
        );
        tokio::spawn(async move {
            if let Err(e) = crate::plugins::docker::serve(&socket, driver).await {
                warn!("docker plugin: {e:#}");
            }
        })
    });
    let watcher = tokio::spawn(watch::watch_store(daemon.clone()));
    let monitor = monitor::start(&daemon);
    let metrics = crate::metrics::serve(&daemon).await?;
    let resolver = names::start(&daemon).await;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let uninstall = loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server::serve_connection(stream, &daemon).await {
                            warn!("api connection: {e:#}");
                        }
                    });
                }
                Err(e) => warn!("api accept failed: {e}"),
            },
            _ = term.recv() => break false,
            _ = int.recv() => break false,
            _ = daemon.uninstall.notified() => break true,
        }
    };
    keepalive.abort();
    watcher.abort();
    monitor.abort();
    // Nobody reads the ring buffer any more (the switch would lapse by itself).
    let _ = daemon
        .state
        .lock()
        .await
        .datapath
        .set_monitor(Default::default());
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(resolver) = resolver {
        resolver.abort();
    }
    if let Some(plugin) = docker_plugin {
        plugin.abort();
        // Docker finds the plugin again when a daemon serves the socket anew.
        std::fs::remove_file(&docker.socket).ok();
    }
    Ok(uninstall)
}

/// Loads the programs, sets up the WireGuard device (with `[wireguard]`), writes the
/// datapath config and attaches decapsulation, and the layer-2 program to the
/// `[l2] parent` NIC (whose MTU comes back). Routes, peers, networks and endpoints come
/// from reconciling.
async fn load_datapath(
    config: &Config,
    handle: &rtnetlink::Handle,
    underlay: &netlink::LinkInfo,
    underlay_addr: Ipv4Addr,
) -> Result<(Datapath, l2::ParentAtStart, Option<wireguard::Encryption>)> {
    let parent = l2::find_parent(handle, config).await?;
    let mut datapath = Datapath::load(&config.pin_path()).map_err(|e| {
        e.context("if an older oxlay left incompatible pins, `oxlay uninstall` (or removing the pin path) starts afresh")
    })?;
    let encryption = wireguard::setup(handle, config, underlay, &mut datapath).await?;
    let path_mtu = encryption.as_ref().map_or(underlay.mtu, |e| e.mtu);
    datapath.set_config(DatapathConfig {
        underlay_ifindex: underlay.index,
        underlay_addr: underlay_addr.octets(),
        vxlan_port: config.vxlan_port,
        vtep_mac: config.vtep_mac().0,
        ready: 1,
        underlay_mtu: path_mtu.min(u16::MAX as u32) as u16,
        _pad: 0,
        wireguard_ifindex: encryption.as_ref().map_or(0, |e| e.ifindex),
    })?;
    // Nobody listens yet (whatever a daemon that crashed had asked for).
    datapath.set_monitor(Default::default())?;
    datapath.attach_decap(&underlay.name, config.decap)?;
    let l2_parent = l2::attach_parent(handle, config, &mut datapath, parent).await?;
    Ok((datapath, l2_parent, encryption))
}
