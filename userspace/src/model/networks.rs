//! Networks: creation (a VNI and a subnet claimed with compare-and-put), labels, and
//! removal (refused while endpoints remain).
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::{
    keys::{BLOCKS, ENDPOINTS, NETWORKS, VNIS},
    l2::{self, L2_BLOCK_PREFIX},
    records::{decode_network, list, EndpointRecord, NetworkRecord, NetworkSpec, MAX_BLOCK_PREFIX},
    subnets::{release_subnet, reserve_subnet, subnet_registry},
    FIRST_AUTO_VNI,
};
use crate::{net::Ipv4Net, store::Store};

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
    check_l2_spec(&spec)?;
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

pub(super) async fn create_reserved(
    store: &dyn Store,
    spec: &NetworkSpec,
    subnet: Ipv4Net,
) -> Result<NetworkRecord> {
    let pool = spec.l2.map_or(subnet, |l2| l2.pool(subnet));
    let default_block = if spec.l2.is_some() {
        L2_BLOCK_PREFIX
    } else {
        24
    };
    let block_prefix = spec
        .block_prefix
        .unwrap_or(default_block.max(pool.prefix_len()));
    if block_prefix < pool.prefix_len() || block_prefix > MAX_BLOCK_PREFIX {
        bail!(
            "block size /{block_prefix} does not fit {pool}: use /{} to /{MAX_BLOCK_PREFIX}",
            pool.prefix_len()
        );
    }
    let vni = claim_vni(store, &spec.name, spec.vni).await?;
    if let Some(settings) = &spec.l2 {
        if let Err(e) = l2::claim_vlan(store, &spec.name, settings.vlan).await {
            give_back_claims(store, spec, vni).await;
            return Err(e);
        }
    }
    let record = NetworkRecord {
        name: spec.name.clone(),
        vni,
        subnet,
        block_prefix,
        labels: spec.labels.clone(),
        direct: spec.direct,
        removing: false,
        egress: spec.egress.clone(),
        encap: spec.encap,
        l2: spec.l2,
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
        give_back_claims(store, spec, vni).await;
        created?;
        bail!("network {} already exists", spec.name);
    }
    Ok(record)
}

/// Gives back the VNI and VLAN of a create that failed; a failure is logged (`oxlay
/// network rm NAME` clears what is left: see [`remove_network`]).
async fn give_back_claims(store: &dyn Store, spec: &NetworkSpec, vni: u32) {
    if let Some(settings) = &spec.l2 {
        if let Err(e) = l2::release_vlan(store, &spec.name, settings.vlan).await {
            log::warn!(
                "network {}: giving back VLAN {}: {e:#}",
                spec.name,
                settings.vlan
            );
        }
    }
    if let Err(e) = store.delete(&format!("{VNIS}{vni}")).await {
        log::warn!("network {}: giving back VNI {vni}: {e:#}", spec.name);
    }
}

/// A layer-2 network needs the LAN's subnet and takes none of the overlay's options.
fn check_l2_spec(spec: &NetworkSpec) -> Result<()> {
    let Some(settings) = &spec.l2 else {
        return Ok(());
    };
    let Some(subnet) = spec.subnet else {
        bail!("a layer-2 network is the LAN's subnet: give it with --subnet (and --gateway)");
    };
    if spec.direct || spec.encap != super::Encap::Vxlan {
        bail!("--direct and --encap are for overlay networks: a layer-2 network's frames go onto the LAN as they are");
    }
    if !spec.egress.masquerade || !spec.egress.except.is_empty() {
        bail!("--masquerade and --masquerade-except are for overlay networks: a layer-2 network's traffic leaves by the LAN's router, never through the host's NAT");
    }
    settings.check(subnet)
}

pub(super) async fn claim_vni(
    store: &dyn Store,
    network: &str,
    wanted: Option<u32>,
) -> Result<u32> {
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

/// Removes a network; refused while it has endpoints. The record is first marked
/// `removing` (compare-and-put): a concurrent endpoint create either is seen here and
/// the removal is refused, or sees the mark and gives its address back.
pub async fn remove_network(store: &dyn Store, name: &str) -> Result<()> {
    let key = format!("{NETWORKS}{name}");
    let net = loop {
        let Some(kv) = store.get(&key).await? else {
            // No record: a create that stopped half-way may have left its subnet,
            // VNI or VLAN claimed; removing the name clears them.
            let (registry, _) = subnet_registry(store).await?;
            let (vnis, _) = store.list(VNIS).await?;
            let (vlans, _) = store.list(super::keys::L2_VLANS).await?;
            let orphans: Vec<&str> = vnis
                .iter()
                .chain(&vlans)
                .filter(|kv| kv.value == name)
                .map(|kv| kv.key.as_str())
                .collect();
            if !registry.contains_key(name) && orphans.is_empty() {
                bail!("network {name} does not exist (see `oxlay network ls`)");
            }
            for key in orphans {
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
        if let Some(settings) = &net.l2 {
            l2::release_vlan(store, name, settings.vlan).await?;
        }
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
pub(super) async fn unmark_removing(store: &dyn Store, name: &str) {
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
