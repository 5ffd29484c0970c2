//! The kernel programs through BPF_PROG_TEST_RUN: real programs in the real kernel, with
//! packets and expected outputs built here, independently of the datapath's code.
//!
//! Each case: build a packet, set up maps, run, check verdict, bytes and counters.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use oxlay::{datapath::Datapath, net::Ipv4Net};
use oxlay_common::{
    program_names as prog, CounterValue, DatapathConfig, Endpoint, Peer, Route, DIRECT_NET_ID,
    PEER_WIREGUARD,
};
use oxlay_testbed::{is_root, TempDir};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const VNI: u32 = 42;
const OUR_UNDERLAY: [u8; 4] = [192, 168, 50, 11];
const PEER_UNDERLAY: [u8; 4] = [192, 168, 50, 12];
const OUR_VTEP: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0a];
const PEER_VTEP: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0b];
const SRC_CONTAINER: [u8; 4] = [10, 244, 1, 2];
const SRC_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x01];
const LOCAL_CONTAINER: [u8; 4] = [10, 244, 1, 3];
const LOCAL_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x03];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x99, 0, 0, 0, 0x99];
const REMOTE_CONTAINER: [u8; 4] = [10, 244, 2, 2];
const LOCAL_IFINDEX: u32 = 7;
const DIRECT_PEER_BLOCK: &str = "10.244.5.0/24";
const DIRECT_PEER_CONTAINER: [u8; 4] = [10, 244, 5, 7];
const OTHER_DIRECT_BLOCK: &str = "10.244.6.0/24";
const OTHER_DIRECT_CONTAINER: [u8; 4] = [10, 244, 6, 7];

/// test_run gives the program a packet on `lo` (ifindex 1): the endpoint is registered
/// there, as if lo were a container's host-side veth.
const TEST_RUN_IFINDEX: u32 = 1;
/// A block of the peer reached over GRE (same network: encapsulation is per route).
const GRE_BLOCK: &str = "10.244.8.0/24";
const GRE_CONTAINER: [u8; 4] = [10, 244, 8, 2];

struct Fixture {
    dp: Datapath,
    _pins: PinDir,
}

/// A bpffs pin directory removed on drop.
struct PinDir(std::path::PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent); // only once empty
        }
    }
}

/// The datapath config of these tests: this host, with an underlay of `underlay_mtu`
/// and WireGuard's device at `wireguard_ifindex` (0: none).
fn config(underlay_mtu: u16, wireguard_ifindex: u32) -> DatapathConfig {
    DatapathConfig {
        underlay_ifindex: 1,
        underlay_addr: OUR_UNDERLAY,
        vxlan_port: 4789,
        vtep_mac: OUR_VTEP,
        ready: 1,
        underlay_mtu,
        _pad: 0,
        wireguard_ifindex,
    }
}

fn fixture() -> Result<Option<Fixture>> {
    if !is_root() && oxlay_testbed::skip("root, for BPF_PROG_TEST_RUN") {
        return Ok(None);
    }
    let tag = TempDir::new("pins")?;
    let pins =
        PinDir(std::path::Path::new("/sys/fs/bpf/oxlay-test").join(tag.path.file_name().unwrap()));
    let mut dp = Datapath::load(&pins.0)?;
    dp.set_config(config(1500, 0))?;
    dp.add_network(VNI)?;
    dp.set_peer(Ipv4Addr::from(PEER_UNDERLAY), Peer::default())?;
    dp.set_route(
        VNI,
        "10.244.2.0/24".parse()?,
        Route::remote(PEER_UNDERLAY, PEER_VTEP),
    )?;
    dp.set_route(
        VNI,
        Ipv4Net::new(LOCAL_CONTAINER.into(), 32)?,
        Route::local(LOCAL_IFINDEX, LOCAL_MAC, GATEWAY_MAC),
    )?;
    dp.set_route(
        VNI,
        GRE_BLOCK.parse()?,
        Route::remote(PEER_UNDERLAY, PEER_VTEP).over_gre(),
    )?;
    // Another peer's block: the known peer must not speak for it.
    dp.set_route(
        VNI,
        "10.244.3.0/24".parse()?,
        Route::remote([192, 168, 50, 13], [0x02, 0xcc, 0, 0, 0, 0x0c]),
    )?;
    // A direct network's peer block (same VNI here) and the receive-side direct table.
    dp.set_route(
        VNI,
        DIRECT_PEER_BLOCK.parse()?,
        Route::direct(PEER_UNDERLAY),
    )?;
    dp.set_route(
        DIRECT_NET_ID,
        DIRECT_PEER_BLOCK.parse()?,
        Route::direct(PEER_UNDERLAY).in_network(VNI),
    )?;
    dp.set_route(
        DIRECT_NET_ID,
        Ipv4Net::new(LOCAL_CONTAINER.into(), 32)?,
        Route::local(LOCAL_IFINDEX, LOCAL_MAC, GATEWAY_MAC).in_network(VNI),
    )?;
    // A block of another direct network, on the same peer.
    dp.set_route(
        DIRECT_NET_ID,
        OTHER_DIRECT_BLOCK.parse()?,
        Route::direct(PEER_UNDERLAY).in_network(VNI + 1),
    )?;
    // The test-run container's own route: it names the gateway MAC ARP answers with.
    dp.set_route(
        VNI,
        Ipv4Net::new(SRC_CONTAINER.into(), 32)?,
        Route::local(TEST_RUN_IFINDEX, SRC_MAC, GATEWAY_MAC),
    )?;
    dp.set_endpoint(
        TEST_RUN_IFINDEX,
        Endpoint {
            net_id: VNI,
            addr: SRC_CONTAINER,
            mac: SRC_MAC,
            flags: 0,
            _pad: 0,
        },
    )?;
    Ok(Some(Fixture { dp, _pins: pins }))
}

impl Fixture {
    fn counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        Ok(self
            .counter_values()?
            .into_iter()
            .map(|(name, v)| (name, v.packets))
            .collect())
    }

    fn counter_values(&self) -> Result<BTreeMap<&'static str, CounterValue>> {
        Ok(self
            .dp
            .counters()?
            .into_iter()
            .map(|(i, v)| (i.name, v))
            .collect())
    }

    /// Runs `program` once and returns its verdict and every counter that changed, with
    /// how much it went up.
    fn run_counted(
        &self,
        program: &str,
        packet: &[u8],
    ) -> Result<(u32, BTreeMap<&'static str, u64>)> {
        let before = self.counters()?;
        let out = self.dp.test_run(program, packet, 1)?;
        let changed = self
            .counters()?
            .into_iter()
            .filter(|(name, value)| *value != before[name])
            .map(|(name, value)| (name, value.wrapping_sub(before[name])))
            .collect();
        Ok((out.verdict, changed))
    }

    /// Runs `program` and checks the verdict and that exactly `counter` went up by one.
    fn run(&self, program: &str, packet: &[u8], verdict: u32, counter: &str) -> Result<Vec<u8>> {
        self.run_gso(program, packet, None, verdict, counter)
    }

    /// Like `run`, with the packet marked as GSO with `gso_size` when given.
    fn run_gso(
        &self,
        program: &str,
        packet: &[u8],
        gso_size: Option<u32>,
        verdict: u32,
        counter: &str,
    ) -> Result<Vec<u8>> {
        let before = self.counter_values()?;
        let out = match gso_size {
            Some(size) => self.dp.test_run_gso(program, packet, size)?,
            None => self.dp.test_run(program, packet, 1)?,
        };
        let after = self.counter_values()?;
        assert_eq!(
            out.verdict, verdict,
            "{program}: verdict for the {counter} case"
        );
        for (name, value) in &after {
            let expected = before[name].packets + u64::from(*name == counter);
            assert_eq!(
                value.packets, expected,
                "{program}: counter {name} in the {counter} case"
            );
            // Bytes: the frame's length when counted, as it came in or as it left (XDP:
            // after the 8 bytes of metadata test_run returns in front of it).
            let bytes = value.bytes - before[name].bytes;
            let out_len = out.packet.len() as u64;
            let lengths = [packet.len() as u64, out_len, out_len.saturating_sub(8)];
            assert!(
                if *name == counter { lengths.contains(&bytes) } else { bytes == 0 },
                "{program}: counter {name} counted {bytes} bytes in the {counter} case (frame {lengths:?})"
            );
        }
        Ok(out.packet)
    }
}

