//! Property tests over every parser that takes outside input: config files, API
//! requests, Docker plugin requests, CNI configurations, store records, CIDRs and MACs,
//! and the command line. Arbitrary and near-valid input must give a
//! value or an error with a message, never a panic. `PROPTEST_CASES` sets the effort:
//! the suite runs the default (256 per property); a longer run is documented in the
//! README.
use proptest::prelude::*;

use clap::Parser;

use oxlay::{
    api,
    cli::Cli,
    config::Config,
    model, net,
    plugins::{cni, docker},
};

/// A Docker driver that does nothing: the property tests are about decoding.
struct NullDriver;

#[async_trait::async_trait]
impl docker::Driver for NullDriver {
    async fn request_pool(&self, _: docker::PoolRequest) -> anyhow::Result<(String, net::Ipv4Net)> {
        Ok(("n".into(), "10.0.0.0/16".parse()?))
    }
    async fn release_pool(&self, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn request_address(
        &self,
        _: &str,
        _: Option<std::net::Ipv4Addr>,
    ) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
        Ok((std::net::Ipv4Addr::new(10, 0, 0, 2), 16))
    }
    async fn gateway(
        &self,
        _: &str,
        _: Option<std::net::Ipv4Addr>,
    ) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
        Ok((std::net::Ipv4Addr::new(169, 254, 1, 1), 32))
    }
    async fn release_address(&self, _: &str, _: std::net::Ipv4Addr) -> anyhow::Result<()> {
        Ok(())
    }
    async fn create_network(&self, _: docker::NetworkRequest) -> anyhow::Result<()> {
        Ok(())
    }
    async fn delete_network(&self, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn create_endpoint(
        &self,
        _: &str,
        _: &str,
        _: std::net::Ipv4Addr,
        _: Option<net::MacAddr>,
    ) -> anyhow::Result<(net::MacAddr, String)> {
        Ok((net::MacAddr([2, 0, 0, 0, 0, 1]), "oxl1c".into()))
    }
    async fn delete_endpoint(&self, _: &str, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn join(
        &self,
        _: &str,
        _: &str,
        _: &str,
    ) -> anyhow::Result<(String, std::net::Ipv4Addr)> {
        Ok(("oxl1c".into(), std::net::Ipv4Addr::new(169, 254, 1, 1)))
    }
    async fn leave(&self, _: &str, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn endpoint_info(&self, _: &str, _: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::json!({}))
    }
    async fn publish(&self, _: &str, _: &str, _: Vec<model::PublishedPort>) -> anyhow::Result<()> {
        Ok(())
    }
    async fn unpublish(&self, _: &str, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The plugin protocol's methods, and one it does not know.
fn docker_method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "Plugin.Activate",
        "IpamDriver.RequestPool",
        "IpamDriver.RequestAddress",
        "IpamDriver.ReleaseAddress",
        "IpamDriver.ReleasePool",
        "NetworkDriver.CreateNetwork",
        "NetworkDriver.CreateEndpoint",
        "NetworkDriver.Join",
        "NetworkDriver.Leave",
        "NetworkDriver.DeleteEndpoint",
        "NetworkDriver.EndpointOperInfo",
        "NetworkDriver.Nope",
    ])
}

