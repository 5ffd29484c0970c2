//! The CNI plugin (spec 1.0.0): the `oxlay` binary acts as one when a runtime runs it
//! with `CNI_COMMAND` set, as runtimes do with `"type": "oxlay"` in a network
//! configuration. It asks the node's daemon, over its API socket, to create or remove
//! the container's endpoint; the daemon does the wiring and the addressing.
//!
//! Network configuration (one entry of a conflist's `plugins`):
//! ```json
//! { "cniVersion": "1.0.0", "name": "blue", "type": "oxlay",
//!   "network": "blue", "socket": "/run/oxlay/host-a.sock" }
//! ```
//! `network` defaults to `name`; `socket` to the only socket in /run/oxlay.
use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::{self, EndpointView, NoArgs, Request},
    model::local::{check_ifname, GATEWAY},
};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
const MAX_CONFIG: u64 = 1024 * 1024;

/// A CNI error: a spec code and message, printed as JSON on stdout.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// Spec error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// oxlay's own: the daemon refused the request.
    pub const DAEMON_REFUSED: u32 = 100;
    /// oxlay's own: CHECK found the endpoint missing or different.
    pub const CHECK_FAILED: u32 = 101;
}

/// The environment and standard input of one invocation.
#[derive(Debug, Default, Clone)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub config: Vec<u8>,
}

impl Invocation {
    /// Reads `CNI_*` and standard input, as runtimes pass them.
    pub fn from_process() -> Result<Self, CniError> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let mut config = Vec::new();
        if var("CNI_COMMAND") != "VERSION" {
            std::io::stdin()
                .take(MAX_CONFIG)
                .read_to_end(&mut config)
                .map_err(|e| {
                    CniError::new(
                        code::IO_FAILURE,
                        "cannot read the network configuration",
                        e.to_string(),
                    )
                })?;
        }
        Ok(Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            config,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NetConf {
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    /// The oxlay network (default: `name`).
    #[serde(default)]
    network: Option<String>,
    /// The daemon's API socket.
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    dns: Option<Value>,
}

pub(crate) fn parse_config(bytes: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "the network configuration is not valid JSON for oxlay",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {} is not supported", conf.cni_version),
            format!("use one of {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if conf.kind != "oxlay" {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("the configuration is for plugin {:?}, not oxlay", conf.kind),
            "",
        ));
    }
    Ok(conf)
}

/// The daemon's socket: the configured one, or the only one in /run/oxlay.
fn socket(conf: &NetConf) -> Result<PathBuf, CniError> {
    if let Some(s) = &conf.socket {
        return Ok(s.clone());
    }
    let found: Vec<PathBuf> = std::fs::read_dir("/run/oxlay")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(CniError::new(
            code::INVALID_CONFIG,
            "no daemon socket configured",
            format!(
                "{} sockets in /run/oxlay: set \"socket\" in the network configuration",
                found.len()
            ),
        )),
    }
}

/// The endpoint's name for the daemon: stable across the calls for one attachment,
/// whatever the namespace path (DEL may come without one).
pub fn sandbox_name(container_id: &str, ifname: &str) -> String {
    format!("cni-{container_id}-{ifname}")
}

fn require(what: &str, value: &str) -> Result<(), CniError> {
    if value.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("{what} is not set"),
            "the runtime must set CNI_CONTAINERID, CNI_NETNS (ADD) and CNI_IFNAME",
        ));
    }
    Ok(())
}

fn undecodable(e: serde_json::Error) -> CniError {
    CniError::new(
        code::DECODE_FAILURE,
        "unexpected answer from the daemon",
        e.to_string(),
    )
}

async fn call(socket: &Path, request: &Request) -> Result<Value, CniError> {
    api::call(socket, request).await.map_err(|e| {
        let text = format!("{e:#}");
        // A daemon that is not there (yet) is worth another try; a refusal is not.
        if e.downcast_ref::<api::DaemonUnreachable>().is_some() {
            CniError::new(
                code::TRY_AGAIN_LATER,
                "the oxlay daemon is not reachable",
                text,
            )
        } else {
            CniError::new(code::DAEMON_REFUSED, "the oxlay daemon refused", text)
        }
    })
}

/// Runs one invocation; the JSON to print on success.
pub async fn run(inv: &Invocation) -> Result<Option<Value>, CniError> {
    match inv.command.as_str() {
        "VERSION" => Ok(Some(json!({
            "cniVersion": "1.0.0",
            "supportedVersions": SUPPORTED_VERSIONS,
        }))),
        "ADD" => add(inv).await.map(Some),
        "DEL" => del(inv).await.map(|()| None),
        "CHECK" => check(inv).await.map(|()| None),
        "STATUS" => status(inv).await.map(|()| None),
        "" => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set",
            "",
        )),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other} is not known"),
            "use ADD, DEL, CHECK, STATUS or VERSION",
        )),
    }
}

async fn add(inv: &Invocation) -> Result<Value, CniError> {
    require("CNI_CONTAINERID", &inv.container_id)?;
    require("CNI_NETNS", &inv.netns)?;
    require("CNI_IFNAME", &inv.ifname)?;
    check_ifname(&inv.ifname).map_err(|e| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_IFNAME is not valid",
            e.to_string(),
        )
    })?;
    let conf = parse_config(&inv.config)?;
    let socket = socket(&conf)?;
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    let labels = BTreeMap::from([("cni.containerid".to_owned(), inv.container_id.clone())]);
    let view: EndpointView = serde_json::from_value(
        call(
            &socket,
            &Request::EndpointCreate {
                network,
                netns: inv.netns.clone(),
                sandbox: Some(sandbox_name(&inv.container_id, &inv.ifname)),
                ip: None,
                labels,
                ifname: Some(inv.ifname.clone()),
            },
        )
        .await?,
    )
    .map_err(undecodable)?;
    Ok(result(&conf, inv, &view))
}

