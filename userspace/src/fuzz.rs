//! Property tests over every parser that takes outside input: config files, API
//! requests, store records, CIDRs and MACs, and the command line. Arbitrary and near-valid input must give a
//! value or an error with a message, never a panic. `PROPTEST_CASES` sets the effort:
//! the suite runs the default (256 per property); a longer run is documented in the
//! README.
use proptest::prelude::*;

use clap::Parser;

use crate::{api, cli::Cli, config::Config, model, net};

/// Strings that look like the real thing, mutated: more useful than pure noise.
fn near_config() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "node_name",
        "underlay_interface",
        "vni",
        "pod_subnet",
        "vxlan_port",
        "decap",
        "vtep_mac",
        "[store]",
        "[[peers]]",
        "lease_ttl_secs",
        "etcd_endpoints",
        "name",
        "underlay_address",
        "direct",
    ]);
    let values = prop::sample::select(vec![
        "\"a\"",
        "\"eth0\"",
        "42",
        "0",
        "-1",
        "16777216",
        "\"10.244.1.0/24\"",
        "\"10.244.1.1/33\"",
        "\"tc\"",
        "\"xdp\"",
        "\"02:00:00:00:00:01\"",
        "true",
        "[\"http://x:1\"]",
        "\"\"",
        "\"\u{0}\"",
        "[]",
        "{}",
    ]);
    prop::collection::vec((keys, values), 0..12).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| {
                if k.starts_with('[') {
                    format!("{k}\n")
                } else {
                    format!("{k} = {v}\n")
                }
            })
            .collect()
    })
}

/// Argument lists built from the CLI's own words, flags and values, mixed at random.
fn near_valid_args() -> impl Strategy<Value = Vec<String>> {
    let words = prop::sample::select(vec![
        "daemon",
        "attach",
        "detach",
        "routes",
        "endpoints",
        "stats",
        "hosts",
        "status",
        "uninstall",
        "network",
        "endpoint",
        "create",
        "ls",
        "inspect",
        "rm",
        "--node",
        "--socket",
        "--netns",
        "--address",
        "--ifname",
        "--json",
        "--config",
        "--subnet",
        "--vni",
        "--block-size",
        "--label",
        "--allow-overlap",
        "--direct",
        "--network",
        "--ip",
        "a=b",
        "=x",
        "/24",
        "/99",
        "10.0.0.0/8",
        "10.0.0.1",
        "999999999999",
        "-1",
        "",
        "x",
        "--",
        "-h",
        "\u{0}",
    ]);
    prop::collection::vec(words.prop_map(String::from), 0..8)
}

proptest! {
    #[test]
    fn cli_arguments_never_panic(args in near_valid_args()) {
        let _ = Cli::try_parse_from(std::iter::once("oxlay".to_owned()).chain(args));
    }

    #[test]
    fn arbitrary_cli_arguments_never_panic(args in prop::collection::vec("\\PC*", 0..6)) {
        let _ = Cli::try_parse_from(std::iter::once("oxlay".to_owned()).chain(args));
    }

    #[test]
    fn config_parsing_never_panics(text in "\\PC*") {
        if let Err(e) = text.parse::<Config>() {
            let message = format!("{e:#}");
            prop_assert!(!message.is_empty());
        }
    }

    #[test]
    fn near_valid_configs_never_panic(text in near_config()) {
        if let Ok(c) = text.parse::<Config>() {
            // Whatever parses also validates and yields usable paths.
            prop_assert!(c.validate().is_ok());
            let _ = (c.socket_path(), c.pin_path(), c.vtep_mac());
        }
    }

    #[test]
    fn api_requests_never_panic(line in "\\PC*") {
        if let Err(e) = api::parse_request(&line) {
            let message = e.to_string();
            prop_assert!(message.starts_with("bad request"), "{}", message);
        }
    }

    #[test]
    fn near_valid_api_requests_never_panic(
        op in prop::sample::select(vec!["attach", "detach", "routes", "stats", "network_create", "endpoint_create", "uninstall", "status", "x"]),
        field in prop::sample::select(vec!["netns", "address", "name", "subnet", "vni", "ip", "labels", "network"]),
        value in prop::sample::select(vec!["\"c1\"", "\"10.0.0.1\"", "\"10.0.0.0/8\"", "99999999999", "-1", "{}", "[]", "null", "\"\u{ffff}\""]),
    ) {
        let _ = api::parse_request(&format!("{{\"op\":\"{op}\",\"{field}\":{value}}}"));
    }

    #[test]
    fn store_records_never_panic(value in "\\PC*") {
        let _ = serde_json::from_str::<model::NetworkRecord>(&value);
        let _ = serde_json::from_str::<model::EndpointRecord>(&value);
        let _ = serde_json::from_str::<model::BlockRecord>(&value);
        let _ = serde_json::from_str::<model::HostRecord>(&value);
    }

    #[test]
    fn cidr_and_mac_parsing_never_panic(s in "[0-9a-fA-F.:/x-]{0,24}") {
        if let Ok(n) = s.parse::<net::Ipv4Net>() {
            // A parsed subnet prints back to something that parses to the same subnet.
            prop_assert_eq!(n.to_string().parse::<net::Ipv4Net>().unwrap(), n);
        }
        if let Ok(m) = s.parse::<net::MacAddr>() {
            prop_assert_eq!(m.to_string().parse::<net::MacAddr>().unwrap(), m);
        }
    }
}
