//! The daemon's configuration file (TOML): parsing and validation.
//!
//! Validation that needs no system state lives in [`Config::validate`] and is unit
//! tested; checks against the running system (does the interface exist?) happen when the
//! daemon starts, in `daemon/mod.rs` (`Underlay::find`).
use std::{net::Ipv4Addr, path::PathBuf, str::FromStr};

use anyhow::{bail, Context, Result};
use oxlay_common::wire::{VNI_MAX, VXLAN_PORT};
use serde::{Deserialize, Serialize};

use crate::net::{Ipv4Net, MacAddr};

mod sections;
pub use sections::*;

/// Where decapsulation runs on the underlay interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecapMode {
    /// TC ingress + `bpf_redirect_peer`: the faster one on veth underlays (see the
    /// benchmark in docs/benchmarks.md), and the default.
    #[default]
    Tc,
    /// XDP + `bpf_redirect`: for physical NICs with native XDP.
    Xdp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub underlay_address: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    /// Inner destination MAC towards this peer. A Linux vxlan device drops frames not
    /// addressed to its own MAC, so set it to that device's MAC; oxlay peers accept any.
    pub vtep_mac: Option<MacAddr>,
    /// Route to this peer without encapsulation when it is on our underlay subnet.
    #[serde(default)]
    pub direct: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node_name: String,
    pub underlay_interface: String,
    /// Defaults to the interface's first IPv4 address.
    pub underlay_address: Option<Ipv4Addr>,
    /// Defaults to a stable address derived from `node_name`.
    pub vtep_mac: Option<MacAddr>,
    /// Static network (with `pod_subnet` and `peers`): the hand-configured mode.
    /// Networks in the store need neither.
    pub vni: Option<u32>,
    #[serde(default = "default_port")]
    pub vxlan_port: u16,
    pub pod_subnet: Option<Ipv4Net>,
    /// How the static network's containers reach the outside (masquerade on unless
    /// `[egress] masquerade = false`).
    #[serde(default)]
    pub egress: crate::model::Egress,
    /// How the static network's packets travel to its peers: "vxlan" or "gre".
    #[serde(default)]
    pub encap: crate::model::Encap,
    #[serde(default)]
    pub decap: DecapMode,
    /// Unix socket of the local API; defaults to a per-node path.
    pub api_socket: Option<PathBuf>,
    /// bpffs directory for pinned maps; defaults to a per-node path.
    pub pin_path: Option<PathBuf>,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub names: NamesConfig,
    #[serde(default)]
    pub l2: L2Config,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Encryption between hosts; off without the section.
    #[serde(default)]
    pub wireguard: Option<WireguardConfig>,
}

/// The Prometheus endpoint: off unless an address is given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` answers, e.g. "127.0.0.1:9742".
    pub listen: Option<std::net::SocketAddr>,
}

/// Where hosts, networks and endpoints are shared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// etcd endpoints (e.g. "http://10.0.0.1:2379"); empty means the embedded store.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// File of the embedded store, shared by the daemons of one machine.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Seconds a host stays registered after its last keep-alive.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
}

