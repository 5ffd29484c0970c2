//! The `oxlay` command line, after docker, kubectl and ip: its grammar here (clap, kept
//! in the library so the property tests can throw arbitrary argument lists at it), what
//! each command does in `commands`, and how answers print in `tables`.
//!
//! `--node`, `--socket` and `--json` are global: they go before or after the
//! subcommand, and `OXLAY_NODE` / `OXLAY_SOCKET` stand in for the first two.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::{config, net::Ipv4Net};

mod commands;
mod monitor;
mod tables;

pub use commands::{run, ExitWith};

#[derive(Parser)]
#[command(
    name = "oxlay",
    version,
    about = "Container overlay network with an eBPF VXLAN datapath"
)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    /// Print the daemon's answer as JSON instead of a table or a sentence.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the node daemon (root): load the datapath, serve the local API.
    Daemon {
        /// TOML config file (see README: "Config reference").
        #[arg(long)]
        config: PathBuf,
    },
    /// Connect an existing network namespace to the overlay.
    Attach {
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
        #[arg(long)]
        netns: String,
    },
    /// Show the route map.
    Routes,
    /// Show local endpoints.
    Endpoints,
    /// Show datapath counters and drop reasons.
    Stats,
    /// Check this host and its peers: kernel features, the store and the lease, the
    /// clock, the route map, forwarding, the VXLAN port, and each peer's answer and
    /// path MTU. Each finding with its fix. Exit code 0 when nothing is wrong, 1 with
    /// warnings, 2 with failures, 3 when doctor could not run.
    Doctor,
    /// What the datapath does with a packet: the loaded program runs on a probe
    /// against the live maps (route matched, peer and VNI, outer headers, or the drop
    /// reason). Probes are counted nowhere.
    Explain {
        /// The network (a store network's name, or "static").
        #[arg(long)]
        network: String,
        /// Source: a container on this host (or, with --receive, on a peer).
        #[arg(long)]
        from: Ipv4Addr,
        #[arg(long)]
        to: Ipv4Addr,
        /// tcp, udp or icmp (default: tcp with --dport, icmp without).
        #[arg(long)]
        proto: Option<String>,
        #[arg(long)]
        sport: Option<u16>,
        #[arg(long)]
        dport: Option<u16>,
        /// The packet's IPv4 length in bytes (default 100).
        #[arg(long)]
        size: Option<u16>,
        /// A packet arriving from a peer in VXLAN (or GRE) instead.
        #[arg(long)]
        receive: bool,
        /// With --receive: the peer's underlay address (default: the host whose block
        /// holds --from).
        #[arg(long, requires = "receive")]
        peer: Option<Ipv4Addr>,
    },
    /// Watch the datapath's drops as they happen (with `--type trace|all`, a sample of
    /// what it forwards too). `--json`: one object per line.
    Monitor {
        #[arg(long = "type", default_value = "drop", value_name = "drop|trace|all")]
        kind: MonitorKind,
        /// Trace one forwarded packet in N.
        #[arg(long, default_value_t = 1)]
        sample: u32,
        /// Only this reason (a counter name, as `oxlay stats` shows; repeatable).
        #[arg(long = "reason")]
        reasons: Vec<String>,
        /// Only this network's packets.
        #[arg(long)]
        network: Option<String>,
        /// Only packets from or to this address (the container's or the underlay's).
        #[arg(long)]
        address: Option<Ipv4Addr>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Show the hosts registered in the store.
    Hosts,
    /// Show the daemon's health: whether the store answers, what the datapath carries.
    Status,
    /// Remove everything the node's daemon made (endpoints, registration, programs,
    /// pinned maps) and stop it. Stopping the daemon alone leaves the datapath running.
    Uninstall,
    /// Networks: separate overlays, each with its own VNI and address pool.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Endpoints: a container's interface on a network.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
}

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a network (VNI and subnet are allocated when not given).
    Create {
        name: String,
        #[arg(long)]
        subnet: Option<Ipv4Net>,
        #[arg(long)]
        vni: Option<u32>,
        /// Size of the address blocks hosts lease, e.g. /24.
        #[arg(long, value_parser = parse_block_size)]
        block_size: Option<u8>,
        /// KEY=VALUE, repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Allow the subnet to overlap another network's (they stay isolated).
        #[arg(long)]
        allow_overlap: bool,
        /// Route to hosts on the same underlay subnet without encapsulation (plain
        /// host routing); VXLAN for the others.
        #[arg(long)]
        direct: bool,
        /// Containers' traffic to destinations outside every oxlay network leaves with
        /// the host's address (`--masquerade=false`: with the container's own).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
        masquerade: bool,
        /// A destination range that keeps the container's address even with
        /// masquerade on (e.g. a routed data-centre range); repeatable.
        #[arg(long = "masquerade-except", value_name = "CIDR")]
        masquerade_except: Vec<Ipv4Net>,
        /// Between hosts: vxlan (the default) or gre (Ethernet over GRE, key = VNI, as
        /// Linux's gretap).
        #[arg(long, default_value = "vxlan", value_name = "vxlan|gre")]
        encap: crate::model::Encap,
        /// overlay (the default) or l2: the LAN's subnet on each host's `[l2] parent`
        /// NIC, containers' frames on the wire as they are (needs --subnet, --gateway).
        #[arg(long, default_value = "overlay", value_name = "overlay|l2")]
        mode: NetworkMode,
        /// Layer-2 networks: the LAN router, the containers' default gateway.
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// Layer-2 networks: the part of the subnet oxlay hands out (default: all).
        #[arg(long, value_name = "CIDR")]
        ip_range: Option<Ipv4Net>,
        /// Layer-2 networks: the 802.1Q VLAN id on the wire (default: untagged).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
        vlan: Option<u16>,
    },
    /// List networks.
    Ls,
    /// Show a network with its blocks and endpoints (JSON).
    Inspect { name: String },
    /// Remove a network (refused while it has endpoints).
    Rm { name: String },
}

