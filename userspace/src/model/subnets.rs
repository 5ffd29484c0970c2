//! The subnet registry: every network's subnet in one record, so that the overlap
//! check and the claim of a new network's subnet are one compare-and-put.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{
    keys::SUBNETS,
    networks::networks,
    records::{decode, NetworkSpec},
    DEFAULT_POOL,
};
use crate::{net::Ipv4Net, store::Store};

/// One network's entry in the subnet registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SubnetEntry {
    subnet: Ipv4Net,
    #[serde(default)]
    direct: bool,
}

pub(super) type SubnetRegistry = BTreeMap<String, SubnetEntry>;

/// The subnet registry and its revision (0 when absent). A store from before the
/// registry existed gets one built from its network records.
pub(super) async fn subnet_registry(store: &dyn Store) -> Result<(SubnetRegistry, i64)> {
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
pub(super) async fn reserve_subnet(store: &dyn Store, spec: &NetworkSpec) -> Result<Ipv4Net> {
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

pub(super) fn check_overlap(
    registry: &SubnetRegistry,
    s: Ipv4Net,
    spec: &NetworkSpec,
) -> Result<()> {
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
pub(super) async fn release_subnet(store: &dyn Store, name: &str) -> Result<()> {
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

pub(super) fn free_subnet(existing: impl Iterator<Item = Ipv4Net> + Clone) -> Result<Ipv4Net> {
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
