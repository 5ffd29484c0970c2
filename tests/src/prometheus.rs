//! A real Prometheus server (Debian's `prometheus`) inside a test namespace, scraping
//! daemons' metrics endpoints and evaluating rule files; queried through its HTTP API.
//! Killed on drop.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{eventually, Netns, TempDir};

const LISTEN: &str = "127.0.0.1:9090";

pub struct Prometheus {
    child: Child,
    netns: String,
    dir: TempDir,
}

/// Whether the prometheus and promtool binaries run here.
pub fn prometheus_missing() -> Option<&'static str> {
    let runs = |b: &str| Command::new(b).arg("--version").output().is_ok();
    (!runs("prometheus") || !runs("promtool"))
        .then_some("prometheus and promtool (package prometheus; `cargo xtask install`)")
}

impl Prometheus {
    /// Starts Prometheus in `ns`, scraping `targets` (host:port) every second as job
    /// "oxlay" and evaluating `rule_files` every second; waits until it is ready.
    pub fn start_in(ns: &Netns, targets: &[String], rule_files: &[PathBuf]) -> Result<Self> {
        let dir = TempDir::new("prometheus")?;
        let config = dir.path.join("prometheus.yml");
        let rules: Vec<String> = rule_files.iter().map(|p| format!("{p:?}")).collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{}]\nscrape_configs:\n  - job_name: oxlay\n    static_configs: [{{targets: [{}]}}]\n",
                rules.join(", "),
                targets.join(", ")
            ),
        )?;
        let log = std::fs::File::create(dir.path.join("prometheus.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start prometheus (`cargo xtask install` provides it)")?;
        let mut p = Self {
            child,
            netns: ns.name.clone(),
            dir,
        };
        eventually(Duration::from_secs(30), || {
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", p.log());
            }
            let answer = p.http_get("/-/ready")?;
            ensure!(answer.starts_with("HTTP/1.1 200"), "not ready: {answer}");
            Ok(())
        })
        .with_context(|| format!("prometheus did not get ready:\n{}", p.log()))?;
        Ok(p)
    }

    /// What Prometheus logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` from inside the namespace: the whole answer, headers included.
    fn http_get(&self, path: &str) -> Result<String> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        Netns::existing(&self.netns)
            .spawn(move || {
                let mut s = TcpStream::connect(LISTEN)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(request.as_bytes())?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                Ok(answer)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("HTTP thread panicked"))?
    }

    /// `GET /api/v1/<path>`: its `data`, once the answer says "success".
    pub fn api(&self, path: &str) -> Result<Value> {
        let answer = self.http_get(&format!("/api/v1/{path}"))?;
        let (_, body) = answer
            .split_once("\r\n\r\n")
            .with_context(|| format!("no HTTP body in {answer}"))?;
        let body = dechunk(body);
        let v: Value = serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))?;
        ensure!(v["status"] == "success", "/api/v1/{path}: {v}");
        Ok(v["data"].clone())
    }

    /// An instant query: its result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("query?query={}", percent_encode(promql)))?;
        data["result"]
            .as_array()
            .cloned()
            .with_context(|| format!("{promql}: no result vector in {data}"))
    }
}

/// The body of a chunked HTTP/1.1 answer, joined (an unchunked one as it is).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 || after.len() < n {
            return out;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// Everything but unreserved characters as %XX (RFC 3986), for a query string.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
