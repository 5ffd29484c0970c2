use super::*;

const GOOD: &str = r#"
    node_name = "host-a"
    underlay_interface = "eth0"
    vni = 42
    pod_subnet = "10.244.1.0/24"

    [[peers]]
    name = "host-b"
    underlay_address = "192.168.50.12"
    pod_subnet = "10.244.2.0/24"
    vtep_mac = "02:00:00:00:00:0b"
"#;

/// GOOD with a top-level line added (before the [[peers]] tables).
fn with(extra: &str) -> String {
    format!("{extra}\n{GOOD}")
}

fn err(text: &str) -> String {
    format!("{:#}", text.parse::<Config>().unwrap_err())
}

#[test]
fn parses_defaults() {
    let c: Config = GOOD.parse().unwrap();
    assert_eq!(c.vxlan_port, 4789);
    assert_eq!(c.decap, DecapMode::Tc);
    assert_eq!(c.socket_path(), PathBuf::from("/run/oxlay/host-a.sock"));
    assert_eq!(c.pin_path(), PathBuf::from("/sys/fs/bpf/oxlay/host-a"));
    assert_eq!(c.peers[0].vtep_mac.unwrap().0, [2, 0, 0, 0, 0, 0x0b]);
    assert_eq!(c.vtep_mac(), MacAddr::derived("host-a"));
    assert_eq!(c.store, StoreConfig::default());
    assert_eq!(
        c.static_network(),
        Some((42, "10.244.1.0/24".parse().unwrap()))
    );
}

#[test]
fn store_only_config_needs_no_static_network() {
    let c: Config = "node_name = \"a\"\nunderlay_interface = \"eth0\"\n[store]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n"
        .parse()
        .unwrap();
    assert_eq!(c.static_network(), None);
    assert_eq!(c.store.etcd_endpoints.len(), 1);
    assert_eq!(c.store.lease_ttl_secs, 10);
}

#[test]
fn rejects_bad_input_with_a_reason() {
    assert!(err(&GOOD.replace("vni = 42", "vni = 0")).contains("vni 0 is out of range"));
    assert!(err(&GOOD.replace("vni = 42", "")).contains("go together"));
    assert!(err(&format!("{GOOD}\n[store]\nlease_ttl_secs = 1")).contains("at least 2"));
    assert!(err(&GOOD.replace("vni = 42", "vni = 16777216")).contains("out of range"));
    assert!(err(&GOOD.replace("10.244.1.0/24", "10.244.1.0/33")).contains("prefix length"));
    assert!(err(&GOOD.replace("10.244.1.0/24", "10.244.1.1/24")).contains("host bits"));
    assert!(err(&GOOD.replace("10.244.1.0/24", "banana")).contains("CIDR"));
    assert!(err(&GOOD.replace("10.244.2.0/24", "10.244.0.0/16")).contains("overlaps"));
    assert!(err(&GOOD.replace("\"eth0\"", "\"\"")).contains("underlay_interface"));
    assert!(err(&GOOD.replace("host-b", "host-a")).contains("appears twice"));
    assert!(err(&with("colour = \"blue\"")).contains("unknown field"));
    assert!(err(&GOOD.replace("02:00:00:00:00:0b", "zz")).contains("MAC"));
    assert!(err(&GOOD.replace("node_name = \"host-a\"", "")).contains("node_name"));
    assert!(err(&with("decap = \"ebpf\"")).contains("unknown variant"));
    assert!(err(&GOOD.replace("host-a", "a/b")).contains("not valid"));
}

#[test]
fn container_mtu_leaves_room_for_vxlan() {
    assert_eq!(Config::container_mtu(1500), 1450);
    assert_eq!(Config::container_mtu(9000), 8950);
}

#[test]
fn names_upstream_is_checked() {
    let upstream = |list: &str| format!("{GOOD}\n[names]\nupstream = [{list}]\n");
    let c: Config = upstream("\"192.0.2.53\", \"192.0.2.54:5353\"")
        .parse()
        .unwrap();
    let servers = c.names.upstream_servers().unwrap();
    let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    assert_eq!(servers, ["192.0.2.53:53", "192.0.2.54:5353"]);
    let bad = err(&upstream("\"resolver\""));
    assert!(bad.contains("not an address"), "{bad}");
    let ours = err(&upstream("\"169.254.1.1\""));
    assert!(ours.contains("oxlay's own resolver"), "{ours}");
}

#[test]
fn encap_is_for_the_static_network() {
    let c: Config = format!("encap = \"gre\"\n{GOOD}").parse().unwrap();
    assert_eq!(c.encap, crate::model::Encap::Gre);
    let alone = "node_name = \"a\"\nunderlay_interface = \"eth0\"\nencap = \"gre\"\n";
    assert!(err(alone).contains("--encap gre"), "{}", err(alone));
    assert!(err(&with("encap = \"geneve\"")).contains("geneve"));
}

#[test]
fn l2_parent_is_a_second_nic() {
    let c: Config = format!("{GOOD}\n[l2]\nparent = \"eth1\"\n")
        .parse()
        .unwrap();
    assert_eq!(c.l2.parent.as_deref(), Some("eth1"));
    let e = err(&format!("{GOOD}\n[l2]\nparent = \"eth0\"\n"));
    assert!(e.contains("is the underlay interface"), "{e}");
    let e = err(&format!(
        "{GOOD}\n[l2]\nparent = \"a-very-long-interface\"\n"
    ));
    assert!(e.contains("not a valid interface name"), "{e}");
}
