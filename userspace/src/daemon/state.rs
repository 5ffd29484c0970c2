//! The daemon's state: its local endpoints, the store snapshot, the shadow of the maps,
//! and the reconciles that keep the maps in step with them.
use std::{collections::BTreeMap, path::Path, sync::Arc};

use anyhow::{anyhow, Context, Result};
use log::{info, warn};
use oxlay_common::Route;
use rtnetlink::Handle;

use super::lease;
use crate::{
    config::Config,
    datapath::Datapath,
    model::local::LocalEndpoint,
    model::{self, BlockRecord},
    net::Ipv4Net,
    reconcile::{self, Snapshot},
};

/// Local endpoints by (namespace, store network; None for the static network).
pub(crate) type EndpointKey = (String, Option<String>);

/// What the daemon's tasks change, behind one lock (`Daemon::state`). Nothing here
/// talks to the store: whoever holds the lock never waits for the network.
pub(crate) struct State {
    pub(crate) config: Arc<Config>,
    pub(crate) handle: Handle,
    pub(crate) datapath: Datapath,
    pub(crate) container_mtu: u32,
    /// The `[l2] parent` NIC's MTU: layer-2 containers' (None: no parent).
    pub(crate) l2_mtu: Option<u32>,
    /// The NIC an earlier config named as the parent, when it changed (until the
    /// adopted containers' MACs have left its filter).
    pub(crate) old_l2_parent: Option<u32>,
    pub(crate) endpoints: BTreeMap<EndpointKey, LocalEndpoint>,
    /// Set when uninstalling begins: no endpoint is wired after that.
    pub(crate) closing: bool,
    /// What oxlay's nftables table holds, as last written (None: write it).
    pub(crate) nat: Option<reconcile::Nat>,
    /// Why there is no NAT on this host (no `nft`), if so.
    pub(crate) nat_unavailable: Option<String>,
    /// The last failure to write the NAT table, until a write succeeds.
    pub(crate) nat_error: Option<String>,
    /// The store's routing records, listed at start and kept current by the watch.
    pub(crate) snapshot: Snapshot,
    /// What the maps hold, as last written (None: read them).
    pub(crate) shadow: Option<reconcile::Desired>,
    /// The last desired maps and the part of them blocks do not change (base, want).
    pub(crate) desired: Option<(reconcile::Desired, reconcile::Desired)>,
    /// Tells the watch loop that a reconcile outside it failed and wants a retry.
    pub(crate) retry: Arc<tokio::sync::Notify>,
    /// The underlay subnet (direct routing reaches peers inside it).
    pub(crate) underlay_subnet: Ipv4Net,
    /// Where the static network's endpoints are recorded for the next daemon.
    pub(crate) state_path: std::path::PathBuf,
    /// Which oxlay network each Docker network is.
    pub(crate) docker: crate::plugins::docker::driver::DockerState,
    /// Map writes that failed since start (e.g. a full route map), and the last
    /// reconcile error, for `oxlay status`.
    pub(crate) map_failures: u64,
    pub(crate) last_reconcile_error: Option<String>,
    /// Reconcile and watch timings for the metrics endpoint.
    pub(crate) control: crate::metrics::ControlMetrics,
    /// oxlay's WireGuard device, with `[wireguard]`.
    pub(crate) encryption: Option<super::wireguard::Encryption>,
    /// The device's peers as last written (None: read the device).
    pub(crate) wireguard_peers: Option<Vec<crate::net::wireguard::PeerSpec>>,
}

impl State {
    /// Applies watch events to the snapshot and says what routing needs: nothing, the
    /// routes of some blocks, or everything. A block of a network with no endpoint
    /// here changes no route of this host.
    pub(crate) fn apply_events(&mut self, events: &[crate::store::WatchEvent]) -> Routing {
        let local_networks: std::collections::BTreeSet<&str> = self
            .endpoints
            .values()
            .filter_map(|e| e.network.as_deref())
            .collect();
        // By VNI too: a store network may share the static network's VNI.
        let local_vnis: std::collections::BTreeSet<u32> =
            self.endpoints.values().map(|e| e.vni).collect();
        let mut all = false;
        let mut blocks = Vec::new();
        for event in events.iter().filter(|e| Snapshot::tracks(e.key())) {
            let key = event.key();
            let before = self.snapshot.blocks.get(key).cloned();
            match self.snapshot.apply(event) {
                Ok(false) => {}
                Ok(true) if key.starts_with(model::BLOCKS) => {
                    let after = self.snapshot.blocks.get(key);
                    let snapshot = &self.snapshot;
                    let ours = [before.as_ref(), after].into_iter().flatten().any(|b| {
                        local_networks.contains(b.network.as_str())
                            || snapshot
                                .networks
                                .get(&b.network)
                                .is_some_and(|net| local_vnis.contains(&net.vni))
                    });
                    // Blocks of direct networks also fill the direct table.
                    let direct = [before.as_ref(), after]
                        .into_iter()
                        .flatten()
                        .any(|b| snapshot.networks.get(&b.network).is_some_and(|n| n.direct));
                    if ours || direct {
                        blocks.push((key.to_owned(), before));
                    }
                }
                Ok(true) => all = true,
                Err(e) => {
                    warn!("{e:#}");
                    all = true;
                }
            }
        }
        match (all, blocks.is_empty()) {
            (true, _) => Routing::All,
            (false, false) => Routing::Blocks(blocks),
            (false, true) => Routing::Unchanged,
        }
    }

