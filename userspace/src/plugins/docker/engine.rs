//! A small client of the Docker engine API (HTTP over dockerd's unix socket), for what
//! the plugin protocol leaves out: a network's labels.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// `GET path` on the engine; `None` for 404.
pub async fn get(socket: &Path, path: &str) -> Result<Option<serde_json::Value>> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot reach dockerd at {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with dockerd failed")?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    match status {
        StatusCode::OK => Ok(Some(serde_json::from_slice(&body).with_context(|| {
            format!("dockerd answered {path} with something that is not JSON")
        })?)),
        StatusCode::NOT_FOUND => Ok(None),
        other => bail!(
            "dockerd answered {path} with {other}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// The labels of Docker network `id`, once dockerd has stored it (it calls the plugin
/// before it does): polled for up to `wait`.
pub async fn network_labels(
    socket: &Path,
    id: &str,
    wait: Duration,
) -> Result<BTreeMap<String, String>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(network) = get(socket, &format!("/networks/{id}")).await? {
            let labels = network["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(labels);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("dockerd does not know network {id}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
