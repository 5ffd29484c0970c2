//! The `oxlay` command: the daemon and the CLI that talks to it.
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use oxlay::{
    api::{self, CounterView, EndpointView, NoArgs, Request, RouteView},
    cli::{Cli, Command, EndpointCmd, NetworkCmd},
    config::Config,
    daemon,
    model::{EndpointRecord, HostRecord, NetworkRecord},
};

fn main() -> ExitCode {
    // Runtimes run the same binary as a CNI plugin ("type": "oxlay").
    if std::env::var_os("CNI_COMMAND").is_some() {
        return oxlay::plugins::cni::main();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Daemon { config } => daemon::run(Config::load(&config)?).await,
        Command::Attach {
            target,
            netns,
            address,
            ifname,
        } => {
            let v = api::call(
                &target.socket()?,
                &Request::Attach {
                    netns,
                    address,
                    ifname: Some(ifname),
                },
            )
            .await?;
            let e: EndpointView = serde_json::from_value(v)?;
            println!(
                "attached {} as {} ({}, mtu {}) via {}",
                e.netns, e.address, e.mac, e.mtu, e.host_interface
            );
            Ok(())
        }
        Command::Detach { target, netns } => {
            api::call(
                &target.socket()?,
                &Request::Detach {
                    netns: netns.clone(),
                },
            )
            .await?;
            println!("detached {netns}");
            Ok(())
        }
        Command::Routes(l) => {
            let v = api::call(&l.target.socket()?, &Request::Routes(NoArgs {})).await?;
            print_listing(l.json, &v, |v| {
                let routes: Vec<RouteView> = serde_json::from_value(v)?;
                println!(
                    "{:<8} {:<18} {:<7} {:<16} MAC",
                    "VNI", "DESTINATION", "KIND", "VIA"
                );
                for r in routes {
                    println!(
                        "{:<8} {:<18} {:<7} {:<16} {}",
                        r.vni, r.destination, r.kind, r.via, r.mac
                    );
                }
                Ok(())
            })
        }
        Command::Endpoints(l) => {
            let v = api::call(&l.target.socket()?, &Request::Endpoints(NoArgs {})).await?;
            print_listing(l.json, &v, |v| {
                let eps: Vec<EndpointView> = serde_json::from_value(v)?;
                println!(
                    "{:<20} {:<16} {:<18} {:<12} MTU",
                    "NETNS", "ADDRESS", "MAC", "HOST-IF"
                );
                for e in eps {
                    println!(
                        "{:<20} {:<16} {:<18} {:<12} {}",
                        e.netns, e.address, e.mac, e.host_interface, e.mtu
                    );
                }
                Ok(())
            })
        }
        Command::Network(cmd) => network_command(cmd).await,
        Command::Status(l) => {
            let v = api::call(&l.target.socket()?, &Request::Status(NoArgs {})).await?;
            print_listing(l.json, &v, |v| {
                println!("node       {}", v["node"].as_str().unwrap_or("?"));
                println!("store      {}", v["store"].as_str().unwrap_or("?"));
                match v["store_down_for_secs"].as_f64() {
                    None => println!("reachable  yes"),
                    Some(s) => println!(
                        "reachable  NO, for {s:.0} s ({}); forwarding continues on known routes",
                        v["last_store_error"].as_str().unwrap_or("")
                    ),
                }
                println!("endpoints  {}", v["endpoints"]);
                println!("routes     {}", v["routes"]);
                Ok(())
            })
        }
        Command::Uninstall(target) => {
            let socket = target.socket()?;
            api::call(&socket, &Request::Uninstall(NoArgs {})).await?;
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
        Command::Endpoint(cmd) => endpoint_command(cmd).await,
        Command::Hosts(l) => {
            let v = api::call(&l.target.socket()?, &Request::Hosts(NoArgs {})).await?;
            print_listing(l.json, &v, |v| {
                let hosts: Vec<HostRecord> = serde_json::from_value(v)?;
                println!("{:<24} {:<16} VTEP-MAC", "HOST", "UNDERLAY");
                for h in hosts {
                    println!(
                        "{:<24} {:<16} {}",
                        h.name,
                        h.underlay_address.to_string(),
                        h.vtep_mac
                    );
                }
                Ok(())
            })
        }
        Command::Stats(l) => {
            let v = api::call(&l.target.socket()?, &Request::Stats(NoArgs {})).await?;
            print_listing(l.json, &v, |v| {
                let counters: Vec<CounterView> = serde_json::from_value(v)?;
                println!("{:<26} {:>14}  MEANING", "COUNTER", "PACKETS");
                for c in counters {
                    println!("{:<26} {:>14}  {}", c.name, c.value, c.help);
                }
                Ok(())
            })
        }
    }
}

async fn network_command(cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create {
            name,
            subnet,
            vni,
            block_size,
            labels,
            allow_overlap,
            direct,
            target,
        } => {
            let v = api::call(
                &target.socket()?,
                &Request::NetworkCreate {
                    name,
                    subnet,
                    vni,
                    block_prefix: block_size,
                    labels: labels.into_iter().collect(),
                    allow_overlap,
                    direct,
                },
            )
            .await?;
            let n: NetworkRecord = serde_json::from_value(v)?;
            println!(
                "created network {} (vni {}, subnet {}, blocks /{}{})",
                n.name,
                n.vni,
                n.subnet,
                n.block_prefix,
                if n.direct { ", direct" } else { "" }
            );
            Ok(())
        }
        NetworkCmd::Ls(l) => {
            let v = api::call(&l.target.socket()?, &Request::NetworkLs(NoArgs {})).await?;
            print_listing(l.json, &v, |v| {
                let nets: Vec<NetworkRecord> = serde_json::from_value(v)?;
                println!(
                    "{:<20} {:<10} {:<18} {:<6} LABELS",
                    "NAME", "VNI", "SUBNET", "BLOCK"
                );
                for n in nets {
                    let labels: Vec<String> =
                        n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<20} {:<10} {:<18} /{:<5} {}",
                        n.name,
                        n.vni,
                        n.subnet.to_string(),
                        n.block_prefix,
                        labels.join(",")
                    );
                }
                Ok(())
            })
        }
        NetworkCmd::Inspect { name, target } => {
            let v = api::call(&target.socket()?, &Request::NetworkInspect { name }).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        NetworkCmd::Rm { name, target } => {
            api::call(
                &target.socket()?,
                &Request::NetworkRm { name: name.clone() },
            )
            .await?;
            println!("removed network {name}");
            Ok(())
        }
    }
}

