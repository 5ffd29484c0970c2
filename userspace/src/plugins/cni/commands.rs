//! The CNI commands: ADD (ask the daemon for an endpoint, answer the result in the
//! configured version), DEL, CHECK and STATUS.
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;
use crate::{
    api::{EndpointView, NoArgs, Request},
    model::local::{check_ifname, GATEWAY},
};

pub(super) async fn add(inv: &Invocation) -> Result<Value, CniError> {
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
    let names = names(&conf, inv);
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
                names,
            },
        )
        .await?,
    )
    .map_err(undecodable)?;
    Ok(result(&conf, inv, &view))
}

/// The names the endpoint goes by on oxlay's resolver: the container ID (and its first
/// 12 characters, as runtimes show it), the pod name of `CNI_ARGS` and the `aliases`
/// the runtime gives for this network. Those that are no DNS name are left out.
pub(super) fn names(conf: &NetConf, inv: &Invocation) -> Vec<String> {
    let short: String = inv.container_id.chars().take(12).collect();
    let pod = inv
        .args
        .split(';')
        .filter_map(|kv| kv.strip_prefix("K8S_POD_NAME="))
        .map(str::to_owned);
    let aliases = conf
        .runtime_config
        .as_ref()
        .and_then(|rc| rc["aliases"][&conf.name].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned));
    let mut names: Vec<String> = [inv.container_id.clone(), short]
        .into_iter()
        .chain(pod)
        .chain(aliases)
        .filter(|n| crate::config::check_name("name", n).is_ok())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The spec result for an endpoint, in the configuration's CNI version. Plugins earlier
/// in a chain keep what they reported (prevResult): ours is appended.
pub(super) fn result(conf: &NetConf, inv: &Invocation, view: &EndpointView) -> Value {
    let earlier = |key: &str| -> Vec<Value> {
        conf.prev_result
            .as_ref()
            .and_then(|r| r[key].as_array().cloned())
            .unwrap_or_default()
    };
    let mut interfaces = earlier("interfaces");
    let mut ips = earlier("ips");
    let mut routes = earlier("routes");
    // A layer-2 container is on the LAN's subnet, behind the LAN's router.
    let (prefix_len, gateway) = match view.lan {
        Some(lan) => (lan.prefix_len, lan.router),
        None => (32, GATEWAY),
    };
    let mut ip = json!({
        "address": format!("{}/{prefix_len}", view.address),
        "gateway": gateway.to_string(),
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
    match view.lan {
        // Further interfaces on a LAN reach its subnet directly: no route of their own.
        Some(_) if dst != "0.0.0.0/0" => {}
        _ => routes.push(json!({ "dst": dst, "gw": gateway.to_string() })),
    }
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
    } else if let Some(resolver) = view.resolver {
        // oxlay's resolver: container names of the network, the host's for the rest.
        out["dns"] = json!({ "nameservers": [resolver.to_string()] });
    }
    out
}

pub(super) async fn del(inv: &Invocation) -> Result<(), CniError> {
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

pub(super) async fn check(inv: &Invocation) -> Result<(), CniError> {
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
pub(super) fn recorded_addresses(result: &Value, ifname: &str, netns: &str) -> Vec<String> {
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

pub(super) async fn status(inv: &Invocation) -> Result<(), CniError> {
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
