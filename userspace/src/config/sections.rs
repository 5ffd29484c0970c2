//! The config's optional sections, one struct each: `[l2]`, `[metrics]`, `[names]`,
//! `[docker]`, `[wireguard]`.
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Layer-2 networks (`oxlay network create --mode l2`): the NIC on the LAN they share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2Config {
    /// The second NIC, on the LAN of the layer-2 networks (not the underlay): their
    /// containers' frames leave by it as they are. No layer-2 networks without it.
    pub parent: Option<String>,
}

impl L2Config {
    pub(super) fn check(&self, underlay_interface: &str) -> Result<()> {
        let Some(parent) = &self.parent else {
            return Ok(());
        };
        if parent.is_empty() || parent.len() > 15 {
            bail!("l2.parent {parent:?} is not a valid interface name (1 to 15 characters)");
        }
        if parent == underlay_interface {
            bail!("l2.parent {parent:?} is the underlay interface: layer-2 networks take a NIC of their own (the second one, on their LAN)");
        }
        Ok(())
    }
}

/// Encryption between hosts with WireGuard: on when the section is there (even empty).
/// Traffic to a host that also encrypts goes through oxlay's WireGuard device; a host
/// without it is reached in plain, so a cluster can turn it on host by host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireguardConfig {
    /// The UDP port WireGuard listens on; peers learn it from the store.
    #[serde(default = "default_wireguard_port")]
    pub listen_port: u16,
    /// The name of oxlay's WireGuard device.
    #[serde(default = "default_wireguard_device")]
    pub device: String,
    /// Where this host's private key is kept (made at the first start, mode 0600); only
    /// the public key leaves the host, in its store record. By default
    /// /var/lib/oxlay/NODE.wireguard.key.
    pub key_file: Option<PathBuf>,
}

/// The default WireGuard port (Cilium's; 51820, WireGuard's own, is left to the host).
pub const WIREGUARD_PORT: u16 = 51871;

fn default_wireguard_port() -> u16 {
    WIREGUARD_PORT
}

fn default_wireguard_device() -> String {
    "oxlay-wg".to_owned()
}

impl Default for WireguardConfig {
    fn default() -> Self {
        Self {
            listen_port: WIREGUARD_PORT,
            device: default_wireguard_device(),
            key_file: None,
        }
    }
}

impl WireguardConfig {
    pub(super) fn check(&self, vxlan_port: u16, underlay_interface: &str) -> Result<()> {
        if self.listen_port == 0 {
            bail!("wireguard.listen_port must not be 0 (peers must know it; the default is {WIREGUARD_PORT})");
        }
        if self.listen_port == vxlan_port {
            bail!(
                "wireguard.listen_port {} is the VXLAN port: pick another (the default is {WIREGUARD_PORT})",
                self.listen_port
            );
        }
        if self.device.is_empty() || self.device.len() > 15 || self.device.contains('/') {
            bail!(
                "wireguard.device {:?} is not a valid interface name (1 to 15 characters, no '/')",
                self.device
            );
        }
        if self.device == underlay_interface {
            bail!(
                "wireguard.device {:?} is the underlay interface: name a device of its own",
                self.device
            );
        }
        Ok(())
    }
}

/// oxlay's resolver: containers find each other by name at 169.254.1.1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamesConfig {
    /// Answer containers' queries (on unless switched off).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Resolvers for names that are not containers' ("IP" or "IP:PORT"); by default
    /// those of /etc/resolv.conf.
    #[serde(default)]
    pub upstream: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for NamesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            upstream: Vec::new(),
        }
    }
}

impl NamesConfig {
    /// The configured upstream resolvers as socket addresses (port 53 unless given).
    pub fn upstream_servers(&self) -> Result<Vec<std::net::SocketAddr>> {
        self.upstream
            .iter()
            .map(|s| {
                let server = s
                    .parse::<std::net::SocketAddr>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "names.upstream {s:?} is not an address: use \"IP\" or \"IP:PORT\""
                        )
                    })?;
                if server.ip() == std::net::IpAddr::V4(crate::names::RESOLVER) {
                    bail!(
                        "names.upstream {s:?} is oxlay's own resolver: name the host's resolvers"
                    );
                }
                Ok(server)
            })
            .collect()
    }
}

/// Docker's network and IPAM driver plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Serve the plugin (`docker network create -d oxlay --ipam-driver oxlay`).
    #[serde(default)]
    pub enabled: bool,
    /// Where dockerd looks for it; the file name is the plugin's name.
    #[serde(default = "default_docker_socket")]
    pub socket: PathBuf,
    /// dockerd's API socket, to read what the plugin protocol does not carry (a
    /// network's `--label`s).
    #[serde(default = "default_engine_socket")]
    pub engine_socket: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            socket: default_docker_socket(),
            engine_socket: default_engine_socket(),
        }
    }
}

fn default_engine_socket() -> PathBuf {
    PathBuf::from("/run/docker.sock")
}

fn default_docker_socket() -> PathBuf {
    PathBuf::from("/run/docker/plugins/oxlay.sock")
}
