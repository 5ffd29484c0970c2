//! The control-plane model in the store, after Docker's libnetwork: hosts, networks
//! (each an overlay with its own VNI and address pool), and endpoints (a container's
//! interface on a network). Key layout, one record type per prefix:
//!
//! ```text
//! /oxlay/hosts/<host>                 HostRecord      leased: gone when the host is
//! /oxlay/networks/<network>           NetworkRecord
//! /oxlay/vnis/<vni>                   network name    claims the VNI
//! /oxlay/blocks/<network>/<a.b.c.d_n> BlockRecord     leased by the owning host
//! /oxlay/endpoints/<network>/<addr>   EndpointRecord  claims the address
//! ```
//!
//! Every claim (VNI, block, address) is a compare-and-put on a key that must not exist,
//! so two hosts acting at the same moment can never both win.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    net::{Ipv4Net, MacAddr},
    store::{LeaseId, Store},
};

/// Everything oxlay keeps in the store lives under this prefix.
pub const PREFIX: &str = "/oxlay/";
pub const HOSTS: &str = "/oxlay/hosts/";
pub const NETWORKS: &str = "/oxlay/networks/";
pub const VNIS: &str = "/oxlay/vnis/";
pub const BLOCKS: &str = "/oxlay/blocks/";
pub const ENDPOINTS: &str = "/oxlay/endpoints/";
/// Which oxlay network each host's Docker networks are: DOCKER/<host>/<docker id>.
pub const DOCKER: &str = "/oxlay/docker/";

/// VNIs handed out when none is asked for start here (low ones are left for users).
pub const FIRST_AUTO_VNI: u32 = 4096;
/// Subnets handed out when none is asked for are /16s of this pool.
pub const DEFAULT_POOL: &str = "10.240.0.0/12";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub underlay_address: Ipv4Addr,
    pub vtep_mac: MacAddr,
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
}

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
}

fn block_key(network: &str, block: Ipv4Net) -> String {
    format!("{BLOCKS}{network}/{}_{}", block.addr(), block.prefix_len())
}

fn endpoint_key(network: &str, address: Ipv4Addr) -> String {
    format!("{ENDPOINTS}{network}/{address}")
}

fn decode<T: DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).with_context(|| format!("store record {key} is not valid"))
}

async fn list<T: DeserializeOwned>(store: &dyn Store, prefix: &str) -> Result<Vec<T>> {
    let (kvs, _) = store.list(prefix).await?;
    kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
}

// ---- hosts ----

/// Registers (or refreshes) a host under `lease`.
pub async fn register_host(store: &dyn Store, host: &HostRecord, lease: LeaseId) -> Result<()> {
    store
        .put(
            &format!("{HOSTS}{}", host.name),
            &serde_json::to_string(host)?,
            Some(lease),
        )
        .await
        .map(|_| ())
}

pub async fn hosts(store: &dyn Store) -> Result<Vec<HostRecord>> {
    list(store, HOSTS).await
}

// ---- networks ----

pub async fn networks(store: &dyn Store) -> Result<Vec<NetworkRecord>> {
    list(store, NETWORKS).await
}

pub async fn network(store: &dyn Store, name: &str) -> Result<NetworkRecord> {
    let kv = store
        .get(&format!("{NETWORKS}{name}"))
        .await?
        .with_context(|| format!("network {name} does not exist (see `oxlay network ls`)"))?;
    decode(&kv.key, &kv.value)
}

