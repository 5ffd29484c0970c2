//! An endpoint as the daemon that wired it remembers it (a container's interface on
//! this host), its interface names and the checks a new one must pass.
use std::net::Ipv4Addr;

use anyhow::{bail, Result};

use crate::{
    api::EndpointView,
    net::{veth::Lan, Ipv4Net, MacAddr},
};

/// The containers' default gateway: link-local, so it takes no address from the pod
/// subnet; the host-side veth answers for it through a permanent neighbour entry.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// A local endpoint as the daemon remembers it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LocalEndpoint {
    /// The store network, or None for the config's static network.
    pub network: Option<String>,
    pub vni: u32,
    pub netns: String,
    pub address: Ipv4Addr,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// MAC of the host-side veth: the container's gateway.
    pub host_mac: MacAddr,
    pub container_ifname: String,
    pub container_mac: MacAddr,
    pub mtu: u32,
    /// What the container routes through this interface: `None` for its default route
    /// (its first interface), else only this subnet.
    #[serde(default)]
    pub routes_only: Option<Ipv4Net>,
    /// Ports of this host that lead to this endpoint (Docker's `-p`), kept in the
    /// store's record too so that a restarted daemon finds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<crate::model::PublishedPort>,
    /// On a layer-2 network (switched by MAC onto the `[l2] parent` NIC, not routed):
    /// how it meets the LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<Lan>,
}

impl LocalEndpoint {
    /// Its entry in the endpoint map (keyed by `host_ifindex`).
    pub fn map_entry(&self) -> oxlay_common::Endpoint {
        oxlay_common::Endpoint {
            net_id: self.vni,
            addr: self.address.octets(),
            mac: self.container_mac.0,
            flags: if self.is_l2() {
                oxlay_common::l2::ENDPOINT_L2
            } else {
                0
            },
            _pad: 0,
        }
    }

    /// Whether it is on a layer-2 network.
    pub fn is_l2(&self) -> bool {
        self.lan.is_some()
    }

    pub fn view(&self) -> EndpointView {
        EndpointView {
            network: self.network.clone().unwrap_or_else(|| "static".to_owned()),
            vni: self.vni,
            netns: self.netns.clone(),
            address: self.address,
            mac: self.container_mac.to_string(),
            host_interface: self.host_ifname.clone(),
            container_interface: self.container_ifname.clone(),
            mtu: self.mtu,
            route: self
                .routes_only
                .map(|n| n.to_string())
                .unwrap_or_else(|| "0.0.0.0/0".to_owned()),
            published: self.published.iter().map(|p| p.to_string()).collect(),
            resolver: None,
            lan: self.lan,
        }
    }
}

/// Host-side veth name for a namespace's endpoint on a network (None: the static
/// one): short (IFNAMSIZ is 16), stable, and recognisably oxlay's.
pub fn host_ifname(netns: &str, network: Option<&str>) -> String {
    let seed = match network {
        Some(n) => format!("{netns}/{n}"),
        None => netns.to_owned(),
    };
    let mac = MacAddr::derived(&seed).0;
    format!(
        "oxl{:02x}{:02x}{:02x}{:02x}",
        mac[2], mac[3], mac[4], mac[5]
    )
}

/// Checks that `address` may be given to a new endpoint.
pub fn check_address<'a>(
    pod_subnet: Ipv4Net,
    address: Ipv4Addr,
    mut existing: impl Iterator<Item = &'a LocalEndpoint>,
) -> Result<()> {
    if !pod_subnet.is_usable_host(address) {
        bail!(
            "address {address} is not usable in this host's pod subnet {pod_subnet}: pick one inside it, other than the network and broadcast addresses"
        );
    }
    if let Some(other) = existing.find(|e| e.address == address) {
        bail!(
            "address {address} is already used by namespace {}",
            other.netns
        );
    }
    Ok(())
}

pub fn check_ifname(ifname: &str) -> Result<()> {
    if ifname.is_empty()
        || ifname.len() > 15
        || !ifname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "interface name {ifname:?} is not valid: use 1 to 15 letters, digits, '-', '_' or '.'"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(netns: &str, address: &str) -> LocalEndpoint {
        LocalEndpoint {
            network: None,
            vni: 42,
            netns: netns.into(),
            address: address.parse().unwrap(),
            host_ifname: host_ifname(netns, None),
            host_ifindex: 7,
            host_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            container_ifname: "eth0".into(),
            container_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            routes_only: None,
            published: Vec::new(),
            lan: None,
        }
    }

    #[test]
    fn host_ifnames_fit_and_differ() {
        let a = host_ifname("c1", None);
        assert!(a.len() <= 15 && a.starts_with("oxl"));
        assert_eq!(a, host_ifname("c1", None));
        assert_ne!(a, host_ifname("c2", None));
        assert_ne!(a, host_ifname("c1", Some("blue")));
    }

    #[test]
    fn addresses_are_checked() {
        let subnet: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let existing = [record("c1", "10.244.1.2")];
        assert!(check_address(subnet, "10.244.1.3".parse().unwrap(), existing.iter()).is_ok());
        let e = check_address(subnet, "10.244.1.2".parse().unwrap(), existing.iter()).unwrap_err();
        assert!(e.to_string().contains("already used by namespace c1"));
        let e = check_address(subnet, "10.244.2.2".parse().unwrap(), existing.iter()).unwrap_err();
        assert!(e.to_string().contains("not usable"));
        assert!(check_address(subnet, "10.244.1.255".parse().unwrap(), existing.iter()).is_err());
    }

    #[test]
    fn ifnames_are_checked() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a-very-long-interface").is_err());
        assert!(check_ifname("eth 0").is_err());
    }
}
