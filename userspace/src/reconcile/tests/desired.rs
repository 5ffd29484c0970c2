use super::*;

#[test]
fn only_networks_with_local_endpoints_are_accepted_and_routed() {
    let snapshot = Snapshot::from_records(
        vec![host("me", 11), host("b", 12)],
        vec![network("blue", 100), network("red", 200)],
        vec![
            block("blue", "10.10.0.0/24", "me"),
            block("blue", "10.10.1.0/24", "b"),
            block("red", "10.10.1.0/24", "b"),
            // A block of a host that is not (or no longer) registered: no route.
            block("blue", "10.10.2.0/24", "gone"),
        ],
    );
    let ep = local(100, "10.10.0.1");
    let d = desired(&me(), &config(), &snapshot, &[&ep]).unwrap();
    assert_eq!(
        d.networks,
        BTreeSet::from([100]),
        "red has no endpoint here"
    );
    assert_eq!(
        d.peers.keys().copied().collect::<Vec<_>>(),
        [Ipv4Addr::new(192, 168, 50, 12)]
    );
    let keys: Vec<String> = d.routes.keys().map(|(v, n)| format!("{v} {n}")).collect();
    assert_eq!(keys, ["100 10.10.0.1/32", "100 10.10.1.0/24"]);
    // The local endpoint's entry, keyed by its host-side veth: what encapsulation
    // checks the container's packets against.
    let entry = Endpoint {
        net_id: 100,
        addr: [10, 10, 0, 1],
        mac: [2, 1, 1, 1, 1, 1],
        flags: 0,
        _pad: 0,
    };
    assert_eq!(d.endpoints, BTreeMap::from([(9, entry)]));
    assert_eq!(
        d.routes[&(100, "10.10.1.0/24".parse().unwrap())],
        Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12])
    );
    // Direct networks route peers on our underlay subnet unencapsulated, others by VXLAN.
    let mut snapshot = snapshot;
    snapshot.networks.get_mut("blue").unwrap().direct = true;
    let far = HostRecord {
        underlay_address: Ipv4Addr::new(192, 168, 60, 9),
        ..host("far", 9)
    };
    snapshot.hosts.insert("far".into(), far);
    let far_block = block("blue", "10.10.9.0/24", "far");
    snapshot
        .blocks
        .insert(model::block_key("blue", far_block.block), far_block);
    let d = desired(&me(), &config(), &snapshot, &[&ep]).unwrap();
    let near = Route::direct([192, 168, 50, 12]);
    assert_eq!(d.routes[&(100, "10.10.1.0/24".parse().unwrap())], near);
    assert_eq!(
        d.routes[&(DIRECT_NET_ID, "10.10.1.0/24".parse().unwrap())],
        near.in_network(100),
        "direct-table entries name their network"
    );
    assert_eq!(
        d.routes[&(100, "10.10.9.0/24".parse().unwrap())].kind,
        oxlay_common::RouteKind::Remote as u8
    );
    // The far block is reached by VXLAN, but the direct table names its network
    // (a plain packet from it is known to be blue's).
    assert_eq!(
        d.routes[&(DIRECT_NET_ID, "10.10.9.0/24".parse().unwrap())],
        Route::direct([192, 168, 60, 9]).in_network(100)
    );
    assert!(d
        .routes
        .contains_key(&(DIRECT_NET_ID, "10.10.0.1/32".parse().unwrap())));
    assert!(!d.networks.contains(&DIRECT_NET_ID));
    snapshot.networks.get_mut("blue").unwrap().direct = false;

    // Without local endpoints: nothing accepted, nothing routed, peers still known.
    let d = desired(&me(), &config(), &snapshot, &[]).unwrap();
    assert!(d.networks.is_empty() && d.routes.is_empty() && d.endpoints.is_empty());
}

