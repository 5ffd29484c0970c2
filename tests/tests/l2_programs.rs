//! The layer-2 switching of the kernel programs through BPF_PROG_TEST_RUN: a container
//! of a layer-2 network reaches another local container by MAC, the wire otherwise,
//! and every one of them with a broadcast; it speaks only with its own MAC and address,
//! in IPv4 and ARP. Frames from the parent NIC reach the local container they are for;
//! others are the host's. (VLAN tags travel beside the packet, which a test run cannot
//! show: the end-to-end test checks them on the wire.)
use std::collections::BTreeMap;

use anyhow::Result;
use oxlay::datapath::Datapath;
use oxlay_common::{
    l2::{L2Network, ENDPOINT_L2, MAX_L2_PORTS},
    program_names as prog, DatapathConfig, Endpoint,
};
use oxlay_testbed::{is_root, TempDir};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// The test run's packets arrive on ifindex 1: the sending container's veth, or the
/// parent NIC.
const TEST_RUN_IFINDEX: u32 = 1;

const TAGGED: u32 = 77;
const UNTAGGED: u32 = 78;
const ME: [u8; 4] = [192, 168, 60, 10];
const MY_MAC: [u8; 6] = [0x02, 0x60, 0, 0, 0, 0x10];
const NEIGHBOUR_MAC: [u8; 6] = [0x02, 0x60, 0, 0, 0, 0x11];
const NEIGHBOUR_VETH: u32 = 7;
const OUTSIDE_MAC: [u8; 6] = [0x02, 0x60, 0, 0, 0, 0x99];

/// A datapath whose test-run container (ifindex 1) is on layer-2 network TAGGED (VLAN
/// 100 on parent 1) with a neighbour; network UNTAGGED on parent 1 has a container too.
struct Fixture {
    dp: Datapath,
    _pins: TempDir,
}

fn fixture() -> Result<Option<Fixture>> {
    if !is_root() && oxlay_testbed::skip("root, for BPF_PROG_TEST_RUN") {
        return Ok(None);
    }
    let tag = TempDir::new("pins")?;
    let pins = std::path::Path::new("/sys/fs/bpf/oxlay-test").join(tag.path.file_name().unwrap());
    let mut dp = Datapath::load(&pins)?;
    dp.set_config(DatapathConfig {
        underlay_ifindex: 3,
        underlay_addr: [192, 168, 50, 11],
        vxlan_port: 4789,
        vtep_mac: [2, 0xaa, 0, 0, 0, 0x0a],
        ready: 1,
        underlay_mtu: 1500,
        _pad: 0,
        wireguard_ifindex: 0,
    })?;
    let endpoint = Endpoint {
        net_id: TAGGED,
        addr: ME,
        mac: MY_MAC,
        flags: ENDPOINT_L2,
        _pad: 0,
    };
    dp.set_endpoint(TEST_RUN_IFINDEX, endpoint)?;
    let mut ports = [0; MAX_L2_PORTS];
    ports[..2].copy_from_slice(&[TEST_RUN_IFINDEX, NEIGHBOUR_VETH]);
    let net = |vlan| L2Network {
        parent_ifindex: TEST_RUN_IFINDEX,
        vlan,
        ports_len: 2,
        ports,
    };
    dp.set_l2_network(TAGGED, net(100))?;
    dp.set_l2_network(UNTAGGED, net(0))?;
    dp.set_l2_port(TAGGED, MY_MAC, TEST_RUN_IFINDEX)?;
    dp.set_l2_port(TAGGED, NEIGHBOUR_MAC, NEIGHBOUR_VETH)?;
    dp.set_l2_port(UNTAGGED, NEIGHBOUR_MAC, NEIGHBOUR_VETH)?;
    // Removed on drop, as a temporary directory is.
    let cleanup = TempDir { path: pins };
    Ok(Some(Fixture { dp, _pins: cleanup }))
}

