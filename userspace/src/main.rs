//! The `oxlay` command: the daemon and the CLI that talks to it.
use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use oxlay::{
    api::{self, CounterView, EndpointView, NoArgs, Request, RouteView},
    config::{self, Config},
    daemon,
};

#[derive(Parser)]
#[command(
    name = "oxlay",
    version,
    about = "Container overlay network with an eBPF VXLAN datapath"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon (root): load the datapath, serve the local API.
    Daemon {
        /// TOML config file (see README: "Config reference").
        #[arg(long)]
        config: PathBuf,
    },
    /// Connect an existing network namespace to the overlay.
    Attach {
        #[command(flatten)]
        target: Target,
        /// Namespace name (under /run/netns) or path.
        #[arg(long)]
        netns: String,
        /// The container's address, inside the node's pod subnet.
        #[arg(long)]
        address: Ipv4Addr,
        /// Interface name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Disconnect a namespace and remove its interface.
    Detach {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        netns: String,
    },
    /// Show the route map.
    Routes(Listing),
    /// Show local endpoints.
    Endpoints(Listing),
    /// Show datapath counters and drop reasons.
    Stats(Listing),
}

#[derive(Args)]
struct Target {
    /// Node whose daemon to talk to (selects its default socket).
    #[arg(long)]
    node: Option<String>,
    /// API socket path (overrides --node).
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[derive(Args)]
struct Listing {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Target {
    fn socket(&self) -> Result<PathBuf> {
        match (&self.socket, &self.node) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(n)) => Ok(config::default_socket_path(n)),
            (None, None) => {
                anyhow::bail!("say which daemon to talk to: --node NAME or --socket PATH")
            }
        }
    }
}

fn main() -> ExitCode {
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
