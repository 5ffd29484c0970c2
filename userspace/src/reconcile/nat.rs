//! What the host's NAT should do for the containers (a pure function, like `desired`):
//! traffic from an oxlay network to a destination outside every oxlay network leaves
//! with the host's address, unless the network switched that off or the destination
//! is one of its exceptions. `net/nftables` writes it.
use std::collections::{BTreeMap, BTreeSet};

use std::net::Ipv4Addr;

use super::snapshot::Snapshot;
use crate::{
    config::Config,
    model::{local::LocalEndpoint, Egress, PublishedPort},
    net::Ipv4Net,
};

/// The host's NAT, as oxlay wants it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nat {
    /// Every oxlay subnet: traffic between them is never translated.
    pub overlay: BTreeSet<Ipv4Net>,
    /// Masqueraded sources, each with the destinations that keep its address.
    pub masquerade: BTreeMap<Ipv4Net, BTreeSet<Ipv4Net>>,
    /// Sources that keep their address (`--masquerade=false`). A network inside
    /// another one with other settings keeps its own: rules go most specific first.
    /// Networks with the same subnet and different settings: keeping wins (the host
    /// cannot tell their packets apart by address).
    pub keep: BTreeSet<Ipv4Net>,
    /// Published ports: a port of this host and the container address it leads to.
    pub forwards: BTreeSet<(PublishedPort, Ipv4Addr)>,
}

/// The NAT for the config's static network, every network in the store and the
/// ports the local endpoints publish.
pub fn desired_nat(config: &Config, snapshot: &Snapshot, local: &[&LocalEndpoint]) -> Nat {
    // (subnet, its egress, whether it is one of this host's networks)
    let mut networks: Vec<(Ipv4Net, Option<&Egress>)> = Vec::new();
    if let Some((_, subnet)) = config.static_network() {
        networks.push((subnet, Some(&config.egress)));
        // Peers' pod subnets are the static network's too, but not this host's to
        // masquerade.
        networks.extend(config.peers.iter().map(|p| (p.pod_subnet, None)));
    }
    // Layer-2 networks are the LAN's: their traffic never passes the host's NAT, and
    // an overlay container's traffic to the LAN leaves with the host's address.
    networks.extend(
        snapshot
            .networks
            .values()
            .filter(|n| n.l2.is_none())
            .map(|n| (n.subnet, Some(&n.egress))),
    );
    let keep: BTreeSet<Ipv4Net> = networks
        .iter()
        .filter(|(_, egress)| egress.is_some_and(|e| !e.masquerade))
        .map(|(subnet, _)| *subnet)
        .collect();
    let mut masquerade: BTreeMap<Ipv4Net, Vec<Ipv4Net>> = BTreeMap::new();
    for (subnet, egress) in &networks {
        if let Some(egress) = egress.filter(|e| e.masquerade && !keep.contains(subnet)) {
            let except = masquerade.entry(*subnet).or_default();
            except.extend(egress.except.iter().copied());
        }
    }
    Nat {
        // A layer-2 container answers through the LAN's router, not the host: it is
        // reached at its own address, not through a port of the host.
        forwards: local
            .iter()
            .filter(|ep| !ep.is_l2())
            .flat_map(|ep| ep.published.iter().map(|p| (*p, ep.address)))
            .collect(),
        overlay: outermost(networks.iter().map(|(s, _)| *s).collect()),
        keep,
        masquerade: masquerade
            .into_iter()
            .map(|(source, except)| (source, outermost(except)))
            .collect(),
    }
}

/// The subnets not inside another one: the same addresses, with no two overlapping
/// (nftables' interval sets refuse overlapping elements, and networks may overlap).
fn outermost(subnets: Vec<Ipv4Net>) -> BTreeSet<Ipv4Net> {
    subnets
        .iter()
        .filter(|s| {
            !subnets
                .iter()
                .any(|o| o != *s && o.prefix_len() <= s.prefix_len() && o.contains(s.addr()))
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkRecord;

    fn net(name: &str, subnet: &str, egress: Egress) -> NetworkRecord {
        NetworkRecord {
            l2: None,
            name: name.into(),
            vni: 1,
            subnet: subnet.parse().unwrap(),
            block_prefix: 24,
            labels: Default::default(),
            direct: false,
            removing: false,
            egress,
            encap: Default::default(),
        }
    }

    fn nets(s: &[&str]) -> BTreeSet<Ipv4Net> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn every_network_is_overlay_and_masquerades_unless_switched_off() {
        let config: Config = "node_name = \"me\"\nunderlay_interface = \"eth0\"\nvni = 42\npod_subnet = \"10.244.1.0/24\"\n[[peers]]\nname = \"b\"\nunderlay_address = \"192.168.50.12\"\npod_subnet = \"10.244.2.0/24\"\n"
            .parse()
            .unwrap();
        let routed = Egress {
            masquerade: true,
            except: vec![
                "172.16.0.0/12".parse().unwrap(),
                "172.16.5.0/24".parse().unwrap(),
            ],
        };
        let off = Egress {
            masquerade: false,
            except: vec![],
        };
        let snapshot = Snapshot::from_records(
            vec![],
            vec![
                net("blue", "10.1.0.0/16", Egress::default()),
                net("inner", "10.1.5.0/24", Egress::default()),
                net("dc", "10.2.0.0/16", routed),
                net("plain", "10.3.0.0/16", off),
            ],
            vec![],
        );
        let nat = desired_nat(&config, &snapshot, &[]);
        assert_eq!(
            nat.overlay,
            nets(&[
                "10.1.0.0/16",
                "10.2.0.0/16",
                "10.3.0.0/16",
                "10.244.1.0/24",
                "10.244.2.0/24"
            ]),
            "overlapping subnets merge into the outer one"
        );
        assert_eq!(nat.keep, nets(&["10.3.0.0/16"]));
        let sources: Vec<String> = nat.masquerade.keys().map(|n| n.to_string()).collect();
        assert_eq!(
            sources,
            ["10.1.0.0/16", "10.1.5.0/24", "10.2.0.0/16", "10.244.1.0/24"],
            "the static network and every network but `plain` masquerade; peers' subnets are not ours"
        );
        assert_eq!(
            nat.masquerade[&"10.2.0.0/16".parse().unwrap()],
            nets(&["172.16.0.0/12"])
        );
        // The static network follows the config's [egress].
        let quiet: Config = "node_name = \"me\"\nunderlay_interface = \"eth0\"\nvni = 42\npod_subnet = \"10.244.1.0/24\"\n[egress]\nmasquerade = false\n"
            .parse()
            .unwrap();
        let nat = desired_nat(&quiet, &Snapshot::default(), &[]);
        assert_eq!(nat.overlay, nets(&["10.244.1.0/24"]));
        assert!(nat.masquerade.is_empty());
    }
}