impl Fixture {
    /// Runs `program` on `frame`: the verdict and the counters that went up, by how much.
    fn run(&self, program: &str, frame: &[u8]) -> Result<(u32, BTreeMap<&'static str, u64>)> {
        let counters = |dp: &Datapath| -> Result<BTreeMap<&'static str, u64>> {
            Ok(dp
                .counters()?
                .into_iter()
                .map(|(i, v)| (i.name, v.packets))
                .collect())
        };
        let before = counters(&self.dp)?;
        let out = self.dp.test_run(program, frame, 1)?;
        let changed = counters(&self.dp)?
            .into_iter()
            .filter(|(name, v)| *v != before[name])
            .map(|(name, v)| (name, v - before[name]))
            .collect();
        Ok((out.verdict, changed))
    }
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    [&dst[..], &src[..], &ethertype.to_be_bytes()[..]].concat()
}

/// An IPv4/UDP packet from `src` (checksums left 0: the programs do not read them).
fn ipv4_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend(src);
    ip.extend(dst);
    ip.extend([0x9c, 0x40, 0x1e, 0x61, 0, 8, 0, 0]);
    [eth(dst_mac, src_mac, 0x0800), ip].concat()
}

/// An ARP request (broadcast) with sender `sha`/`spa` for the router.
fn arp(src_mac: [u8; 6], sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
    arp_for(src_mac, sha, spa, [192, 168, 60, 1])
}