impl StoreConfig {
    /// Which store, for logs and `oxlay status`.
    pub fn describe(&self) -> String {
        if self.etcd_endpoints.is_empty() {
            format!("embedded {}", self.path.display())
        } else {
            format!("etcd {}", self.etcd_endpoints.join(","))
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            path: default_store_path(),
            lease_ttl_secs: default_lease_ttl(),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from(crate::store::embedded::DEFAULT_PATH)
}

fn default_lease_ttl() -> u64 {
    10
}

fn default_port() -> u16 {
    VXLAN_PORT
}

/// Where the API socket of `node` lives unless configured otherwise.
pub fn default_socket_path(node: &str) -> PathBuf {
    PathBuf::from(format!("/run/oxlay/{node}.sock"))
}

/// Where the maps of `node` are pinned unless configured otherwise.
pub fn default_pin_path(node: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/oxlay/{node}"))
}

impl FromStr for Config {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).context("the config file is not valid")?;
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// The hand-configured network, if any: (VNI, this host's pod subnet).
    pub fn static_network(&self) -> Option<(u32, Ipv4Net)> {
        self.vni.zip(self.pod_subnet)
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        text.parse()
            .with_context(|| format!("in config file {}", path.display()))
    }

    /// Checks everything that can be checked without looking at the system.
    pub fn validate(&self) -> Result<()> {
        check_name("node_name", &self.node_name)?;
        if self.underlay_interface.is_empty() || self.underlay_interface.len() > 15 {
            bail!(
                "underlay_interface {:?} is not a valid interface name (1 to 15 characters)",
                self.underlay_interface
            );
        }
        match (self.vni, self.pod_subnet) {
            (Some(vni), Some(subnet)) => {
                if vni == 0 || vni > VNI_MAX {
                    bail!(
                        "vni {vni} is out of range: use 1 to {VNI_MAX} (VXLAN VNIs have 24 bits)"
                    );
                }
                check_pod_subnet("pod_subnet", subnet)?;
            }
            (None, None) if self.encap != crate::model::Encap::Vxlan => bail!(
                "encap is the static network's (with vni and pod_subnet); a network in the store takes `oxlay network create --encap gre`"
            ),
            (None, None) if self.peers.is_empty() => {}
            (None, None) => bail!("peers need a static network: set vni and pod_subnet too"),
            _ => bail!("vni and pod_subnet go together: set both for a static network, or neither"),
        }
        if self.store.lease_ttl_secs < 2 {
            bail!("store.lease_ttl_secs must be at least 2 (etcd's minimum lease)");
        }
        self.names.upstream_servers()?;
        self.l2.check(&self.underlay_interface)?;
        if let Some(wg) = &self.wireguard {
            wg.check(self.vxlan_port, &self.underlay_interface)?;
        }
        if self.vxlan_port == 0 {
            bail!("vxlan_port must not be 0 (the standard VXLAN port is {VXLAN_PORT})");
        }
        let mut names = std::collections::HashSet::from([self.node_name.as_str()]);
        let mut subnets: Vec<(&str, Ipv4Net)> = self
            .pod_subnet
            .map(|s| (self.node_name.as_str(), s))
            .into_iter()
            .collect();
        let mut addrs = std::collections::HashSet::new();
        if let Some(a) = self.underlay_address {
            addrs.insert(a);
        }
        for peer in &self.peers {
            check_name("peers.name", &peer.name)?;
            if !names.insert(&peer.name) {
                bail!(
                    "peer name {:?} appears twice (or equals node_name): names must be unique",
                    peer.name
                );
            }
            check_pod_subnet(
                &format!("pod_subnet of peer {}", peer.name),
                peer.pod_subnet,
            )?;
            if !addrs.insert(peer.underlay_address) {
                bail!(
                    "underlay_address {} of peer {} is used twice: each host has its own",
                    peer.underlay_address,
                    peer.name
                );
            }
            for (other, subnet) in &subnets {
                if subnet.overlaps(&peer.pod_subnet) {
                    bail!(
                        "pod_subnet {} of {} overlaps {} of {}: every host needs its own subnet",
                        peer.pod_subnet,
                        peer.name,
                        subnet,
                        other
                    );
                }
            }
            subnets.push((&peer.name, peer.pod_subnet));
        }
        Ok(())
    }

    pub fn socket_path(&self) -> PathBuf {
        self.api_socket
            .clone()
            .unwrap_or_else(|| default_socket_path(&self.node_name))
    }

    pub fn pin_path(&self) -> PathBuf {
        self.pin_path
            .clone()
            .unwrap_or_else(|| default_pin_path(&self.node_name))
    }

    /// The configured VTEP MAC, or one derived from the node name: locally
    /// administered, unicast, and the same every time the daemon starts.
    pub fn vtep_mac(&self) -> MacAddr {
        self.vtep_mac
            .unwrap_or_else(|| MacAddr::derived(&self.node_name))
    }

    /// Where this host's WireGuard private key is kept.
    pub fn wireguard_key_file(&self) -> Option<PathBuf> {
        self.wireguard.as_ref().map(|wg| {
            wg.key_file.clone().unwrap_or_else(|| {
                PathBuf::from(format!("/var/lib/oxlay/{}.wireguard.key", self.node_name))
            })
        })
    }

    /// MTU that containers get: the underlay's minus the VXLAN overhead.
    pub fn container_mtu(underlay_mtu: u32) -> u32 {
        underlay_mtu.saturating_sub(50)
    }
}

/// Checks a name (of a node, peer or network): what a key, a file name and a log line
/// can all hold.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        bail!("{what} {name:?} is not valid: use 1 to 63 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

fn check_pod_subnet(what: &str, subnet: Ipv4Net) -> Result<()> {
    if subnet.prefix_len() > 30 {
        bail!("{what} {subnet} is too small: use a /30 or larger to leave room for containers");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