// ---- packet building, independent of the datapath's code ----

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    [&dst[..], &src[..], &ethertype.to_be_bytes()[..]].concat()
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, frags: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend(((20 + payload.len()) as u16).to_be_bytes());
    h.extend([0, 0]);
    h.extend(frags.to_be_bytes());
    h.extend([64, proto, 0, 0]);
    h.extend(src);
    h.extend(dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend(dport.to_be_bytes());
    u.extend(((8 + payload.len()) as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(payload);
    u
}

fn vxlan(flags: u8, vni: u32) -> Vec<u8> {
    let v = vni.to_be_bytes();
    vec![flags, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// A container's IPv4/UDP packet to `dst`, as it leaves the container.
fn container_frame(dst: [u8; 4]) -> Vec<u8> {
    let inner_ip = ipv4(
        SRC_CONTAINER,
        dst,
        17,
        0x4000,
        &udp(40000, 7777, b"hello, overlay"),
    );
    [eth(GATEWAY_MAC, SRC_MAC, 0x0800), inner_ip].concat()
}

/// A VXLAN frame from `from` carrying an IPv4/UDP packet to `inner_dst`.
fn vxlan_frame(from: [u8; 4], flags: u8, vni: u32, inner_dst: [u8; 4]) -> (Vec<u8>, Vec<u8>) {
    let inner_ip = ipv4(
        REMOTE_CONTAINER,
        inner_dst,
        17,
        0x4000,
        &udp(40000, 7777, b"hi back"),
    );
    let inner = [
        eth([0x02, 1, 2, 3, 4, 5], PEER_VTEP, 0x0800),
        inner_ip.clone(),
    ]
    .concat();
    (
        outer(
            from,
            OUR_UNDERLAY,
            4789,
            0x4000,
            &[vxlan(flags, vni), inner].concat(),
        ),
        inner_ip,
    )
}

/// A GRE header: flags and version, protocol type, key (no checksum or sequence).
fn gre(flags: u16, proto: u16, key: u32) -> Vec<u8> {
    [flags.to_be_bytes(), proto.to_be_bytes()]
        .concat()
        .into_iter()
        .chain(key.to_be_bytes())
        .collect()
}

/// Ethernet over GRE from `from` with GRE header `header`, carrying an IPv4/UDP packet
/// from the peer's container to `inner_dst`; and that inner packet.
fn gre_frame(from: [u8; 4], header: &[u8], frags: u16, inner_dst: [u8; 4]) -> (Vec<u8>, Vec<u8>) {
    let inner_ip = ipv4(
        REMOTE_CONTAINER,
        inner_dst,
        17,
        0x4000,
        &udp(40000, 7777, b"hi back"),
    );
    let payload = [
        header.to_vec(),
        eth([0x02, 1, 2, 3, 4, 5], PEER_VTEP, 0x0800),
        inner_ip.clone(),
    ]
    .concat();
    let frame = [
        eth([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x12], 0x0800),
        ipv4(from, OUR_UNDERLAY, 47, frags, &payload),
    ]
    .concat();
    (frame, inner_ip)
}

/// The GRE frame the known peer sends to the local container in the test network.
fn good_gre(header: &[u8], inner_dst: [u8; 4]) -> Vec<u8> {
    gre_frame(PEER_UNDERLAY, header, 0x4000, inner_dst).0
}

fn outer(src: [u8; 4], dst: [u8; 4], dport: u16, frags: u16, udp_payload: &[u8]) -> Vec<u8> {
    [
        eth([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x12], 0x0800),
        ipv4(src, dst, 17, frags, &udp(51000, dport, udp_payload)),
    ]
    .concat()
}

// ---- encapsulation ----

#[test]
fn encap_matches_independently_built_headers() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let frame = container_frame(REMOTE_CONTAINER);
    let out = f.run(
        prog::FROM_CONTAINER,
        &frame,
        TC_ACT_REDIRECT,
        "encapsulated",
    )?;
    assert_eq!(out.len(), frame.len() + 50);

    let inner_ip = &frame[14..];
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!(sport >= 49152, "source port {sport} outside 49152-65535");
    let mut inner = eth(PEER_VTEP, OUR_VTEP, 0x0800);
    inner.extend(inner_ip);
    let mut expected = eth([0; 6], [0; 6], 0x0800); // MACs are filled by bpf_redirect_neigh
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + 8 + 8 + inner.len()) as u16).to_be_bytes());
    ip.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend(OUR_UNDERLAY);
    ip.extend(PEER_UNDERLAY);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    expected.extend(ip);
    expected.extend(sport.to_be_bytes());
    expected.extend(4789u16.to_be_bytes());
    expected.extend(((8 + 8 + inner.len()) as u16).to_be_bytes());
    expected.extend([0, 0]);
    expected.extend([0x08, 0, 0, 0, 0, 0, 42, 0]);
    expected.extend(inner);
    assert_eq!(out, expected, "encapsulated frame differs");
    assert_eq!(
        checksum(&out[14..34]),
        0,
        "outer IPv4 checksum does not verify"
    );

    // The same flow always gets the same source port (ECMP must not reorder it).
    let again = f.run(
        prog::FROM_CONTAINER,
        &frame,
        TC_ACT_REDIRECT,
        "encapsulated",
    )?;
    assert_eq!(again, out);

    // Other flows get other source ports (a constant port would pass the checks above
    // and give ECMP and RSS nothing to spread).
    let mut ports = std::collections::BTreeSet::from([sport]);
    for i in 1..8u16 {
        let ip = ipv4(
            SRC_CONTAINER,
            REMOTE_CONTAINER,
            17,
            0x4000,
            &udp(40000 + i, 7777, b"flow"),
        );
        let frame = [eth(GATEWAY_MAC, SRC_MAC, 0x0800), ip].concat();
        let out = f.run(
            prog::FROM_CONTAINER,
            &frame,
            TC_ACT_REDIRECT,
            "encapsulated",
        )?;
        let port = u16::from_be_bytes([out[34], out[35]]);
        assert!(port >= 49152, "source port {port} outside 49152-65535");
        ports.insert(port);
    }
    assert!(
        ports.len() >= 6,
        "8 flows got only {} source ports: {ports:?}",
        ports.len()
    );
    Ok(())
}

