//! Where each map is pinned, and how an upgrade that changes a map keeps its contents.
//!
//! Each map is pinned under a name that carries its signature: type, key and value
//! size, capacity, flags and [`MAP_LAYOUT_VERSION`], e.g.
//! `maps/OXLAY_ROUTES_t11_k8_v24_n65536_f1_L1`. A daemon whose object has the same
//! signature re-uses the map (and the traffic on it never notices); one whose object
//! differs gets a new map, and entries of the old one are copied into it before any
//! program uses it, when the entries mean the same thing (same key and value size, same
//! layout version). The old map keeps serving the old programs until they are replaced;
//! its pin goes once the daemon has started. Pins of versions before signatures (maps
//! directly in the pin directory) are migrated the same way.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{
    lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap,
    PerCpuValues,
};
use oxlay_common::{
    l2::{L2Key, L2Network, L2Vlan},
    map_names, CounterValue, Endpoint, Network, NetworkTraffic, Peer, Route, RouteDest,
    MAP_LAYOUT_VERSION,
};

/// Every map of the object, by the name the programs use.
pub const MAPS: [&str; 13] = [
    map_names::CONFIG,
    map_names::ROUTES,
    map_names::ENDPOINTS,
    map_names::PEERS,
    map_names::NETWORKS,
    map_names::COUNTERS,
    map_names::L2_FDB,
    map_names::L2_NETWORKS,
    map_names::L2_VLANS,
    map_names::NETWORK_TRAFFIC,
    map_names::MONITOR,
    map_names::EVENTS,
    map_names::PROBE,
];

