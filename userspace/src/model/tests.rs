use std::{collections::BTreeMap, net::Ipv4Addr};

use super::{subnets::free_subnet, *};
use crate::store::Store;

fn net(subnet: &str, block: u8) -> NetworkRecord {
    NetworkRecord {
        l2: None,
        name: "n".into(),
        vni: 1,
        subnet: subnet.parse().unwrap(),
        block_prefix: block,
        labels: BTreeMap::new(),
        direct: false,
        removing: false,
        egress: Egress::default(),
        encap: Default::default(),
    }
}

#[test]
fn blocks_tile_the_subnet() {
    let n = net("10.1.0.0/16", 24);
    let b: Vec<_> = tiles(&n).collect();
    assert_eq!(b.len(), 256);
    assert_eq!(b[0].to_string(), "10.1.0.0/24");
    assert_eq!(b[255].to_string(), "10.1.255.0/24");
    let hosts: Vec<_> = block_hosts("10.1.3.0/30".parse().unwrap()).collect();
    assert_eq!(
        hosts,
        [Ipv4Addr::new(10, 1, 3, 1), Ipv4Addr::new(10, 1, 3, 2)]
    );
}

#[test]
fn free_subnets_avoid_existing_ones() {
    let existing = [net("10.240.0.0/16", 24), net("10.241.0.0/20", 24)];
    let subnets = existing.iter().map(|n| n.subnet);
    assert_eq!(free_subnet(subnets).unwrap().to_string(), "10.242.0.0/16");
}

#[test]
fn keys_are_stable() {
    assert_eq!(
        block_key("blue", "10.1.2.0/24".parse().unwrap()),
        "/oxlay/blocks/blue/10.1.2.0_24"
    );
    assert_eq!(
        endpoint_key("blue", Ipv4Addr::new(10, 1, 2, 3)),
        "/oxlay/endpoints/blue/10.1.2.3"
    );
}

/// A removal whose compare-and-delete loses to a concurrent write reads again and
/// deletes: it never reports success with the address still claimed.
#[tokio::test]
async fn a_removal_racing_a_write_still_removes() {
    use crate::store::faulty::{temp_embedded, Fault, FaultyStore};
    let (_folder, inner) = temp_embedded();
    let store = FaultyStore::new(inner);
    let spec = NetworkSpec {
        name: "n".into(),
        subnet: Some("10.1.0.0/16".parse().unwrap()),
        ..Default::default()
    };
    create_network(&store, spec).await.unwrap();
    let lease = store
        .grant_lease(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let ep = create_endpoint(&store, "h", lease, "n", "sb", None, BTreeMap::new())
        .await
        .unwrap();
    // The wiring is recorded between the removal's read and its compare-and-delete.
    store.set(Fault {
        rewrite_before_delete_under: Some(ENDPOINTS.into()),
        times: 1,
        ..Default::default()
    });
    remove_endpoint(&store, "n", ep.address).await.unwrap();
    assert!(
        endpoint(&store, "n", ep.address).await.unwrap().is_none(),
        "the address is still claimed after a successful removal"
    );
}

/// A layer-2 network hands out addresses of its range only, never its gateway (here
/// the first address of the first block), and its VLAN belongs to it alone.
#[tokio::test]
async fn l2_networks_hand_out_their_range_but_not_the_gateway() {
    use crate::store::faulty::temp_embedded;
    let (_folder, store) = temp_embedded();
    let l2 = |gateway: &str, vlan| {
        let gateway: Ipv4Addr = gateway.parse().unwrap();
        let range = format!("{}.0/25", &gateway.to_string()[..10]);
        Some(L2Settings {
            gateway,
            ip_range: Some(range.parse().unwrap()),
            vlan,
        })
    };
    let spec = NetworkSpec {
        name: "lan".into(),
        subnet: Some("192.168.77.0/24".parse().unwrap()),
        l2: l2("192.168.77.1", 100),
        ..Default::default()
    };
    let net = create_network(&store, spec.clone()).await.unwrap();
    assert_eq!(net.block_prefix, 28);
    let lease = store
        .grant_lease(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let first = create_endpoint(&store, "h", lease, "lan", "a", None, BTreeMap::new());
    assert_eq!(first.await.unwrap().address, Ipv4Addr::new(192, 168, 77, 2));
    let gateway = Some(Ipv4Addr::new(192, 168, 77, 1));
    let e = create_endpoint(&store, "h", lease, "lan", "b", gateway, BTreeMap::new());
    assert!(format!("{:#}", e.await.unwrap_err()).contains("gateway"));
    let outside = Some(Ipv4Addr::new(192, 168, 77, 200));
    let e = create_endpoint(&store, "h", lease, "lan", "c", outside, BTreeMap::new());
    assert!(format!("{:#}", e.await.unwrap_err()).contains("outside"));
    // VLAN 100 is taken; removing the network frees it.
    let again = NetworkSpec {
        name: "again".into(),
        subnet: Some("192.168.78.0/24".parse().unwrap()),
        l2: l2("192.168.78.1", 100),
        ..Default::default()
    };
    let e = create_network(&store, again.clone()).await.unwrap_err();
    assert!(format!("{e:#}").contains("VLAN 100 is already"), "{e:#}");
    let bad = NetworkSpec {
        l2: l2("192.168.78.0", 7),
        ..again.clone()
    };
    assert!(
        create_network(&store, bad).await.is_err(),
        "the network address as gateway"
    );
    remove_endpoint(&store, "lan", Ipv4Addr::new(192, 168, 77, 2))
        .await
        .unwrap();
    remove_network(&store, "lan").await.unwrap();
    create_network(&store, again).await.unwrap();
}

/// A create that stopped after claiming its VLAN (no record written) leaves a claim
/// that `network rm NAME` clears, so the VLAN can be had again.
#[tokio::test]
async fn removing_a_half_made_network_gives_back_its_vlan() {
    use crate::store::faulty::temp_embedded;
    let (_folder, store) = temp_embedded();
    store
        .compare_and_put(&format!("{L2_VLANS}100"), 0, "lan", None)
        .await
        .unwrap();
    remove_network(&store, "lan").await.unwrap();
    assert!(store
        .get(&format!("{L2_VLANS}100"))
        .await
        .unwrap()
        .is_none());
    let e = remove_network(&store, "lan").await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}
