//! The test topology: the underlay L2 segment (a bridge in a namespace of its own),
//! hosts on it, and containers in hosts: bare namespaces for oxlay to wire, or wired
//! without oxlay (routed the classic way, or behind the kernel's own `vxlan` device).
use std::net::Ipv4Addr;

use anyhow::Result;

use crate::{remove_stale, sh, Netns};

/// The underlay: a bridge in a namespace of its own, 192.168.50.0/24.
pub struct Underlay {
    pub ns: Netns,
    ports: u32,
    /// MTU of the segment (every port and host interface); 1500 unless set.
    pub mtu: u32,
}

pub const UNDERLAY_PREFIX: &str = "192.168.50";
/// Address of the underlay namespace itself on the segment (for etcd).
pub const UNDERLAY_SERVICE: &str = "192.168.50.1";

impl Underlay {
    pub fn new() -> Result<Self> {
        remove_stale();
        let ns = Netns::new("ul")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        // A switch does not run iptables on the frames it forwards: keep bridge
        // netfilter (on wherever br_netfilter is, as with Docker) off this segment, or
        // every frame between hosts pays for it. (Absent without br_netfilter.)
        let _ = ns.exec(&[
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ]);
        // The segment's own address, where shared services (etcd) listen.
        ns.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_SERVICE}/24"),
            "dev",
            "br0",
        ])?;
        Ok(Self {
            ns,
            ports: 0,
            mtu: 1500,
        })
    }

    /// Adds a host namespace whose `eth0` is on the bridge with address
    /// 192.168.50.`octet`/24.
    pub fn add_host(&mut self, role: &str, octet: u8) -> Result<Host> {
        self.add_host_at(role, &format!("{UNDERLAY_PREFIX}.{octet}"))
    }

    /// Adds a host with address `addr`/24 on the bridge. One outside 192.168.50.0/24
    /// is another underlay subnet on the same segment; every host reaches every
    /// other through on-link routes, as if a router joined them.
    pub fn add_host_at(&mut self, role: &str, addr: &str) -> Result<Host> {
        let ns = Netns::new(role)?;
        self.ports += 1;
        let port = format!("p{}", self.ports);
        sh(&[
            "ip",
            "link",
            "add",
            "eth0",
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
        self.ns.ip(&[
            "link",
            "set",
            &port,
            "mtu",
            &self.mtu.to_string(),
            "master",
            "br0",
            "up",
        ])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "mtu", &self.mtu.to_string(), "up"])?;
        for other in ["192.168.50.0/24", "192.168.60.0/24"] {
            // The connected route already covers the host's own subnet.
            let _ = ns.ip(&["route", "add", other, "dev", "eth0"]);
        }
        Ok(Host {
            ns,
            addr: addr.parse()?,
            underlay_port: port,
        })
    }
}

/// A host: a namespace with `eth0` on the underlay.
pub struct Host {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// Its port's name on the underlay bridge.
    pub underlay_port: String,
}

impl Host {
    /// A container namespace (not yet wired to anything).
    pub fn container(&self, role: &str) -> Result<Netns> {
        Netns::new(role)
    }

    /// A container wired the classic way, without oxlay: a veth whose host end has
    /// `gateway`/24 and whose container end has `address`/24 and a default route via
    /// the gateway; the host forwards.
    pub fn routed_container(
        &self,
        role: &str,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> Result<Netns> {
        let c = Netns::new(role)?;
        let host_if = format!("v{role}");
        sh(&[
            "ip",
            "link",
            "add",
            &host_if,
            "netns",
            &self.ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &c.name,
        ])?;
        self.ns
            .ip(&["addr", "add", &format!("{gateway}/24"), "dev", &host_if])?;
        self.ns
            .ip(&["link", "set", &host_if, "mtu", &mtu.to_string(), "up"])?;
        c.ip(&["link", "set", "eth0", "mtu", &mtu.to_string(), "up"])?;
        c.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        c.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        self.ns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(c)
    }

    /// Sets up the kernel's `gretap` device (`gtap1`: `ip_gre` makes a `gretap0` of its
    /// own in every namespace) towards one peer: key 42, address
    /// `<pod_subnet>.0/32`, MTU 1450 (an oxlay container's), and a route to the peer's
    /// /24 pod subnet through a permanent neighbour with the peer's VTEP MAC. Needs the
    /// `ip_gre` module (in the VMs of `cargo xtask vm-test`).
    pub fn linux_gretap(
        &self,
        vtep_mac: &str,
        pod_net: [u8; 3],
        (peer, peer_net, peer_mac): (Ipv4Addr, [u8; 3], &str),
    ) -> Result<()> {
        let ns = &self.ns;
        let (local, remote) = (self.addr.to_string(), peer.to_string());
        ns.ip(&[
            "link", "add", "gtap1", "address", vtep_mac, "type", "gretap", "local", &local,
            "remote", &remote, "key", "42",
        ])?;
        ns.ip(&["link", "set", "gtap1", "mtu", "1450", "up"])?;
        let net = |n: [u8; 3]| format!("{}.{}.{}", n[0], n[1], n[2]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}.0/32", net(pod_net)),
            "dev",
            "gtap1",
        ])?;
        let gw = format!("{}.0", net(peer_net));
        ns.ip(&[
            "route",
            "add",
            &format!("{gw}/24"),
            "via",
            &gw,
            "dev",
            "gtap1",
            "onlink",
        ])?;
        ns.ip(&[
            "neigh",
            "add",
            &gw,
            "lladdr",
            peer_mac,
            "dev",
            "gtap1",
            "nud",
            "permanent",
        ])?;
        ns.sysctl("net.ipv4.ip_forward", "1")
    }

    /// Sets up the kernel's `vxlan` device the way flannel does: `nolearning`, port
    /// 4789, VNI 42, address `<pod_subnet>.0/32`, and for each peer (underlay address,
    /// its /24 pod subnet's first three octets, its VTEP MAC) a route, a permanent
    /// neighbour and a static fdb entry.
    pub fn linux_vxlan(
        &self,
        vtep_mac: &str,
        pod_net: [u8; 3],
        peers: &[(Ipv4Addr, [u8; 3], &str)],
    ) -> Result<()> {
        let ns = &self.ns;
        ns.ip(&[
            "link",
            "add",
            "vxlan0",
            "address",
            vtep_mac,
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            &self.addr.to_string(),
            "dev",
            "eth0",
            "nolearning",
        ])?;
        ns.ip(&["link", "set", "vxlan0", "up"])?;
        let net = |n: [u8; 3]| format!("{}.{}.{}", n[0], n[1], n[2]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}.0/32", net(pod_net)),
            "dev",
            "vxlan0",
        ])?;
        for (underlay, subnet, mac) in peers {
            let gw = format!("{}.0", net(*subnet));
            ns.ip(&[
                "route",
                "add",
                &format!("{gw}/24"),
                "via",
                &gw,
                "dev",
                "vxlan0",
                "onlink",
            ])?;
            ns.ip(&[
                "neigh",
                "add",
                &gw,
                "lladdr",
                mac,
                "dev",
                "vxlan0",
                "nud",
                "permanent",
            ])?;
            ns.exec(&[
                "bridge",
                "fdb",
                "add",
                mac,
                "dev",
                "vxlan0",
                "dst",
                &underlay.to_string(),
            ])?;
        }
        ns.sysctl("net.ipv4.ip_forward", "1")
    }
}
