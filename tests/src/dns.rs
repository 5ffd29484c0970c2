//! DNS in tests: a real DNS server (dnsmasq) that answers a few names, standing for the
//! outside world's resolvers, and lookups from inside a namespace (busybox nslookup).
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{prereq::skip, Netns};

/// Tests that need dnsmasq skip (see [`skip`]) without it.
pub fn skip_without_dnsmasq() -> bool {
    let found = Command::new("dnsmasq").arg("--version").output().is_ok();
    !found && skip("the dnsmasq binary (package dnsmasq-base; `cargo xtask install`)")
}

/// dnsmasq inside a namespace, answering `names` (name, IPv4 address) on `listen`:53
/// and nothing else (no upstream); killed on drop.
pub struct Dnsmasq {
    child: Child,
}

impl Dnsmasq {
    pub fn start_in(ns: &Netns, listen: &str, names: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--pid-file",
            "--user=root",
            "--log-facility=-",
            &format!("--listen-address={listen}"),
        ]);
        for (name, address) in names {
            cmd.arg(format!("--host-record={name},{address}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dnsmasq")?;
        let server = Self { child };
        // Ready when it answers its first name.
        let (first, _) = names.first().context("dnsmasq needs a name to answer")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while lookup(ns, first, listen).is_err() {
            if Instant::now() > deadline {
                bail!("dnsmasq on {listen} does not answer {first}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The IPv4 addresses `server` gives for `name`, asked from inside `ns`; an error when
/// the name does not resolve (or the server does not answer).
pub fn lookup(ns: &Netns, name: &str, server: &str) -> Result<Vec<String>> {
    let out = ns
        .exec(&[
            "timeout", "3", "busybox", "nslookup", "-type=a", name, server,
        ])
        .with_context(|| format!("{name} does not resolve at {server}"))?;
    // "Name:\tsrv\nAddress: 10.1.0.2" after the server's own lines.
    let addresses: Vec<String> = out
        .split("Name:")
        .skip(1)
        .flat_map(|answer| answer.lines().filter_map(|l| l.strip_prefix("Address:")))
        .map(|a| a.trim().to_owned())
        .collect();
    if addresses.is_empty() {
        bail!("{name} has no address at {server}: {out}");
    }
    Ok(addresses)
}

/// Checks that a lookup failed because the name is unknown (NXDOMAIN, or REFUSED from a
/// server that answers only its own names), not because nothing answered.
pub fn ensure_unknown(name: &str, result: Result<Vec<String>>) -> Result<()> {
    match result {
        Ok(found) => bail!("{name} resolves to {found:?}"),
        Err(e) => {
            let why = format!("{e:#}");
            ensure!(
                why.contains("NXDOMAIN") || why.contains("REFUSED"),
                "looking up {name} failed, but not as an unknown name: {why}"
            );
            Ok(())
        }
    }
}

/// Waits until `lookup` says the name is unknown; how long that took from `since` (as
/// of the start of the lookup that said so). Fails after `limit`.
pub fn time_until_unknown(
    name: &str,
    since: Instant,
    limit: Duration,
    mut lookup: impl FnMut() -> Result<Vec<String>>,
) -> Result<Duration> {
    loop {
        let asked = since.elapsed();
        let result = lookup();
        if result.is_err() {
            ensure_unknown(name, result)?;
            return Ok(asked);
        }
        ensure!(asked < limit, "{name} still resolves after {asked:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
