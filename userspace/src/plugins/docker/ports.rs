//! What `docker run -p` asks of a network driver: `com.docker.network.portmap` in
//! `ProgramExternalConnectivity`, as the ports of this host that lead to a container.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::model::{PortProto, PublishedPort};

#[derive(Deserialize)]
pub(super) struct ConnectivityBody {
    #[serde(rename = "NetworkID")]
    pub(super) network_id: String,
    #[serde(rename = "EndpointID")]
    pub(super) endpoint_id: String,
    #[serde(rename = "Options", default)]
    pub(super) options: BTreeMap<String, Value>,
}

/// One entry of `com.docker.network.portmap`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PortBinding {
    proto: u8,
    #[serde(rename = "IP", default)]
    _ip: String,
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

const PORTMAP: &str = "com.docker.network.portmap";

/// The ports `docker run -p` asks for. A host port range takes its first port;
/// Docker picks no port for a remote driver, so one must be given.
pub(super) fn published_ports(options: &BTreeMap<String, Value>) -> Result<Vec<PublishedPort>> {
    let Some(map) = options.get(PORTMAP).filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let bindings: Vec<PortBinding> = serde_json::from_value(map.clone())
        .with_context(|| format!("{PORTMAP} is not a list of port bindings"))?;
    bindings
        .into_iter()
        .map(|b| {
            let proto = match b.proto {
                6 => PortProto::Tcp,
                17 => PortProto::Udp,
                other => anyhow::bail!("-p .../{other}: oxlay publishes TCP and UDP ports only"),
            };
            if b.host_port == 0 {
                anyhow::bail!(
                    "-p {}: oxlay needs the host port (-p HOST_PORT:{}), it picks none itself",
                    b.port,
                    b.port
                );
            }
            let _ = b.host_port_end;
            let host_ip = match b.host_ip.as_str() {
                "" | "0.0.0.0" => None,
                ip if ip.starts_with("127.") => anyhow::bail!(
                    "-p {ip}:{}: oxlay cannot publish on loopback (the kernel drops what it would forward from there); use a host address",
                    b.host_port
                ),
                ip => Some(ip.parse::<Ipv4Addr>().with_context(|| {
                    format!(
                        "-p {ip}:{}: oxlay publishes on IPv4 addresses only",
                        b.host_port
                    )
                })?),
            };
            Ok(PublishedPort {
                proto,
                host_ip,
                host_port: b.host_port,
                container_port: b.port,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(json: &str) -> Result<Vec<PublishedPort>> {
        let options: BTreeMap<String, Value> = serde_json::from_str(json).unwrap();
        published_ports(&options)
    }

    #[test]
    fn port_bindings_become_published_ports_or_say_why_not() {
        let got = ports(r#"{"com.docker.network.portmap": [
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "IP": "", "Port": 53, "HostIP": "192.168.50.12", "HostPort": 5353, "HostPortEnd": 5353}
        ]}"#)
        .unwrap();
        assert_eq!(
            got,
            [
                PublishedPort {
                    proto: PortProto::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    container_port: 80
                },
                PublishedPort {
                    proto: PortProto::Udp,
                    host_ip: Some("192.168.50.12".parse().unwrap()),
                    host_port: 5353,
                    container_port: 53
                },
            ]
        );
        assert!(ports("{}").unwrap().is_empty());
        assert!(ports(r#"{"com.docker.network.portmap": null}"#)
            .unwrap()
            .is_empty());
        for (json, says) in [
            (
                r#"{"com.docker.network.portmap": [{"Proto": 132, "Port": 1, "HostPort": 1}]}"#,
                "TCP and UDP",
            ),
            (
                r#"{"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 0}]}"#,
                "HOST_PORT",
            ),
            (
                r#"{"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostIP": "::", "HostPort": 1}]}"#,
                "IPv4",
            ),
            (r#"{"com.docker.network.portmap": "x"}"#, "port bindings"),
            (
                r#"{"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostIP": "127.0.0.1", "HostPort": 1}]}"#,
                "loopback",
            ),
        ] {
            let e = format!("{:#}", ports(json).unwrap_err());
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
