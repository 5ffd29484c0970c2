use super::commands::*;
use super::*;
use crate::api::{EndpointView, NoArgs};

fn inv(command: &str, config: &str) -> Invocation {
    Invocation {
        command: command.into(),
        container_id: "c1".into(),
        netns: "/proc/1/ns/net".into(),
        ifname: "eth0".into(),
        args: String::new(),
        config: config.as_bytes().to_vec(),
    }
}

fn view() -> EndpointView {
    EndpointView {
        network: "blue".into(),
        vni: 7,
        netns: "cni-c1-eth0".into(),
        address: "10.1.0.2".parse().unwrap(),
        mac: "02:00:00:00:00:01".into(),
        host_interface: "oxl1".into(),
        container_interface: "eth0".into(),
        mtu: 1450,
        route: "0.0.0.0/0".into(),
        published: Vec::new(),
        resolver: Some("169.254.1.1".parse().unwrap()),
        lan: None,
    }
}

/// A layer-2 container's result: the LAN's prefix and router; a further interface on
/// a LAN adds no route.
#[test]
fn l2_results_name_the_lan_router() {
    let lan = crate::net::veth::Lan {
        prefix_len: 24,
        router: "192.168.77.1".parse().unwrap(),
        vlan: 0,
    };
    let first = EndpointView {
        address: "192.168.77.2".parse().unwrap(),
        lan: Some(lan),
        ..view()
    };
    let conf = parse_config(br#"{"cniVersion":"1.0.0","name":"lan","type":"oxlay"}"#).unwrap();
    let r = result(&conf, &inv("ADD", ""), &first);
    assert_eq!(r["ips"][0]["address"], "192.168.77.2/24");
    assert_eq!(r["ips"][0]["gateway"], "192.168.77.1");
    assert_eq!(r["routes"][0]["gw"], "192.168.77.1");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    let second = EndpointView {
        route: "192.168.77.0/24".into(),
        ..first
    };
    let r = result(&conf, &inv("ADD", ""), &second);
    assert_eq!(r["routes"], serde_json::json!([]));
}

/// In a chain, ips[0] may be another plugin's: CHECK compares the address recorded
/// for our interface, and ADD routes only the subnet on a second interface.
#[test]
fn check_reads_our_interface_and_second_interfaces_get_subnet_routes() {
    let prev = json!({
        "interfaces": [
            { "name": "net1", "sandbox": "/proc/1/ns/net" },
            { "name": "eth0", "sandbox": "/proc/1/ns/net", "mac": "02:00:00:00:00:01" }
        ],
        "ips": [
            { "address": "192.168.7.5/24", "interface": 0 },
            { "address": "10.1.0.2/32", "interface": 1 }
        ]
    });
    assert_eq!(
        recorded_addresses(&prev, "eth0", "/proc/1/ns/net"),
        ["10.1.0.2"]
    );
    assert_eq!(
        recorded_addresses(&prev, "net1", "/proc/1/ns/net"),
        ["192.168.7.5"]
    );
    assert!(recorded_addresses(&prev, "eth1", "/proc/1/ns/net").is_empty());

    let conf = parse_config(br#"{"cniVersion":"1.0.0","name":"blue","type":"oxlay"}"#).unwrap();
    let second = EndpointView {
        route: "10.1.0.0/16".into(),
        container_interface: "eth1".into(),
        ..view()
    };
    let out = result(&conf, &inv("ADD", ""), &second);
    assert_eq!(
        out["routes"],
        json!([{ "dst": "10.1.0.0/16", "gw": "169.254.1.1" }])
    );
    let first = result(&conf, &inv("ADD", ""), &view());
    assert_eq!(
        first["routes"],
        json!([{ "dst": "0.0.0.0/0", "gw": "169.254.1.1" }])
    );
}

/// A daemon that is not there is "try again later" (11); a daemon that refuses is
/// not, whatever its message says.
#[tokio::test]
async fn unreachable_and_refusing_daemons_get_their_own_codes() {
    let missing =
        std::env::temp_dir().join(format!("oxlay-cni-missing-{}.sock", std::process::id()));
    let e = call(&missing, &Request::Status(NoArgs::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e:?}");

    // A daemon whose refusal happens to quote the unreachable message.
    let socket = std::env::temp_dir().join(format!("oxlay-cni-refuse-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut stream, _) = listener.accept().await.unwrap();
        let answer = json!({ "error": "cannot reach the oxlay daemon at /x (upstream)" });
        stream
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .unwrap();
    });
    let e = call(&socket, &Request::Status(NoArgs::default()))
        .await
        .unwrap_err();
    server.await.unwrap();
    let _ = std::fs::remove_file(&socket);
    assert_eq!(e.code, code::DAEMON_REFUSED, "{e:?}");
}

async fn code_of(i: Invocation) -> u32 {
    run(&i).await.unwrap_err().code
}

#[tokio::test]
async fn version_lists_what_is_supported() {
    let v = run(&inv("VERSION", "")).await.unwrap().unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("0.4.0")));
}

#[tokio::test]
async fn bad_input_gets_spec_error_codes() {
    let ok = r#"{"cniVersion":"1.0.0","name":"blue","type":"oxlay","socket":"/nonexistent.sock"}"#;
    assert_eq!(code_of(inv("ADD", "{nope")).await, code::DECODE_FAILURE);
    assert_eq!(
        code_of(inv(
            "ADD",
            r#"{"cniVersion":"9.9.9","name":"b","type":"oxlay"}"#
        ))
        .await,
        code::INCOMPATIBLE_VERSION
    );
    assert_eq!(
        code_of(inv(
            "ADD",
            r#"{"cniVersion":"1.0.0","name":"b","type":"bridge"}"#
        ))
        .await,
        code::INVALID_CONFIG
    );
    let mut no_netns = inv("ADD", ok);
    no_netns.netns.clear();
    assert_eq!(code_of(no_netns).await, code::INVALID_ENVIRONMENT);
    let mut bad_if = inv("ADD", ok);
    bad_if.ifname = "a very long interface name".into();
    assert_eq!(code_of(bad_if).await, code::INVALID_ENVIRONMENT);
    assert_eq!(code_of(inv("FROB", ok)).await, code::INVALID_ENVIRONMENT);
    assert_eq!(code_of(inv("ADD", ok)).await, code::TRY_AGAIN_LATER);
    assert_eq!(code_of(inv("STATUS", ok)).await, code::NOT_AVAILABLE);
}

#[test]
fn results_follow_the_configured_version() {
    let view = view();
    for (version, ip_version) in [("1.0.0", None), ("0.4.0", Some("4"))] {
        let conf = parse_config(
            format!(r#"{{"cniVersion":"{version}","name":"blue","type":"oxlay","dns":{{"nameservers":["10.0.0.10"]}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        let r = result(&conf, &inv("ADD", ""), &view);
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["ips"][0]["address"], "10.1.0.2/32");
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(r["ips"][0]["version"].as_str(), ip_version);
        assert_eq!(r["interfaces"][0]["sandbox"], "/proc/1/ns/net");
        assert_eq!(r["dns"]["nameservers"][0], "10.0.0.10");
    }
}

#[test]
fn results_keep_what_earlier_plugins_reported() {
    let view = view();
    let conf = parse_config(
        br#"{"cniVersion":"1.0.0","name":"blue","type":"oxlay","prevResult":{
            "cniVersion":"1.0.0","interfaces":[{"name":"lo","sandbox":"/proc/1/ns/net"}],
            "ips":[{"address":"127.0.0.1/8","interface":0}],"dns":{"nameservers":["1.1.1.1"]}}}"#,
    )
    .unwrap();
    let r = result(&conf, &inv("ADD", ""), &view);
    assert_eq!(r["interfaces"][0]["name"], "lo");
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(r["ips"][1]["address"], "10.1.0.2/32");
    assert_eq!(r["ips"][1]["interface"], 1);
    assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1");
}

#[test]
fn results_name_oxlays_resolver_only_when_it_answers() {
    let conf = parse_config(br#"{"cniVersion":"1.0.0","name":"blue","type":"oxlay"}"#).unwrap();
    let r = result(&conf, &inv("ADD", ""), &view());
    assert_eq!(r["dns"]["nameservers"][0], "169.254.1.1");
    let off = EndpointView {
        resolver: None,
        ..view()
    };
    let r = result(&conf, &inv("ADD", ""), &off);
    assert!(r["dns"].is_null(), "{r}");
}

#[test]
fn names_are_the_container_id_its_short_form_the_pod_and_the_aliases() {
    let long = "0123456789abcdef".repeat(4);
    let conf = parse_config(
        br#"{"cniVersion":"1.0.0","name":"blue","type":"oxlay",
             "runtimeConfig":{"aliases":{"blue":["db","not a name"],"red":["red-only"]}}}"#,
    )
    .unwrap();
    let invocation = Invocation {
        container_id: long.clone(),
        args: "IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default".into(),
        ..inv("ADD", "")
    };
    // The 64-character ID is no DNS label; its first 12 characters are.
    assert_eq!(names(&conf, &invocation), ["0123456789ab", "db", "web-0"]);
}
