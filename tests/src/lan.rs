//! A second L2 segment for layer-2 networks: the LAN that each host's second NIC
//! (`eth1`, its `[l2] parent`) and machines that are not oxlay hosts (a router, others)
//! plug into. A bridge in a namespace of its own, without VLAN filtering: tagged frames
//! cross it as a trunk would carry them.
use anyhow::Result;

use crate::{sh, Netns};

pub struct Lan {
    pub ns: Netns,
    ports: u32,
}

impl Lan {
    pub fn new() -> Result<Self> {
        let ns = Netns::new("lan")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Self { ns, ports: 0 })
    }

    /// Gives namespace `ns` an interface `ifname` (up, no address) on the LAN.
    pub fn plug(&mut self, ns: &Netns, ifname: &str) -> Result<()> {
        self.ports += 1;
        let port = format!("l{}", self.ports);
        sh(&[
            "ip",
            "link",
            "add",
            ifname,
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.ns.name,
        ])?;
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// A machine on the LAN that is not an oxlay host: `eth1` with `address` (a
    /// prefix), on `vlan` (a tagged sub-interface) when given.
    pub fn machine(&mut self, role: &str, address: &str, vlan: Option<u16>) -> Result<Netns> {
        let ns = Netns::new(role)?;
        self.plug(&ns, "eth1")?;
        let dev = match vlan {
            Some(id) => {
                let dev = format!("eth1.{id}");
                let id = id.to_string();
                ns.ip(&[
                    "link", "add", "link", "eth1", "name", &dev, "type", "vlan", "id", &id,
                ])?;
                ns.ip(&["link", "set", &dev, "up"])?;
                dev
            }
            None => "eth1".to_owned(),
        };
        ns.ip(&["addr", "add", address, "dev", &dev])?;
        Ok(ns)
    }
}