/// Creates a network: claims its VNI (given, or the first free one from
/// [`FIRST_AUTO_VNI`]) and checks its subnet against the others.
pub async fn create_network(store: &dyn Store, spec: NetworkSpec) -> Result<NetworkRecord> {
    crate::config::check_name("network name", &spec.name)?;
    let existing = networks(store).await?;
    if existing.iter().any(|n| n.name == spec.name) {
        bail!("network {} already exists", spec.name);
    }
    let subnet = match spec.subnet {
        Some(s) => {
            // Direct networks share one table on the receiving side: never overlapping.
            if spec.direct {
                if let Some(other) = existing.iter().find(|n| n.direct && n.subnet.overlaps(&s)) {
                    bail!(
                        "subnet {s} overlaps direct network {} ({}): direct networks cannot overlap each other",
                        other.name,
                        other.subnet
                    );
                }
            }
            if !spec.allow_overlap {
                if let Some(other) = existing.iter().find(|n| n.subnet.overlaps(&s)) {
                    bail!(
                        "subnet {s} overlaps network {} ({}); pick another or pass --allow-overlap (networks stay isolated by VNI)",
                        other.name,
                        other.subnet
                    );
                }
            }
            s
        }
        None => free_subnet(&existing)?,
    };
    let block_prefix = spec.block_prefix.unwrap_or(24.max(subnet.prefix_len()));
    if block_prefix < subnet.prefix_len() || block_prefix > 30 {
        bail!(
            "block size /{block_prefix} does not fit subnet {subnet}: use /{} to /30",
            subnet.prefix_len()
        );
    }
    let vni = claim_vni(store, &spec.name, spec.vni).await?;
    let record = NetworkRecord {
        name: spec.name.clone(),
        vni,
        subnet,
        block_prefix,
        labels: spec.labels,
        direct: spec.direct,
    };
    let created = store
        .compare_and_put(
            &format!("{NETWORKS}{}", spec.name),
            0,
            &serde_json::to_string(&record)?,
            None,
        )
        .await?;
    if created.is_none() {
        store.delete(&format!("{VNIS}{vni}")).await?;
        bail!("network {} already exists", spec.name);
    }
    Ok(record)
}

fn free_subnet(existing: &[NetworkRecord]) -> Result<Ipv4Net> {
    let pool: Ipv4Net = DEFAULT_POOL.parse()?;
    let start = u32::from(pool.addr());
    let count = 1u32 << (16 - pool.prefix_len());
    for i in 0..count {
        let candidate = Ipv4Net::new(Ipv4Addr::from(start + (i << 16)), 16)?;
        if !existing.iter().any(|n| n.subnet.overlaps(&candidate)) {
            return Ok(candidate);
        }
    }
    bail!("no free /16 left in the default pool {DEFAULT_POOL}: give --subnet")
}

async fn claim_vni(store: &dyn Store, network: &str, wanted: Option<u32>) -> Result<u32> {
    let max = oxlay_common::wire::VNI_MAX;
    if let Some(vni) = wanted {
        if vni == 0 || vni > max {
            bail!("VNI {vni} is out of range: use 1 to {max}");
        }
        if store
            .compare_and_put(&format!("{VNIS}{vni}"), 0, network, None)
            .await?
            .is_none()
        {
            bail!("VNI {vni} is already used by another network; omit --vni to get a free one");
        }
        return Ok(vni);
    }
    let (taken, _) = store.list(VNIS).await?;
    let taken: std::collections::HashSet<u32> = taken
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(VNIS)?.parse().ok())
        .collect();
    for vni in (FIRST_AUTO_VNI..=max).filter(|v| !taken.contains(v)) {
        if store
            .compare_and_put(&format!("{VNIS}{vni}"), 0, network, None)
            .await?
            .is_some()
        {
            return Ok(vni);
        }
    }
    bail!("no free VNI left")
}

/// Adds labels a network does not have yet (ones it has keep their value), e.g. from
/// a runtime that names the network on each host.
pub async fn add_network_labels(
    store: &dyn Store,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<NetworkRecord> {
    let key = format!("{NETWORKS}{name}");
    loop {
        let kv = store
            .get(&key)
            .await?
            .with_context(|| format!("no network {name}"))?;
        let mut record: NetworkRecord = decode(&kv.key, &kv.value)?;
        let before = record.labels.len();
        for (k, v) in labels {
            record.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if record.labels.len() == before {
            return Ok(record);
        }
        let value = serde_json::to_string(&record)?;
        if store
            .compare_and_put(&key, kv.mod_revision, &value, None)
            .await?
            .is_some()
        {
            return Ok(record);
        }
    }
}

// ---- Docker networks ----

/// Records that `host`'s Docker network `docker_id` is oxlay network `network`.
pub async fn bind_docker_network(
    store: &dyn Store,
    host: &str,
    docker_id: &str,
    network: &str,
) -> Result<()> {
    store
        .put(&format!("{DOCKER}{host}/{docker_id}"), network, None)
        .await
        .map(|_| ())
}

pub async fn unbind_docker_network(store: &dyn Store, host: &str, docker_id: &str) -> Result<()> {
    store
        .delete(&format!("{DOCKER}{host}/{docker_id}"))
        .await
        .map(|_| ())
}

/// `host`'s Docker networks: Docker ID → oxlay network.
pub async fn docker_networks(store: &dyn Store, host: &str) -> Result<BTreeMap<String, String>> {
    let prefix = format!("{DOCKER}{host}/");
    let (kvs, _) = store.list(&prefix).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| Some((kv.key.strip_prefix(&prefix)?.to_owned(), kv.value)))
        .collect())
}

