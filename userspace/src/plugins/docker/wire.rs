//! The plugin protocol's wire: request bodies as Docker spells them, and the dispatch
//! of each `POST /Group.Method` call to the [`Driver`](super::Driver).
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    ports::{published_ports, ConnectivityBody},
    Driver, NetworkRequest, PoolRequest,
};
use crate::{
    model::local::GATEWAY,
    net::{Ipv4Net, MacAddr},
};

/// Docker's option keys for what `-o` and `--label` carry.
const GENERIC_OPTIONS: &str = "com.docker.network.generic";

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
    if method == "Plugin.Activate" {
        return Ok(Some(
            json!({ "Implements": ["NetworkDriver", "IpamDriver"] }),
        ));
    }
    match method.split_once('.') {
        Some(("IpamDriver", call)) => ipam(driver, method, call, body).await,
        Some(("NetworkDriver", call)) => network(driver, method, call, body).await,
        _ => Ok(None),
    }
}

/// The IPAM driver's calls: pools are oxlay networks, addresses are endpoint claims.
async fn ipam(driver: &dyn Driver, method: &str, call: &str, body: &[u8]) -> Result<Option<Value>> {
    Ok(Some(match call {
        "GetCapabilities" => json!({ "RequiresMACAddress": false }),
        "GetDefaultAddressSpaces" => json!({
            "LocalDefaultAddressSpace": "oxlay",
            "GlobalDefaultAddressSpace": "oxlay",
        }),
        "RequestPool" => request_pool(driver, parse(method, body)?).await?,
        "ReleasePool" => {
            let b: PoolIdBody = parse(method, body)?;
            driver.release_pool(&b.pool_id).await?;
            json!({})
        }
        "RequestAddress" => request_address(driver, parse(method, body)?).await?,
        "ReleaseAddress" => {
            let b: ReleaseAddressBody = parse(method, body)?;
            let (addr, _) = ipv4_cidr("address", &b.address)?;
            if addr != GATEWAY {
                driver.release_address(&b.pool_id, addr).await?;
            }
            json!({})
        }
        _ => return Ok(None),
    }))
}

async fn request_pool(driver: &dyn Driver, b: RequestPoolBody) -> Result<Value> {
    if b.v6 {
        anyhow::bail!("oxlay networks are IPv4 only: create the network without --ipv6");
    }
    let ip_range = if b.sub_pool.is_empty() {
        None
    } else {
        Some(
            b.sub_pool
                .parse::<Ipv4Net>()
                .map_err(|e| anyhow!("--ip-range {:?}: {e}", b.sub_pool))?,
        )
    };
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
            ip_range,
            options: b.options.unwrap_or_default(),
        })
        .await?;
    Ok(json!({ "PoolID": pool_id, "Pool": pool.to_string(), "Data": {} }))
}

async fn request_address(driver: &dyn Driver, b: RequestAddressBody) -> Result<Value> {
    let options = b.options.unwrap_or_default();
    let wanted = if b.address.is_empty() {
        None
    } else {
        Some(ipv4_cidr("--ip", &b.address)?.0)
    };
    if options.get("RequestAddressType").map(String::as_str) == Some("com.docker.network.gateway") {
        // Overlay containers route through their host-side veth, which answers ARP for
        // a link-local address: the gateway takes nothing from the pool.
        let (addr, prefix) = driver.gateway(&b.pool_id, wanted).await?;
        return Ok(json!({ "Address": format!("{addr}/{prefix}"), "Data": {} }));
    }
    let (addr, prefix) = driver.request_address(&b.pool_id, wanted).await?;
    Ok(json!({ "Address": format!("{addr}/{prefix}"), "Data": {} }))
}

/// The network driver's calls: networks are bindings, endpoints are veths.
async fn network(
    driver: &dyn Driver,
    method: &str,
    call: &str,
    body: &[u8],
) -> Result<Option<Value>> {
    Ok(Some(match call {
        // Local: each host's dockerd keeps its own view; oxlay's store joins them.
        "GetCapabilities" => json!({ "Scope": "local", "ConnectivityScope": "global" }),
        "CreateNetwork" => create_network(driver, parse(method, body)?).await?,
        "DeleteNetwork" => {
            let b: NetworkIdBody = parse(method, body)?;
            driver.delete_network(&b.network_id).await?;
            json!({})
        }
        "CreateEndpoint" => create_endpoint(driver, parse(method, body)?).await?,
        "DeleteEndpoint" => {
            let b: EndpointBody = parse(method, body)?;
            driver
                .delete_endpoint(&b.network_id, &b.endpoint_id)
                .await?;
            json!({})
        }
        "EndpointOperInfo" => {
            let b: EndpointBody = parse(method, body)?;
            json!({ "Value": driver.endpoint_info(&b.network_id, &b.endpoint_id).await? })
        }
        "Join" => {
            let b: EndpointBody = parse(method, body)?;
            let (src, gateway) = driver
                .join(&b.network_id, &b.endpoint_id, &b.sandbox_key)
                .await?;
            // 169.254.1.1 stays on the link (oxlay's resolver), also where the
            // gateway is a LAN's router.
            json!({
                "InterfaceName": { "SrcName": src, "DstPrefix": "eth" },
                "Gateway": gateway.to_string(),
                "StaticRoutes": [StaticRoute {
                    destination: format!("{GATEWAY}/32"),
                    route_type: 1,
                }],
                "DisableGatewayService": true,
            })
        }
        "Leave" => {
            let b: EndpointBody = parse(method, body)?;
            driver.leave(&b.network_id, &b.endpoint_id).await?;
            json!({})
        }
        "ProgramExternalConnectivity" => {
            let b: ConnectivityBody = parse(method, body)?;
            let ports = published_ports(&b.options)?;
            driver.publish(&b.network_id, &b.endpoint_id, ports).await?;
            json!({})
        }
        "RevokeExternalConnectivity" => {
            let b: ConnectivityBody = parse(method, body)?;
            driver.unpublish(&b.network_id, &b.endpoint_id).await?;
            json!({})
        }
        // Nothing to do: oxlay's store tells hosts about each other.
        "DiscoverNew" | "DiscoverDelete" => json!({}),
        _ => return Ok(None),
    }))
}

async fn create_network(driver: &dyn Driver, b: CreateNetworkBody) -> Result<Value> {
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
    Ok(json!({}))
}

async fn create_endpoint(driver: &dyn Driver, b: EndpointBody) -> Result<Value> {
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
    Ok(if mac.is_some() {
        // Docker's own values stand; answering them again is an error to it.
        json!({})
    } else {
        json!({ "Interface": { "MacAddress": mac_now.to_string() } })
    })
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
