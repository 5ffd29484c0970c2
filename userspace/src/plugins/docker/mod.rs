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

use anyhow::{Context, Result};
use axum::{
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde_json::{json, Value};

use crate::net::{Ipv4Net, MacAddr};

pub mod driver;
pub mod engine;
pub(crate) mod names;
mod options;
mod ports;
mod wire;

pub use wire::dispatch;

#[cfg(test)]
mod tests;

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
    /// The pool's gateway (Docker asks for it as an address): 169.254.1.1/32 on an
    /// overlay, the LAN's router on a layer-2 network (`wanted` must be it).
    async fn gateway(&self, pool_id: &str, wanted: Option<Ipv4Addr>) -> Result<(Ipv4Addr, u8)>;
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
    /// into the sandbox, and its gateway (the LAN's router on a layer-2 network).
    async fn join(
        &self,
        network_id: &str,
        endpoint_id: &str,
        sandbox: &str,
    ) -> Result<(String, Ipv4Addr)>;
    async fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()>;
    async fn endpoint_info(&self, network_id: &str, endpoint_id: &str) -> Result<Value>;
    /// `ProgramExternalConnectivity`: these ports of the host lead to the endpoint.
    async fn publish(
        &self,
        network_id: &str,
        endpoint_id: &str,
        ports: Vec<crate::model::PublishedPort>,
    ) -> Result<()>;
    /// `RevokeExternalConnectivity`: they no longer do.
    async fn unpublish(&self, network_id: &str, endpoint_id: &str) -> Result<()>;
}

/// `IpamDriver.RequestPool`, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolRequest {
    /// `--subnet`, if given.
    pub subnet: Option<Ipv4Net>,
    /// `--ip-range`, if given (layer-2 networks).
    pub ip_range: Option<Ipv4Net>,
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
