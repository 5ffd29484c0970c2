//! `oxlay daemon`: loads the datapath for one node, fills its maps from the config,
//! serves the local API, and removes everything it made on SIGTERM or SIGINT.
use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path, sync::Arc};

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
    endpoint::{self, EndpointRecord, GATEWAY},
    net::MacAddr,
    netlink::{self, EndpointSpec},
};

struct State {
    config: Config,
    handle: Handle,
    datapath: Datapath,
    container_mtu: u32,
    /// Local endpoints by namespace.
    endpoints: BTreeMap<String, EndpointRecord>,
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

    // Claim the API socket first: a second daemon for the same node stops here, before
    // it touches the first one's pinned maps.
    let socket_path = config.socket_path();
    let listener = bind_api(&socket_path)?;
    let pin_path = config.pin_path();
    if pin_path.exists() {
        // Left by a daemon that did not stop cleanly; its endpoints are gone with it.
        warn!("removing stale pinned maps in {}", pin_path.display());
        std::fs::remove_dir_all(&pin_path).ok();
    }
    let datapath = match load_datapath(&config, &underlay, underlay_addr) {
        Ok(d) => d,
        Err(e) => {
            // Leave nothing behind: no socket, no pins.
            std::fs::remove_file(&socket_path).ok();
            std::fs::remove_dir_all(&pin_path).ok();
            return Err(e);
        }
    };
    info!(
        "node {} ready: underlay {} ({}), vni {}, pod subnet {}, {} peers, decap {:?}, api {}",
        config.node_name,
        underlay.name,
        underlay_addr,
        config.vni,
        config.pod_subnet,
        config.peers.len(),
        config.decap,
        socket_path.display()
    );
    let state = Arc::new(Mutex::new(State {
        config,
        handle,
        datapath,
        container_mtu,
        endpoints: BTreeMap::new(),
    }));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(stream, &state).await {
                            warn!("api connection: {e:#}");
                        }
                    });
                }
                Err(e) => warn!("api accept failed: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping: detaching programs and removing endpoints, pins and the socket");
    let mut state = state.lock().await;
    let State {
        handle,
        datapath,
        endpoints,
        config,
        ..
    } = &mut *state;
    for record in endpoints.values() {
        if let Err(e) = endpoint::detach(handle, datapath, config.vni, record).await {
            warn!("detaching {}: {e:#}", record.netns);
        }
    }
    datapath.unpin()?;
    std::fs::remove_file(&socket_path).ok();
    Ok(())
}

/// Loads the programs, fills the maps from the config and attaches decapsulation.
fn load_datapath(
    config: &Config,
    underlay: &netlink::LinkInfo,
    underlay_addr: std::net::Ipv4Addr,
) -> Result<Datapath> {
    let mut datapath = Datapath::load(&config.pin_path())?;
    datapath.add_network(config.vni)?;
    for peer in &config.peers {
        datapath.add_peer(peer.underlay_address)?;
        let mac = peer
            .vtep_mac
            .unwrap_or_else(|| MacAddr::derived(&peer.name));
        datapath.set_route(
            config.vni,
            peer.pod_subnet,
            Route::remote(peer.underlay_address.octets(), mac.0),
        )?;
    }
    datapath.set_config(DatapathConfig {
        underlay_ifindex: underlay.index,
        underlay_addr: underlay_addr.octets(),
        vxlan_port: config.vxlan_port,
        vtep_mac: config.vtep_mac().0,
        ready: 1,
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

async fn serve_connection(stream: UnixStream, state: &Mutex<State>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(api::MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let response = match api::parse_request(&line) {
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

async fn handle_request(request: Request, state: &Mutex<State>) -> Result<serde_json::Value> {
    let mut guard = state.lock().await;
    let s = &mut *guard;
    Ok(match request {
        Request::Attach {
            netns,
            address,
            ifname,
        } => {
            if s.endpoints.contains_key(&netns) {
                bail!("namespace {netns} is already attached; detach it first");
            }
            let ifname = ifname.unwrap_or_else(|| "eth0".to_owned());
            endpoint::check_ifname(&ifname)?;
            endpoint::check_address(s.config.pod_subnet, address, s.endpoints.values())?;
            let spec = EndpointSpec {
                host_ifname: endpoint::host_ifname(&netns),
                netns: netns.clone(),
                container_ifname: ifname,
                address,
                mtu: s.container_mtu,
                gateway: GATEWAY,
            };
            let record = endpoint::attach(&s.handle, &mut s.datapath, s.config.vni, spec).await?;
            info!("attached {netns} as {address} on {}", record.host_ifname);
            let view = record.view();
            s.endpoints.insert(netns, record);
            serde_json::to_value(view)?
        }
        Request::Detach { netns } => {
            let record = s
                .endpoints
                .get(&netns)
                .ok_or_else(|| anyhow!("namespace {netns} is not attached to this node"))?
                .clone();
            endpoint::detach(&s.handle, &mut s.datapath, s.config.vni, &record).await?;
            s.endpoints.remove(&netns);
            info!("detached {netns}");
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
    })
}
