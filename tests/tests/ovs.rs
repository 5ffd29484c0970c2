//! An oxlay host and a host whose container hangs on an Open vSwitch bridge with a
//! VXLAN port (`type=vxlan options:key=42 options:remote_ip=...`), then with a GRE port
//! (`type=gre`): ping and a checked TCP transfer, both ways. The OVS host routes its
//! containers' traffic to oxlay's subnet through the bridge's own port (its MAC is the
//! `vtep_mac` oxlay's config names for it), as a host with the kernel's vxlan device
//! does. Needs the kernel's `openvswitch` module, which the machine lacks: these run
//! inside the 6.1 and 6.12 VMs of `cargo xtask vm-test`.
use anyhow::{bail, Context, Result};
use oxlay_testbed::{
    ovs::{ovs_missing, Ovs},
    sh, skip_without_root, Daemon, Host, Netns, NodeConfig, Underlay,
};

const A_VTEP: &str = "02:aa:00:00:00:0a";
const B_VTEP: &str = "02:bb:00:00:00:0b";

/// The OVS host: bridge `br0` (its port's MAC `B_VTEP`, address 10.244.2.1/24), a
/// container 10.244.2.2 on it, a tunnel port of `kind` with key 42 to `oxlay`, and the
/// route to oxlay's subnet 10.244.1.0/24 through the bridge.
fn ovs_host(host: &Host, oxlay: &Host, kind: &str) -> Result<(Ovs, Netns)> {
    let ovs = Ovs::start(host)?;
    ovs.vsctl(&[
        "add-br",
        "br0",
        "--",
        "set",
        "bridge",
        "br0",
        &format!("other-config:hwaddr=\"{B_VTEP}\""),
    ])?;
    let remote = format!("options:remote_ip={}", oxlay.addr);
    ovs.vsctl(&[
        "add-port",
        "br0",
        "tun0",
        "--",
        "set",
        "interface",
        "tun0",
        &format!("type={kind}"),
        "options:key=42",
        &remote,
    ])?;
    // (OVS gives an internal port its other ports' least MTU unless asked.)
    ovs.vsctl(&["set", "interface", "br0", "mtu_request=1450"])?;
    let ns = &host.ns;
    ns.ip(&["link", "set", "br0", "up"])?;
    ns.ip(&["addr", "add", "10.244.2.1/24", "dev", "br0"])?;
    ns.ip(&[
        "route",
        "add",
        "10.244.1.0/24",
        "via",
        "10.244.1.0",
        "dev",
        "br0",
        "onlink",
    ])?;
    ns.ip(&[
        "neigh",
        "add",
        "10.244.1.0",
        "lladdr",
        A_VTEP,
        "dev",
        "br0",
        "nud",
        "permanent",
    ])?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    let c = Netns::new("ovsc")?;
    sh(&[
        "ip", "link", "add", "vc0", "netns", &ns.name, "type", "veth", "peer", "name", "eth0",
        "netns", &c.name,
    ])?;
    ovs.vsctl(&["add-port", "br0", "vc0"])?;
    ns.ip(&["link", "set", "vc0", "mtu", "1450", "up"])?;
    c.ip(&["link", "set", "eth0", "mtu", "1450", "up"])?;
    c.ip(&["addr", "add", "10.244.2.2/24", "dev", "eth0"])?;
    c.ip(&["route", "add", "default", "via", "10.244.2.1"])?;
    let mac = ns.ip(&["-br", "link", "show", "br0"])?;
    if !mac.contains(B_VTEP) {
        bail!("br0 did not take its MAC {B_VTEP}: {mac}\n{}", ovs.logs());
    }
    Ok((ovs, c))
}

fn interoperates(kind: &str) -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    if let Some(why) = ovs_missing() {
        bail!("Open vSwitch cannot run: {why}");
    }
    let mut ul = Underlay::new()?;
    let host_a = ul.add_host("oxlay", 11)?;
    let host_b = ul.add_host("ovs", 12)?;
    let (ovs, cb) = ovs_host(&host_b, &host_a, kind)?;
    let cfg = NodeConfig {
        node: &format!("ovs-a-{kind}-{}", std::process::id()),
        pod_subnet: "10.244.1.0/24",
        decap: "tc",
        vni: 42,
        peers: vec![(
            "ovs-b".into(),
            host_b.addr,
            "10.244.2.0/24".into(),
            Some(B_VTEP.into()),
        )],
    };
    let config = format!(
        "vtep_mac = \"{A_VTEP}\"\nencap = \"{kind}\"\n{}",
        cfg.toml()
    );
    let daemon = Daemon::start(&host_a, cfg.node, &config)?;
    let ca = host_a.container("ca")?;
    daemon.attach(&ca, "10.244.1.2")?;

    ca.ping("10.244.2.2", 2).with_context(|| {
        let ports = ovs.vsctl(&["show"]).unwrap_or_default();
        format!(
            "oxlay to OVS ({kind}); OVS:\n{ports}\n{}\noxlay:\n{}",
            ovs.logs(),
            daemon.log()
        )
    })?;
    let a = (&ca, "10.244.1.2".parse()?);
    oxlay_testbed::both_ways(&daemon, a, (&cb, "10.244.2.2".parse()?))
}

#[test]
#[ignore = "needs the kernel's openvswitch module: runs inside the VMs of cargo xtask vm-test"]
fn interoperates_with_an_open_vswitch_vxlan_port() -> Result<()> {
    interoperates("vxlan")
}

#[test]
#[ignore = "needs the kernel's openvswitch module: runs inside the VMs of cargo xtask vm-test"]
fn interoperates_with_an_open_vswitch_gre_port() -> Result<()> {
    interoperates("gre")
}
