//! What each command does: one request to the node's daemon, then its answer printed
//! as a sentence, a table, or (`--json`) as the daemon sent it.
use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{tables, Cli, Command, EndpointCmd, NetworkCmd, NetworkMode};
use crate::{
    api::{self, EndpointView, NoArgs, Request},
    config::Config,
    daemon,
    model::{Egress, L2Settings, NetworkRecord},
    net::Ipv4Net,
};

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<()> {
    let Cli {
        target,
        json,
        command,
    } = cli;
    let request = match command {
        Command::Daemon { config } => return daemon::run(Config::load(&config)?).await,
        Command::Uninstall => return uninstall(&target.socket()?).await,
        Command::Monitor {
            kind,
            sample,
            reasons,
            network,
            address,
            count,
        } => {
            let request = super::monitor::request(kind, sample, reasons, network, address);
            return super::monitor::run(&target.socket()?, &request, json, count).await;
        }
        command => request(command)?,
    };
    let doctor = matches!(request, Request::Doctor(_));
    let answer = match target.socket() {
        Ok(socket) => api::call(&socket, &request).await,
        Err(e) => Err(e),
    };
    let answer = match answer {
        Err(e) if doctor => {
            return Err(ExitWith::new(3, format!("doctor could not ask the daemon: {e:#}")).into())
        }
        other => other?,
    };
    let status = answer["status"].as_str().unwrap_or("").to_owned();
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{}", render(&request, answer)?);
    }
    match status.as_str() {
        _ if !doctor => Ok(()),
        "ok" => Ok(()),
        "warn" => Err(ExitWith::new(1, "doctor found warnings (above, each with its fix)").into()),
        _ => Err(ExitWith::new(2, "doctor found failures (above, each with its fix)").into()),
    }
}

/// An error that asks for its own exit code. `oxlay doctor`'s, as monitoring plugins
/// have them: 1 warnings, 2 failures, 3 it could not run.
#[derive(Debug)]
pub struct ExitWith {
    pub code: u8,
    message: String,
}

impl ExitWith {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}

/// The API request a command makes (every command but `daemon` and `uninstall`).
fn request(command: Command) -> Result<Request> {
    let all = NoArgs {};
    Ok(match command {
        Command::Attach {
            netns,
            address,
            ifname,
        } => Request::Attach {
            netns,
            address,
            ifname: Some(ifname),
        },
        Command::Detach { netns } => Request::Detach { netns },
        Command::Routes => Request::Routes(all),
        Command::Endpoints => Request::Endpoints(all),
        Command::Stats => Request::Stats(all),
        Command::Doctor => Request::Doctor(all),
        Command::Explain {
            network,
            from,
            to,
            proto,
            sport,
            dport,
            size,
            receive,
            peer,
        } => Request::Explain {
            network,
            from,
            to,
            protocol: proto,
            sport,
            dport,
            size,
            receive,
            peer,
        },
        Command::Hosts => Request::Hosts(all),
        Command::Status => Request::Status(all),
        Command::Network(cmd) => network_request(cmd)?,
        Command::Endpoint(cmd) => endpoint_request(cmd),
        Command::Daemon { .. } | Command::Uninstall | Command::Monitor { .. } => {
            unreachable!("handled in run: they make no single request")
        }
    })
}

fn network_request(cmd: NetworkCmd) -> Result<Request> {
    Ok(match cmd {
        NetworkCmd::Create {
            name,
            subnet,
            vni,
            block_size,
            labels,
            allow_overlap,
            direct,
            masquerade,
            masquerade_except,
            encap,
            mode,
            gateway,
            ip_range,
            vlan,
        } => Request::NetworkCreate {
            name,
            subnet,
            vni,
            block_prefix: block_size,
            labels: labels.into_iter().collect(),
            allow_overlap,
            direct,
            egress: Egress {
                masquerade,
                except: masquerade_except,
            },
            encap,
            l2: l2_settings(mode, gateway, ip_range, vlan)?,
        },
        NetworkCmd::Ls => Request::NetworkLs(NoArgs {}),
        NetworkCmd::Inspect { name } => Request::NetworkInspect { name },
        NetworkCmd::Rm { name } => Request::NetworkRm { name },
    })
}

/// The layer-2 part of `network create`: only with `--mode l2`, which needs a gateway.
fn l2_settings(
    mode: NetworkMode,
    gateway: Option<Ipv4Addr>,
    ip_range: Option<Ipv4Net>,
    vlan: Option<u16>,
) -> Result<Option<L2Settings>> {
    match (mode, gateway) {
        (NetworkMode::L2, Some(gateway)) => Ok(Some(L2Settings {
            gateway,
            ip_range,
            vlan: vlan.unwrap_or(0),
        })),
        (NetworkMode::L2, None) => {
            bail!("--mode l2 needs --gateway: the LAN router's address, the containers' default gateway")
        }
        (NetworkMode::Overlay, _) if gateway.is_some() || ip_range.is_some() || vlan.is_some() => {
            bail!("--gateway, --ip-range and --vlan are for layer-2 networks: add --mode l2")
        }
        (NetworkMode::Overlay, _) => Ok(None),
    }
}