async fn endpoint_command(cmd: EndpointCmd) -> Result<()> {
    match cmd {
        EndpointCmd::Create {
            network,
            netns,
            ip,
            labels,
            ifname,
            target,
        } => {
            let request = Request::EndpointCreate {
                network,
                netns,
                sandbox: None,
                ip,
                labels: labels.into_iter().collect(),
                ifname,
            };
            let e: EndpointView =
                serde_json::from_value(api::call(&target.socket()?, &request).await?)?;
            println!(
                "created endpoint {} on {} (vni {}): {} as {} ({}, mtu {}) via {}",
                e.netns,
                e.network,
                e.vni,
                e.container_interface,
                e.address,
                e.mac,
                e.mtu,
                e.host_interface
            );
            Ok(())
        }
        EndpointCmd::Ls { network, listing } => {
            let v = api::call(&listing.target.socket()?, &Request::EndpointLs { network }).await?;
            print_listing(listing.json, &v, |v| {
                let eps: Vec<EndpointRecord> = serde_json::from_value(v)?;
                println!(
                    "{:<16} {:<16} {:<16} {:<24} LABELS",
                    "NETWORK", "ADDRESS", "HOST", "SANDBOX"
                );
                for e in eps {
                    let labels: Vec<String> =
                        e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<16} {:<16} {:<16} {:<24} {}",
                        e.network,
                        e.address,
                        e.host,
                        e.sandbox,
                        labels.join(",")
                    );
                }
                Ok(())
            })
        }
        EndpointCmd::Rm {
            network,
            netns,
            target,
        } => {
            api::call(
                &target.socket()?,
                &Request::EndpointRm {
                    network: network.clone(),
                    netns: netns.clone(),
                    missing_ok: false,
                },
            )
            .await?;
            println!("removed endpoint of {netns} on {network}");
            Ok(())
        }
    }
}

fn print_listing(
    json: bool,
    value: &serde_json::Value,
    table: impl FnOnce(serde_json::Value) -> Result<()>,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    } else {
        table(value.clone())
    }
}