/// GRE: outer IPv4 (protocol 47) + GRE with the VNI as key + the inner Ethernet frame,
/// byte for byte what Linux's `gretap ... key 42` sends.
#[test]
fn gre_encap_matches_independently_built_headers() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let frame = container_frame(GRE_CONTAINER);
    let out = f.run(
        prog::FROM_CONTAINER,
        &frame,
        TC_ACT_REDIRECT,
        "encapsulated",
    )?;
    let inner = [eth(PEER_VTEP, OUR_VTEP, 0x0800), frame[14..].to_vec()].concat();
    let payload = [gre(0x2000, 0x6558, VNI), inner].concat();
    let mut expected = eth([0; 6], [0; 6], 0x0800);
    expected.extend(ipv4(OUR_UNDERLAY, PEER_UNDERLAY, 47, 0x4000, &payload));
    assert_eq!(out.len(), frame.len() + 42);
    assert_eq!(out, expected, "GRE frame differs");
    Ok(())
}

#[test]
fn gre_decap_delivers_the_inner_packet_in_both_modes() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let (frame, inner_ip) = gre_frame(
        PEER_UNDERLAY,
        &gre(0x2000, 0x6558, VNI),
        0x4000,
        LOCAL_CONTAINER,
    );
    let out = f.run(prog::DECAP_TC, &frame, TC_ACT_REDIRECT, "decapsulated")?;
    let delivered = [eth(LOCAL_MAC, GATEWAY_MAC, 0x0800), inner_ip].concat();
    assert_eq!(out, delivered);
    let out = f.run(prog::DECAP_XDP, &frame, XDP_PASS, "decapsulated")?;
    let meta = [0x6f78_6c79u32.to_ne_bytes(), LOCAL_IFINDEX.to_ne_bytes()].concat();
    assert_eq!(out, [meta, delivered].concat());
    Ok(())
}

#[test]
fn containers_cannot_spoof_their_source() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let ip = ipv4(
        [10, 244, 1, 77],
        REMOTE_CONTAINER,
        17,
        0x4000,
        &udp(40000, 7777, b"spoof"),
    );
    let wrong_ip = [eth(GATEWAY_MAC, SRC_MAC, 0x0800), ip].concat();
    let mut wrong_mac = container_frame(REMOTE_CONTAINER);
    wrong_mac[6..12].copy_from_slice(&[0x02, 0xee, 0xee, 0xee, 0xee, 0xee]);
    let to_host = {
        let ip = ipv4([10, 244, 1, 77], OUR_UNDERLAY, 17, 0x4000, &udp(1, 2, b"x"));
        [eth(GATEWAY_MAC, SRC_MAC, 0x0800), ip].concat()
    };
    for frame in [wrong_ip, wrong_mac, to_host] {
        f.run(
            prog::FROM_CONTAINER,
            &frame,
            TC_ACT_SHOT,
            "drop_spoofed_source",
        )?;
    }
    Ok(())
}

/// Frames that are neither IPv4 nor ARP would bypass the address check: dropped and
/// counted until networks carry those protocols.
#[test]
fn containers_non_ipv4_frames_are_dropped() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let ipv6 = [eth(GATEWAY_MAC, SRC_MAC, 0x86dd), vec![0x60; 48]].concat();
    let vlan = [
        eth(GATEWAY_MAC, SRC_MAC, 0x8100),
        vec![0x00, 0x05, 0x08, 0x00],
        ipv4(
            [10, 244, 1, 77],
            REMOTE_CONTAINER,
            17,
            0x4000,
            &udp(1, 2, b"x"),
        ),
    ]
    .concat();
    let other = [eth(GATEWAY_MAC, SRC_MAC, 0x88b5), vec![0; 46]].concat();
    for frame in [ipv6, vlan, other] {
        f.run(
            prog::FROM_CONTAINER,
            &frame,
            TC_ACT_SHOT,
            "drop_container_not_ipv4",
        )?;
    }
    Ok(())
}

/// An upgrade that changes a map's shape (here: an older build's counter table with
/// fewer counters, and its route map with another capacity, both pinned where builds
/// before versioned pins put them) keeps the contents: the new build gets maps of its
/// own shape, filled from the old ones, and removes the old pins once told.
#[test]
fn an_upgrade_that_changes_a_map_keeps_its_contents() -> Result<()> {
    if !is_root() && oxlay_testbed::skip("root, to pin maps") {
        return Ok(());
    }
    let tag = TempDir::new("pins")?;
    let pins =
        PinDir(std::path::Path::new("/sys/fs/bpf/oxlay-test").join(tag.path.file_name().unwrap()));
    std::fs::create_dir_all(&pins.0)?;
    let counters = pins.0.join("OXLAY_COUNTERS");
    let routes = pins.0.join("OXLAY_ROUTES");
    let bpftool = |args: &[&str]| oxlay_testbed::sh(&[&["bpftool"], args].concat());
    let c = counters.to_str().unwrap();
    let r = routes.to_str().unwrap();
    bpftool(&[
        "map",
        "create",
        c,
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "3",
        "name",
        "OXLAY_COUNTERS",
    ])?;
    // Counter 0 (encapsulated) = 7 on every CPU.
    bpftool(&[
        "map", "update", "pinned", c, "key", "0", "0", "0", "0", "value", "7", "0", "0", "0", "0",
        "0", "0", "0",
    ])?;
    bpftool(&[
        "map",
        "create",
        r,
        "type",
        "lpm_trie",
        "key",
        "12",
        "value",
        "24",
        "entries",
        "16",
        "name",
        "OXLAY_ROUTES",
        "flags",
        "1",
    ])?;
    // (VNI 42, 10.244.2.0/24) -> remote 192.168.50.12.
    let route = Route::remote(PEER_UNDERLAY, PEER_VTEP);
    // SAFETY: Route is plain old data with explicit padding; viewed as its bytes.
    let value: &[u8] = unsafe {
        std::slice::from_raw_parts(
            &route as *const Route as *const u8,
            std::mem::size_of::<Route>(),
        )
    };
    let key: Vec<String> = [
        56u32.to_le_bytes().as_slice(),
        &VNI.to_be_bytes(),
        &[10, 244, 2, 0],
    ]
    .concat()
    .iter()
    .map(|b| b.to_string())
    .collect();
    let value: Vec<String> = value.iter().map(|b| b.to_string()).collect();
    let mut update = vec!["map", "update", "pinned", r, "key"];
    update.extend(key.iter().map(String::as_str));
    update.push("value");
    update.extend(value.iter().map(String::as_str));
    bpftool(&update)?;

    let mut dp = Datapath::load(&pins.0)?;
    let encapsulated = dp
        .counters()?
        .into_iter()
        .find(|(i, _)| i.name == "encapsulated")
        .map(|(_, v)| v)
        .unwrap();
    assert!(
        encapsulated.packets > 0 && encapsulated.packets % 7 == 0 && encapsulated.bytes == 0,
        "encapsulated = {encapsulated:?}: packets kept, bytes not counted before"
    );
    let all = dp.counters()?;
    assert_eq!(
        all.len(),
        oxlay_common::COUNTERS.len(),
        "every counter of this build reads"
    );
    let got = dp.routes()?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].net_id, got[0].dest.to_string(), got[0].route),
        (VNI, "10.244.2.0/24".into(), route)
    );
    assert!(
        counters.exists() && routes.exists(),
        "old pins stay until the new build is attached"
    );
    dp.remove_stale_pins();
    assert!(!counters.exists() && !routes.exists(), "old pins removed");
    // A second start of the same build re-uses its own maps.
    drop(dp);
    let dp = Datapath::load(&pins.0)?;
    assert_eq!(dp.routes()?.len(), 1);
    Ok(())
}

