//! Docker's libnetwork remote plugin protocol: a network driver and an IPAM driver,
//! JSON over HTTP on a unix socket under /run/docker/plugins/ (the file name is the
//! plugin's name, `oxlay`). This module is the wire side only; what each call does to
//! oxlay's networks and endpoints is the [`Driver`] the daemon implements.
//!
//! Docker tells neither driver a network's name, so the oxlay network is named in the
//! IPAM options (`--ipam-opt network=NAME`, default: the subnet given with `--subnet`,
//! else "docker"). The IPAM driver's pool ID is the oxlay network's name; the network
//! driver learns which network a Docker network is from the pool it was given.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, sync::Arc};

use anyhow::{anyhow, Context, Result};
use axum::{
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    model::local::GATEWAY,
    net::{Ipv4Net, MacAddr},
};

/// The plugin protocol's content type.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// Requests larger than this are refused unread.
const MAX_BODY: usize = 64 * 1024;

/// What oxlay does for each Docker call (implemented by the daemon).
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The pool for a new Docker network: (pool ID, subnet).
    async fn request_pool(&self, request: PoolRequest) -> Result<(String, Ipv4Net)>;
    async fn release_pool(&self, pool_id: &str) -> Result<()>;
    /// An address for a container (with the pool's prefix length).
    async fn request_address(
        &self,
        pool_id: &str,
        wanted: Option<Ipv4Addr>,
    ) -> Result<(Ipv4Addr, u8)>;
    async fn release_address(&self, pool_id: &str, address: Ipv4Addr) -> Result<()>;
    async fn create_network(&self, request: NetworkRequest) -> Result<()>;
    async fn delete_network(&self, network_id: &str) -> Result<()>;
    /// Creates the endpoint's veth (not yet in a sandbox); returns its container-side
    /// MAC and the name of that end in the host namespace.
    async fn create_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
        address: Ipv4Addr,
        mac: Option<MacAddr>,
    ) -> Result<(MacAddr, String)>;
    async fn delete_endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<()>;
    /// The host-namespace name of the endpoint's container-side veth, for Docker to move
    /// into the sandbox.
    async fn join(&self, network_id: &str, endpoint_id: &str, sandbox: &str) -> Result<String>;
    async fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()>;
    async fn endpoint_info(&self, network_id: &str, endpoint_id: &str) -> Result<Value>;
}

/// `IpamDriver.RequestPool`, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolRequest {
    /// `--subnet`, if given.
    pub subnet: Option<Ipv4Net>,
    /// `--ipam-opt` options.
    pub options: BTreeMap<String, String>,
}

/// `NetworkDriver.CreateNetwork`, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    pub network_id: String,
    /// The pool our IPAM driver handed out for it.
    pub pool: Option<Ipv4Net>,
    /// `-o` options and `--label` labels, as Docker passes them.
    pub options: BTreeMap<String, String>,
}