/// An ARP request (broadcast) with sender `sha`/`spa` for `tpa`.
fn arp_for(src_mac: [u8; 6], sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut frame = eth([0xff; 6], src_mac, 0x0806);
    frame.extend([0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend(sha);
    frame.extend(spa);
    frame.extend([0; 6]);
    frame.extend(tpa);
    frame
}

/// (what it is, the frame, the verdict, the counters that go up).
type Case = (&'static str, Vec<u8>, u32, BTreeMap<&'static str, u64>);

#[test]
fn containers_are_switched_by_mac_and_speak_only_as_themselves() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let neighbour = ipv4_frame(NEIGHBOUR_MAC, MY_MAC, ME, [192, 168, 60, 11]);
    let outside = ipv4_frame(OUTSIDE_MAC, MY_MAC, ME, [192, 168, 60, 1]);
    let one = |name| BTreeMap::from([(name, 1)]);
    let cases: Vec<Case> = vec![
        (
            "to a local container",
            neighbour,
            TC_ACT_REDIRECT,
            one("l2_switched"),
        ),
        ("to the wire", outside, TC_ACT_REDIRECT, one("l2_to_wire")),
        (
            "to the gateway on the host's side (the resolver)",
            ipv4_frame(OUTSIDE_MAC, MY_MAC, ME, [169, 254, 1, 1]),
            TC_ACT_OK,
            one("l2_to_host"),
        ),
        (
            "who has the gateway",
            arp_for(MY_MAC, MY_MAC, ME, [169, 254, 1, 1]),
            TC_ACT_OK,
            one("l2_to_host"),
        ),
        (
            "ARP broadcast",
            arp(MY_MAC, MY_MAC, ME),
            TC_ACT_REDIRECT,
            one("l2_flooded"),
        ),
        (
            "ARP probe (sender 0.0.0.0)",
            arp(MY_MAC, MY_MAC, [0; 4]),
            TC_ACT_REDIRECT,
            one("l2_flooded"),
        ),
        (
            "ARP with another sender MAC",
            arp(MY_MAC, OUTSIDE_MAC, ME),
            TC_ACT_SHOT,
            one("drop_spoofed_source"),
        ),
        (
            "ARP with another sender address",
            arp(MY_MAC, MY_MAC, [192, 168, 60, 1]),
            TC_ACT_SHOT,
            one("drop_spoofed_source"),
        ),
        (
            "IPv4 from another address",
            ipv4_frame(OUTSIDE_MAC, MY_MAC, [192, 168, 60, 99], [192, 168, 60, 1]),
            TC_ACT_SHOT,
            one("drop_spoofed_source"),
        ),
        (
            "IPv4 from another MAC",
            ipv4_frame(OUTSIDE_MAC, OUTSIDE_MAC, ME, [192, 168, 60, 1]),
            TC_ACT_SHOT,
            one("drop_spoofed_source"),
        ),
        (
            "IPv6",
            [eth(OUTSIDE_MAC, MY_MAC, 0x86dd), vec![0x60; 40]].concat(),
            TC_ACT_SHOT,
            one("drop_container_not_ipv4"),
        ),
        (
            "to its own MAC (not back into itself)",
            ipv4_frame(MY_MAC, MY_MAC, ME, ME),
            TC_ACT_REDIRECT,
            one("l2_to_wire"),
        ),
        (
            "ARP that is neither request nor reply",
            {
                let mut f = arp(MY_MAC, MY_MAC, ME);
                f[21] = 3;
                f
            },
            TC_ACT_SHOT,
            one("drop_spoofed_source"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, frame, verdict, counters) in cases {
        let (got, changed) = f.run(prog::FROM_CONTAINER, &frame)?;
        if got != verdict || changed != counters {
            failures.push(format!(
                "{what}: verdict {got} (expected {verdict}), counters {changed:?} (expected {counters:?})"
            ));
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn a_container_of_a_network_without_parent_here_is_dropped() -> Result<()> {
    let Some(mut f) = fixture()? else {
        return Ok(());
    };
    f.dp.remove_l2_network(TAGGED, TEST_RUN_IFINDEX, 100)?;
    let frame = ipv4_frame(OUTSIDE_MAC, MY_MAC, ME, [192, 168, 60, 1]);
    let (verdict, changed) = f.run(prog::FROM_CONTAINER, &frame)?;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(changed, BTreeMap::from([("drop_l2_no_parent", 1)]));
    Ok(())
}

#[test]
fn frames_from_the_wire_reach_their_container_and_the_rest_is_the_hosts() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    // Untagged frames on parent 1 belong to network UNTAGGED.
    let to_neighbour = ipv4_frame(
        NEIGHBOUR_MAC,
        OUTSIDE_MAC,
        [192, 168, 60, 1],
        [192, 168, 60, 11],
    );
    let (verdict, changed) = f.run(prog::L2_FROM_WIRE, &to_neighbour)?;
    assert_eq!(
        (verdict, changed),
        (TC_ACT_REDIRECT, BTreeMap::from([("l2_from_wire", 1)]))
    );
    let broadcast = arp(OUTSIDE_MAC, OUTSIDE_MAC, [192, 168, 60, 1]);
    let (verdict, changed) = f.run(prog::L2_FROM_WIRE, &broadcast)?;
    assert_eq!(
        (verdict, changed),
        (TC_ACT_OK, BTreeMap::from([("l2_flooded", 1)]))
    );
    // For no container (the host's own MAC, say): the host's, untouched.
    let to_host = ipv4_frame(
        [2, 0, 0, 0, 0, 0x42],
        OUTSIDE_MAC,
        [192, 168, 60, 1],
        [192, 168, 60, 2],
    );
    let (verdict, changed) = f.run(prog::L2_FROM_WIRE, &to_host)?;
    assert_eq!((verdict, changed), (TC_ACT_OK, BTreeMap::new()));
    // From a local container's MAC (a reflecting switch, or forged), not IPv4 or ARP,
    // or to a switch's link-local group: the host's, untouched.
    let looped = ipv4_frame(
        NEIGHBOUR_MAC,
        NEIGHBOUR_MAC,
        [192, 168, 60, 11],
        [192, 168, 60, 11],
    );
    let ipv6 = [eth(NEIGHBOUR_MAC, OUTSIDE_MAC, 0x86dd), vec![0x60; 40]].concat();
    let lldp = [
        eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], OUTSIDE_MAC, 0x0806),
        vec![0; 28],
    ]
    .concat();
    for frame in [looped, ipv6, lldp] {
        let (verdict, changed) = f.run(prog::L2_FROM_WIRE, &frame)?;
        assert_eq!((verdict, changed), (TC_ACT_OK, BTreeMap::new()));
    }
    // A container's MAC on the tagged network is not reachable untagged.
    let wrong_vlan = ipv4_frame(MY_MAC, OUTSIDE_MAC, [192, 168, 60, 1], ME);
    let (verdict, changed) = f.run(prog::L2_FROM_WIRE, &wrong_vlan)?;
    assert_eq!((verdict, changed), (TC_ACT_OK, BTreeMap::new()));
    Ok(())
}