/// An ARP packet (IPv4 over Ethernet) in a frame.
fn arp(oper: u16, src_mac: [u8; 6], sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut frame = eth([0xff; 6], src_mac, 0x0806);
    frame.extend([0, 1, 0x08, 0x00, 6, 4]);
    frame.extend(oper.to_be_bytes());
    frame.extend(sha);
    frame.extend(spa);
    frame.extend([0; 6]);
    frame.extend(tpa);
    frame
}

#[test]
fn containers_arp_is_answered_with_the_gateway_mac() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    for target in [[169, 254, 1, 1], REMOTE_CONTAINER, LOCAL_CONTAINER] {
        let request = arp(1, SRC_MAC, SRC_MAC, SRC_CONTAINER, target);
        let out = f.run(
            prog::FROM_CONTAINER,
            &request,
            TC_ACT_REDIRECT,
            "arp_replied",
        )?;
        let mut expected = eth(SRC_MAC, GATEWAY_MAC, 0x0806);
        expected.extend([0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        expected.extend(GATEWAY_MAC);
        expected.extend(target);
        expected.extend(SRC_MAC);
        expected.extend(SRC_CONTAINER);
        assert_eq!(out, expected, "reply for {target:?}");
    }
    // Probes, announcements and replies are the stack's.
    for frame in [
        arp(1, SRC_MAC, SRC_MAC, [0; 4], SRC_CONTAINER),
        arp(1, SRC_MAC, SRC_MAC, SRC_CONTAINER, SRC_CONTAINER),
        arp(2, SRC_MAC, SRC_MAC, SRC_CONTAINER, [169, 254, 1, 1]),
    ] {
        let out = f.run(prog::FROM_CONTAINER, &frame, TC_ACT_OK, "passed_to_stack")?;
        assert_eq!(out, frame);
    }
    // ARP that claims another address or MAC is spoofing.
    let other_mac = [0x02, 0xee, 0, 0, 0, 0xee];
    for frame in [
        arp(1, SRC_MAC, SRC_MAC, LOCAL_CONTAINER, [169, 254, 1, 1]),
        arp(1, SRC_MAC, other_mac, SRC_CONTAINER, [169, 254, 1, 1]),
        arp(2, other_mac, other_mac, SRC_CONTAINER, [169, 254, 1, 1]),
    ] {
        f.run(
            prog::FROM_CONTAINER,
            &frame,
            TC_ACT_SHOT,
            "drop_spoofed_source",
        )?;
    }
    Ok(())
}

#[test]
fn same_host_delivery_rewrites_macs_only() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let frame = container_frame(LOCAL_CONTAINER);
    let out = f.run(
        prog::FROM_CONTAINER,
        &frame,
        TC_ACT_REDIRECT,
        "delivered_local",
    )?;
    let mut expected = eth(LOCAL_MAC, GATEWAY_MAC, 0x0800);
    expected.extend(&frame[14..]);
    assert_eq!(out, expected);
    Ok(())
}

#[test]
fn traffic_outside_the_overlay_goes_to_the_stack_untouched() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    for frame in [
        container_frame([8, 8, 8, 8]),
        container_frame(OUR_UNDERLAY),
        container_frame([10, 244, 1, 99]), // own subnet, no such container
        eth([0xff; 6], SRC_MAC, 0x0806)
            .into_iter()
            .chain([0u8; 28])
            .collect(),
    ] {
        let out = f.run(prog::FROM_CONTAINER, &frame, TC_ACT_OK, "passed_to_stack")?;
        assert_eq!(out, frame);
    }
    Ok(())
}

// ---- decapsulation ----

#[test]
fn tc_decap_delivers_the_inner_packet() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let (frame, inner_ip) = vxlan_frame(PEER_UNDERLAY, 0x08, VNI, LOCAL_CONTAINER);
    let out = f.run(prog::DECAP_TC, &frame, TC_ACT_REDIRECT, "decapsulated")?;
    let expected = [eth(LOCAL_MAC, GATEWAY_MAC, 0x0800), inner_ip].concat();
    assert_eq!(out, expected);
    Ok(())
}

#[test]
fn xdp_decap_strips_and_addresses_the_inner_frame() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let (frame, inner_ip) = vxlan_frame(PEER_UNDERLAY, 0x08, VNI, LOCAL_CONTAINER);
    let out = f.run(prog::DECAP_XDP, &frame, XDP_PASS, "decapsulated")?;
    // test_run returns the metadata in front of the frame: it tells TC where to deliver.
    let meta = [0x6f78_6c79u32.to_ne_bytes(), LOCAL_IFINDEX.to_ne_bytes()].concat();
    let expected = [meta, eth(LOCAL_MAC, GATEWAY_MAC, 0x0800), inner_ip].concat();
    assert_eq!(out, expected);
    Ok(())
}

/// Each overlay network counts what it sent and delivered, packets and bytes (the wire
/// frame for encapsulated, the container's frame for decapsulated), in XDP and TC, and
/// its counts go with the network.
#[test]
fn each_network_counts_its_traffic() -> Result<()> {
    let Some(mut f) = fixture()? else {
        return Ok(());
    };
    let traffic = |f: &Fixture| -> Result<Option<oxlay_common::NetworkTraffic>> {
        Ok(f.dp
            .network_traffic()?
            .into_iter()
            .find(|(vni, _)| *vni == VNI)
            .map(|(_, t)| t))
    };
    assert_eq!(traffic(&f)?, None, "no traffic yet, no entry");
    let frame = container_frame(REMOTE_CONTAINER);
    f.run(
        prog::FROM_CONTAINER,
        &frame,
        TC_ACT_REDIRECT,
        "encapsulated",
    )?;
    let (wire, inner_ip) = vxlan_frame(PEER_UNDERLAY, 0x08, VNI, LOCAL_CONTAINER);
    f.run(prog::DECAP_TC, &wire, TC_ACT_REDIRECT, "decapsulated")?;
    f.run(prog::DECAP_XDP, &wire, XDP_PASS, "decapsulated")?;
    // A drop is no traffic of the network.
    let (bad, _) = vxlan_frame(PEER_UNDERLAY, 0x00, VNI, LOCAL_CONTAINER);
    f.run(prog::DECAP_TC, &bad, TC_ACT_SHOT, "drop_bad_vxlan_flags")?;
    let delivered = (14 + inner_ip.len()) as u64;
    let t = traffic(&f)?.context("no traffic entry for the network")?;
    assert_eq!(
        (t.encapsulated.packets, t.encapsulated.bytes),
        (1, frame.len() as u64 + 50),
        "encapsulated: one frame, with its 50 bytes of headers"
    );
    assert_eq!(
        (t.decapsulated.packets, t.decapsulated.bytes),
        (2, 2 * delivered),
        "decapsulated: two inner frames (TC and XDP)"
    );
    f.dp.remove_network(VNI)?;
    assert_eq!(traffic(&f)?, None, "the network's counts go with it");
    Ok(())
}

