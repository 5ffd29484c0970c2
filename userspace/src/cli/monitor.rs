//! `oxlay monitor`: the daemon's stream of datapath events, printed as they come (one
//! line each, or one JSON object per line with `--json`), with lost events said.
use std::path::Path;

use anyhow::{Context, Result};

use super::MonitorKind;
use crate::{
    api::{self, MonitorLine, Request},
    monitor::line,
};

/// What `oxlay monitor` asks the daemon for.
pub fn request(
    kind: MonitorKind,
    sample: u32,
    reasons: Vec<String>,
    network: Option<String>,
    address: Option<std::net::Ipv4Addr>,
) -> Request {
    Request::Monitor {
        drops: kind != MonitorKind::Trace,
        traces: kind != MonitorKind::Drop,
        sample: Some(sample),
        reasons,
        network,
        address,
    }
}

/// Streams until interrupted, the daemon goes, or `count` events were shown.
pub async fn run(socket: &Path, request: &Request, json: bool, count: Option<u64>) -> Result<()> {
    let (_, mut lines, _keep_open) = api::open_stream(socket, request).await?;
    if !json {
        eprintln!("listening for datapath events (Ctrl-C to stop)");
    }
    let mut shown = 0;
    while count.is_none_or(|c| shown < c) {
        let Some(text) = lines.next_line().await? else {
            anyhow::bail!("the daemon ended the stream (it stopped, or its monitor did)");
        };
        let parsed: MonitorLine = serde_json::from_str(&text)
            .with_context(|| format!("the daemon sent a line this oxlay cannot read: {text}"))?;
        match (&parsed, json) {
            (_, true) => println!("{text}"),
            (MonitorLine::Event(e), false) => println!("{}", line(e)),
            (MonitorLine::Lost(n), false) => {
                println!("!! {n} events lost so far (the ring buffer or this stream was full)")
            }
        }
        if matches!(parsed, MonitorLine::Event(_)) {
            shown += 1;
        }
    }
    Ok(())
}
