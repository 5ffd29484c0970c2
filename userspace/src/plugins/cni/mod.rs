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
    io::Read,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{self, Request};

mod commands;
#[cfg(test)]
mod tests;

use commands::{add, check, del, status};

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
    /// `CNI_ARGS`: `KEY=VALUE;...` (Kubernetes passes the pod's name here).
    pub args: String,
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
            args: var("CNI_ARGS"),
            config,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
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
    /// Capabilities the runtime fills in; oxlay reads `aliases` (names by network).
    #[serde(default)]
    runtime_config: Option<Value>,
}

pub fn parse_config(bytes: &[u8]) -> Result<NetConf, CniError> {
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
pub(super) fn socket(conf: &NetConf) -> Result<PathBuf, CniError> {
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

pub(super) fn require(what: &str, value: &str) -> Result<(), CniError> {
    if value.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("{what} is not set"),
            "the runtime must set CNI_CONTAINERID, CNI_NETNS (ADD) and CNI_IFNAME",
        ));
    }
    Ok(())
}

pub(super) fn undecodable(e: serde_json::Error) -> CniError {
    CniError::new(
        code::DECODE_FAILURE,
        "unexpected answer from the daemon",
        e.to_string(),
    )
}

pub(super) async fn call(socket: &Path, request: &Request) -> Result<Value, CniError> {
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
