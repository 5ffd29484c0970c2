//! The local API between the CLI and the daemon: one JSON request and one JSON response
//! per connection on a unix socket that only root can open.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use crate::{model::Egress, net::Ipv4Net};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

/// Requests are at most this long; anything longer is refused unread.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Connect an existing network namespace to the overlay.
    Attach {
        netns: String,
        address: Ipv4Addr,
        /// Interface name inside the namespace (default eth0).
        #[serde(default)]
        ifname: Option<String>,
    },
    /// Undo `Attach`.
    Detach {
        netns: String,
    },
    // Unit variants would silently accept extra fields; `NoArgs` rejects them.
    Routes(NoArgs),
    /// This host's endpoints (static and store networks).
    Endpoints(NoArgs),
    Stats(NoArgs),
    /// Checks this host and its peers (`oxlay doctor`): findings with their fixes.
    Doctor(NoArgs),
    /// What the datapath does with a packet (`oxlay explain`): the loaded program run
    /// on a probe against the live maps.
    Explain {
        network: String,
        from: Ipv4Addr,
        to: Ipv4Addr,
        /// tcp, udp or icmp (default: tcp with a port, icmp without).
        #[serde(default)]
        protocol: Option<String>,
        #[serde(default)]
        sport: Option<u16>,
        #[serde(default)]
        dport: Option<u16>,
        /// The packet's IPv4 length (default 100).
        #[serde(default)]
        size: Option<u16>,
        /// A packet from a peer (VXLAN or GRE) rather than from a local container.
        #[serde(default)]
        receive: bool,
        #[serde(default)]
        peer: Option<Ipv4Addr>,
    },
    /// Streams datapath events (`oxlay monitor`): one answer line, then one line per
    /// event (and per rise of lost events) until the client goes.
    Monitor {
        #[serde(default = "yes")]
        drops: bool,
        /// Forwarded packets too (a sample: one in `sample`).
        #[serde(default)]
        traces: bool,
        #[serde(default)]
        sample: Option<u32>,
        /// Counter names to show; empty: all of the kinds asked for.
        #[serde(default)]
        reasons: Vec<String>,
        #[serde(default)]
        network: Option<String>,
        #[serde(default)]
        address: Option<Ipv4Addr>,
    },
    /// Hosts registered in the store.
    Hosts(NoArgs),
    /// The daemon's health: whether the store answers, what the datapath carries.
    Status(NoArgs),
    /// Remove everything this node made (endpoints, registration, programs, pins) and
    /// stop the daemon. A plain SIGTERM keeps the datapath running for a restart.
    Uninstall(NoArgs),
    NetworkCreate {
        name: String,
        #[serde(default)]
        subnet: Option<Ipv4Net>,
        #[serde(default)]
        vni: Option<u32>,
        #[serde(default)]
        block_prefix: Option<u8>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        allow_overlap: bool,
        /// Route to peers on the same underlay subnet without encapsulation.
        #[serde(default)]
        direct: bool,
        #[serde(default)]
        egress: Egress,
        #[serde(default)]
        encap: crate::model::Encap,
        /// A layer-2 network (`--mode l2`).
        #[serde(default)]
        l2: Option<crate::model::L2Settings>,
    },
    NetworkLs(NoArgs),
    NetworkInspect {
        name: String,
    },
    NetworkRm {
        name: String,
    },
    /// Creates an endpoint on a store network in a namespace on this host.
    EndpointCreate {
        network: String,
        /// A name under /run/netns, or a path (e.g. /proc/PID/ns/net).
        netns: String,
        /// What names the endpoint (`endpoint rm --netns` takes it); default `netns`.
        /// A runtime whose namespace paths change or vanish (CNI) gives its own.
        #[serde(default)]
        sandbox: Option<String>,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        ifname: Option<String>,
        /// Names the network's other containers find it by (oxlay's resolver).
        #[serde(default)]
        names: Vec<String>,
    },
    /// Endpoints of every host, from the store.
    EndpointLs {
        #[serde(default)]
        network: Option<String>,
    },
    EndpointRm {
        network: String,
        /// The endpoint's sandbox name (its namespace, unless it was named otherwise).
        netns: String,
        /// Succeed when there is no such endpoint (CNI's DEL must be idempotent).
        #[serde(default)]
        missing_ok: bool,
    },
}

fn yes() -> bool {
    true
}