/// Removes a network; refused while it has endpoints.
pub async fn remove_network(store: &dyn Store, name: &str) -> Result<()> {
    let net = network(store, name).await?;
    let eps: Vec<EndpointRecord> = list(store, &format!("{ENDPOINTS}{name}/")).await?;
    if !eps.is_empty() {
        bail!(
            "network {name} still has {} endpoint(s) (e.g. {} on {}): remove them first",
            eps.len(),
            eps[0].address,
            eps[0].host
        );
    }
    let (blocks, _) = store.list(&format!("{BLOCKS}{name}/")).await?;
    for b in blocks {
        store.delete(&b.key).await?;
    }
    store.delete(&format!("{NETWORKS}{name}")).await?;
    store.delete(&format!("{VNIS}{}", net.vni)).await?;
    Ok(())
}

// ---- IPAM: blocks and addresses ----

pub async fn blocks(store: &dyn Store, network: &str) -> Result<Vec<BlockRecord>> {
    list(store, &format!("{BLOCKS}{network}/")).await
}

/// Blocks of every network.
pub async fn all_blocks(store: &dyn Store) -> Result<Vec<BlockRecord>> {
    list(store, BLOCKS).await
}

/// After its lease expired, a host claims the block of one of its endpoints again
/// (under its new lease), unless another host took it meanwhile.
pub async fn reclaim_block(
    store: &dyn Store,
    host: &str,
    lease: LeaseId,
    network_name: &str,
    address: Ipv4Addr,
) -> Result<()> {
    let net = network(store, network_name).await?;
    let block = tiles(&net)
        .find(|b| b.contains(address))
        .context("address outside the network")?;
    let key = block_key(network_name, block);
    let record = BlockRecord {
        network: network_name.to_owned(),
        block,
        host: host.to_owned(),
    };
    let expected = match store.get(&key).await? {
        None => 0,
        Some(kv) => {
            let owner: BlockRecord = decode(&kv.key, &kv.value)?;
            if owner.host != host {
                bail!("block {block} of network {network_name} was taken by {} while this host was away", owner.host);
            }
            if kv.lease == lease {
                return Ok(());
            }
            kv.mod_revision
        }
    };
    store
        .compare_and_put(
            &key,
            expected,
            &serde_json::to_string(&record)?,
            Some(lease),
        )
        .await?
        .map(|_| ())
        .with_context(|| format!("block {block} changed while re-claiming it"))
}

/// The endpoint (address claim) of `address` on `network`, if any.
pub async fn endpoint(
    store: &dyn Store,
    network: &str,
    address: Ipv4Addr,
) -> Result<Option<EndpointRecord>> {
    match store.get(&endpoint_key(network, address)).await? {
        Some(kv) => Ok(Some(decode(&kv.key, &kv.value)?)),
        None => Ok(None),
    }
}

pub async fn endpoints(store: &dyn Store, network: Option<&str>) -> Result<Vec<EndpointRecord>> {
    let prefix = match network {
        Some(n) => format!("{ENDPOINTS}{n}/"),
        None => ENDPOINTS.to_owned(),
    };
    list(store, &prefix).await
}