    /// Brings the maps in step with the snapshot and the local endpoints, changing only
    /// what differs. Compares against the shadow of what was last written (no map
    /// dump); reads the kernel's maps when there is no shadow yet (start, drift check).
    pub(crate) async fn reconcile(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        // WireGuard's peers before the maps send to them; the NAT whatever the maps'
        // fate (each is cheap when unchanged).
        let wireguard = self.reconcile_wireguard().await;
        if wireguard.is_err() {
            self.wireguard_peers = None;
        }
        let maps = self.reconcile_maps().await;
        let nat = self.reconcile_nat();
        self.control.reconciled("full", started.elapsed());
        wireguard.and(maps).and(nat)
    }

    async fn reconcile_maps(&mut self) -> Result<()> {
        // Until this succeeds there is no desired state to update key by key.
        self.desired = None;
        let local: Vec<&LocalEndpoint> = self.endpoints.values().collect();
        let me = reconcile::Me {
            name: &self.config.node_name,
            underlay_subnet: self.underlay_subnet,
            l2_parent: self.datapath.l2_parent(),
        };
        let mut base = reconcile::desired_base(&me, &self.config, &self.snapshot, &local)?;
        self.confirm_encrypted_peers(&mut base);
        let want = reconcile::with_blocks(&me, &self.snapshot, &base);
        let mut shadow = match self.shadow.take() {
            Some(shadow) => shadow,
            None => reconcile::read_shadow(&self.datapath)?,
        };
        let changes = reconcile::apply(
            &mut reconcile::Shadowed {
                maps: &mut self.datapath,
                shadow: &mut shadow,
            },
            &want,
        );
        // The shadow holds exactly what was written, failed entries excepted.
        self.shadow = Some(shadow);
        self.desired = Some((base, want));
        self.account(changes)
    }

    /// Brings oxlay's nftables table in step with the networks (only when what it
    /// should hold changed, or after `forget_what_was_written`).
    /// Its own error stays in `nat_error` until a write succeeds (the maps' reconcile
    /// clears `last_reconcile_error` on success; a NAT failure must not vanish with it).
    pub(crate) fn reconcile_nat(&mut self) -> Result<()> {
        if self.nat_unavailable.is_some() || self.closing {
            return Ok(());
        }
        let local: Vec<&LocalEndpoint> = self.endpoints.values().collect();
        let want = reconcile::desired_nat(&self.config, &self.snapshot, &local);
        if self.nat.as_ref() == Some(&want) {
            return Ok(());
        }
        // nft is a short-lived child process; let the runtime move other tasks off
        // this worker meanwhile.
        let written = tokio::task::block_in_place(|| crate::net::nftables::apply(&want));
        if let Err(e) = written {
            self.nat_error = Some(format!("{e:#}"));
            return Err(e);
        }
        self.nat_error = None;
        info!(
            "NAT: {} subnets masquerade to the outside, {} ports published (nftables table ip {})",
            want.masquerade.len(),
            want.forwards.len(),
            crate::net::nftables::TABLE
        );
        self.nat = Some(want);
        Ok(())
    }

    /// Makes the next reconcile compare with the kernel's own maps and rewrite the NAT
    /// table (the drift check), not trust what was last written.
    pub(crate) fn forget_what_was_written(&mut self) {
        self.shadow = None;
        self.nat = None;
        self.wireguard_peers = None;
    }