/// `oxlay doctor`'s probe from a peer goes back where it came from, headers swapped
/// (checksums still valid), in TC and XDP; from an address that is no peer it is
/// dropped; with the I flag set the same bytes are ordinary (bad) VXLAN.
#[test]
fn doctor_probes_from_a_peer_are_sent_back() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    const XDP_TX: u32 = 3;
    let probe = [vec![0, b'o', b'x', b'd', 0, 0, 0, 0], vec![0xab; 32]].concat();
    let frame = outer(PEER_UNDERLAY, OUR_UNDERLAY, 4789, 0x4000, &probe);
    for (program, verdict) in [(prog::DECAP_TC, TC_ACT_REDIRECT), (prog::DECAP_XDP, XDP_TX)] {
        let out = f.run(program, &frame, verdict, "echo_answered")?;
        assert_eq!(out.len(), frame.len(), "{program}");
        assert_eq!(
            (&out[0..6], &out[6..12]),
            (&frame[6..12], &frame[0..6]),
            "{program}: MACs"
        );
        assert_eq!(
            (&out[26..30], &out[30..34]),
            (&frame[30..34], &frame[26..30]),
            "{program}: IPs"
        );
        assert_eq!(
            (&out[34..36], &out[36..38]),
            (&frame[36..38], &frame[34..36]),
            "{program}: ports"
        );
        assert_eq!(&out[38..], &frame[38..], "{program}: the rest as it was");
        assert_eq!(checksum(&out[14..34]), 0, "{program}: IPv4 checksum");
    }
    // A probe whose answer would go to a VXLAN port (two hosts answering each other for
    // ever) or a system port is no probe.
    for reply_port in [4789u16, 53] {
        let mut spoofed = frame.clone();
        spoofed[34..36].copy_from_slice(&reply_port.to_be_bytes());
        for (program, verdict) in DECAP_DROPS {
            f.run(program, &spoofed, verdict, "drop_bad_vxlan_flags")?;
        }
    }
    let stranger = outer([192, 168, 50, 99], OUR_UNDERLAY, 4789, 0x4000, &probe);
    f.run(prog::DECAP_TC, &stranger, TC_ACT_SHOT, "drop_unknown_peer")?;
    let mut flagged = probe.clone();
    flagged[0] = 0x08;
    let frame = outer(PEER_UNDERLAY, OUR_UNDERLAY, 4789, 0x4000, &flagged);
    let (verdict, counted) = f.run_counted(prog::DECAP_TC, &frame)?;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert!(!counted.contains_key("echo_answered"), "{counted:?}");
    Ok(())
}

/// One hostile packet: (what it is, the counter that must name its drop, the frame).
type HostileCase = (&'static str, &'static str, Vec<u8>);

/// The decap programs, each with its verdict for a dropped packet: every hostile case
/// runs through each.
const DECAP_DROPS: [(&str, u32); 2] = [(prog::DECAP_TC, TC_ACT_SHOT), (prog::DECAP_XDP, XDP_DROP)];

/// Every VXLAN packet that must not be delivered, with the counter that names why.
fn hostile_cases() -> Vec<HostileCase> {
    let good = |from, flags, vni, dst| vxlan_frame(from, flags, vni, dst).0;
    let full = good(PEER_UNDERLAY, 0x08, VNI, LOCAL_CONTAINER);
    // Truncations keep the outer headers' length fields; only the bytes are missing.
    let cut = |n: usize| full[..n].to_vec();
    let (_, inner_ip) = vxlan_frame(PEER_UNDERLAY, 0x08, VNI, LOCAL_CONTAINER);
    let arp_inner = [
        vxlan(0x08, VNI),
        eth([0xff; 6], PEER_VTEP, 0x0806),
        vec![0; 28],
    ]
    .concat();
    let mut options = full.clone();
    options[14] = 0x46; // IHL 6: one word of options before UDP
    options.splice(34..34, [1u8, 1, 1, 0]);
    vec![
        (
            "wrong VNI",
            "drop_unknown_vni",
            good(PEER_UNDERLAY, 0x08, 43, LOCAL_CONTAINER),
        ),
        (
            "VNI 0",
            "drop_unknown_vni",
            good(PEER_UNDERLAY, 0x08, 0, LOCAL_CONTAINER),
        ),
        (
            "VNI 2^24-1",
            "drop_unknown_vni",
            good(PEER_UNDERLAY, 0x08, (1 << 24) - 1, LOCAL_CONTAINER),
        ),
        (
            "unknown peer",
            "drop_unknown_peer",
            good([192, 168, 50, 99], 0x08, VNI, LOCAL_CONTAINER),
        ),
        // The peer, then the VNI, are named first whatever else is wrong (the program
        // checks them last, only when something fails).
        // VNI 0 names no network; the direct networks' table, which has the same id,
        // must not be reached through it (their isolation is checked elsewhere).
        (
            "VNI 0 from a direct peer's block",
            "drop_unknown_vni",
            inner_from(DIRECT_PEER_CONTAINER, 0),
        ),
        (
            "VNI 0 from another direct network's block",
            "drop_unknown_vni",
            inner_from(OTHER_DIRECT_CONTAINER, 0),
        ),
        (
            "unknown peer, truncated in VXLAN header",
            "drop_unknown_peer",
            good([192, 168, 50, 99], 0x08, VNI, LOCAL_CONTAINER)[..14 + 20 + 8 + 4].to_vec(),
        ),
        (
            "unknown peer, wrong VNI, no such container",
            "drop_unknown_peer",
            good([192, 168, 50, 99], 0x08, 43, [10, 244, 1, 99]),
        ),
        (
            "wrong VNI, truncated in inner Ethernet",
            "drop_unknown_vni",
            good(PEER_UNDERLAY, 0x08, 43, LOCAL_CONTAINER)[..50 + 10].to_vec(),
        ),
        (
            "wrong VNI, no such container",
            "drop_unknown_vni",
            good(PEER_UNDERLAY, 0x08, 43, [10, 244, 1, 99]),
        ),
        (
            "no I flag",
            "drop_bad_vxlan_flags",
            good(PEER_UNDERLAY, 0x00, VNI, LOCAL_CONTAINER),
        ),
        (
            "truncated in VXLAN header",
            "drop_truncated_vxlan",
            cut(14 + 20 + 8 + 4),
        ),
        (
            "truncated after UDP",
            "drop_truncated_vxlan",
            cut(14 + 20 + 8),
        ),
        (
            "truncated in inner Ethernet",
            "drop_truncated_inner",
            cut(50 + 10),
        ),
        (
            "truncated in inner IPv4",
            "drop_truncated_inner",
            cut(64 + 12),
        ),
        (
            "inner ARP",
            "drop_inner_not_ipv4",
            outer(PEER_UNDERLAY, OUR_UNDERLAY, 4789, 0x4000, &arp_inner),
        ),
        (
            "no such container",
            "drop_no_local_endpoint",
            good(PEER_UNDERLAY, 0x08, VNI, [10, 244, 1, 99]),
        ),
        ("outer first fragment", "drop_outer_fragment", {
            let inner = [vxlan(0x08, VNI), eth([2; 6], PEER_VTEP, 0x0800), inner_ip].concat();
            outer(PEER_UNDERLAY, OUR_UNDERLAY, 4789, 0x2000, &inner)
        }),
        ("outer IP options", "drop_outer_ip_options", options),
        (
            "UDP length too long",
            "drop_bad_length",
            with_u16(&full, 38, 999),
        ),
        (
            "UDP length too short",
            "drop_bad_length",
            with_u16(&full, 38, 16),
        ),
        (
            "IPv4 length beyond the frame",
            "drop_bad_length",
            with_ip_len(&full, 1400),
        ),
        (
            "inner source in no peer block",
            "drop_spoofed_peer_source",
            spoofed_inner([10, 99, 0, 1]),
        ),
        (
            "inner source of this host",
            "drop_spoofed_peer_source",
            spoofed_inner(LOCAL_CONTAINER),
        ),
        (
            "inner source of another peer's block",
            "drop_spoofed_peer_source",
            spoofed_inner([10, 244, 3, 3]),
        ),
    ]
    .into_iter()
    .chain(hostile_gre_cases())
    .collect()
}