/// The addresses a block hands out: all but its first and last.
fn block_hosts(block: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(block.addr());
    let last = u32::from(block.broadcast());
    (first + 1..last).map(Ipv4Addr::from)
}

/// Every block of `net`'s subnet, in address order.
fn tiles(net: &NetworkRecord) -> impl Iterator<Item = Ipv4Net> + '_ {
    let start = u32::from(net.subnet.addr());
    let count = 1u64 << (net.block_prefix - net.subnet.prefix_len());
    let step = 1u64 << (32 - net.block_prefix);
    (0..count).filter_map(move |i| {
        Ipv4Net::new(Ipv4Addr::from(start + (i * step) as u32), net.block_prefix).ok()
    })
}

/// Allocates an address for a new endpoint of `host` on `network` (or claims `wanted`),
/// leasing a new block for the host when its blocks are full. The endpoint record is
/// the address claim.
pub async fn create_endpoint(
    store: &dyn Store,
    host: &str,
    host_lease: LeaseId,
    network_name: &str,
    sandbox: &str,
    wanted: Option<Ipv4Addr>,
    labels: BTreeMap<String, String>,
) -> Result<EndpointRecord> {
    let net = network(store, network_name).await?;
    let mut record = EndpointRecord {
        network: net.name.clone(),
        address: Ipv4Addr::UNSPECIFIED,
        host: host.to_owned(),
        sandbox: sandbox.to_owned(),
        labels,
        interface: None,
        mac: None,
    };
    if let Some(addr) = wanted {
        if !net.subnet.contains(addr) {
            bail!(
                "address {addr} is outside network {} ({})",
                net.name,
                net.subnet
            );
        }
        let block = tiles(&net)
            .find(|b| b.contains(addr))
            .context("no block holds the address")?;
        if !block_hosts(block).any(|a| a == addr) {
            bail!("address {addr} is the first or last of its block {block} and is not handed out");
        }
        ensure_block(store, &net, block, host, host_lease).await?;
        record.address = addr;
        if !claim_address(store, &record).await? {
            bail!("address {addr} is already in use on network {}", net.name);
        }
        return Ok(record);
    }
    loop {
        let all_blocks_now = blocks(store, &net.name).await?;
        let used: std::collections::HashSet<Ipv4Addr> = endpoints(store, Some(&net.name))
            .await?
            .iter()
            .map(|e| e.address)
            .collect();
        for b in all_blocks_now.iter().filter(|b| b.host == host) {
            for addr in block_hosts(b.block).filter(|a| !used.contains(a)) {
                record.address = addr;
                if claim_address(store, &record).await? {
                    return Ok(record);
                }
            }
        }
        // Own blocks are full: lease a free one, then try again; unless another
        // allocation of this host got one meanwhile.
        let latest = blocks(store, &net.name).await?;
        let own = |bs: &[BlockRecord]| bs.iter().filter(|b| b.host == host).count();
        if own(&latest) > own(&all_blocks_now) {
            continue;
        }
        let taken: std::collections::HashSet<Ipv4Net> = latest.iter().map(|b| b.block).collect();
        let mut claimed = false;
        for block in tiles(&net).filter(|b| !taken.contains(b)) {
            if claim_block(store, &net, block, host, host_lease).await? {
                claimed = true;
                break;
            }
        }
        if !claimed {
            bail!(
                "network {} ({}) has no free address left",
                net.name,
                net.subnet
            );
        }
    }
}

async fn claim_address(store: &dyn Store, record: &EndpointRecord) -> Result<bool> {
    Ok(store
        .compare_and_put(
            &endpoint_key(&record.network, record.address),
            0,
            &serde_json::to_string(record)?,
            None,
        )
        .await?
        .is_some())
}

async fn claim_block(
    store: &dyn Store,
    net: &NetworkRecord,
    block: Ipv4Net,
    host: &str,
    lease: LeaseId,
) -> Result<bool> {
    let record = BlockRecord {
        network: net.name.clone(),
        block,
        host: host.to_owned(),
    };
    Ok(store
        .compare_and_put(
            &block_key(&net.name, block),
            0,
            &serde_json::to_string(&record)?,
            Some(lease),
        )
        .await?
        .is_some())
}