/// The spec result for an endpoint, in the configuration's CNI version. Plugins earlier
/// in a chain keep what they reported (prevResult): ours is appended.
fn result(conf: &NetConf, inv: &Invocation, view: &EndpointView) -> Value {
    let earlier = |key: &str| -> Vec<Value> {
        conf.prev_result
            .as_ref()
            .and_then(|r| r[key].as_array().cloned())
            .unwrap_or_default()
    };
    let mut interfaces = earlier("interfaces");
    let mut ips = earlier("ips");
    let mut routes = earlier("routes");
    let mut ip = json!({
        "address": format!("{}/32", view.address),
        "gateway": GATEWAY.to_string(),
        "interface": interfaces.len(),
    });
    if conf.cni_version != "1.0.0" {
        ip["version"] = "4".into();
    }
    interfaces.push(json!({
        "name": view.container_interface,
        "mac": view.mac,
        "sandbox": inv.netns,
    }));
    ips.push(ip);
    // The route the daemon gave this interface: the default one only on the sandbox's
    // first interface, the network's subnet on further ones.
    let dst = if view.route.is_empty() {
        "0.0.0.0/0"
    } else {
        view.route.as_str()
    };
    routes.push(json!({ "dst": dst, "gw": GATEWAY.to_string() }));
    let mut out = json!({
        "cniVersion": conf.cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
    });
    if let Some(dns) = conf
        .dns
        .clone()
        .or_else(|| conf.prev_result.as_ref().map(|r| r["dns"].clone()))
        .filter(|d| !d.is_null())
    {
        out["dns"] = dns;
    }
    out
}

async fn del(inv: &Invocation) -> Result<(), CniError> {
    require("CNI_CONTAINERID", &inv.container_id)?;
    require("CNI_IFNAME", &inv.ifname)?;
    let conf = parse_config(&inv.config)?;
    let socket = socket(&conf)?;
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    call(
        &socket,
        &Request::EndpointRm {
            network,
            netns: sandbox_name(&inv.container_id, &inv.ifname),
            missing_ok: true,
        },
    )
    .await
    .map(|_| ())
}

async fn check(inv: &Invocation) -> Result<(), CniError> {
    require("CNI_CONTAINERID", &inv.container_id)?;
    require("CNI_NETNS", &inv.netns)?;
    require("CNI_IFNAME", &inv.ifname)?;
    let conf = parse_config(&inv.config)?;
    let socket = socket(&conf)?;
    let sandbox = sandbox_name(&inv.container_id, &inv.ifname);
    let endpoints: Vec<EndpointView> =
        serde_json::from_value(call(&socket, &Request::Endpoints(NoArgs::default())).await?)
            .map_err(undecodable)?;
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    let Some(ep) = endpoints
        .iter()
        .find(|e| e.netns == sandbox && e.network == network)
    else {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "container {} has no endpoint on {network}",
                inv.container_id
            ),
            "",
        ));
    };
    // The runtime's record (prevResult) of this interface must still be the truth.
    if let Some(prev) = &conf.prev_result {
        let recorded = recorded_addresses(prev, &inv.ifname, &inv.netns);
        if !recorded.contains(&ep.address.to_string()) {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!(
                    "the endpoint has address {}, the runtime recorded {} for {}",
                    ep.address,
                    if recorded.is_empty() {
                        "none".to_owned()
                    } else {
                        recorded.join(", ")
                    },
                    inv.ifname
                ),
                "",
            ));
        }
    }
    Ok(())
}

/// The addresses a result records for interface `ifname` in `netns` (other plugins of a
/// chain record theirs in the same lists).
fn recorded_addresses(result: &Value, ifname: &str, netns: &str) -> Vec<String> {
    let Some(interfaces) = result["interfaces"].as_array() else {
        return Vec::new();
    };
    let ours: Vec<u64> = interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| i["name"] == ifname && (i["sandbox"] == netns || i["sandbox"].is_null()))
        .map(|(n, _)| n as u64)
        .collect();
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| ip["interface"].as_u64().is_some_and(|n| ours.contains(&n)))
        .filter_map(|ip| Some(ip["address"].as_str()?.split('/').next()?.to_owned()))
        .collect()
}

async fn status(inv: &Invocation) -> Result<(), CniError> {
    let conf = parse_config(&inv.config)?;
    let socket = socket(&conf)?;
    let v = call(&socket, &Request::Status(NoArgs::default()))
        .await
        .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg, e.details))?;
    if v["store_reachable"] == json!(false) {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            "the oxlay store is not reachable: new endpoints cannot get addresses",
            v["last_store_error"].to_string(),
        ));
    }
    Ok(())
}

/// The plugin's entry point: prints the result or the error, returns the exit code.
pub fn main() -> std::process::ExitCode {
    let outcome = Invocation::from_process().and_then(|inv| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                CniError::new(code::IO_FAILURE, "cannot start the runtime", e.to_string())
            })?;
        rt.block_on(run(&inv))
    });
    match outcome {
        Ok(Some(v)) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!(
                "{}",
                json!({ "cniVersion": "1.0.0", "code": e.code, "msg": e.msg, "details": e.details })
            );
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(command: &str, config: &str) -> Invocation {
        Invocation {
            command: command.into(),
            container_id: "c1".into(),
            netns: "/proc/1/ns/net".into(),
            ifname: "eth0".into(),
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
        }
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
        let socket =
            std::env::temp_dir().join(format!("oxlay-cni-refuse-{}.sock", std::process::id()));
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
        let ok =
            r#"{"cniVersion":"1.0.0","name":"blue","type":"oxlay","socket":"/nonexistent.sock"}"#;
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
}