/// Every Ethernet-over-GRE packet from a peer that must not be delivered.
fn hostile_gre_cases() -> Vec<HostileCase> {
    let key = |k| gre(0x2000, 0x6558, k);
    let full = good_gre(&key(VNI), LOCAL_CONTAINER);
    let arp_inner = [
        eth([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x12], 0x0800),
        ipv4(
            PEER_UNDERLAY,
            OUR_UNDERLAY,
            47,
            0x4000,
            &[key(VNI), eth([0xff; 6], PEER_VTEP, 0x0806), vec![0; 28]].concat(),
        ),
    ]
    .concat();
    let mut options = full.clone();
    options[14] = 0x46; // IHL 6: one word of options before GRE
    options.splice(34..34, [1u8, 1, 1, 0]);
    let spoofed = {
        let inner_ip = ipv4(
            [10, 244, 3, 3],
            LOCAL_CONTAINER,
            17,
            0x4000,
            &udp(1, 2, b"spoof"),
        );
        let payload = [key(VNI), eth([2; 6], PEER_VTEP, 0x0800), inner_ip].concat();
        let ip = ipv4(PEER_UNDERLAY, OUR_UNDERLAY, 47, 0x4000, &payload);
        [eth([2; 6], [4; 6], 0x0800), ip].concat()
    };
    vec![
        (
            "GRE with a checksum",
            "drop_bad_gre",
            good_gre(&gre(0xa000, 0x6558, VNI), LOCAL_CONTAINER),
        ),
        (
            "GRE with a sequence number",
            "drop_bad_gre",
            good_gre(&gre(0x3000, 0x6558, VNI), LOCAL_CONTAINER),
        ),
        (
            "GRE without a key",
            "drop_bad_gre",
            good_gre(&gre(0x0000, 0x6558, VNI), LOCAL_CONTAINER),
        ),
        (
            "GRE version 1",
            "drop_bad_gre",
            good_gre(&gre(0x2001, 0x6558, VNI), LOCAL_CONTAINER),
        ),
        (
            "GRE truncated in its header",
            "drop_bad_gre",
            full[..14 + 20 + 6].to_vec(),
        ),
        (
            "GRE unknown key",
            "drop_unknown_vni",
            good_gre(&key(43), LOCAL_CONTAINER),
        ),
        (
            "GRE key 0",
            "drop_unknown_vni",
            good_gre(&key(0), LOCAL_CONTAINER),
        ),
        (
            "GRE key above 2^24-1",
            "drop_unknown_vni",
            good_gre(&key(1 << 24), LOCAL_CONTAINER),
        ),
        ("GRE inner ARP", "drop_inner_not_ipv4", arp_inner),
        (
            "GRE truncated in inner IPv4",
            "drop_truncated_inner",
            full[..56 + 12].to_vec(),
        ),
        (
            "GRE no such container",
            "drop_no_local_endpoint",
            good_gre(&key(VNI), [10, 244, 1, 99]),
        ),
        (
            "GRE inner source of another peer's block",
            "drop_spoofed_peer_source",
            spoofed,
        ),
        (
            "GRE outer first fragment",
            "drop_outer_fragment",
            gre_frame(PEER_UNDERLAY, &key(VNI), 0x2000, LOCAL_CONTAINER).0,
        ),
        ("GRE outer IP options", "drop_outer_ip_options", options),
        (
            "GRE IPv4 length beyond the frame",
            "drop_bad_length",
            with_ip_len(&full, 1400),
        ),
        (
            "GRE IPv4 length shorter than its headers",
            "drop_bad_length",
            with_ip_len(&full, 40),
        ),
    ]
}

/// `frame` with the big-endian u16 at `offset` set to `value`.
fn with_u16(frame: &[u8], offset: usize, value: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[offset..offset + 2].copy_from_slice(&value.to_be_bytes());
    f
}