/// Makes sure `host` holds `block`, claiming it when free.
async fn ensure_block(
    store: &dyn Store,
    net: &NetworkRecord,
    block: Ipv4Net,
    host: &str,
    lease: LeaseId,
) -> Result<()> {
    loop {
        if let Some(kv) = store.get(&block_key(&net.name, block)).await? {
            let owner: BlockRecord = decode(&kv.key, &kv.value)?;
            if owner.host != host {
                bail!(
                    "block {block} of network {} belongs to host {}",
                    net.name,
                    owner.host
                );
            }
            return Ok(());
        }
        if claim_block(store, net, block, host, lease).await? {
            return Ok(());
        }
    }
}

/// Records how an endpoint was wired (its interface and MAC).
pub async fn update_endpoint(store: &dyn Store, record: &EndpointRecord) -> Result<()> {
    store
        .put(
            &endpoint_key(&record.network, record.address),
            &serde_json::to_string(record)?,
            None,
        )
        .await
        .map(|_| ())
}

/// Deletes an endpoint, releasing its address, and then every block of its host in that
/// network that holds no endpoint (blocks a burst of allocations leased but did not
/// need go back too). Concurrent removals are safe: whichever deletes last sees the
/// block empty. One host's creates and removes must not overlap each other; the daemon
/// serialises them.
pub async fn remove_endpoint(
    store: &dyn Store,
    network_name: &str,
    address: Ipv4Addr,
) -> Result<EndpointRecord> {
    let key = endpoint_key(network_name, address);
    let kv = store
        .get(&key)
        .await?
        .with_context(|| format!("no endpoint {address} on network {network_name}"))?;
    let record: EndpointRecord = decode(&kv.key, &kv.value)?;
    store.compare_and_delete(&key, kv.mod_revision).await?;
    release_empty_blocks(store, network_name, &record.host).await?;
    Ok(record)
}

async fn release_empty_blocks(store: &dyn Store, network_name: &str, host: &str) -> Result<()> {
    let (block_kvs, _) = store.list(&format!("{BLOCKS}{network_name}/")).await?;
    let used: Vec<Ipv4Addr> = endpoints(store, Some(network_name))
        .await?
        .iter()
        .map(|e| e.address)
        .collect();
    for kv in block_kvs {
        let block: BlockRecord = decode(&kv.key, &kv.value)?;
        if block.host == host && !used.iter().any(|a| block.block.contains(*a)) {
            store.compare_and_delete(&kv.key, kv.mod_revision).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str, block: u8) -> NetworkRecord {
        NetworkRecord {
            name: "n".into(),
            vni: 1,
            subnet: subnet.parse().unwrap(),
            block_prefix: block,
            labels: BTreeMap::new(),
            direct: false,
        }
    }

    #[test]
    fn blocks_tile_the_subnet() {
        let n = net("10.1.0.0/16", 24);
        let b: Vec<_> = tiles(&n).collect();
        assert_eq!(b.len(), 256);
        assert_eq!(b[0].to_string(), "10.1.0.0/24");
        assert_eq!(b[255].to_string(), "10.1.255.0/24");
        let hosts: Vec<_> = block_hosts("10.1.3.0/30".parse().unwrap()).collect();
        assert_eq!(
            hosts,
            [Ipv4Addr::new(10, 1, 3, 1), Ipv4Addr::new(10, 1, 3, 2)]
        );
    }

    #[test]
    fn free_subnets_avoid_existing_ones() {
        let existing = [net("10.240.0.0/16", 24), net("10.241.0.0/20", 24)];
        assert_eq!(free_subnet(&existing).unwrap().to_string(), "10.242.0.0/16");
    }

    #[test]
    fn keys_are_stable() {
        assert_eq!(
            block_key("blue", "10.1.2.0/24".parse().unwrap()),
            "/oxlay/blocks/blue/10.1.2.0_24"
        );
        assert_eq!(
            endpoint_key("blue", Ipv4Addr::new(10, 1, 2, 3)),
            "/oxlay/endpoints/blue/10.1.2.3"
        );
    }
}
