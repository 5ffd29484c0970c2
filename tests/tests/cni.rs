//! The CNI plugin, called the way runtimes call it: the `oxlay` binary with `CNI_*`
//! environment variables and the network configuration on standard input.
use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{
    containerd::{self, Containerd},
    dns::lookup,
    eventually, oxlay_bin, skip_without_root, tcp_transfer, StoreCluster, TempDir,
};
use serde_json::{json, Value};

/// One plugin invocation: (exit status success, stdout parsed as JSON or null).
fn cni(command: &str, container_id: &str, netns: &str, config: &Value) -> Result<(bool, Value)> {
    cni_with(
        Command::new(oxlay_bin()),
        command,
        container_id,
        netns,
        config,
    )
}

/// Like `cni`, for plugin `launcher` (e.g. a reference plugin run in a host namespace).
fn cni_with(
    mut launcher: Command,
    command: &str,
    container_id: &str,
    netns: &str,
    config: &Value,
) -> Result<(bool, Value)> {
    let mut child = launcher
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let written = child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes());
    // A plugin may answer without reading (VERSION does); runtimes ignore that too.
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).with_context(|| format!("plugin printed {stdout:?}"))?
    };
    Ok((out.status.success(), value))
}

fn conf(socket: &std::path::Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "blue",
        "type": "oxlay",
        "socket": socket,
    })
}

#[test]
fn cni_add_check_del_as_runtimes_call_it() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = StoreCluster::new(2, false, 10)?;
    c.daemons[0].cli(&["network", "create", "blue", "--subnet", "10.77.0.0/16"])?;
    let (ok, v) = cni("VERSION", "", "", &Value::Null)?;
    ensure!(
        ok && v["supportedVersions"].to_string().contains("1.0.0"),
        "{v}"
    );

    // ADD on both hosts; the results are spec results and true.
    let containers = [c.hosts[0].container("ca")?, c.hosts[1].container("cb")?];
    // A short ID and a real runtime's 64-character one.
    let ids = [
        "ctr-0".to_owned(),
        format!("c1{}", "0123456789abcdef".repeat(4))[..64].to_owned(),
    ];
    let mut results = Vec::new();
    for (i, ns) in containers.iter().enumerate() {
        let path = ns.path().display().to_string();
        let mut config = conf(&c.daemons[i].socket);
        // The runtime's `aliases` capability names the container on the network.
        config["runtimeConfig"] = json!({"aliases": {"blue": [format!("db-{i}")]}});
        let (ok, r) = cni("ADD", &ids[i], &path, &config)?;
        ensure!(ok, "ADD failed: {r}");
        ensure!(r["cniVersion"] == "1.0.0", "{r}");
        ensure!(r["interfaces"][0]["name"] == "eth0", "{r}");
        ensure!(r["interfaces"][0]["sandbox"] == path.as_str(), "{r}");
        ensure!(r["ips"][0]["gateway"] == "169.254.1.1", "{r}");
        ensure!(r["dns"]["nameservers"][0] == "169.254.1.1", "{r}");
        let addr = r["ips"][0]["address"].as_str().unwrap_or("").to_owned();
        ensure!(addr.starts_with("10.77.") && addr.ends_with("/32"), "{r}");
        let shown = ns.ip(&["-o", "addr", "show", "eth0"])?;
        ensure!(shown.contains(&addr), "{addr} not on eth0: {shown}");
        results.push(r);
    }
    let addr_of = |r: &Value| -> Result<std::net::Ipv4Addr> {
        Ok(r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("no address")?
            .parse()?)
    };
    let b = addr_of(&results[1])?;
    containers[0].ping(&b.to_string(), 2)?;
    tcp_transfer(&containers[0], &containers[1], b, 4 << 20)?;
    // By its container ID (a 64-character one by its first 12 characters: a DNS label
    // has at most 63) and by its alias, at the nameserver the result gave.
    for name in ["ctr-0", &ids[1][..12], "db-1"] {
        let (from, to) = if name == "ctr-0" { (1, 0) } else { (0, 1) };
        let want = addr_of(&results[to])?;
        let found = eventually(Duration::from_secs(5), || {
            lookup(&containers[from], name, "169.254.1.1")
        })?;
        ensure!(
            found == [want.to_string()],
            "{name} is {found:?}, not {want}"
        );
    }

    // CHECK agrees with the runtime's record, and catches a wrong one.
    let path_a = containers[0].path().display().to_string();
    let mut with_prev = conf(&c.daemons[0].socket);
    with_prev["prevResult"] = results[0].clone();
    let (ok, r) = cni("CHECK", "ctr-0", &path_a, &with_prev)?;
    ensure!(ok, "CHECK failed: {r}");
    with_prev["prevResult"]["ips"][0]["address"] = "10.77.99.99/32".into();
    let (ok, r) = cni("CHECK", "ctr-0", &path_a, &with_prev)?;
    ensure!(!ok && r["code"] == 101, "CHECK passed a wrong address: {r}");

    // Bad input: spec error codes on stdout, non-zero exit, nothing created.
    let (ok, r) = cni("ADD", "ctr-9", "", &conf(&c.daemons[0].socket))?;
    ensure!(!ok && r["code"] == 4, "{r}");
    let mut old = conf(&c.daemons[0].socket);
    old["cniVersion"] = "9.9.9".into();
    let (ok, r) = cni("ADD", "ctr-9", &path_a, &old)?;
    ensure!(!ok && r["code"] == 1, "{r}");
    let mut unknown = conf(&c.daemons[0].socket);
    unknown["network"] = "nosuch".into();
    let (ok, r) = cni("ADD", "ctr-9", &path_a, &unknown)?;
    ensure!(
        !ok && r["code"] == 100 && r["details"].to_string().contains("nosuch"),
        "{r}"
    );

    let (ok, r) = cni("STATUS", "", "", &conf(&c.daemons[0].socket))?;
    ensure!(ok, "STATUS: {r}");

    // DEL is idempotent, and works once the namespace is gone.
    for _ in 0..2 {
        let (ok, r) = cni("DEL", "ctr-0", &path_a, &conf(&c.daemons[0].socket))?;
        ensure!(ok, "DEL failed: {r}");
    }
    let (ok, _) = cni("CHECK", "ctr-0", &path_a, &conf(&c.daemons[0].socket))?;
    ensure!(!ok, "CHECK passed after DEL");
    let [_, cb] = containers;
    drop(cb);
    let (ok, r) = cni("DEL", &ids[1], "", &conf(&c.daemons[1].socket))?;
    ensure!(ok, "DEL without a namespace failed: {r}");
    for h in 0..2 {
        let links = c.hosts[h].ns.ip(&["-o", "link"])?;
        ensure!(!links.contains("oxl"), "veth left on host {h}: {links}");
    }
    let left = c.daemons[0].cli(&["endpoint", "ls"])?;
    ensure!(!left.contains("10.77."), "endpoint records left: {left}");
    Ok(())
}