/// What `oxlay monitor` shows: drops, traces of forwarded packets, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MonitorKind {
    Drop,
    Trace,
    All,
}

/// What kind of network `network create` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    Overlay,
    L2,
}

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Give a namespace on this node an interface on a network.
    Create {
        #[arg(long)]
        network: String,
        #[arg(long)]
        netns: String,
        /// A specific address instead of the next free one.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Interface name in the namespace (default eth0, then eth1, ...).
        #[arg(long)]
        ifname: Option<String>,
        /// A name the network's other containers find it by (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// List endpoints of all hosts.
    Ls {
        #[arg(long)]
        network: Option<String>,
    },
    /// Remove a namespace's endpoint on a network.
    Rm {
        #[arg(long)]
        network: String,
        #[arg(long)]
        netns: String,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not a label: write KEY=VALUE"))
}

fn parse_block_size(s: &str) -> Result<u8, String> {
    s.trim_start_matches('/')
        .parse::<u8>()
        .ok()
        .filter(|n| *n <= 32)
        .ok_or_else(|| format!("{s:?} is not a block size: write a prefix length such as /24"))
}

/// Which daemon to talk to.
#[derive(Args)]
pub struct Target {
    /// Node whose daemon to talk to (selects its default socket).
    #[arg(long, global = true, env = "OXLAY_NODE")]
    pub node: Option<String>,
    /// API socket path (overrides --node).
    #[arg(long, global = true, env = "OXLAY_SOCKET")]
    pub socket: Option<PathBuf>,
}

impl Target {
    pub fn socket(&self) -> Result<PathBuf> {
        match (&self.socket, &self.node) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(n)) => Ok(config::default_socket_path(n)),
            (None, None) => anyhow::bail!(
                "say which daemon to talk to: --node NAME or --socket PATH (or OXLAY_NODE / OXLAY_SOCKET)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_and_block_sizes_parse_or_say_why() {
        assert_eq!(parse_label("tier=web"), Ok(("tier".into(), "web".into())));
        assert!(parse_label("=x").unwrap_err().contains("KEY=VALUE"));
        assert_eq!(parse_block_size("/24"), Ok(24));
        assert!(parse_block_size("/33").is_err());
    }

    #[test]
    fn target_and_json_go_before_or_after_the_subcommand() {
        for args in [
            &["oxlay", "--node", "a", "--json", "network", "ls"][..],
            &["oxlay", "network", "ls", "--node", "a", "--json"],
            &["oxlay", "network", "--json", "ls", "--node", "a"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.target.node.as_deref(), Some("a"), "{args:?}");
            assert!(cli.json, "{args:?}");
            assert!(matches!(cli.command, Command::Network(NetworkCmd::Ls)));
        }
    }
}
