//! oxlay's metrics as an operator's Prometheus sees them: a real Prometheus server
//! scrapes two daemons and evaluates the example alert rules (docs/prometheus); the
//! drops a test causes show up through its HTTP API with the right value, the alerts
//! that matter go pending, and every query of the Grafana dashboard (docs/grafana)
//! runs and finds data. The rules' own unit tests run under promtool.
use std::{collections::BTreeSet, net::UdpSocket, path::PathBuf, time::Duration};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{
    eventually,
    prometheus::{prometheus_missing, Prometheus},
    skip, skip_without_root_or_etcd, StoreCluster,
};
use serde_json::Value;

fn docs(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(path)
}

const HOSTS: [&str; 2] = ["192.168.50.11", "192.168.50.12"];

fn instance(host: usize) -> String {
    format!("{}:9742", HOSTS[host])
}

/// The value of the series of `result` (a query's) whose instance is `host`'s.
fn value_of(result: &[Value], host: usize) -> Result<f64> {
    let series = result
        .iter()
        .find(|s| s["metric"]["instance"] == instance(host).as_str())
        .with_context(|| format!("no series of {} in {result:?}", instance(host)))?;
    series["value"][1]
        .as_str()
        .context("no value")?
        .parse()
        .context("value is not a number")
}

/// `promtool check rules` and `promtool test rules` on the example alerts.
#[test]
fn the_alert_rules_pass_their_unit_tests() -> Result<()> {
    if let Some(missing) = prometheus_missing() {
        if skip(missing) {
            return Ok(());
        }
    }
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(docs("prometheus"))
            .output()?;
        ensure!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The alerts of `alertname` Prometheus has now, as (instance, state, labels).
fn alerts(p: &Prometheus, alertname: &str) -> Result<Vec<(String, String, Value)>> {
    let data = p.api("alerts")?;
    Ok(data["alerts"]
        .as_array()
        .context("no alerts list")?
        .iter()
        .filter(|a| a["labels"]["alertname"] == alertname)
        .map(|a| {
            let instance = a["labels"]["instance"].as_str().unwrap_or("").to_owned();
            let state = a["state"].as_str().unwrap_or("").to_owned();
            (instance, state, a["labels"].clone())
        })
        .collect())
}

#[test]
fn a_real_prometheus_scrapes_two_daemons_and_sees_the_drops_a_test_caused() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    if let Some(missing) = prometheus_missing() {
        if skip(missing) {
            return Ok(());
        }
    }
    let addrs: Vec<String> = HOSTS.map(String::from).into();
    let extra = addrs
        .iter()
        .map(|a| format!("[metrics]\nlisten = \"{a}:9742\"\n"))
        .collect();
    let mut c = StoreCluster::with_config(&addrs, true, 10, extra)?;
    c.daemons[0].cli(&["network", "create", "blue", "--subnet", "10.82.0.0/16"])?;
    let (a, _) = c.endpoint(0, "blue", "pa", None)?;
    let (_b, b_ip) = c.endpoint(1, "blue", "pb", None)?;
    eventually(Duration::from_secs(5), || a.ping(&b_ip.to_string(), 1))?;

    let targets = [instance(0), instance(1)];
    let p = Prometheus::start_in(&c.underlay.ns, &targets, &[docs("prometheus/alerts.yml")])?;
    // Both scraped, with the drop counter at 0, before the drops.
    let unknown = "oxlay_datapath_drops_total{reason=\"drop_unknown_peer\"}";
    eventually(Duration::from_secs(20), || {
        let up = p.query("up{job=\"oxlay\"}")?;
        ensure!(
            value_of(&up, 0)? == 1.0 && value_of(&up, 1)? == 1.0,
            "{up:?}"
        );
        let drops = p.query(unknown)?;
        ensure!(value_of(&drops, 0)? == 0.0, "{drops:?}");
        Ok(())
    })
    .with_context(|| p.log())?;

    // 100 VXLAN packets to host 0 from the underlay's own address, which is no peer
    // (enough to go over the drop alert's threshold of one per 10 s).
    c.underlay
        .ns
        .spawn(|| {
            let sock = UdpSocket::bind("192.168.50.1:0")?;
            let mut packet = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
            packet.extend([0u8; 60]);
            for _ in 0..100 {
                sock.send_to(&packet, "192.168.50.11:4789")?;
            }
            anyhow::Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    eventually(Duration::from_secs(15), || {
        let drops = p.query(unknown)?;
        ensure!(value_of(&drops, 0)? == 100.0, "{drops:?}");
        ensure!(value_of(&drops, 1)? == 0.0, "{drops:?}");
        Ok(())
    })?;
    // The drop alert goes pending for host 0 and that reason only.
    eventually(Duration::from_secs(15), || {
        let got = alerts(&p, "OxlayPacketsDropped")?;
        ensure!(got.len() == 1, "{got:?}");
        let (inst, state, labels) = &got[0];
        ensure!(
            inst == &instance(0) && labels["reason"] == "drop_unknown_peer",
            "{got:?}"
        );
        ensure!(state == "pending" || state == "firing", "{got:?}");
        Ok(())
    })?;
    dashboard_queries_find_data(&p)?;
    rules_evaluate(&p)?;

    // The store goes away: both hosts say so, and the alert goes pending for both.
    c.etcd.as_mut().context("no etcd")?.stop()?;
    eventually(Duration::from_secs(20), || {
        let reachable = p.query("oxlay_store_reachable")?;
        ensure!(value_of(&reachable, 0)? == 0.0 && value_of(&reachable, 1)? == 0.0);
        let got = alerts(&p, "OxlayStoreUnreachable")?;
        let instances: BTreeSet<&str> = got.iter().map(|(i, _, _)| i.as_str()).collect();
        ensure!(instances.len() == 2, "{got:?}");
        Ok(())
    })?;
    Ok(())
}

/// Every rule of the example file is loaded and evaluates without error.
fn rules_evaluate(p: &Prometheus) -> Result<()> {
    eventually(Duration::from_secs(10), || {
        let data = p.api("rules")?;
        let rules: Vec<&Value> = data["groups"]
            .as_array()
            .context("no groups")?
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        ensure!(rules.len() == 7, "{} rules loaded", rules.len());
        for r in rules {
            ensure!(r["health"] == "ok", "rule {}: {}", r["name"], r);
        }
        Ok(())
    })
}

/// Each query of the Grafana dashboard, with its variables filled in as Grafana would,
/// runs and returns series; every oxlay metric it or the alert rules name exists.
fn dashboard_queries_find_data(p: &Prometheus) -> Result<()> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(docs("grafana/oxlay.json"))?)?;
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .context("no panels")?
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        exprs.len() >= 15,
        "only {} queries in the dashboard",
        exprs.len()
    );
    let known: BTreeSet<String> = p
        .api("label/__name__/values")?
        .as_array()
        .context("no names")?
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    let rules = std::fs::read_to_string(docs("prometheus/alerts.yml"))?;
    for text in exprs.iter().map(String::as_str).chain([rules.as_str()]) {
        for name in metric_names(text) {
            ensure!(
                known.contains(&name),
                "{name} (in {text}) is no series oxlay exports"
            );
        }
    }
    for expr in &exprs {
        let promql = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        let result = p
            .query(&promql)
            .with_context(|| format!("dashboard query {expr}"))?;
        ensure!(!result.is_empty(), "dashboard query {promql} found no data");
    }
    Ok(())
}

/// The `oxlay_...` metric names in a query or rule file.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("oxlay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let preceded = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}
