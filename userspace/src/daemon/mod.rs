//! `oxlay daemon`: loads the datapath for one node, registers the node in the store,
//! keeps the maps in step with the store and the config, serves the local API, and
//! removes everything it made on SIGTERM or SIGINT.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Result};
use log::{info, warn};
use oxlay_common::DatapathConfig;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};

use crate::{
    config::Config,
    datapath::Datapath,
    model::{self, HostRecord},
    net::netlink,
    reconcile::Snapshot,
    store::{embedded::EmbeddedStore, etcd::EtcdStore, Store},
};

mod adopt;
mod endpoints;
mod health;
mod lease;
mod server;
mod state;
mod watch;
pub mod wiring;

#[allow(unused_imports)]
pub(crate) use self::{endpoints::*, health::*, server::*, state::*, watch::*};

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
        docker: crate::plugins::docker::driver::DockerState::default(),
        map_failures: 0,
        last_reconcile_error: None,
    };
    let started = async {
        state.docker =
            crate::plugins::docker::driver::DockerState::load(&*state.store, &state.host.name)
                .await?;
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
        let driver = Arc::new(crate::plugins::docker::driver::DaemonDriver(state.clone()));
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