/// A GRE network's peers are reached by GRE; a direct GRE network's near peers still
/// directly.
#[test]
fn gre_networks_route_their_peers_over_gre() {
    let mut gre = network("blue", 100);
    gre.encap = model::Encap::Gre;
    let far = HostRecord {
        underlay_address: Ipv4Addr::new(192, 168, 60, 9),
        ..host("far", 9)
    };
    let snapshot = |direct: bool| {
        let net = NetworkRecord {
            direct,
            ..gre.clone()
        };
        Snapshot::from_records(
            vec![host("me", 11), host("b", 12), far.clone()],
            vec![net],
            vec![
                block("blue", "10.10.0.0/24", "me"),
                block("blue", "10.10.1.0/24", "b"),
                block("blue", "10.10.9.0/24", "far"),
            ],
        )
    };
    let ep = local(100, "10.10.0.1");
    let route = |d: &Desired, cidr: &str| d.routes[&(100, cidr.parse().unwrap())];
    let d = desired(&me(), &config(), &snapshot(false), &[&ep]).unwrap();
    let over_gre = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12]).over_gre();
    assert_eq!(route(&d, "10.10.1.0/24"), over_gre);
    let d = desired(&me(), &config(), &snapshot(true), &[&ep]).unwrap();
    assert_eq!(route(&d, "10.10.1.0/24"), Route::direct([192, 168, 50, 12]));
    assert_eq!(
        route(&d, "10.10.9.0/24"),
        Route::remote([192, 168, 60, 9], [2, 0, 0, 0, 0, 9]).over_gre()
    );
    // A host whose daemon predates GRE (its record says nothing) gets VXLAN.
    let mut old = snapshot(false);
    old.hosts.get_mut("b").unwrap().gre = false;
    let d = desired(&me(), &config(), &old, &[&ep]).unwrap();
    let vxlan = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12]);
    assert_eq!(route(&d, "10.10.1.0/24"), vxlan);
    let record: HostRecord = serde_json::from_str(
        r#"{"name":"b","underlay_address":"192.168.50.12","vtep_mac":"02:00:00:00:00:0c"}"#,
    )
    .unwrap();
    assert!(
        !record.gre,
        "a record without the field is a host without GRE"
    );
}

/// The direct table names the network of every direct network's blocks, also of
/// networks without endpoints here (so their packets are recognised and dropped);
/// only networks with endpoints here get routes.
#[test]
fn every_direct_network_is_known_in_the_direct_table() {
    let mut blue = network("blue", 100);
    blue.direct = true;
    let mut green = network("green", 200);
    green.direct = true;
    green.subnet = "10.20.0.0/16".parse().unwrap();
    let snapshot = Snapshot::from_records(
        vec![host("me", 11), host("b", 12)],
        vec![blue, green],
        vec![
            block("blue", "10.10.1.0/24", "b"),
            block("green", "10.20.1.0/24", "b"),
        ],
    );
    let ep = local(100, "10.10.0.1");
    let d = desired(&me(), &config(), &snapshot, &[&ep]).unwrap();
    let green_block: Ipv4Net = "10.20.1.0/24".parse().unwrap();
    assert_eq!(
        d.routes[&(DIRECT_NET_ID, green_block)],
        Route::direct([192, 168, 50, 12]).in_network(200)
    );
    assert!(
        !d.routes.contains_key(&(200, green_block)),
        "no endpoint on green here"
    );
    assert!(!d.networks.contains(&200));
}

/// Watch events change the snapshot one key at a time; keys routing does not
/// read are not tracked, and a record that does not decode is left out.
#[test]
fn the_snapshot_follows_watch_events() {
    use crate::store::KeyValue;
    let put = |key: &str, value: String| {
        WatchEvent::Put(KeyValue {
            key: key.into(),
            value,
            mod_revision: 1,
            lease: 0,
        })
    };
    let mut s = Snapshot::default();
    let b = block("blue", "10.10.1.0/24", "b");
    let key = model::block_key("blue", b.block);
    let event = put(&key, serde_json::to_string(&b).unwrap());
    assert!(s.apply(&event).unwrap());
    assert!(
        !s.apply(&event).unwrap(),
        "the same record again changes nothing"
    );
    assert_eq!(s.blocks[&key], b);
    let ep = put("/oxlay/endpoints/blue/10.10.1.2", "{}".into());
    assert!(!Snapshot::tracks(ep.key()));
    assert!(!s.apply(&ep).unwrap());
    let bad = put(
        &format!("{}x", model::NETWORKS),
        r#"{"name":"x","vni":5,"subnet":"10.0.0.0/24","block_prefix":8}"#.into(),
    );
    assert!(s.apply(&bad).is_err());
    assert!(s.networks.is_empty());
    let gone = WatchEvent::Delete {
        key: key.clone(),
        revision: 2,
    };
    assert!(s.apply(&gone).unwrap());
    assert!(s.blocks.is_empty());
}

