//! The local API's server side: one request per connection on a unix socket only root
//! can open. Requests about this host's datapath take the state's lock; requests about
//! the cluster go to the store without it.
use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use oxlay_common::RouteKind;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{
    doctor,
    endpoints::{NewEndpoint, Sandbox},
    explain, monitor,
    stats::Traffic,
    Daemon, State,
};
use crate::{
    api::{self, EndpointView, Request, Response, RouteView},
    model::{self, NetworkSpec},
    monitor::Filter,
    net::MacAddr,
    store::Store,
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

pub(super) async fn serve_connection(stream: UnixStream, daemon: &Daemon) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(api::MAX_REQUEST_BYTES));
    reader.read_line(&mut line).await?;
    let response = match api::parse_request(&line) {
        // A stream, not one answer.
        Ok(Request::Monitor {
            drops,
            traces,
            sample,
            reasons,
            network,
            address,
        }) => {
            let vni = match network {
                Some(name) => network_vni(&*daemon.state.lock().await, &name),
                None => Ok(None),
            };
            let filter =
                vni.and_then(|vni| Filter::new(drops, traces, sample, &reasons, vni, address));
            match filter {
                Ok(filter) => return monitor::stream(daemon, filter, reader, write).await,
                Err(e) => Response::Error(format!("{e:#}")),
            }
        }
        Ok(request) => match handle_request(request, daemon).await {
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

/// The VNI of network `name` ("static": the config's own network).
fn network_vni(s: &State, name: &str) -> Result<Option<u32>> {
    if let Some(n) = s.snapshot.networks.values().find(|n| n.name == name) {
        return Ok(Some(n.vni));
    }
    match s.config.vni {
        Some(vni) if name == "static" => Ok(Some(vni)),
        _ => bail!("no network {name:?}: `oxlay network ls` lists them"),
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

/// Requests about this host's datapath and endpoints; the cluster's go to
/// [`cluster_request`].
async fn handle_request(request: Request, d: &Daemon) -> Result<Value> {
    Ok(match request {
        Request::Status(_) => status(d).await,
        Request::Attach {
            netns,
            address,
            ifname,
        } => serde_json::to_value(d.attach_static(netns, address, ifname).await?.view())?,
        Request::Detach { netns } => {
            let removed = d.remove_endpoint(&(netns, None), false).await?;
            serde_json::to_value(removed.map(|e| e.view()))?
        }
        Request::Endpoints(_) => {
            let s = d.state.lock().await;
            serde_json::to_value(s.endpoints.values().map(|e| e.view()).collect::<Vec<_>>())?
        }
        Request::Routes(_) => serde_json::to_value(routes(&*d.state.lock().await)?)?,
        Request::Stats(_) => serde_json::to_value(Traffic::read(&*d.state.lock().await)?.view())?,
        r @ Request::Explain { .. } => serde_json::to_value(explain::answer(d, r).await?)?,
        Request::Doctor(_) => {
            let findings = doctor::findings(d).await;
            json!({ "status": crate::doctor::worst(&findings), "findings": findings })
        }
        Request::Uninstall(_) => {
            // The main loop does the work once this answer is sent.
            d.uninstall.notify_one();
            json!({ "uninstalling": d.config.node_name })
        }
        Request::EndpointCreate {
            network,
            netns,
            sandbox,
            ip,
            labels,
            ifname,
            names,
        } => {
            for name in &names {
                crate::config::check_name("endpoint name", name)?;
            }
            let new = NewEndpoint {
                network,
                sandbox: Sandbox {
                    name: sandbox.unwrap_or_else(|| netns.clone()),
                    netns,
                },
                ip,
                labels: parse_labels(labels)?,
                ifname,
                names,
            };
            let view = EndpointView {
                resolver: d.resolver_address(),
                ..d.create_endpoint(new).await?.view()
            };
            serde_json::to_value(view)?
        }
        Request::EndpointRm {
            network,
            netns,
            missing_ok,
        } => {
            let removed = d
                .remove_endpoint(&(netns, Some(network)), missing_ok)
                .await?;
            serde_json::to_value(removed.map(|e| e.view()))?
        }
        request => cluster_request(request, &*d.store).await?,
    })
}

/// Requests about the cluster: answered from the store, without the state's lock.
async fn cluster_request(request: Request, store: &dyn Store) -> Result<Value> {
    Ok(match request {
        Request::Hosts(_) => serde_json::to_value(model::hosts(store).await?)?,
        Request::NetworkCreate {
            name,
            subnet,
            vni,
            block_prefix,
            labels,
            allow_overlap,
            direct,
            egress,
            encap,
            l2,
        } => {
            let spec = NetworkSpec {
                name,
                subnet,
                vni,
                block_prefix,
                labels: parse_labels(labels)?,
                allow_overlap,
                direct,
                egress,
                encap,
                l2,
            };
            serde_json::to_value(model::create_network(store, spec).await?)?
        }
        Request::NetworkLs(_) => serde_json::to_value(model::networks(store).await?)?,
        Request::NetworkInspect { name } => json!({
            "network": model::network(store, &name).await?,
            "blocks": model::blocks(store, &name).await?,
            "endpoints": model::endpoints(store, Some(&name)).await?,
        }),
        Request::NetworkRm { name } => {
            model::remove_network(store, &name).await?;
            json!({ "removed": name })
        }
        Request::EndpointLs { network } => {
            serde_json::to_value(model::endpoints(store, network.as_deref()).await?)?
        }
        other => bail!("request {other:?} is not about the cluster"),
    })
}

/// `oxlay status`: the store's health first (it answers without the state's lock),
/// then, if the lock comes within a second, what the datapath carries.
async fn status(d: &Daemon) -> Value {
    let (down_for, last_error) = {
        let h = d.health.lock().unwrap_or_else(|p| p.into_inner());
        let down = h
            .down_since
            .map(|t| t.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0));
        (down, h.last_error.clone())
    };
    let mut v = json!({
        "store_reachable": down_for.is_none(),
        "store_down_for_secs": down_for,
        "last_store_error": last_error,
        "node": d.config.node_name,
        "store": d.config.store.describe(),
    });
    if let Ok(s) = tokio::time::timeout(Duration::from_secs(1), d.state.lock()).await {
        v["endpoints"] = s.endpoints.len().into();
        v["map_update_failures"] = s.map_failures.into();
        v["last_reconcile_error"] = s.last_reconcile_error.clone().into();
        v["routes"] = s.datapath.routes().map(|r| r.len()).unwrap_or(0).into();
        v["names"] = d.names_status().into();
        v["encryption"] = match &s.encryption {
            None => "none: traffic between hosts crosses the underlay in plain ([wireguard] turns it on)".to_owned(),
            Some(e) => {
                let encrypting = s
                    .shadow
                    .as_ref()
                    .map_or(0, |m| m.peers.values().filter(|p| p.flags & oxlay_common::PEER_WIREGUARD != 0).count());
                let hosts = s.snapshot.hosts.len().saturating_sub(1);
                format!(
                    "WireGuard on {} (UDP {}): {encrypting} of {hosts} other hosts encrypt",
                    e.device, e.endpoint.port
                )
            }
        }
        .into();
        v["egress"] = match (&s.nat_unavailable, &s.nat_error, &s.nat) {
            (Some(why), _, _) => format!("no masquerade, no published ports: {why}"),
            (None, Some(e), _) => format!("NAT table not written (retried): {e}"),
            (None, None, nat) => format!(
                "masquerade ({} subnets, {} published ports; nftables table ip {})",
                nat.as_ref().map_or(0, |n| n.masquerade.len()),
                nat.as_ref().map_or(0, |n| n.forwards.len()),
                crate::net::nftables::TABLE
            ),
        }
        .into();
    }
    v
}

/// The route map for `oxlay routes`: local routes name their interface.
fn routes(s: &State) -> Result<Vec<RouteView>> {
    let names: BTreeMap<u32, &str> = s
        .endpoints
        .values()
        .map(|e| (e.host_ifindex, e.host_ifname.as_str()))
        .collect();
    Ok(s.datapath
        .routes()?
        .into_iter()
        .map(|r| {
            let local = r.route.kind == RouteKind::Local as u8;
            RouteView {
                vni: r.net_id,
                destination: r.dest.to_string(),
                kind: match r.route.kind {
                    k if k == RouteKind::Local as u8 => "local",
                    k if k == RouteKind::Direct as u8 => "direct",
                    k if k == RouteKind::RemoteGre as u8 => "remote-gre",
                    _ => "remote",
                }
                .to_owned(),
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
        .collect())
}