/// `frame` with its outer IPv4 total length set to `len` (checksum fixed up).
fn with_ip_len(frame: &[u8], len: u16) -> Vec<u8> {
    let mut f = with_u16(frame, 16, len);
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// A VXLAN frame from the known peer whose inner source is `src`.
fn spoofed_inner(src: [u8; 4]) -> Vec<u8> {
    inner_from(src, VNI)
}

/// VXLAN from the peer in `vni`, inner source `src`, to the local container.
fn inner_from(src: [u8; 4], vni: u32) -> Vec<u8> {
    let inner_ip = ipv4(src, LOCAL_CONTAINER, 17, 0x4000, &udp(1, 2, b"spoof"));
    let inner = [eth([2; 6], PEER_VTEP, 0x0800), inner_ip].concat();
    outer(
        PEER_UNDERLAY,
        OUR_UNDERLAY,
        4789,
        0x4000,
        &[vxlan(0x08, vni), inner].concat(),
    )
}

/// Packets that are not VXLAN for this host: the host's own traffic.
fn passing_cases() -> Vec<(&'static str, Vec<u8>)> {
    let full = vxlan_frame(PEER_UNDERLAY, 0x08, VNI, LOCAL_CONTAINER).0;
    vec![
        (
            "DNS over UDP",
            outer(PEER_UNDERLAY, OUR_UNDERLAY, 53, 0, b"dns query"),
        ),
        (
            "VXLAN for another host",
            outer(PEER_UNDERLAY, [192, 168, 50, 77], 4789, 0, &full[42..]),
        ),
        (
            "later fragment",
            outer(PEER_UNDERLAY, OUR_UNDERLAY, 4789, 0x0010, b"fragment body"),
        ),
        ("truncated in outer IPv4", full[..14 + 10].to_vec()),
        ("truncated in outer UDP", full[..14 + 20 + 4].to_vec()),
        (
            "IPv6",
            eth([2; 6], [4; 6], 0x86dd)
                .into_iter()
                .chain([0x60u8; 40])
                .collect(),
        ),
        (
            "VLAN-tagged",
            eth([2; 6], [4; 6], 0x8100)
                .into_iter()
                .chain(full[12..].iter().copied())
                .collect(),
        ),
        ("Ethernet only", eth([2; 6], [4; 6], 0x0800)),
        // GRE that is not oxlay's: the host's own tunnels, if it has any.
        (
            "Ethernet over GRE from an address that is no peer",
            gre_frame(
                [192, 168, 50, 99],
                &gre(0x2000, 0x6558, VNI),
                0x4000,
                LOCAL_CONTAINER,
            )
            .0,
        ),
        (
            "IPv4 over GRE from a peer",
            gre_frame(
                PEER_UNDERLAY,
                &gre(0x2000, 0x0800, VNI),
                0x4000,
                LOCAL_CONTAINER,
            )
            .0,
        ),
        (
            "a later fragment of GRE from a peer",
            gre_frame(
                PEER_UNDERLAY,
                &gre(0x2000, 0x6558, VNI),
                0x0010,
                LOCAL_CONTAINER,
            )
            .0,
        ),
        ("a short GRE header carrying IPv4, from a peer", {
            let ip = ipv4(PEER_UNDERLAY, OUR_UNDERLAY, 47, 0x4000, &[0, 0, 0x08, 0x00]);
            [eth([2; 6], [4; 6], 0x0800), ip].concat()
        }),
    ]
}

/// Every hostile case through every decap program: dropped, and exactly its counter
/// went up by one. All cases run; the failure lists each (program, case) that failed.
#[test]
fn decap_drops_hostile_vxlan_with_a_named_reason() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let mut failures = Vec::new();
    let mut checked = 0;
    for (program, verdict) in DECAP_DROPS {
        for (what, counter, frame) in hostile_cases() {
            eprintln!("{program}: {what}: verdict {verdict}, {counter}");
            let (got, changed) = f
                .run_counted(program, &frame)
                .with_context(|| format!("{program}: \"{what}\""))?;
            let expected = BTreeMap::from([(counter, 1)]);
            if got != verdict || changed != expected {
                failures.push(format!(
                    "{program}: \"{what}\": verdict {got} (expected {verdict}), counters changed \
                     {changed:?} (expected {expected:?})"
                ));
            }
            checked += 1;
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {checked} hostile cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn decap_passes_the_hosts_own_traffic_untouched() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    for (what, frame) in passing_cases() {
        eprintln!("{what}");
        let out = f.run(prog::DECAP_XDP, &frame, XDP_PASS, "passed_to_stack")?;
        assert_eq!(out, frame, "xdp changed {what}");
        // BPF_PROG_TEST_RUN refuses skb programs an IPv4 frame shorter than its
        // header (EINVAL), so those cases run through XDP only.
        let short_ipv4 = frame.len() < 34 && frame[12..14] == [0x08, 0x00];
        if !short_ipv4 {
            eprintln!("tc: {what}");
            let out = f.run(prog::DECAP_TC, &frame, TC_ACT_OK, "passed_to_stack")?;
            assert_eq!(out, frame, "tc changed {what}");
        }
    }
    Ok(())
}

// ---- direct routing ----

#[test]
fn direct_routes_leave_unencapsulated() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let frame = container_frame(DIRECT_PEER_CONTAINER);
    // bpf_redirect_neigh would fill in the MACs; the packet itself is not touched.
    let out = f.run(
        prog::FROM_CONTAINER,
        &frame,
        TC_ACT_REDIRECT,
        "routed_direct",
    )?;
    assert_eq!(out, frame);
    Ok(())
}

/// A plain (unencapsulated) UDP packet from `src` to the local container, as a direct
/// peer's host would route it.
fn plain_frame(src: [u8; 4]) -> Vec<u8> {
    let ip = ipv4(
        src,
        LOCAL_CONTAINER,
        17,
        0x4000,
        &udp(4000, 7777, b"direct"),
    );
    [
        eth([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x12], 0x0800),
        ip,
    ]
    .concat()
}

#[test]
fn direct_packets_from_direct_peers_are_delivered() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let ip = ipv4(
        DIRECT_PEER_CONTAINER,
        LOCAL_CONTAINER,
        17,
        0x4000,
        &udp(4000, 7777, b"direct"),
    );
    let frame = [
        eth([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x12], 0x0800),
        ip.clone(),
    ]
    .concat();
    let expected = [eth(LOCAL_MAC, GATEWAY_MAC, 0x0800), ip.clone()].concat();
    let out = f.run(prog::DECAP_TC, &frame, TC_ACT_REDIRECT, "delivered_direct")?;
    assert_eq!(out, expected);
    let meta = [0x6f78_6c79u32.to_ne_bytes(), LOCAL_IFINDEX.to_ne_bytes()].concat();
    let out = f.run(prog::DECAP_XDP, &frame, XDP_PASS, "delivered_direct")?;
    assert_eq!(out, [meta, expected].concat());

    // From a container of another direct network: isolated, dropped with its reason
    // (passing it would let the host's own routes carry it in).
    let frame = plain_frame(OTHER_DIRECT_CONTAINER);
    f.run(
        prog::DECAP_TC,
        &frame,
        TC_ACT_SHOT,
        "drop_direct_other_network",
    )?;
    f.run(
        prog::DECAP_XDP,
        &frame,
        XDP_DROP,
        "drop_direct_other_network",
    )?;

    // From an address that is no direct peer's: not ours, the stack decides.
    let frame = plain_frame([10, 99, 0, 1]);
    assert_eq!(
        f.run(prog::DECAP_TC, &frame, TC_ACT_OK, "passed_to_stack")?,
        frame
    );
    assert_eq!(
        f.run(prog::DECAP_XDP, &frame, XDP_PASS, "passed_to_stack")?,
        frame
    );
    Ok(())
}

// ---- WireGuard ----