/// Block events applied key by key (`block_route_keys`, `desired_route`) give the
/// same maps as computing everything anew, over a long run of random adds, moves
/// and removals in overlapping, direct and unrelated networks.
#[test]
fn block_changes_key_by_key_match_a_full_recompute() {
    use crate::store::KeyValue;
    let mut blue = network("blue", 100);
    blue.direct = true;
    let red = network("red", 200); // same subnet as blue, not direct
                                   // Direct, no endpoint here, and overlapping blue (the model refuses that; the
                                   // maps must still come out the same either way): the direct table's writes of
                                   // blue and green then compete for the same keys.
    let mut green = network("green", 300);
    green.direct = true;
    let far = HostRecord {
        underlay_address: Ipv4Addr::new(192, 168, 60, 9),
        ..host("far", 9)
    };
    let mut snapshot = Snapshot::from_records(
        vec![host("me", 11), host("b", 12), host("c", 13), far],
        vec![blue, red, green],
        vec![],
    );
    let locals = [local(100, "10.10.0.1"), local(200, "10.10.0.2")];
    let local: Vec<&LocalEndpoint> = locals.iter().collect();
    // A static network with blue's VNI and a peer whose subnet is one of the blocks:
    // the base competes with the blocks for that key.
    let config: Config = "node_name = \"me\"\nunderlay_interface = \"eth0\"\nvni = 100\npod_subnet = \"10.30.0.0/24\"\n[[peers]]\nname = \"p\"\nunderlay_address = \"192.168.50.20\"\npod_subnet = \"10.10.1.0/24\"\n"
        .parse()
        .unwrap();
    let base = desired_base(&me(), &config, &snapshot, &local).unwrap();
    let mut want = with_blocks(&me(), &snapshot, &base);
    let mut seed: u64 = 42;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for step in 0..600 {
        let network = ["blue", "red", "green"][next(3) as usize];
        let cidr = format!("10.10.{}.0/24", next(6));
        let block = block(
            network,
            &cidr,
            ["me", "b", "c", "far", "gone"][next(5) as usize],
        );
        let key = model::block_key(network, block.block);
        let event = if next(3) == 0 {
            WatchEvent::Delete {
                key: key.clone(),
                revision: step,
            }
        } else {
            WatchEvent::Put(KeyValue {
                key: key.clone(),
                value: serde_json::to_string(&block).unwrap(),
                mod_revision: step,
                lease: 0,
            })
        };
        let old = snapshot.blocks.get(&key).cloned();
        snapshot.apply(&event).unwrap();
        for route_key in block_route_keys(&me(), &snapshot, &base, old.as_ref(), &key) {
            match desired_route(&me(), &snapshot, &base, route_key) {
                Some(route) => want.routes.insert(route_key, route),
                None => want.routes.remove(&route_key),
            };
        }
        let full = desired(&me(), &config, &snapshot, &local).unwrap();
        assert_eq!(want, full, "step {step}: {event:?}");
    }
    assert!(
        want.routes.len() > 5,
        "the run exercised few routes: {:?}",
        want.routes
    );
}

/// A layer-2 container: its endpoint entry (flagged), its port by MAC, and its
/// network's entry (parent, VLAN, ports) — no route and no VNI accepted for it.
#[test]
fn l2_endpoints_are_switched_not_routed() {
    // (The network need not be in the snapshot yet: the endpoint carries its VLAN.)
    let snapshot = Snapshot::from_records(vec![host("me", 11)], vec![], vec![]);
    let mut ep = local(300, "10.10.0.5");
    ep.network = Some("lan".into());
    ep.lan = Some(crate::net::veth::Lan {
        prefix_len: 16,
        router: "10.10.0.1".parse().unwrap(),
        vlan: 100,
    });
    let with_parent = Me {
        l2_parent: Some(4),
        ..me()
    };
    let d = desired(&with_parent, &config(), &snapshot, &[&ep]).unwrap();
    assert!(d.routes.is_empty() && d.networks.is_empty(), "{d:?}");
    assert_eq!(d.endpoints[&9].flags, oxlay_common::l2::ENDPOINT_L2);
    assert_eq!(d.l2_ports, BTreeMap::from([((300, [2, 1, 1, 1, 1, 1]), 9)]));
    let net = d.l2_networks[&300];
    assert_eq!((net.parent_ifindex, net.vlan, net.ports_len), (4, 100, 1));
    assert_eq!(net.ports[0], 9);
    // Without a parent NIC the network has no entry: its frames are counted as drops.
    let d = desired(&me(), &config(), &snapshot, &[&ep]).unwrap();
    assert!(d.l2_networks.is_empty() && d.l2_ports.len() == 1);
}
