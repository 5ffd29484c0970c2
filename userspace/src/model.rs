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
/// Every network's subnet in one record, so that overlap checks and claims are one
/// compare-and-put.
pub const SUBNETS: &str = "/oxlay/subnets";

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
    /// Set by `network rm` before it checks for endpoints: an endpoint create that sees
    /// it gives its address back, so a removal and a create never both succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
}

impl NetworkRecord {
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
        if self.block_prefix < self.subnet.prefix_len() || self.block_prefix > MAX_BLOCK_PREFIX {
            bail!(
                "network {}: block size /{} does not fit subnet {} (/{}..=/{MAX_BLOCK_PREFIX})",
                self.name,
                self.block_prefix,
                self.subnet,
                self.subnet.prefix_len()
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

pub fn block_key(network: &str, block: Ipv4Net) -> String {
    format!("{BLOCKS}{network}/{}_{}", block.addr(), block.prefix_len())
}

fn endpoint_key(network: &str, address: Ipv4Addr) -> String {
    format!("{ENDPOINTS}{network}/{address}")
}

fn decode<T: DeserializeOwned>(key: &str, value: &str) -> Result<T> {
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
    let (kvs, _) = store.list(NETWORKS).await?;
    kvs.iter()
        .map(|kv| decode_network(&kv.key, &kv.value))
        .collect()
}

/// A network that takes new endpoints; an error when it does not exist or is being
/// removed.
pub async fn network(store: &dyn Store, name: &str) -> Result<NetworkRecord> {
    match find_network(store, name).await? {
        Some(n) if !n.removing => Ok(n),
        Some(_) => bail!("network {name} is being removed (`oxlay network rm {name}` again finishes a removal that stopped half-way)"),
        None => bail!("network {name} does not exist (see `oxlay network ls`)"),
    }
}

/// A network's record, `None` only when the store says there is none; one being
/// removed is returned (its `removing` set): its endpoints still exist. A store error
/// is an error, never "missing": callers release addresses on `None`.
pub async fn find_network(store: &dyn Store, name: &str) -> Result<Option<NetworkRecord>> {
    match store.get(&format!("{NETWORKS}{name}")).await? {
        Some(kv) => Ok(Some(decode_network(&kv.key, &kv.value)?)),
        None => Ok(None),
    }
}

/// Creates a network: reserves its subnet in the subnet registry (one compare-and-put,
/// so two concurrent creates cannot both pass the overlap check), claims its VNI
/// (given, or the first free one from [`FIRST_AUTO_VNI`]), then writes the record. A
/// failed step undoes the ones before it.
pub async fn create_network(store: &dyn Store, spec: NetworkSpec) -> Result<NetworkRecord> {
    crate::config::check_name("network name", &spec.name)?;
    if store
        .get(&format!("{NETWORKS}{}", spec.name))
        .await?
        .is_some()
    {
        bail!("network {} already exists", spec.name);
    }
    let subnet = reserve_subnet(store, &spec).await?;
    let created = create_reserved(store, &spec, subnet).await;
    if created.is_err() {
        if let Err(e) = release_subnet(store, &spec.name).await {
            log::warn!("network {}: giving back subnet {subnet}: {e:#}", spec.name);
        }
    }
    created
}

async fn create_reserved(
    store: &dyn Store,
    spec: &NetworkSpec,
    subnet: Ipv4Net,
) -> Result<NetworkRecord> {
    let block_prefix = spec.block_prefix.unwrap_or(24.max(subnet.prefix_len()));
    if block_prefix < subnet.prefix_len() || block_prefix > MAX_BLOCK_PREFIX {
        bail!(
            "block size /{block_prefix} does not fit subnet {subnet}: use /{} to /{MAX_BLOCK_PREFIX}",
            subnet.prefix_len()
        );
    }
    let vni = claim_vni(store, &spec.name, spec.vni).await?;
    let record = NetworkRecord {
        name: spec.name.clone(),
        vni,
        subnet,
        block_prefix,
        labels: spec.labels.clone(),
        direct: spec.direct,
        removing: false,
    };
    let created = store
        .compare_and_put(
            &format!("{NETWORKS}{}", spec.name),
            0,
            &serde_json::to_string(&record)?,
            None,
        )
        .await;
    if !matches!(created, Ok(Some(_))) {
        store.delete(&format!("{VNIS}{vni}")).await?;
        created?;
        bail!("network {} already exists", spec.name);
    }
    Ok(record)
}

/// One network's entry in the subnet registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SubnetEntry {
    subnet: Ipv4Net,
    #[serde(default)]
    direct: bool,
}

type SubnetRegistry = BTreeMap<String, SubnetEntry>;

/// The subnet registry and its revision (0 when absent). A store from before the
/// registry existed gets one built from its network records.
async fn subnet_registry(store: &dyn Store) -> Result<(SubnetRegistry, i64)> {
    match store.get(SUBNETS).await? {
        Some(kv) => Ok((decode(&kv.key, &kv.value)?, kv.mod_revision)),
        None => {
            let built = networks(store)
                .await?
                .into_iter()
                .map(|n| {
                    let entry = SubnetEntry {
                        subnet: n.subnet,
                        direct: n.direct,
                    };
                    (n.name, entry)
                })
                .collect();
            Ok((built, 0))
        }
    }
}

/// Checks `spec` against the other networks' subnets and records its subnet, all in
/// one compare-and-put on the registry (retried when another create got there first).
async fn reserve_subnet(store: &dyn Store, spec: &NetworkSpec) -> Result<Ipv4Net> {
    loop {
        let (mut registry, revision) = subnet_registry(store).await?;
        if registry.contains_key(&spec.name) {
            bail!(
                "network {0} already exists or is being created (if `oxlay network ls` does not show it, a create stopped half-way: `oxlay network rm {0}` clears it)",
                spec.name
            );
        }
        let subnet = match spec.subnet {
            Some(s) => {
                check_overlap(&registry, s, spec)?;
                s
            }
            None => free_subnet(registry.values().map(|e| e.subnet))?,
        };
        let entry = SubnetEntry {
            subnet,
            direct: spec.direct,
        };
        registry.insert(spec.name.clone(), entry);
        let value = serde_json::to_string(&registry)?;
        if store
            .compare_and_put(SUBNETS, revision, &value, None)
            .await?
            .is_some()
        {
            return Ok(subnet);
        }
    }
}

fn check_overlap(registry: &SubnetRegistry, s: Ipv4Net, spec: &NetworkSpec) -> Result<()> {
    // Direct networks share one table on the receiving side: never overlapping.
    if spec.direct {
        if let Some((name, other)) = registry
            .iter()
            .find(|(_, e)| e.direct && e.subnet.overlaps(&s))
        {
            bail!(
                "subnet {s} overlaps direct network {name} ({}): direct networks cannot overlap each other",
                other.subnet
            );
        }
    }
    if !spec.allow_overlap {
        if let Some((name, other)) = registry.iter().find(|(_, e)| e.subnet.overlaps(&s)) {
            bail!(
                "subnet {s} overlaps network {name} ({}); pick another or pass --allow-overlap (networks stay isolated by VNI)",
                other.subnet
            );
        }
    }
    Ok(())
}

/// Takes a network's subnet out of the registry.
async fn release_subnet(store: &dyn Store, name: &str) -> Result<()> {
    loop {
        let (mut registry, revision) = subnet_registry(store).await?;
        if registry.remove(name).is_none() && revision != 0 {
            return Ok(());
        }
        let value = serde_json::to_string(&registry)?;
        if store
            .compare_and_put(SUBNETS, revision, &value, None)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
}

fn free_subnet(existing: impl Iterator<Item = Ipv4Net> + Clone) -> Result<Ipv4Net> {
    let pool: Ipv4Net = DEFAULT_POOL.parse()?;
    let start = u32::from(pool.addr());
    let count = 1u32 << (16 - pool.prefix_len());
    for i in 0..count {
        let candidate = Ipv4Net::new(Ipv4Addr::from(start + (i << 16)), 16)?;
        if !existing.clone().any(|n| n.overlaps(&candidate)) {
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
        let mut record = decode_network(&kv.key, &kv.value)?;
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

/// Removes a network; refused while it has endpoints. The record is first marked
/// `removing` (compare-and-put): a concurrent endpoint create either is seen here and
/// the removal is refused, or sees the mark and gives its address back.
pub async fn remove_network(store: &dyn Store, name: &str) -> Result<()> {
    let key = format!("{NETWORKS}{name}");
    let net = loop {
        let Some(kv) = store.get(&key).await? else {
            // No record: a create that stopped half-way may have left its subnet
            // reserved; removing the name clears it.
            let (registry, _) = subnet_registry(store).await?;
            let (vnis, _) = store.list(VNIS).await?;
            let orphan_vnis: Vec<&str> = vnis
                .iter()
                .filter(|kv| kv.value == name)
                .map(|kv| kv.key.as_str())
                .collect();
            if !registry.contains_key(name) && orphan_vnis.is_empty() {
                bail!("network {name} does not exist (see `oxlay network ls`)");
            }
            for key in orphan_vnis {
                store.delete(key).await?;
            }
            return release_subnet(store, name).await;
        };
        let mut net = decode_network(&kv.key, &kv.value)?;
        net.removing = true;
        let value = serde_json::to_string(&net)?;
        if store
            .compare_and_put(&key, kv.mod_revision, &value, None)
            .await?
            .is_some()
        {
            break net;
        }
    };
    let eps: Vec<EndpointRecord> = match list(store, &format!("{ENDPOINTS}{name}/")).await {
        Ok(eps) => eps,
        Err(e) => {
            unmark_removing(store, name).await;
            return Err(e);
        }
    };
    if !eps.is_empty() {
        unmark_removing(store, name).await;
        bail!(
            "network {name} still has {} endpoint(s) (e.g. {} on {}): remove them first",
            eps.len(),
            eps[0].address,
            eps[0].host
        );
    }
    // From here on the removal goes forward; a failure leaves the mark, and running
    // the removal again finishes it.
    let finish = async {
        let (blocks, _) = store.list(&format!("{BLOCKS}{name}/")).await?;
        for b in blocks {
            store.delete(&b.key).await?;
        }
        store.delete(&format!("{VNIS}{}", net.vni)).await?;
        release_subnet(store, name).await?;
        // The record last: while it exists, the removal can be finished.
        store.delete(&key).await?;
        anyhow::Ok(())
    };
    finish.await.with_context(|| {
        format!("removing network {name} stopped half-way: run `oxlay network rm {name}` again")
    })
}

/// Clears the `removing` mark of a removal that was refused.
async fn unmark_removing(store: &dyn Store, name: &str) {
    let key = format!("{NETWORKS}{name}");
    for attempt in 0..10u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
        }
        let kv = match store.get(&key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return,
            Err(_) => continue,
        };
        let Ok(mut net) = decode_network(&kv.key, &kv.value) else {
            return;
        };
        net.removing = false;
        let Ok(value) = serde_json::to_string(&net) else {
            return;
        };
        if let Ok(Some(_)) = store
            .compare_and_put(&key, kv.mod_revision, &value, None)
            .await
        {
            return;
        }
    }
    log::warn!("network {name}: could not clear its removal mark; `oxlay network rm {name}` again finishes the removal, or retries the check");
}

// ---- IPAM: blocks and addresses ----

pub async fn blocks(store: &dyn Store, network: &str) -> Result<Vec<BlockRecord>> {
    list(store, &format!("{BLOCKS}{network}/")).await
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
/// Empty for a record whose block size does not fit its subnet (records are validated
/// when read; this never underflows either way).
fn tiles(net: &NetworkRecord) -> impl Iterator<Item = Ipv4Net> + '_ {
    let start = u32::from(net.subnet.addr());
    let count = match net.block_prefix.checked_sub(net.subnet.prefix_len()) {
        Some(bits) if net.block_prefix <= 32 => 1u64 << bits,
        _ => 0,
    };
    let step = 1u64 << (32 - net.block_prefix.min(32));
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
        return confirm_claim(store, record).await;
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
                    return confirm_claim(store, record).await;
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

/// After an address claim: if the network was removed (or is being removed) meanwhile,
/// gives the address back and fails (see [`remove_network`]).
async fn confirm_claim(store: &dyn Store, record: EndpointRecord) -> Result<EndpointRecord> {
    match find_network(store, &record.network).await {
        Ok(Some(n)) if !n.removing => Ok(record),
        other => {
            if let Err(e) = remove_endpoint(store, &record.network, record.address).await {
                log::warn!(
                    "giving back {} of {}: {e:#}",
                    record.address,
                    record.network
                );
            }
            other?;
            bail!("network {} was removed meanwhile", record.network)
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

/// Records how an endpoint was wired (its interface and MAC). Only the claim this host
/// made is updated: an endpoint removed meanwhile is not brought back (compare-and-put
/// on the revision read).
pub async fn update_endpoint(store: &dyn Store, record: &EndpointRecord) -> Result<()> {
    let key = endpoint_key(&record.network, record.address);
    loop {
        let kv = store.get(&key).await?.with_context(|| {
            format!(
                "endpoint {} of network {} was removed meanwhile",
                record.address, record.network
            )
        })?;
        let current: EndpointRecord = decode(&kv.key, &kv.value)?;
        if current.host != record.host {
            bail!(
                "address {} of network {} now belongs to {} on {}",
                record.address,
                record.network,
                current.sandbox,
                current.host
            );
        }
        let value = serde_json::to_string(record)?;
        if store
            .compare_and_put(&key, kv.mod_revision, &value, None)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
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
    let record = loop {
        let kv = store
            .get(&key)
            .await?
            .with_context(|| format!("no endpoint {address} on network {network_name}"))?;
        let record: EndpointRecord = decode(&kv.key, &kv.value)?;
        // A write in between (the wiring recorded) changes the revision: read again.
        if store.compare_and_delete(&key, kv.mod_revision).await? {
            break record;
        }
    };
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
            // False when the block changed meanwhile (re-claimed under a new lease):
            // then it is in use again and stays.
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
            removing: false,
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
        let subnets = existing.iter().map(|n| n.subnet);
        assert_eq!(free_subnet(subnets).unwrap().to_string(), "10.242.0.0/16");
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

    /// A removal whose compare-and-delete loses to a concurrent write reads again and
    /// deletes: it never reports success with the address still claimed.
    #[tokio::test]
    async fn a_removal_racing_a_write_still_removes() {
        use crate::store::faulty::{temp_embedded, Fault, FaultyStore};
        let (_folder, inner) = temp_embedded();
        let store = FaultyStore::new(inner);
        let spec = NetworkSpec {
            name: "n".into(),
            subnet: Some("10.1.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        create_network(&store, spec).await.unwrap();
        let lease = store
            .grant_lease(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let ep = create_endpoint(&store, "h", lease, "n", "sb", None, BTreeMap::new())
            .await
            .unwrap();
        // The wiring is recorded between the removal's read and its compare-and-delete.
        store.set(Fault {
            rewrite_before_delete_under: Some(ENDPOINTS.into()),
            times: 1,
            ..Default::default()
        });
        remove_endpoint(&store, "n", ep.address).await.unwrap();
        assert!(
            endpoint(&store, "n", ep.address).await.unwrap().is_none(),
            "the address is still claimed after a successful removal"
        );
    }
}