/// With WireGuard on (a device's ifindex in the config) and the peer marked as
/// encrypting: its packets leave by the device, direct ones too; its plaintext from the
/// underlay is dropped in TC and XDP, direct packets too; a packet handed over as the
/// device would (explain's probe, which runs the underlay's program) is delivered. A
/// peer that does not encrypt is untouched.
#[test]
fn wireguard_peers_get_encrypted_packets_and_their_plaintext_is_dropped() -> Result<()> {
    const WG_IFINDEX: u32 = 77;
    let Some(mut f) = fixture()? else {
        return Ok(());
    };
    f.dp.set_config(config(1440, WG_IFINDEX))?;
    let encrypting = Peer {
        flags: PEER_WIREGUARD,
        _pad: 0,
    };
    f.dp.set_peer(Ipv4Addr::from(PEER_UNDERLAY), encrypting)?;

    // Out: the same VXLAN frame as ever, redirected (to the device), counted twice.
    let (verdict, changed) =
        f.run_counted(prog::FROM_CONTAINER, &container_frame(REMOTE_CONTAINER))?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        changed,
        BTreeMap::from([("encapsulated", 1), ("sent_encrypted", 1)])
    );
    let out =
        f.dp.test_run(prog::FROM_CONTAINER, &container_frame(REMOTE_CONTAINER), 1)?;
    assert_eq!(&out.packet[12..14], &[0x08, 0x00]);
    assert_eq!(
        &out.packet[26..34],
        &[OUR_UNDERLAY, PEER_UNDERLAY].concat()[..]
    );
    let (verdict, changed) = f.run_counted(
        prog::FROM_CONTAINER,
        &container_frame(DIRECT_PEER_CONTAINER),
    )?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        changed,
        BTreeMap::from([("routed_direct", 1), ("sent_encrypted", 1)])
    );
    // A peer that does not encrypt (192.168.50.13's block): plain.
    let (verdict, changed) =
        f.run_counted(prog::FROM_CONTAINER, &container_frame([10, 244, 3, 9]))?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(changed, BTreeMap::from([("encapsulated", 1)]));

    // In, on the underlay: forged or misconfigured, dropped.
    let (frame, inner_ip) = vxlan_frame(PEER_UNDERLAY, 0x08, VNI, LOCAL_CONTAINER);
    f.run(prog::DECAP_TC, &frame, TC_ACT_SHOT, "drop_unencrypted")?;
    f.run(prog::DECAP_XDP, &frame, XDP_DROP, "drop_unencrypted")?;
    let (gre, _) = gre_frame(
        PEER_UNDERLAY,
        &gre(0x2000, 0x6558, VNI),
        0x4000,
        LOCAL_CONTAINER,
    );
    f.run(prog::DECAP_TC, &gre, TC_ACT_SHOT, "drop_unencrypted")?;
    let direct = plain_frame(DIRECT_PEER_CONTAINER);
    f.run(prog::DECAP_TC, &direct, TC_ACT_SHOT, "drop_unencrypted")?;
    f.run(prog::DECAP_XDP, &direct, XDP_DROP, "drop_unencrypted")?;

    // As the device hands it over: delivered, the same frame as from a plain peer.
    let (out, counted) = f.dp.probe(prog::DECAP_TC, &frame, 1, true)?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(counted.map(|c| c.name), Some("decapsulated"));
    assert_eq!(
        out.packet,
        [eth(LOCAL_MAC, GATEWAY_MAC, 0x0800), inner_ip].concat()
    );
    let (_, counted) = f.dp.probe(prog::DECAP_TC, &frame, 1, false)?;
    assert_eq!(counted.map(|c| c.name), Some("drop_unencrypted"));

    // This host does not encrypt (no device): the peer's flag changes nothing.
    f.dp.set_config(config(1500, 0))?;
    f.run(prog::DECAP_TC, &frame, TC_ACT_REDIRECT, "decapsulated")?;
    f.run(
        prog::FROM_CONTAINER,
        &container_frame(REMOTE_CONTAINER),
        TC_ACT_REDIRECT,
        "encapsulated",
    )?;
    Ok(())
}

// ---- MTU ----

/// A container packet of `ip_len` bytes to the remote container, DF as given.
fn sized_frame(ip_len: usize, df: bool) -> Vec<u8> {
    let payload = vec![0x5a; ip_len - 20 - 8];
    let ip = ipv4(
        SRC_CONTAINER,
        REMOTE_CONTAINER,
        17,
        if df { 0x4000 } else { 0 },
        &udp(40000, 7777, &payload),
    );
    [eth(GATEWAY_MAC, SRC_MAC, 0x0800), ip].concat()
}

#[test]
fn too_big_packets_get_fragmentation_needed() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    // 1450 bytes fit a 1500-byte underlay once encapsulated.
    f.run(
        prog::FROM_CONTAINER,
        &sized_frame(1450, true),
        TC_ACT_REDIRECT,
        "encapsulated",
    )?;
    // 1451 do not: the sender gets ICMP type 3 code 4 with next-hop MTU 1450.
    let frame = sized_frame(1451, true);
    let out = f.run(
        prog::FROM_CONTAINER,
        &frame,
        TC_ACT_REDIRECT,
        "drop_too_big",
    )?;
    assert_eq!(out.len(), 14 + 20 + 8 + 28, "reply length");
    assert_eq!(&out[0..6], &SRC_MAC, "reply goes back to the container");
    assert_eq!(&out[6..12], &GATEWAY_MAC);
    let ip = &out[14..34];
    assert_eq!(checksum(ip), 0, "IPv4 checksum");
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(&ip[12..16], &[169, 254, 1, 1], "from the gateway");
    assert_eq!(&ip[16..20], &SRC_CONTAINER, "to the sender");
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 56, "IPv4 total length");
    let icmp = &out[34..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(checksum(icmp), 0, "ICMP checksum");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450, "next-hop MTU");
    assert_eq!(
        &icmp[8..],
        &frame[14..14 + 28],
        "quotes the IPv4 header and 8 bytes"
    );
    // Without DF there is no one to tell: dropped, counted.
    f.run(
        prog::FROM_CONTAINER,
        &sized_frame(1451, false),
        TC_ACT_SHOT,
        "drop_too_big",
    )?;
    Ok(())
}

/// A UDP GSO packet whose datagrams would not fit once encapsulated: the kernel may not
/// change a UDP sender's datagram size, so the sender gets "fragmentation needed" as for
/// a single datagram, instead of a silent drop.
#[test]
fn udp_gso_packets_too_big_are_answered() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    // Two 1472-byte datagrams (IPv4 1500 each) as one GSO packet (a test run takes
    // less than a page).
    let frame = sized_frame(20 + 8 + 2 * 1472, true);
    let out = f.run_gso(
        prog::FROM_CONTAINER,
        &frame,
        Some(1472),
        TC_ACT_REDIRECT,
        "drop_too_big",
    )?;
    assert_eq!(out.len(), 14 + 20 + 8 + 28, "an ICMP reply");
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450, "next-hop MTU");
    Ok(())
}

/// A VXLAN packet larger than a 1500-byte frame is decapsulated like any other (test-run
/// frames are limited to a page, so true 9000-byte jumbos are for the namespace tests);
/// an inner packet that is itself VXLAN is delivered as it is, not decapsulated twice.
#[test]
fn large_and_nested_vxlan_are_delivered_once() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let big = ipv4(
        REMOTE_CONTAINER,
        LOCAL_CONTAINER,
        17,
        0x4000,
        &udp(1, 2, &vec![7u8; 3000]),
    );
    let inner = [eth([2; 6], PEER_VTEP, 0x0800), big.clone()].concat();
    let frame = outer(
        PEER_UNDERLAY,
        OUR_UNDERLAY,
        4789,
        0x4000,
        &[vxlan(0x08, VNI), inner].concat(),
    );
    let out = f.run(prog::DECAP_TC, &frame, TC_ACT_REDIRECT, "decapsulated")?;
    assert_eq!(out, [eth(LOCAL_MAC, GATEWAY_MAC, 0x0800), big].concat());

    let (nested, _) = vxlan_frame(PEER_UNDERLAY, 0x08, VNI, LOCAL_CONTAINER);
    let carrier = ipv4(
        REMOTE_CONTAINER,
        LOCAL_CONTAINER,
        17,
        0x4000,
        &udp(5000, 4789, &nested[42..]),
    );
    let inner = [eth([2; 6], PEER_VTEP, 0x0800), carrier.clone()].concat();
    let frame = outer(
        PEER_UNDERLAY,
        OUR_UNDERLAY,
        4789,
        0x4000,
        &[vxlan(0x08, VNI), inner].concat(),
    );
    for program in [prog::DECAP_TC, prog::DECAP_XDP] {
        let verdict = if program == prog::DECAP_TC {
            TC_ACT_REDIRECT
        } else {
            XDP_PASS
        };
        let out = f.run(program, &frame, verdict, "decapsulated")?;
        assert!(
            out.ends_with(&carrier),
            "{program}: the nested VXLAN packet was altered"
        );
    }
    Ok(())
}