/// A line of `oxlay monitor`'s stream after the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorLine {
    Event(Box<crate::monitor::EventView>),
    /// Events lost since the stream began (ring buffer or stream backlog full).
    Lost(u64),
}

/// The (empty) arguments of requests that take none; unknown fields are an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub network: String,
    pub vni: u32,
    pub netns: String,
    pub address: Ipv4Addr,
    pub mac: String,
    pub host_interface: String,
    pub container_interface: String,
    pub mtu: u32,
    /// The destination the container routes through this interface ("0.0.0.0/0" for
    /// its first interface, the network's subnet for further ones).
    #[serde(default)]
    pub route: String,
    /// Published ports, as `[HOST_IP:]HOST_PORT->PORT/PROTO`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<String>,
    /// oxlay's resolver, when the daemon serves it (a runtime's nameserver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<Ipv4Addr>,
    /// On a layer-2 network: the subnet's prefix length and the LAN's router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<crate::net::veth::Lan>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub vni: u32,
    pub destination: String,
    /// "local" or "remote".
    pub kind: String,
    /// Local: host-side interface. Remote: the peer's underlay address.
    pub via: String,
    pub mac: String,
}

/// `oxlay stats`: the counters by reason, and each overlay network's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub counters: Vec<CounterView>,
    pub networks: Vec<NetworkTrafficView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterView {
    pub name: String,
    /// "forward" or "drop".
    pub kind: String,
    pub packets: u64,
    pub bytes: u64,
    pub help: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkTrafficView {
    pub network: String,
    pub vni: u32,
    pub encapsulated_packets: u64,
    pub encapsulated_bytes: u64,
    pub decapsulated_packets: u64,
    pub decapsulated_bytes: u64,
}

/// Sends one request to the daemon at `socket` and returns its answer.
/// The daemon could not be reached at all (as opposed to a daemon that answered with
/// an error): callers such as the CNI plugin tell runtimes to try again later.
#[derive(Debug)]
pub struct DaemonUnreachable {
    pub socket: std::path::PathBuf,
    pub error: std::io::Error,
}

impl std::fmt::Display for DaemonUnreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot reach the oxlay daemon at {}: is `oxlay daemon` running for this node (and are you root)? ({})",
            self.socket.display(),
            self.error
        )
    }
}

impl std::error::Error for DaemonUnreachable {}

pub async fn call(socket: &Path, request: &Request) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| DaemonUnreachable {
            socket: socket.to_owned(),
            error,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    match serde_json::from_str::<Response>(&answer)
        .with_context(|| format!("the daemon sent an answer that is not valid: {answer:?}"))?
    {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => bail!("{e}"),
    }
}

/// Sends a streaming request (`Monitor`): the daemon's answer, then its lines as they
/// come. The stream ends when both ends drop it; the daemon notices when this side is
/// dropped.
pub async fn open_stream(
    socket: &Path,
    request: &Request,
) -> Result<(
    serde_json::Value,
    tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    tokio::net::unix::OwnedWriteHalf,
)> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| DaemonUnreachable {
            socket: socket.to_owned(),
            error,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines
        .next_line()
        .await?
        .context("the daemon closed the stream without an answer")?;
    match serde_json::from_str::<Response>(&answer)
        .with_context(|| format!("the daemon sent an answer that is not valid: {answer:?}"))?
    {
        Response::Ok(v) => Ok((v, lines, write)),
        Response::Error(e) => bail!("{e}"),
    }
}

/// Parses one request line, with an error that tells the client what was wrong.
pub fn parse_request(line: &str) -> Result<Request> {
    serde_json::from_str(line.trim()).map_err(|e| anyhow::anyhow!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r = Request::Attach {
            netns: "c1".into(),
            address: "10.244.1.2".parse().unwrap(),
            ifname: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(parse_request(&s).unwrap(), r);
        assert_eq!(
            parse_request(r#"{"op":"stats"}"#).unwrap(),
            Request::Stats(NoArgs {})
        );
    }

    #[test]
    fn bad_requests_say_why() {
        let e =
            parse_request(r#"{"op":"attach","netns":"c1","address":"10.244.1.300"}"#).unwrap_err();
        assert!(e.to_string().contains("invalid IPv4 address"), "{e}");
        let e = parse_request(r#"{"op":"fly"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        let e = parse_request("not json").unwrap_err();
        assert!(e.to_string().starts_with("bad request"), "{e}");
        let e = parse_request(r#"{"op":"stats","extra":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