fn endpoint_request(cmd: EndpointCmd) -> Request {
    match cmd {
        EndpointCmd::Create {
            network,
            netns,
            ip,
            labels,
            ifname,
            names,
        } => Request::EndpointCreate {
            network,
            netns,
            sandbox: None,
            ip,
            labels: labels.into_iter().collect(),
            ifname,
            names,
        },
        EndpointCmd::Ls { network } => Request::EndpointLs { network },
        EndpointCmd::Rm { network, netns } => Request::EndpointRm {
            network,
            netns,
            missing_ok: false,
        },
    }
}

fn decode<T: DeserializeOwned>(answer: Value) -> Result<T> {
    serde_json::from_value(answer)
        .map_err(|e| anyhow::anyhow!("the daemon's answer is not what this oxlay expects ({e}): are the daemon and the CLI the same version?"))
}

/// The daemon's answer to `request`, for a person.
fn render(request: &Request, answer: Value) -> Result<String> {
    Ok(match request {
        Request::Attach { .. } => {
            let e: EndpointView = decode(answer)?;
            format!(
                "attached {} as {} ({}, mtu {}) via {}",
                e.netns, e.address, e.mac, e.mtu, e.host_interface
            )
        }
        Request::Detach { netns } => format!("detached {netns}"),
        Request::Routes(_) => tables::routes(&decode::<Vec<_>>(answer)?),
        Request::Endpoints(_) => tables::local_endpoints(&decode::<Vec<_>>(answer)?),
        Request::Stats(_) => tables::stats(&decode(answer)?),
        Request::Monitor { .. } => answer.to_string(),
        Request::Explain { .. } => crate::explain::render(&decode(answer)?),
        Request::Doctor(_) => crate::doctor::render(&decode::<Vec<_>>(answer["findings"].clone())?),
        Request::Hosts(_) => tables::hosts(&decode::<Vec<_>>(answer)?),
        Request::Status(_) => status(&answer),
        Request::NetworkCreate { .. } => {
            let n: NetworkRecord = decode(answer)?;
            format!(
                "created network {} (vni {}, subnet {}, blocks /{}{})",
                n.name,
                n.vni,
                n.subnet,
                n.block_prefix,
                if n.direct { ", direct" } else { "" }
            )
        }
        Request::NetworkLs(_) => tables::networks(&decode::<Vec<_>>(answer)?),
        Request::NetworkInspect { .. } => serde_json::to_string_pretty(&answer)?,
        Request::NetworkRm { name } => format!("removed network {name}"),
        Request::EndpointCreate { .. } => {
            let e: EndpointView = decode(answer)?;
            format!(
                "created endpoint {} on {} (vni {}): {} as {} ({}, mtu {}) via {}",
                e.netns,
                e.network,
                e.vni,
                e.container_interface,
                e.address,
                e.mac,
                e.mtu,
                e.host_interface
            )
        }
        Request::EndpointLs { .. } => tables::store_endpoints(&decode::<Vec<_>>(answer)?),
        Request::EndpointRm { network, netns, .. } => {
            format!("removed endpoint of {netns} on {network}")
        }
        Request::Uninstall(_) => "uninstalling".to_owned(),
    })
}

fn status(v: &Value) -> String {
    let text = |key: &str| v[key].as_str().unwrap_or("?").to_owned();
    let reachable = match v["store_down_for_secs"].as_f64() {
        None => "yes".to_owned(),
        Some(s) => format!(
            "NO, for {s:.0} s ({}); forwarding continues on known routes",
            v["last_store_error"].as_str().unwrap_or("")
        ),
    };
    [
        ("node", text("node")),
        ("store", text("store")),
        ("reachable", reachable),
        ("endpoints", v["endpoints"].to_string()),
        ("routes", v["routes"].to_string()),
        ("egress", text("egress")),
        ("names", text("names")),
        ("encryption", text("encryption")),
    ]
    .iter()
    .map(|(k, v)| format!("{k:<10} {v}"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// Asks the daemon to remove everything it made, and waits until it has.
async fn uninstall(socket: &std::path::Path) -> Result<()> {
    api::call(socket, &Request::Uninstall(NoArgs {})).await?;
    // The daemon removes its socket last: wait for it, so "done" means done.
    for _ in 0..300 {
        if !socket.exists() {
            println!("uninstalled");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("the daemon did not finish uninstalling within 15 s; see its log")
}
