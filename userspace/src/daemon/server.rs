//! The local API's server side: one request per connection on a unix socket only
//! root can open, answered from the daemon's state and the store.
use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use oxlay_common::{CounterKind, RouteKind};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};

#[allow(unused_imports)]
use super::*;
use crate::{
    api::{self, CounterView, Request, Response, RouteView},
    model::local::{self},
    model::{self, NetworkSpec},
    net::veth::ContainerRoute,
    net::MacAddr,
};

pub(super) fn bind_api(path: &Path) -> Result<UnixListener> {
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

pub(super) async fn serve_connection(
    stream: UnixStream,
    state: &Mutex<State>,
    health: &Health,
) -> Result<()> {
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

pub(super) fn parse_labels(labels: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    for k in labels.keys() {
        if k.is_empty() || k.len() > 253 {
            bail!("label key {k:?} is not valid: use 1 to 253 characters");
        }
    }
    Ok(labels)
}

/// `oxlay status`: the store's health first (it answers without waiting for the state
/// while a store call is in flight), then what the datapath carries.
pub(super) async fn status(state: &Mutex<State>, health: &Health) -> serde_json::Value {
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

pub(super) async fn handle_request(
    request: Request,
    state: &Mutex<State>,
) -> Result<serde_json::Value> {
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
            local::check_address(subnet, address, statics)?;
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
