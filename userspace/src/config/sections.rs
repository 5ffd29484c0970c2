//! The config's optional sections, one struct each: `[l2]`, `[metrics]`, `[names]`,
//! `[docker]`.
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