/// A real runtime: containerd's `ctr run --cni` starts a container on host A whose
/// network comes from a conflist chaining the reference loopback plugin, oxlay and the
/// reference portmap plugin; it
/// fetches a page over TCP from a container on host B; DEL on exit removes everything.
#[test]
fn containerd_runs_containers_on_oxlay() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    if let Some(why) = containerd::containerd_missing() {
        oxlay_testbed::skip(&why);
        return Ok(());
    }
    let c = StoreCluster::new(2, false, 10)?;
    c.daemons[0].cli(&["network", "create", "blue", "--subnet", "10.78.0.0/16"])?;

    // The server on host B, attached through the plugin directly.
    let server = c.hosts[1].container("srv")?;
    let (ok, r) = cni(
        "ADD",
        "srv",
        &server.path().display().to_string(),
        &conf(&c.daemons[1].socket),
    )?;
    ensure!(ok, "ADD on B: {r}");
    let srv_addr = r["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .context("no address")?
        .to_owned();
    let www = TempDir::new("www")?;
    std::fs::write(www.path.join("index.html"), "served over oxlay")?;
    let mut httpd = server
        .command("busybox")
        .args(["httpd", "-f", "-p", "8080", "-h"])
        .arg(&www.path)
        .spawn()?;

    // Host A: containerd, and ctr's CNI folders.
    let containerd = Containerd::start(&c.hosts[0])?;
    containerd.import_image("unused")?;
    let conf_dir = TempDir::new("net.d")?;
    let bin_dir = TempDir::new("cni-bin")?;
    std::os::unix::fs::symlink(oxlay_bin().canonicalize()?, bin_dir.path.join("oxlay"))?;
    for reference in ["portmap", "loopback"] {
        std::os::unix::fs::symlink(
            format!("/usr/lib/cni/{reference}"),
            bin_dir.path.join(reference),
        )?;
    }
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "blue",
        "plugins": [
            { "type": "loopback" },
            { "type": "oxlay", "socket": c.daemons[0].socket },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    std::fs::write(
        conf_dir.path.join("10-oxlay.conflist"),
        serde_json::to_string_pretty(&conflist)?,
    )?;
    let url = format!("http://{srv_addr}:8080/index.html");
    let page = containerd
        .run_cni(
            &conf_dir.path,
            &bin_dir.path,
            "web-client",
            &[
                "sh",
                "-c",
                &format!("ip addr show lo | grep -q 127.0.0.1 && timeout 10 wget -q -O - {url}"),
            ],
        )
        .with_context(|| c.daemons[0].log())?;
    let _ = httpd.kill();
    let _ = httpd.wait();
    ensure!(
        page == "served over oxlay",
        "the container fetched {page:?}"
    );
    let encapsulated = c.daemons[0].counter("encapsulated")?;
    ensure!(
        encapsulated > 0,
        "host A encapsulated nothing: the page did not come over oxlay"
    );
    let eps = c.daemons[0].cli(&["endpoints"])?;
    ensure!(
        !eps.contains("10.78."),
        "endpoint left on A after ctr exited: {eps}"
    );
    let links = c.hosts[0].ns.ip(&["-o", "link"])?;
    ensure!(!links.contains("oxl"), "veth left on A: {links}");
    Ok(())
}

/// Chained the way libcni chains: the reference portmap plugin gets oxlay's result as
/// prevResult and the runtime's port mappings, in the host's namespace; a host port then
/// reaches the container, and DELs in reverse order take it away.
#[test]
fn portmap_chained_after_oxlay_maps_a_host_port() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    if !std::path::Path::new("/usr/lib/cni/portmap").exists()
        && oxlay_testbed::skip("/usr/lib/cni/portmap (package containernetworking-plugins)")
    {
        return Ok(());
    }
    let c = StoreCluster::new(2, false, 10)?;
    c.daemons[0].cli(&["network", "create", "blue", "--subnet", "10.79.0.0/16"])?;
    // A container host forwards (published ports are DNAT, then forwarded).
    c.hosts[0].ns.sysctl("net.ipv4.ip_forward", "1")?;
    let web = c.hosts[0].container("web")?;
    let path = web.path().display().to_string();
    let (ok, added) = cni("ADD", "web", &path, &conf(&c.daemons[0].socket))?;
    ensure!(ok, "ADD: {added}");
    let portmap = |command: &str| -> Result<(bool, Value)> {
        let config = json!({
            "cniVersion": "1.0.0",
            "name": "blue",
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "runtimeConfig": { "portMappings": [
                { "hostPort": 18080, "containerPort": 8080, "protocol": "tcp" },
            ]},
            "prevResult": added,
        });
        cni_with(
            c.hosts[0].ns.command("/usr/lib/cni/portmap"),
            command,
            "web",
            &path,
            &config,
        )
    };
    let (ok, r) = portmap("ADD")?;
    ensure!(ok, "portmap ADD: {r}");
    ensure!(r["ips"] == added["ips"], "portmap changed the result: {r}");

    let www = TempDir::new("www")?;
    std::fs::write(www.path.join("index.html"), "published")?;
    let mut httpd = web
        .command("busybox")
        .args(["httpd", "-f", "-p", "8080", "-h"])
        .arg(&www.path)
        .spawn()?;
    let url = format!("http://{}:18080/index.html", c.hosts[0].addr);
    // From another host: the underlay address and the published port.
    let fetch = || {
        c.hosts[1]
            .ns
            .exec(&["busybox", "wget", "-q", "-O", "-", &url])
    };
    let page = oxlay_testbed::eventually(std::time::Duration::from_secs(5), fetch);
    let (ok, r) = portmap("DEL")?;
    ensure!(ok, "portmap DEL: {r}");
    let after = fetch();
    let _ = httpd.kill();
    let _ = httpd.wait();
    ensure!(page? == "published", "wrong page through the host port");
    ensure!(after.is_err(), "the host port still answers after DEL");
    let (ok, r) = cni("DEL", "web", &path, &conf(&c.daemons[0].socket))?;
    ensure!(ok, "DEL: {r}");
    Ok(())
}
