//! The records the store holds, and their decoding.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::l2::L2Settings;
use crate::{
    net::{Ipv4Net, MacAddr},
    store::Store,
};

/// VNIs handed out when none is asked for start here (low ones are left for users).
pub const FIRST_AUTO_VNI: u32 = 4096;
/// Subnets handed out when none is asked for are /16s of this pool.
pub const DEFAULT_POOL: &str = "10.240.0.0/12";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub underlay_address: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// The host's datapath takes GRE. Daemons from before GRE leave it out: every
    /// host sends them VXLAN, also on GRE networks, until they are upgraded.
    #[serde(default)]
    pub gre: bool,
    /// The host encrypts with WireGuard: how to reach its device. Hosts without it (or
    /// from before it) are reached in plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardEndpoint>,
}

/// A host's WireGuard device as its peers configure it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardEndpoint {
    /// The device's public key, base64 as `wg` prints it.
    pub public_key: String,
    /// Its UDP port (on the host's underlay address).
    pub port: u16,
}

/// How a network's containers reach destinations outside every oxlay network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Leave with the host's address (masquerade), so that a network that knows no
    /// container route answers. On unless switched off.
    #[serde(default = "masquerade_default")]
    pub masquerade: bool,
    /// Destinations that keep the container's address all the same (routed
    /// data-centre ranges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Ipv4Net>,
}

fn masquerade_default() -> bool {
    true
}

impl Default for Egress {
    fn default() -> Self {
        Self {
            masquerade: true,
            except: Vec::new(),
        }
    }
}

/// How a network's packets travel between hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// VXLAN (RFC 7348): UDP, so the underlay spreads flows by source port.
    #[default]
    Vxlan,
    /// Ethernet over GRE with the VNI as key, as Linux's `gretap` does: 8 bytes less,
    /// but no port for ECMP or RSS to spread flows by.
    Gre,
}

impl Encap {
    pub fn name(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::Gre => "gre",
        }
    }

    fn is_vxlan(&self) -> bool {
        *self == Encap::Vxlan
    }
}

impl std::str::FromStr for Encap {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vxlan" => Ok(Encap::Vxlan),
            "gre" => Ok(Encap::Gre),
            other => bail!("encapsulation {other:?} is not known: use vxlan or gre"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// Prefix length of the blocks hosts lease from the subnet.
    pub block_prefix: u8,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Route to peers on the same underlay subnet without encapsulation.
    #[serde(default)]
    pub direct: bool,
    /// Set by `network rm` before it checks for endpoints: an endpoint create that sees
    /// it gives its address back, so a removal and a create never both succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
    /// Records written before egress existed masquerade, as new networks do.
    #[serde(default)]
    pub egress: Egress,
    /// Records written before GRE existed are VXLAN.
    #[serde(default, skip_serializing_if = "Encap::is_vxlan")]
    pub encap: Encap,
    /// A layer-2 network (`--mode l2`) on each host's `[l2] parent` NIC; an overlay
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<L2Settings>,
}

impl NetworkRecord {
    /// The addresses hosts lease blocks of: a layer-2 network's range, else the subnet.
    pub fn pool(&self) -> Ipv4Net {
        match &self.l2 {
            Some(l2) => l2.pool(self.subnet),
            None => self.subnet,
        }
    }

    /// Whether the IPAM may hand `address` out: a layer-2 network's gateway is the
    /// LAN router's.
    pub fn assignable(&self, address: Ipv4Addr) -> bool {
        self.l2.is_none_or(|l2| l2.gateway != address)
    }

    /// Checks what the code that reads a record relies on (a store may hold a record
    /// written by hand or by another version).
    pub fn validate(&self) -> Result<()> {
        let max = oxlay_common::wire::VNI_MAX;
        if self.vni == 0 || self.vni > max {
            bail!(
                "network {}: VNI {} is out of range 1..={max}",
                self.name,
                self.vni
            );
        }
        if let Some(l2) = &self.l2 {
            l2.check(self.subnet)
                .with_context(|| format!("network {}", self.name))?;
        }
        let pool = self.pool();
        if self.block_prefix < pool.prefix_len() || self.block_prefix > MAX_BLOCK_PREFIX {
            bail!(
                "network {}: block size /{} does not fit {pool} (/{}..=/{MAX_BLOCK_PREFIX})",
                self.name,
                self.block_prefix,
                pool.prefix_len()
            );
        }
        Ok(())
    }
}

/// The smallest block a host leases: a /30 has two usable addresses.
pub const MAX_BLOCK_PREFIX: u8 = 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub network: String,
    pub block: Ipv4Net,
    pub host: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network: String,
    pub address: Ipv4Addr,
    pub host: String,
    /// The sandbox (network namespace) the endpoint lives in.
    pub sandbox: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The interface in the sandbox and its MAC, once wired (a restarted daemon
    /// adopts the endpoint from these).
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Ports of this host that lead to the endpoint (`docker run -p`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPort>,
    /// The names other containers of the network find it by (oxlay's resolver):
    /// Docker's container name and aliases, CNI's container ID and pod name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

impl EndpointRecord {
    /// A record with nothing set yet: the address claim's starting point.
    pub fn unwired() -> Self {
        Self {
            network: String::new(),
            address: Ipv4Addr::UNSPECIFIED,
            host: String::new(),
            sandbox: String::new(),
            labels: BTreeMap::new(),
            interface: None,
            mac: None,
            published: Vec::new(),
            names: Vec::new(),
        }
    }
}

/// A port of the host that leads to a port of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub proto: PortProto,
    /// Only connections to this address of the host (all of its addresses if `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    Tcp,
    Udp,
}

impl std::fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        let (host, to, proto) = (self.host_port, self.container_port, self.proto.name());
        write!(f, "{host}->{to}/{proto}")
    }
}

impl PortProto {
    pub fn name(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        }
    }
}

/// What `network create` asks for.
#[derive(Clone, Debug, Default)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub vni: Option<u32>,
    pub block_prefix: Option<u8>,
    pub labels: BTreeMap<String, String>,
    /// Allow the subnet to overlap another network's (isolated by VNI anyway).
    pub allow_overlap: bool,
    pub direct: bool,
    pub egress: Egress,
    pub encap: Encap,
    /// A layer-2 network (`--mode l2`).
    pub l2: Option<L2Settings>,
}

pub(super) fn decode<T: DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).with_context(|| format!("store record {key} is not valid"))
}

/// A network record, checked (see [`NetworkRecord::validate`]).
pub fn decode_network(key: &str, value: &str) -> Result<NetworkRecord> {
    let record: NetworkRecord = decode(key, value)?;
    record
        .validate()
        .with_context(|| format!("store record {key} is not valid"))?;
    Ok(record)
}

pub(super) async fn list<T: DeserializeOwned>(store: &dyn Store, prefix: &str) -> Result<Vec<T>> {
    let (kvs, _) = store.list(prefix).await?;
    kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
}
