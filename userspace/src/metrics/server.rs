//! Serves `GET /metrics` on the configured address: each scrape reads the counters and
//! the state (the state's lock for a moment, never across a store call).
use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{http::header, response::IntoResponse, routing::get, Router};

use super::{render, Sample};
use crate::daemon::{Daemon, Traffic};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// When the config asks for it, binds `[metrics] listen` (an error names it) and serves
/// scrapes until the task is aborted.
pub(crate) async fn serve(daemon: &Arc<Daemon>) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listen) = daemon.config.metrics.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("metrics.listen {listen}: cannot listen there (in use? another address?)")
        })?;
    let daemon = daemon.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let daemon = daemon.clone();
            async move { scrape(&daemon).await }
        }),
    );
    log::info!("serving Prometheus metrics on http://{listen}/metrics");
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::warn!("metrics server: {e}");
        }
    })))
}

async fn scrape(d: &Daemon) -> axum::response::Response {
    match sample(d).await.and_then(|s| render(&s)) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e:#}\n"),
        )
            .into_response(),
    }
}

async fn sample(d: &Daemon) -> Result<Sample> {
    let (down_for, lease_age, lease_expiries) = {
        let h = d.health.lock().unwrap_or_else(|p| p.into_inner());
        let down_for = h.down_since.map(|t| t.elapsed().unwrap_or_default());
        (
            down_for,
            h.lease_renewed.map(|t| t.elapsed()),
            h.lease_expiries,
        )
    };
    let s = tokio::time::timeout(Duration::from_secs(2), d.state.lock())
        .await
        .context("the daemon's state is busy: try again")?;
    let traffic = Traffic::read(&s)?;
    Ok(Sample {
        counters: traffic.counters,
        networks: traffic.networks,
        lease_age_seconds: lease_age.unwrap_or_default().as_secs_f64(),
        lease_ttl_seconds: d.lease.ttl().as_secs_f64(),
        lease_expiries,
        control: s.control.clone(),
        store_reachable: down_for.is_none(),
        store_down_seconds: down_for.map_or(0.0, |t| t.as_secs_f64()),
        endpoints: s.endpoints.len(),
        routes: s.shadow.as_ref().map_or(0, |m| m.routes.len()),
        route_capacity: oxlay_common::limits::MAX_ROUTES,
        peers: s.shadow.as_ref().map_or(0, |m| m.peers.len()),
        map_write_failures: s.map_failures,
    })
}