/// JSON objects with the protocol's field names and awkward values.
fn near_docker_body() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "Pool",
        "SubPool",
        "Options",
        "V6",
        "PoolID",
        "Address",
        "NetworkID",
        "EndpointID",
        "Interface",
        "SandboxKey",
        "IPv4Data",
        "IPv6Data",
        "MacAddress",
    ]);
    let values = prop::sample::select(vec![
        "\"10.0.0.0/16\"",
        "\"10.0.0.1/33\"",
        "\"10.0.0.1\"",
        "\"\"",
        "\"zz\"",
        "true",
        "null",
        "{}",
        "[]",
        "[{\"Pool\":\"x\"}]",
        "{\"Address\":\"10.1.1.1/16\",\"MacAddress\":\"02:00:00:00:00:01\"}",
        "{\"RequestAddressType\":\"com.docker.network.gateway\"}",
        "{\"com.docker.network.generic\":{\"a\":1}}",
    ]);
    prop::collection::vec((keys, values), 0..6).prop_map(|kv| {
        let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", fields.join(","))
    })
}

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
    fn docker_plugin_requests_never_panic(method in docker_method(), body in near_docker_body()) {
        let answer = futures::executor::block_on(docker::dispatch(&NullDriver, method, body.as_bytes()));
        check_docker_answer(method, answer)?;
    }

    #[test]
    fn arbitrary_docker_plugin_bodies_never_panic(method in docker_method(), body in "\\PC*") {
        let answer = futures::executor::block_on(docker::dispatch(&NullDriver, method, body.as_bytes()));
        check_docker_answer(method, answer)?;
    }

    #[test]
    fn cni_configurations_never_panic(text in "\\PC*") {
        if let Err(e) = cni::parse_config(text.as_bytes()) {
            prop_assert!(!e.msg.is_empty() && e.code > 0);
        }
    }

    #[test]
    fn near_valid_cni_configurations_never_panic(
        version in prop::sample::select(vec!["\"1.0.0\"", "\"0.4.0\"", "\"9\"", "1", "null"]),
        kind in prop::sample::select(vec!["\"oxlay\"", "\"bridge\"", "[]"]),
        extra in prop::sample::select(vec!["", ",\"network\":7", ",\"socket\":\"/x\"", ",\"prevResult\":{\"ips\":[]}", ",\"dns\":null"]),
    ) {
        let text = format!("{{\"cniVersion\":{version},\"name\":\"n\",\"type\":{kind}{extra}}}");
        let _ = cni::parse_config(text.as_bytes());
    }

    #[test]
    fn store_records_never_panic(value in "\\PC*") {
        let _ = serde_json::from_str::<model::NetworkRecord>(&value);
        let _ = serde_json::from_str::<model::EndpointRecord>(&value);
        let _ = serde_json::from_str::<model::BlockRecord>(&value);
        let _ = serde_json::from_str::<model::HostRecord>(&value);
    }

    /// Network records with any numbers in them (a hand-written or foreign record)
    /// go through the code that uses them, address allocation: an answer or an error,
    /// never a panic or an endless loop.
    #[test]
    fn any_network_record_allocates_or_errs(
        vni in prop::sample::select(vec![0u32, 1, 42, 0xff_ffff, 0x100_0000, u32::MAX]),
        addr in any::<u32>(),
        prefix in 0u8..=32,
        block in prop::sample::select(vec![0u8, 1, 8, 16, 23, 24, 29, 30, 31, 32, 33, 200, 255]),
    ) {
        let subnet = format!("{}/{prefix}", std::net::Ipv4Addr::from(addr));
        let Ok(subnet) = subnet.parse::<net::Ipv4Net>() else { return Ok(()) };
        let record = format!(
            r#"{{"name":"n","vni":{vni},"subnet":"{subnet}","block_prefix":{block}}}"#
        );
        let answer = allocate_on(&record);
        match model::decode_network("/oxlay/networks/n", &record) {
            Ok(_) => prop_assert!(answer.is_ok(), "{record}: {answer:?}"),
            Err(e) => {
                prop_assert!(format!("{e:#}").contains("not valid"), "{e:#}");
                prop_assert!(answer.is_err(), "{record}: {answer:?}");
            }
        }
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

/// What every Docker answer must be: `None` only for an unknown method; a JSON object
/// for a known one; an error that says something otherwise.
fn check_docker_answer(
    method: &str,
    answer: anyhow::Result<Option<serde_json::Value>>,
) -> Result<(), TestCaseError> {
    match answer {
        Ok(None) => prop_assert_eq!(method, "NetworkDriver.Nope"),
        Ok(Some(v)) => {
            prop_assert!(method != "NetworkDriver.Nope");
            prop_assert!(v.is_object(), "{} answered {}", method, v);
            if method == "IpamDriver.RequestAddress" {
                // An address with its prefix length: "10.0.0.2/16".
                let a = v["Address"].as_str().unwrap_or("");
                let ok = a.split_once('/').is_some_and(|(addr, len)| {
                    addr.parse::<std::net::Ipv4Addr>().is_ok()
                        && len.parse::<u8>().is_ok_and(|l| l <= 32)
                });
                prop_assert!(ok, "{}", v);
            }
            if method == "IpamDriver.RequestPool" {
                prop_assert_eq!(&v["Pool"], "10.0.0.0/16");
            }
        }
        Err(e) => {
            prop_assert!(method != "NetworkDriver.Nope");
            let message = format!("{e:#}");
            prop_assert!(!message.trim().is_empty());
        }
    }
    Ok(())
}

/// Writes `record` as network "n" into a fresh embedded store and allocates one
/// address on it.
fn allocate_on(record: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    use oxlay::store::Store;
    // A fresh store per case, removed afterwards.
    static CASE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let folder = std::env::temp_dir().join(format!("oxlay-fuzz-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&folder)?;
    let store = oxlay::store::embedded::EmbeddedStore::new(folder.join("store.json"))?;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            store.put("/oxlay/networks/n", record, None).await?;
            let lease = store
                .grant_lease(std::time::Duration::from_secs(30))
                .await?;
            let ep =
                model::create_endpoint(&store, "h", lease, "n", "sb", None, Default::default())
                    .await?;
            anyhow::Ok(ep.address)
        });
    std::fs::remove_dir_all(&folder).ok();
    result
}
