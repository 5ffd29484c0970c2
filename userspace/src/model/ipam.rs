//! The distributed IPAM: hosts lease blocks of a network's subnet and claim each
//! endpoint's address in the store, so two hosts never hand out the same one.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{bail, Context, Result};

use super::{
    keys::{block_key, endpoint_key, BLOCKS, ENDPOINTS},
    networks::{find_network, network},
    records::{decode, list, BlockRecord, EndpointRecord, NetworkRecord},
};
use crate::{
    net::Ipv4Net,
    store::{LeaseId, Store},
};

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
pub(super) fn block_hosts(block: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(block.addr());
    let last = u32::from(block.broadcast());
    (first + 1..last).map(Ipv4Addr::from)
}

/// Every block of `net`'s pool (its subnet, or a layer-2 network's range), in address
/// order.
/// Empty for a record whose block size does not fit its subnet (records are validated
/// when read; this never underflows either way).
pub(super) fn tiles(net: &NetworkRecord) -> impl Iterator<Item = Ipv4Net> + '_ {
    let pool = net.pool();
    let start = u32::from(pool.addr());
    let count = match net.block_prefix.checked_sub(pool.prefix_len()) {
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
        ..EndpointRecord::unwired()
    };
    if let Some(addr) = wanted {
        record.address = addr;
        return claim_wanted(store, &net, host_lease, record).await;
    }
    loop {
        let all_blocks_now = blocks(store, &net.name).await?;
        let used: std::collections::HashSet<Ipv4Addr> = endpoints(store, Some(&net.name))
            .await?
            .iter()
            .map(|e| e.address)
            .collect();
        for b in all_blocks_now.iter().filter(|b| b.host == host) {
            let free = |a: &Ipv4Addr| !used.contains(a) && net.assignable(*a);
            for addr in block_hosts(b.block).filter(free) {
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

/// Claims the address `record` names (`oxlay endpoint create --ip`, Docker's `--ip`).
async fn claim_wanted(
    store: &dyn Store,
    net: &NetworkRecord,
    host_lease: LeaseId,
    record: EndpointRecord,
) -> Result<EndpointRecord> {
    let addr = record.address;
    if !net.pool().contains(addr) {
        bail!(
            "address {addr} is outside network {}'s addresses ({})",
            net.name,
            net.pool()
        );
    }
    if !net.assignable(addr) {
        bail!(
            "address {addr} is network {}'s gateway and is not handed out",
            net.name
        );
    }
    let block = tiles(net)
        .find(|b| b.contains(addr))
        .context("no block holds the address")?;
    if !block_hosts(block).any(|a| a == addr) {
        bail!("address {addr} is the first or last of its block {block} and is not handed out");
    }
    ensure_block(store, net, block, &record.host, host_lease).await?;
    if !claim_address(store, &record).await? {
        bail!("address {addr} is already in use on network {}", net.name);
    }
    confirm_claim(store, record).await
}

/// After an address claim: if the network was removed (or is being removed) meanwhile,
/// gives the address back and fails (see [`remove_network`]).
pub(super) async fn confirm_claim(
    store: &dyn Store,
    record: EndpointRecord,
) -> Result<EndpointRecord> {
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

pub(super) async fn claim_address(store: &dyn Store, record: &EndpointRecord) -> Result<bool> {
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

pub(super) async fn claim_block(
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
pub(super) async fn ensure_block(
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
/// made is updated: an endpoint removed meanwhile is not brought back.
pub async fn update_endpoint(store: &dyn Store, record: &EndpointRecord) -> Result<()> {
    // (The claim's sandbox is replaced: a Docker claim is made before its sandbox.)
    let (network, address, host) = (&record.network, record.address, &record.host);
    modify_endpoint(store, network, address, host, None, |r| *r = record.clone()).await
}

/// Changes one field or another of the endpoint record of `address` on `network`,
/// which `host` holds (for `sandbox`, when given), as the store has it now:
/// compare-and-put on the revision read, read again on a conflict, so that what others
/// changed meanwhile (the ports, the names) is kept. An endpoint removed, taken over or
/// handed to another sandbox meanwhile is an error.
pub async fn modify_endpoint(
    store: &dyn Store,
    network: &str,
    address: Ipv4Addr,
    host: &str,
    sandbox: Option<&str>,
    change: impl Fn(&mut EndpointRecord),
) -> Result<()> {
    let key = endpoint_key(network, address);
    loop {
        let kv = store.get(&key).await?.with_context(|| {
            format!("endpoint {address} of network {network} was removed meanwhile")
        })?;
        let mut record: EndpointRecord = decode(&kv.key, &kv.value)?;
        if record.host != host || sandbox.is_some_and(|s| s != record.sandbox) {
            bail!(
                "address {address} of network {network} now belongs to {} on {}",
                record.sandbox,
                record.host
            );
        }
        change(&mut record);
        let value = serde_json::to_string(&record)?;
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

pub(super) async fn release_empty_blocks(
    store: &dyn Store,
    network_name: &str,
    host: &str,
) -> Result<()> {
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
