use super::*;

#[test]
fn apply_removes_before_adding_so_a_full_map_takes_the_new_routes() {
    let peer = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12]);
    let endpoint = |last: u8| Endpoint {
        net_id: 100,
        addr: [10, 10, 0, last],
        mac: [2, 0, 0, 0, 0, last],
        flags: 0,
        _pad: 0,
    };
    let mut maps = FakeMaps {
        route_capacity: 2,
        ..Default::default()
    };
    maps.routes.insert((100, net("10.10.1.0/24")), peer);
    maps.routes.insert((100, net("10.10.2.0/24")), peer);
    // Endpoint 7 left, 8 changed its address, 9 is new, 10 stays as it is.
    maps.endpoints.insert(7, endpoint(7));
    maps.endpoints.insert(8, endpoint(80));
    maps.endpoints.insert(10, endpoint(10));
    // The host of 10.10.2.0/24 left and 10.10.3.0/24 arrived: the map is full.
    let want = Desired {
        l2_ports: BTreeMap::new(),
        l2_networks: BTreeMap::new(),
        networks: BTreeSet::from([100]),
        peers: BTreeMap::from([(Ipv4Addr::new(192, 168, 50, 12), Peer::default())]),
        routes: BTreeMap::from([
            ((100, net("10.10.1.0/24")), peer),
            ((100, net("10.10.3.0/24")), peer),
        ]),
        endpoints: BTreeMap::from([(8, endpoint(8)), (9, endpoint(9)), (10, endpoint(10))]),
    };
    let c = apply(&mut maps, &want).unwrap();
    assert_eq!(c.failed, Vec::<String>::new());
    assert_eq!((c.added, c.removed), (5, 2));
    assert_eq!(maps.endpoints, want.endpoints);
    assert_eq!(
        maps.routes.keys().collect::<Vec<_>>(),
        want.routes.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        maps.log,
        [
            "-route 100 10.10.2.0/24",
            "-endpoint 7",
            "+net 100",
            "+peer 192.168.50.12",
            "+endpoint 8",
            "+endpoint 9",
            "+route 100 10.10.3.0/24"
        ]
    );
    // Nothing differs: nothing is touched.
    maps.log.clear();
    let c = apply(&mut maps, &want).unwrap();
    assert_eq!((c.added, c.removed, c.failed.len()), (0, 0, 0));
    assert!(maps.log.is_empty(), "{:?}", maps.log);
}

#[test]
fn apply_carries_on_past_a_failed_entry_and_reports_it() {
    let peer = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12]);
    let mut maps = FakeMaps {
        route_capacity: 10,
        refuse: BTreeSet::from([(100, net("10.10.1.0/24"))]),
        ..Default::default()
    };
    let want = Desired {
        l2_ports: BTreeMap::new(),
        l2_networks: BTreeMap::new(),
        networks: BTreeSet::from([100]),
        peers: BTreeMap::new(),
        routes: BTreeMap::from([
            ((100, net("10.10.1.0/24")), peer),
            ((100, net("10.10.2.0/24")), peer),
            ((100, net("10.10.3.0/24")), peer),
        ]),
        endpoints: BTreeMap::new(),
    };
    let c = apply(&mut maps, &want).unwrap();
    assert_eq!(c.failed.len(), 1, "{:?}", c.failed);
    assert!(c.failed[0].contains("10.10.1.0/24"), "{:?}", c.failed);
    assert_eq!(
        maps.routes.len(),
        2,
        "the routes after the failed one are in"
    );
    // Once the map takes it, a retry adds only the missing entry.
    maps.refuse.clear();
    maps.log.clear();
    let c = apply(&mut maps, &want).unwrap();
    assert_eq!((c.added, c.failed.len()), (1, 0));
    assert_eq!(maps.log, ["+route 100 10.10.1.0/24"]);
}

/// Through the shadow, a change reads nothing from the kernel and writes only what
/// differs; the shadow then equals what was asked for.
#[test]
fn shadowed_apply_writes_only_the_change() {
    let peer = Route::remote([192, 168, 50, 12], [2, 0, 0, 0, 0, 12]);
    let mut maps = FakeMaps {
        route_capacity: 100,
        ..Default::default()
    };
    let mut want = Desired::default();
    want.networks.insert(100);
    for i in 1..50u8 {
        want.routes
            .insert((100, net(&format!("10.10.{i}.0/24"))), peer);
    }
    apply(&mut maps, &want).unwrap();
    let mut shadow = read_shadow(&maps).unwrap();
    assert_eq!(shadow, want);
    maps.log.clear();
    want.routes.insert((100, net("10.10.200.0/24")), peer);
    want.routes.remove(&(100, net("10.10.1.0/24")));
    let c = apply(
        &mut Shadowed {
            maps: &mut maps,
            shadow: &mut shadow,
        },
        &want,
    )
    .unwrap();
    assert_eq!((c.added, c.removed), (1, 1));
    assert_eq!(
        maps.log,
        ["-route 100 10.10.1.0/24", "+route 100 10.10.200.0/24"]
    );
    assert_eq!(shadow, want);
}

/// Layer-2 entries: a port that left goes first; a network whose VLAN changed loses its
/// old entry (and its VLAN key) before it gets the new one; one whose ports changed is
/// overwritten in place; the network is written before the ports it lists.
#[test]
fn l2_entries_go_before_they_come_and_change_in_place() {
    let network = |vlan, ports: &[u32]| {
        let mut n = L2Network {
            parent_ifindex: 4,
            vlan,
            ports_len: ports.len() as u16,
            ..Default::default()
        };
        n.ports[..ports.len()].copy_from_slice(ports);
        n
    };
    let mut maps = FakeMaps::default();
    maps.l2_networks.insert(300, network(100, &[7, 9]));
    maps.l2_networks.insert(400, network(0, &[8]));
    maps.l2_ports.insert((300, [2, 0, 0, 0, 0, 7]), 7);
    maps.l2_ports.insert((300, [2, 0, 0, 0, 0, 9]), 9);
    maps.l2_ports.insert((400, [2, 0, 0, 0, 0, 8]), 8);
    let want = Desired {
        // 300: port 7 left; 400: now on VLAN 200, with a new port 10.
        l2_networks: BTreeMap::from([(300, network(100, &[9])), (400, network(200, &[8, 10]))]),
        l2_ports: BTreeMap::from([
            ((300, [2, 0, 0, 0, 0, 9]), 9),
            ((400, [2, 0, 0, 0, 0, 8]), 8),
            ((400, [2, 0, 0, 0, 0, 10]), 10),
        ]),
        ..Default::default()
    };
    apply(&mut maps, &want).unwrap();
    assert_eq!(
        maps.log,
        [
            "-l2port 300",
            "-l2net 400 vlan 0",
            "+l2net 300 vlan 100",
            "+l2net 400 vlan 200",
            "+l2port 400 10"
        ]
    );
    assert_eq!(read_shadow(&maps).unwrap(), want);
}