    /// Reconciles after changes of store blocks alone (`changed`: each block's store
    /// key and its record before): only the route keys those blocks write are
    /// recomputed and compared, so the cost follows the change, not the cluster. Falls
    /// back to a full reconcile when there is nothing to start from.
    pub(crate) async fn reconcile_blocks(
        &mut self,
        changed: &[(String, Option<BlockRecord>)],
    ) -> Result<()> {
        let (Some((base, mut want)), Some(mut shadow)) = (self.desired.take(), self.shadow.take())
        else {
            return self.reconcile().await;
        };
        let started = std::time::Instant::now();
        // A direct block is a WireGuard peer's allowed source: the device learns it
        // before a route sends into the device. A NAT write that failed earlier is
        // retried below too.
        let wireguard = self.reconcile_wireguard().await;
        if wireguard.is_err() {
            self.wireguard_peers = None;
        }
        let me = reconcile::Me {
            name: &self.config.node_name,
            underlay_subnet: self.underlay_subnet,
            l2_parent: self.datapath.l2_parent(),
        };
        let keys: std::collections::BTreeSet<reconcile::RouteKey> = changed
            .iter()
            .flat_map(|(key, old)| {
                reconcile::block_route_keys(&me, &self.snapshot, &base, old.as_ref(), key)
            })
            .collect();
        let routes: Vec<(reconcile::RouteKey, Option<Route>)> = keys
            .into_iter()
            .map(|key| {
                (
                    key,
                    reconcile::desired_route(&me, &self.snapshot, &base, key),
                )
            })
            .collect();
        for (key, route) in &routes {
            match route {
                Some(route) => want.routes.insert(*key, *route),
                None => want.routes.remove(key),
            };
        }
        let changes = reconcile::apply_routes(
            &mut reconcile::Shadowed {
                maps: &mut self.datapath,
                shadow: &mut shadow,
            },
            &routes,
        );
        self.shadow = Some(shadow);
        self.desired = Some((base, want));
        let maps = wireguard.and(self.account(changes));
        let nat = self.reconcile_nat();
        self.control.reconciled("blocks", started.elapsed());
        maps.and(nat)
    }

    /// Logs what a reconcile changed and turns failed entries into an error (counted
    /// for `oxlay status`).
    pub(crate) fn account(&mut self, changes: Result<reconcile::Changes>) -> Result<()> {
        let changes = changes?;
        if changes.added + changes.removed > 0 {
            info!(
                "maps updated: {} added or changed, {} removed",
                changes.added, changes.removed
            );
        }
        if let Some(first) = changes.failed.first() {
            self.map_failures += changes.failed.len() as u64;
            let e = anyhow!(
                "{} map entries could not be written (the others were; retried with backoff): {first}",
                changes.failed.len()
            );
            self.last_reconcile_error = Some(format!("{e:#}"));
            return Err(e);
        }
        self.last_reconcile_error = None;
        Ok(())
    }

    /// Reconciles; a failure is logged and left to the periodic resync (the change
    /// that asked for it is complete either way: the maps follow the store).
    pub(crate) async fn reconcile_or_retry_later(&mut self) {
        if let Err(e) = self.reconcile().await {
            warn!("reconcile failed, retried with backoff: {e:#}");
            self.last_reconcile_error = Some(format!("{e:#}"));
            self.retry.notify_one();
        }
    }

    /// Whether the maps hold `ep`'s own entries (its endpoint entry and its route), as
    /// the last reconcile wrote them.
    pub(crate) fn maps_hold(&self, ep: &LocalEndpoint) -> bool {
        let Some(shadow) = &self.shadow else {
            // No shadow: the last reconcile could not read the maps.
            return false;
        };
        let route = Ipv4Net::new(ep.address, 32).map(|dest| (ep.vni, dest));
        let entry = shadow.endpoints.get(&ep.host_ifindex) == Some(&ep.map_entry());
        if ep.is_l2() {
            let port = shadow.l2_ports.get(&(ep.vni, ep.container_mac.0));
            // Listed for broadcasts too (ARP reaches it).
            let flooded = shadow.l2_networks.get(&ep.vni).is_some_and(|n| {
                let len = (n.ports_len as usize).min(n.ports.len());
                n.ports[..len].contains(&ep.host_ifindex)
            });
            return entry && port == Some(&ep.host_ifindex) && flooded;
        }
        entry
            && route.is_ok_and(|key| {
                shadow.routes.get(&key)
                    == Some(&Route::local(
                        ep.host_ifindex,
                        ep.container_mac.0,
                        ep.host_mac.0,
                    ))
            })
    }

    /// Records the static network's endpoints (the store keeps the others) so that the
    /// next daemon can adopt them; written atomically.
    pub(crate) fn save_static_endpoints(&self) -> Result<()> {
        let statics: Vec<&LocalEndpoint> = self
            .endpoints
            .values()
            .filter(|e| e.network.is_none())
            .collect();
        let tmp = self.state_path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&statics)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_path)
            .with_context(|| format!("cannot write {}", self.state_path.display()))
    }

    /// The blocks this host must hold: one address in each, from its endpoints.
    pub(crate) fn held_blocks(&self) -> Vec<lease::HeldBlock> {
        self.endpoints
            .values()
            .filter_map(|ep| Some((ep.network.clone()?, ep.address)))
            .collect()
    }
}

/// The static network's endpoints a previous daemon recorded. No file means none; a
/// file that cannot be read or parsed stops the start rather than being taken as empty
/// (and then overwritten), which would orphan wired containers.
pub(crate) fn read_state_file(path: &Path) -> Result<Vec<LocalEndpoint>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the state file {} is corrupt: fix or remove it (removing it forgets the static endpoints it lists)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read the state file {}", path.display())),
    }
}

/// What a batch of store events asks of the maps.
pub(crate) enum Routing {
    Unchanged,
    /// Blocks changed (store key, record before): only their routes.
    Blocks(Vec<(String, Option<BlockRecord>)>),
    All,
}