// ---- wire types (field names as Docker spells them) ----

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestPoolBody {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "V6")]
    v6: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolIdBody {
    #[serde(rename = "PoolID")]
    pool_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestAddressBody {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReleaseAddressBody {
    #[serde(rename = "PoolID")]
    pool_id: String,
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamData {
    #[serde(default)]
    pool: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetworkBody {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: Option<BTreeMap<String, Value>>,
    #[serde(default, rename = "IPv4Data")]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(default, rename = "IPv6Data")]
    ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkIdBody {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct EndpointInterface {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointBody {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<EndpointInterface>,
    #[serde(default)]
    sandbox_key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StaticRoute {
    destination: String,
    /// 1: connected (no next hop).
    route_type: u8,
}

/// Docker's option keys for what `-o` and `--label` carry.
const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// Serves the plugin on `socket` until the task is dropped.
pub async fn serve(socket: &Path, driver: Arc<dyn Driver>) -> Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    // Docker runs as root; nobody else may drive the network.
    std::os::unix::fs::chown(socket, Some(0), Some(0))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    axum::serve(listener, router(driver))
        .await
        .context("the Docker plugin server stopped")
}

/// The plugin's HTTP routes: every call is `POST /Group.Method`.
pub fn router(driver: Arc<dyn Driver>) -> Router {
    Router::new()
        .route("/{method}", post(call))
        .with_state(driver)
}

async fn call(
    State(driver): State<Arc<dyn Driver>>,
    UrlPath(method): UrlPath<String>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_BODY {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            failure(format!("request larger than {MAX_BODY} bytes")),
        );
    }
    match dispatch(&*driver, &method, &body).await {
        Ok(Some(v)) => reply(StatusCode::OK, v),
        Ok(None) => reply(
            StatusCode::NOT_FOUND,
            failure(format!("oxlay does not implement {method}")),
        ),
        Err(e) => {
            log::warn!("docker {method}: {e:#}");
            reply(StatusCode::OK, failure(format!("oxlay: {e:#}")))
        }
    }
}

/// An error answer. The network driver API reads `Err`, the IPAM API `Error`.
fn failure(message: String) -> Value {
    json!({ "Err": message, "Error": message })
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn parse<'a, T: Deserialize<'a>>(method: &str, body: &'a [u8]) -> Result<T> {
    // Docker sends `null` or nothing for calls without arguments.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).with_context(|| format!("{method}: the request is not valid"))
}

fn ipv4_cidr(what: &str, s: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("{what} {s:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .with_context(|| format!("{what} {s:?} has no valid prefix length"))?;
    Ok((addr, prefix))
}

/// Handles one call; `Ok(None)` for a method oxlay does not know.
pub async fn dispatch(driver: &dyn Driver, method: &str, body: &[u8]) -> Result<Option<Value>> {
    Ok(Some(match method {
        "Plugin.Activate" => json!({ "Implements": ["NetworkDriver", "IpamDriver"] }),
        // ---- IPAM ----
        "IpamDriver.GetCapabilities" => json!({ "RequiresMACAddress": false }),
        "IpamDriver.GetDefaultAddressSpaces" => json!({
            "LocalDefaultAddressSpace": "oxlay",
            "GlobalDefaultAddressSpace": "oxlay",
        }),
        "IpamDriver.RequestPool" => {
            let b: RequestPoolBody = parse(method, body)?;
            if b.v6 {
                anyhow::bail!("oxlay networks are IPv4 only: create the network without --ipv6");
            }
            if !b.sub_pool.is_empty() {
                anyhow::bail!(
                    "--ip-range is not supported: oxlay hands out addresses by host blocks"
                );
            }
            let subnet = if b.pool.is_empty() {
                None
            } else {
                Some(
                    b.pool
                        .parse::<Ipv4Net>()
                        .map_err(|e| anyhow!("--subnet {:?}: {e}", b.pool))?,
                )
            };
            let (pool_id, pool) = driver
                .request_pool(PoolRequest {
                    subnet,
                    options: b.options.unwrap_or_default(),
                })
                .await?;
            json!({ "PoolID": pool_id, "Pool": pool.to_string(), "Data": {} })
        }
        "IpamDriver.ReleasePool" => {
            let b: PoolIdBody = parse(method, body)?;
            driver.release_pool(&b.pool_id).await?;
            json!({})
        }
        "IpamDriver.RequestAddress" => {
            let b: RequestAddressBody = parse(method, body)?;
            let options = b.options.unwrap_or_default();
            if options.get("RequestAddressType").map(String::as_str)
                == Some("com.docker.network.gateway")
            {
                // Containers route through their host-side veth, which answers ARP
                // for this link-local address: the gateway takes nothing from the pool.
                return Ok(Some(
                    json!({ "Address": format!("{GATEWAY}/32"), "Data": {} }),
                ));
            }
            let wanted = if b.address.is_empty() {
                None
            } else {
                Some(ipv4_cidr("--ip", &b.address)?.0)
            };
            let (addr, prefix) = driver.request_address(&b.pool_id, wanted).await?;
            json!({ "Address": format!("{addr}/{prefix}"), "Data": {} })
        }
        "IpamDriver.ReleaseAddress" => {
            let b: ReleaseAddressBody = parse(method, body)?;
            let (addr, _) = ipv4_cidr("address", &b.address)?;
            if addr != GATEWAY {
                driver.release_address(&b.pool_id, addr).await?;
            }
            json!({})
        }
        // ---- network driver ----
        "NetworkDriver.GetCapabilities" => {
            // Local: each host's dockerd keeps its own view; oxlay's store joins them.
            json!({ "Scope": "local", "ConnectivityScope": "global" })
        }
        "NetworkDriver.CreateNetwork" => {
            let b: CreateNetworkBody = parse(method, body)?;
            if b.ipv6_data.as_ref().is_some_and(|d| !d.is_empty()) {
                anyhow::bail!("oxlay networks are IPv4 only: create the network without --ipv6");
            }
            let pool = match b.ipv4_data.as_ref().and_then(|d| d.first()) {
                Some(d) if !d.pool.is_empty() => Some(
                    d.pool
                        .parse::<Ipv4Net>()
                        .map_err(|e| anyhow!("pool {:?}: {e}", d.pool))?,
                ),
                _ => None,
            };
            let options = flatten_options(b.options.unwrap_or_default());
            driver
                .create_network(NetworkRequest {
                    network_id: b.network_id,
                    pool,
                    options,
                })
                .await?;
            json!({})
        }
        "NetworkDriver.DeleteNetwork" => {
            let b: NetworkIdBody = parse(method, body)?;
            driver.delete_network(&b.network_id).await?;
            json!({})
        }
        "NetworkDriver.CreateEndpoint" => {
            let b: EndpointBody = parse(method, body)?;
            let iface = b.interface.unwrap_or_default();
            if !iface.address_ipv6.is_empty() {
                anyhow::bail!("oxlay networks are IPv4 only");
            }
            if iface.address.is_empty() {
                anyhow::bail!("Docker gave the endpoint no IPv4 address: use --ipam-driver oxlay");
            }
            let (address, _) = ipv4_cidr("address", &iface.address)?;
            let mac = if iface.mac_address.is_empty() {
                None
            } else {
                Some(
                    iface
                        .mac_address
                        .parse::<MacAddr>()
                        .map_err(|e| anyhow!("--mac-address {:?}: {e}", iface.mac_address))?,
                )
            };
            let (mac_now, _) = driver
                .create_endpoint(&b.network_id, &b.endpoint_id, address, mac)
                .await?;
            if mac.is_some() {
                // Docker's own values stand; answering them again is an error to it.
                json!({})
            } else {
                json!({ "Interface": { "MacAddress": mac_now.to_string() } })
            }
        }
        "NetworkDriver.DeleteEndpoint" => {
            let b: EndpointBody = parse(method, body)?;
            driver
                .delete_endpoint(&b.network_id, &b.endpoint_id)
                .await?;
            json!({})
        }
        "NetworkDriver.EndpointOperInfo" => {
            let b: EndpointBody = parse(method, body)?;
            json!({ "Value": driver.endpoint_info(&b.network_id, &b.endpoint_id).await? })
        }
        "NetworkDriver.Join" => {
            let b: EndpointBody = parse(method, body)?;
            let src = driver
                .join(&b.network_id, &b.endpoint_id, &b.sandbox_key)
                .await?;
            json!({
                "InterfaceName": { "SrcName": src, "DstPrefix": "eth" },
                "Gateway": GATEWAY.to_string(),
                "StaticRoutes": [StaticRoute {
                    destination: format!("{GATEWAY}/32"),
                    route_type: 1,
                }],
                "DisableGatewayService": true,
            })
        }
        "NetworkDriver.Leave" => {
            let b: EndpointBody = parse(method, body)?;
            driver.leave(&b.network_id, &b.endpoint_id).await?;
            json!({})
        }
        // Nothing to do: oxlay's store tells hosts about each other, and containers
        // reach outside through their host as they are.
        "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete"
        | "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity" => json!({}),
        _ => return Ok(None),
    }))
}

/// Docker nests `-o` options and `--label` labels under the generic key; everything
/// else it sends (`com.docker.network.enable_ipv6`, ...) is its own.
fn flatten_options(options: BTreeMap<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(generic)) = options.get(GENERIC_OPTIONS) {
        for (k, v) in generic {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(k.clone(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records calls; answers with fixed values.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Driver for Recorder {
        async fn request_pool(&self, r: PoolRequest) -> Result<(String, Ipv4Net)> {
            self.0.lock().unwrap().push(format!("pool {r:?}"));
            Ok(("blue".into(), "10.50.0.0/16".parse().unwrap()))
        }
        async fn release_pool(&self, id: &str) -> Result<()> {
            self.0.lock().unwrap().push(format!("release_pool {id}"));
            Ok(())
        }
        async fn request_address(&self, id: &str, w: Option<Ipv4Addr>) -> Result<(Ipv4Addr, u8)> {
            self.0.lock().unwrap().push(format!("address {id} {w:?}"));
            Ok((w.unwrap_or(Ipv4Addr::new(10, 50, 0, 2)), 16))
        }
        async fn release_address(&self, id: &str, a: Ipv4Addr) -> Result<()> {
            self.0.lock().unwrap().push(format!("release {id} {a}"));
            Ok(())
        }
        async fn create_network(&self, r: NetworkRequest) -> Result<()> {
            self.0.lock().unwrap().push(format!("network {r:?}"));
            Ok(())
        }
        async fn delete_network(&self, id: &str) -> Result<()> {
            self.0.lock().unwrap().push(format!("delete_network {id}"));
            Ok(())
        }
        async fn create_endpoint(
            &self,
            n: &str,
            e: &str,
            a: Ipv4Addr,
            m: Option<MacAddr>,
        ) -> Result<(MacAddr, String)> {
            self.0
                .lock()
                .unwrap()
                .push(format!("endpoint {n} {e} {a} {m:?}"));
            Ok((MacAddr([2, 0, 0, 0, 0, 7]), "oxl1p".into()))
        }
        async fn delete_endpoint(&self, n: &str, e: &str) -> Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("delete_endpoint {n} {e}"));
            Ok(())
        }
        async fn join(&self, n: &str, e: &str, s: &str) -> Result<String> {
            self.0.lock().unwrap().push(format!("join {n} {e} {s}"));
            Ok("oxl1p".into())
        }
        async fn leave(&self, n: &str, e: &str) -> Result<()> {
            self.0.lock().unwrap().push(format!("leave {n} {e}"));
            Ok(())
        }
        async fn endpoint_info(&self, _: &str, _: &str) -> Result<Value> {
            Ok(json!({}))
        }
    }

    async fn call(d: &Recorder, method: &str, body: &str) -> Value {
        dispatch(d, method, body.as_bytes())
            .await
            .unwrap()
            .expect("known method")
    }

    #[tokio::test]
    async fn ipam_calls_are_decoded_and_answered() {
        let d = Recorder::default();
        let v = call(&d, "Plugin.Activate", "").await;
        assert_eq!(v["Implements"], json!(["NetworkDriver", "IpamDriver"]));
        let v = call(
            &d,
            "IpamDriver.RequestPool",
            r#"{"AddressSpace":"oxlay","Pool":"10.50.0.0/16","Options":{"network":"blue"},"V6":false}"#,
        )
        .await;
        assert_eq!(v["PoolID"], "blue");
        assert_eq!(v["Pool"], "10.50.0.0/16");
        let v = call(
            &d,
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"blue","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .await;
        assert_eq!(v["Address"], "169.254.1.1/32");
        let v = call(
            &d,
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"blue","Address":"10.50.3.4"}"#,
        )
        .await;
        assert_eq!(v["Address"], "10.50.3.4/16");
        call(
            &d,
            "IpamDriver.ReleaseAddress",
            r#"{"PoolID":"blue","Address":"10.50.3.4/16"}"#,
        )
        .await;
        call(
            &d,
            "IpamDriver.ReleaseAddress",
            r#"{"PoolID":"blue","Address":"169.254.1.1/32"}"#,
        )
        .await;
        let calls = d.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(
            calls[0].contains("subnet: Some(Ipv4Net(10.50.0.0/16))")
                && calls[0].contains("\"network\": \"blue\"")
        );
        assert_eq!(calls[1], "address blue Some(10.50.3.4)");
        assert_eq!(calls[2], "release blue 10.50.3.4");
    }

    #[tokio::test]
    async fn network_calls_carry_options_labels_and_routes() {
        let d = Recorder::default();
        call(
            &d,
            "NetworkDriver.CreateNetwork",
            r#"{"NetworkID":"n1","Options":{"com.docker.network.enable_ipv6":false,
               "com.docker.network.generic":{"team":"a","mtu":"1400"}},
               "IPv4Data":[{"AddressSpace":"oxlay","Pool":"10.50.0.0/16","Gateway":"169.254.1.1/32"}],
               "IPv6Data":[]}"#,
        )
        .await;
        let v = call(
            &d,
            "NetworkDriver.CreateEndpoint",
            r#"{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.50.0.2/16","AddressIPv6":"","MacAddress":""},"Options":{}}"#,
        )
        .await;
        assert_eq!(v["Interface"]["MacAddress"], "02:00:00:00:00:07");
        let v = call(
            &d,
            "NetworkDriver.Join",
            r#"{"NetworkID":"n1","EndpointID":"e1","SandboxKey":"/var/run/docker/netns/abc","Options":{}}"#,
        )
        .await;
        assert_eq!(v["InterfaceName"]["SrcName"], "oxl1p");
        assert_eq!(v["InterfaceName"]["DstPrefix"], "eth");
        assert_eq!(v["Gateway"], "169.254.1.1");
        assert_eq!(v["StaticRoutes"][0]["Destination"], "169.254.1.1/32");
        assert_eq!(v["StaticRoutes"][0]["RouteType"], 1);
        let calls = d.0.lock().unwrap().clone();
        assert!(
            calls[0].contains("pool: Some(Ipv4Net(10.50.0.0/16))"),
            "{calls:?}"
        );
        assert!(calls[0].contains("\"team\": \"a\"") && calls[0].contains("\"mtu\": \"1400\""));
        assert!(!calls[0].contains("enable_ipv6"));
        assert_eq!(calls[1], "endpoint n1 e1 10.50.0.2 None");
        assert_eq!(calls[2], "join n1 e1 /var/run/docker/netns/abc");
    }

    #[tokio::test]
    async fn bad_input_gets_an_error_that_says_what_to_do() {
        let d = Recorder::default();
        for (method, body, says) in [
            (
                "IpamDriver.RequestPool",
                r#"{"Pool":"10.50.0.0/33"}"#,
                "--subnet",
            ),
            ("IpamDriver.RequestPool", r#"{"V6":true}"#, "without --ipv6"),
            (
                "IpamDriver.RequestPool",
                r#"{"Pool":"10.50.0.0/16","SubPool":"10.50.1.0/24"}"#,
                "--ip-range",
            ),
            (
                "IpamDriver.RequestAddress",
                r#"{"PoolID":"blue","Address":"banana"}"#,
                "--ip",
            ),
            (
                "NetworkDriver.CreateEndpoint",
                r#"{"NetworkID":"n","EndpointID":"e"}"#,
                "--ipam-driver oxlay",
            ),
            (
                "NetworkDriver.CreateEndpoint",
                r#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.1.1.1/16","MacAddress":"zz"}}"#,
                "--mac-address",
            ),
            ("NetworkDriver.Join", "{not json", "not valid"),
        ] {
            let e = dispatch(&d, method, body.as_bytes()).await.unwrap_err();
            assert!(format!("{e:#}").contains(says), "{method}: {e:#}");
        }
        assert!(dispatch(&d, "NetworkDriver.Frobnicate", b"{}")
            .await
            .unwrap()
            .is_none());
        assert!(d.0.lock().unwrap().is_empty());
    }
}