/// A map as the object defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapShape {
    fn pin_name(&self, name: &str) -> String {
        format!(
            "{name}_t{}_k{}_v{}_n{}_f{}_L{MAP_LAYOUT_VERSION}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The shapes of the maps in `object` (the embedded eBPF object).
pub fn shapes(object: &[u8]) -> Result<Vec<(&'static str, MapShape)>> {
    let parsed = aya_obj::Object::parse(object).context("cannot parse the eBPF object")?;
    MAPS.iter()
        .map(|name| {
            let m = parsed
                .maps
                .get(*name)
                .with_context(|| format!("the eBPF object has no map {name}"))?;
            Ok((
                *name,
                MapShape {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                },
            ))
        })
        .collect()
}

/// Where map `name` of this shape is pinned.
pub fn pin_path(pin_dir: &Path, name: &str, shape: &MapShape) -> PathBuf {
    pin_dir.join("maps").join(shape.pin_name(name))
}

/// Pins of map `name` other than `current`: other signatures, and the unversioned pin
/// of older daemons.
pub fn stale_pins(pin_dir: &Path, name: &str, current: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let legacy = pin_dir.join(name);
    if legacy.exists() {
        found.push(legacy);
    }
    let prefix = format!("{name}_t");
    if let Ok(entries) = std::fs::read_dir(pin_dir.join("maps")) {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_ours = entry.file_name().to_string_lossy().starts_with(&prefix);
            if is_ours && path != current {
                found.push(path);
            }
        }
    }
    found
}

/// The layout version an old pin was written with (1 for unversioned pins).
fn layout_version(pin: &Path) -> Option<u32> {
    let file = pin.file_name()?.to_string_lossy().into_owned();
    match file.rsplit_once("_L") {
        Some((_, v)) => v.parse().ok(),
        None => Some(1),
    }
}

/// Copies what `old` holds into `new` (map `name`) when the entries mean the same
/// thing; returns how many were copied, or why nothing was.
pub fn migrate(name: &str, old: &Path, new: &mut Map) -> Result<Result<usize, String>> {
    // The monitor's switch is written by the daemon; events and probes are not kept.
    if [map_names::MONITOR, map_names::EVENTS, map_names::PROBE].contains(&name) {
        return Ok(Ok(0));
    }
    if layout_version(old) != Some(MAP_LAYOUT_VERSION) {
        return Ok(Err(format!(
            "its layout version differs ({:?}, now {MAP_LAYOUT_VERSION})",
            layout_version(old)
        )));
    }
    let data = MapData::from_pin(old).with_context(|| format!("cannot open {}", old.display()))?;
    let info = data.info()?;
    let old_map = Map::from_map_data(data)?;
    let new_info = match &*new {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m) => m.info()?,
        _ => return Ok(Err("its type is not one oxlay migrates".into())),
    };
    // Counters of packets only (before bytes were counted) keep their packets.
    let packets_only = name == map_names::COUNTERS && info.value_size() == 8;
    if packets_only && new_info.value_size() == 16 {
        return Ok(Ok(copy_counters(&old_map, new, |p| CounterValue {
            packets: p,
            bytes: 0,
        })?));
    }
    if info.key_size() != new_info.key_size() || info.value_size() != new_info.value_size() {
        return Ok(Err(format!(
            "its key/value sizes changed ({}/{} to {}/{})",
            info.key_size(),
            info.value_size(),
            new_info.key_size(),
            new_info.value_size()
        )));
    }
    let copied = match name {
        map_names::ROUTES => {
            let from: LpmTrie<_, RouteDest, Route> = LpmTrie::try_from(&old_map)?;
            let mut to: LpmTrie<_, RouteDest, Route> = LpmTrie::try_from(&mut *new)?;
            let mut n = 0;
            for item in from.iter() {
                let (key, route) = item?;
                to.insert(&Key::new(key.prefix_len(), key.data()), route, 0)?;
                n += 1;
            }
            n
        }
        map_names::ENDPOINTS => copy_hash::<u32, Endpoint>(&old_map, new)?,
        map_names::PEERS => copy_hash::<[u8; 4], Peer>(&old_map, new)?,
        map_names::NETWORKS => copy_hash::<u32, Network>(&old_map, new)?,
        map_names::L2_FDB => copy_hash::<L2Key, u32>(&old_map, new)?,
        map_names::L2_NETWORKS => copy_hash::<u32, L2Network>(&old_map, new)?,
        map_names::L2_VLANS => copy_hash::<L2Vlan, u32>(&old_map, new)?,
        map_names::COUNTERS => copy_counters(&old_map, new, |v: CounterValue| v)?,
        map_names::NETWORK_TRAFFIC => {
            let from: PerCpuHashMap<_, u32, NetworkTraffic> = PerCpuHashMap::try_from(&old_map)?;
            let mut to: PerCpuHashMap<_, u32, NetworkTraffic> = PerCpuHashMap::try_from(&mut *new)?;
            let mut n = 0;
            for item in from.iter() {
                let (vni, values) = item?;
                to.insert(vni, values, 0)?;
                n += 1;
            }
            n
        }
        map_names::CONFIG => {
            // Written anew by the starting daemon before any program runs.
            let _: Array<_, oxlay_common::DatapathConfig> = Array::try_from(&old_map)?;
            0
        }
        _ => return Ok(Err("oxlay does not know this map".into())),
    };
    Ok(Ok(copied))
}

/// Copies the counters map, each old per-CPU value turned into a new one by `convert`.
/// Counters are only ever appended, so an index means the same counter.
fn copy_counters<Old: aya::Pod>(
    old: &Map,
    new: &mut Map,
    convert: impl Fn(Old) -> CounterValue,
) -> Result<usize> {
    let from: PerCpuArray<_, Old> = PerCpuArray::try_from(old)?;
    let mut to: PerCpuArray<_, CounterValue> = PerCpuArray::try_from(new)?;
    let n = from.len().min(to.len());
    for i in 0..n {
        let values: Vec<CounterValue> = from.get(&i, 0)?.iter().map(|v| convert(*v)).collect();
        to.set(i, PerCpuValues::try_from(values)?, 0)?;
    }
    Ok(n as usize)
}

fn copy_hash<K: aya::Pod, V: aya::Pod>(old: &Map, new: &mut Map) -> Result<usize> {
    let from: BpfHashMap<_, K, V> = BpfHashMap::try_from(old)?;
    let mut to: BpfHashMap<_, K, V> = BpfHashMap::try_from(new)?;
    let mut n = 0;
    for item in from.iter() {
        let (k, v) = item?;
        to.insert(k, v, 0)?;
        n += 1;
    }
    Ok(n)
}
