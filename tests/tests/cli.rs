//! The `oxlay` command as a user meets it: bad input gets a clear error that says what
//! was wrong and what to do, and the daemon starts where users start it.
use std::process::Command;

use anyhow::Result;
use oxlay_testbed::{oxlay_bin, skip_without_root, Cluster, Daemon, NodeConfig, TempDir, Underlay};

fn config(node: &str) -> String {
    NodeConfig {
        node,
        pod_subnet: "10.244.1.0/24",
        decap: "tc",
        vni: 42,
        peers: vec![],
    }
    .toml()
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// Runs `oxlay ARGS` and returns (success, stderr).
fn oxlay(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(oxlay_bin()).args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn bad_config_files_are_rejected_with_the_reason() -> Result<()> {
    let dir = TempDir::new("cfg")?;
    let path = dir.path.join("bad.toml");
    for (text, expected) in [
        (
            config("x").replace("vni = 42", "vni = 0"),
            "vni 0 is out of range",
        ),
        (
            config("x").replace("10.244.1.0/24", "10.244.1.0/40"),
            "prefix length",
        ),
        ("node_name = \"x\"\n".to_owned(), "missing field"),
    ] {
        std::fs::write(&path, &text)?;
        let (ok, stderr) = oxlay(&["daemon", "--config", path.to_str().unwrap()])?;
        assert!(!ok, "daemon accepted {text}");
        assert!(
            stderr.contains(expected),
            "stderr {stderr:?} lacks {expected:?}"
        );
        assert!(
            stderr.contains("bad.toml"),
            "stderr {stderr:?} does not name the file"
        );
    }
    let (ok, stderr) = oxlay(&["daemon", "--config", "/nonexistent/oxlay.toml"])?;
    assert!(
        !ok && stderr.contains("cannot read config file"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn cli_needs_a_daemon_to_talk_to() -> Result<()> {
    let (ok, stderr) = oxlay(&["stats"])?;
    assert!(
        !ok && stderr.contains("--node NAME or --socket PATH"),
        "{stderr}"
    );
    let (ok, stderr) = oxlay(&["stats", "--socket", "/nonexistent.sock"])?;
    assert!(
        !ok && stderr.contains("is `oxlay daemon` running"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn daemon_refuses_a_missing_interface() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut ul = Underlay::new()?;
    let host = ul.add_host("h", 11)?;
    let node = unique("noif");
    let text = config(&node).replace(
        "underlay_interface = \"eth0\"",
        "underlay_interface = \"eth9\"",
    );
    let err = Daemon::start(&host, &node, &text)
        .err()
        .expect("daemon started without eth9");
    assert!(
        format!("{err:#}").contains("\"eth9\" does not exist in this network namespace"),
        "{err:#}"
    );
    Ok(())
}

#[test]
fn daemon_refuses_to_run_without_root() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let dir = TempDir::new("noroot")?;
    let path = dir.path.join("oxlay.toml");
    std::fs::write(&path, config(&unique("noroot")))?;
    std::fs::set_permissions(
        &dir.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(oxlay_bin())
        .args(["daemon", "--config"])
        .arg(&path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("needs root"),
        "{stderr}"
    );
    Ok(())
}

/// `ip netns exec` remounts /sys, so bpffs is gone there: the daemon mounts it.
#[test]
fn daemon_mounts_bpffs_when_missing() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let mut ul = Underlay::new()?;
    let host = ul.add_host("h", 11)?;
    let node = unique("bpffs");
    let mut launcher = Command::new("ip");
    launcher
        .args(["netns", "exec", &host.ns.name])
        .arg(oxlay_bin());
    let mut daemon = Daemon::start_with(launcher, &node, &config(&node))?;
    assert!(daemon.log().contains("ready"), "{}", daemon.log());
    daemon.stop()
}

#[test]
fn one_node_name_one_daemon() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = Cluster::new(1, 0, "tc")?;
    let node = c.daemons[0].node.clone();
    // Same socket path, as two daemons for one node would have.
    let text = format!("api_socket = \"{}\"\n", c.daemons[0].socket.display());
    let mut launcher = c.hosts[0].ns.command(oxlay_bin().to_str().unwrap());
    launcher.env("RUST_LOG", "info");
    let dir = TempDir::new("dup")?;
    let path = dir.path.join("dup.toml");
    std::fs::write(
        &path,
        format!("{text}{}", config(&node).replace("pin_path", "# pin_path")),
    )?;
    let out = launcher.args(["daemon", "--config"]).arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("another daemon already serves"),
        "{stderr}"
    );
    // The first daemon still answers, and the second touched no pins.
    c.daemons[0].cli(&["stats"])?;
    let default_pins = std::path::Path::new("/sys/fs/bpf/oxlay").join(&node);
    assert!(
        !default_pins.exists(),
        "the refused daemon left pins at {}",
        default_pins.display()
    );
    Ok(())
}

#[test]
fn attach_rejects_bad_requests_and_lists_what_it_made() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = Cluster::new(2, 1, "tc")?;
    let d = &c.daemons[0];
    let extra = c.hosts[0].container("extra")?;
    for (args, expected) in [
        (
            vec!["--address", "10.244.9.2"],
            "not usable in this host's pod subnet 10.244.1.0/24",
        ),
        (vec!["--address", "10.244.1.255"], "not usable"),
        (vec!["--address", "10.244.1.2"], "already used by namespace"),
        (
            vec![
                "--address",
                "10.244.1.7",
                "--ifname",
                "a-name-that-is-too-long",
            ],
            "not valid",
        ),
    ] {
        let mut full = vec!["attach", "--netns", extra.name.as_str()];
        full.extend(args);
        let err = d.cli(&full).unwrap_err();
        assert!(
            format!("{err:#}").contains(expected),
            "{err:#} lacks {expected:?}"
        );
    }
    let err = d
        .cli(&[
            "attach",
            "--netns",
            "no-such-netns-oxlay",
            "--address",
            "10.244.1.9",
        ])
        .unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
    let err = d
        .cli(&["detach", "--netns", "no-such-netns-oxlay"])
        .unwrap_err();
    assert!(format!("{err:#}").contains("is not attached"), "{err:#}");

    let routes: serde_json::Value = serde_json::from_str(&d.cli(&["routes", "--json"])?)?;
    let kinds: Vec<(String, String)> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["destination"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("10.244.1.2/32".into(), "local".into()),
            ("10.244.2.0/24".into(), "remote".into())
        ]
    );
    let eps: serde_json::Value = serde_json::from_str(&d.cli(&["endpoints", "--json"])?)?;
    assert_eq!(eps[0]["address"], "10.244.1.2");
    assert_eq!(eps[0]["mtu"], 1450);

    // Detach removes the route and the interface; attach again works.
    let name = c.containers[0][0].name.clone();
    d.cli(&["detach", "--netns", &name])?;
    let routes = d.cli(&["routes", "--json"])?;
    assert!(!routes.contains("10.244.1.2/32"), "{routes}");
    assert!(!c.containers[0][0].ip(&["-o", "link"])?.contains("eth0"));
    d.cli(&["attach", "--netns", &name, "--address", "10.244.1.2"])?;
    c.containers[0][0].ping("10.244.2.2", 1)?;
    Ok(())
}

/// The API creates interfaces on request: only root may reach it.
#[test]
fn api_socket_is_root_only() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let c = Cluster::new(1, 0, "tc")?;
    let socket = &c.daemons[0].socket;
    let meta = std::fs::metadata(socket)?;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    assert_eq!(meta.uid(), 0, "socket owner");
    // Let a nobody user walk to it, so only the socket's own mode stops them.
    std::fs::set_permissions(
        socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(oxlay_bin())
        .args(["stats", "--socket"])
        .arg(socket)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an unprivileged user reached the API"
    );
    assert!(
        stderr.contains("Permission denied") || stderr.contains("are you root"),
        "{stderr}"
    );
    Ok(())
}

/// `--socket` and `--json` go before the subcommand as well as after it, and
/// `OXLAY_SOCKET` stands in for `--socket`; tables line their columns up.
#[test]
fn target_and_json_are_global_and_read_from_the_environment() -> Result<()> {
    if skip_without_root() {
        return Ok(());
    }
    let c = Cluster::new(2, 1, "tc")?;
    let socket = c.daemons[0].socket.clone();
    let run = |args: &[&str], env: bool| -> Result<String> {
        let mut cmd = Command::new(oxlay_bin());
        cmd.args(args)
            .env_remove("OXLAY_NODE")
            .env_remove("OXLAY_SOCKET");
        if env {
            cmd.env("OXLAY_SOCKET", &socket);
        }
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "oxlay {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let before = run(
        &["--socket", socket.to_str().unwrap(), "--json", "routes"],
        false,
    )?;
    let routes: serde_json::Value = serde_json::from_str(&before)?;
    assert_eq!(routes[0]["destination"], "10.244.1.2/32", "{before}");

    let table = run(&["routes"], true)?;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("VNI"), "{table}");
    let via = lines[0].find("VIA").unwrap();
    let local = lines.iter().find(|l| l.contains("10.244.1.2/32")).unwrap();
    let remote = lines.iter().find(|l| l.contains("10.244.2.0/24")).unwrap();
    assert!(
        local[via..].starts_with("oxl") && remote[via..].starts_with("192.168."),
        "the VIA column is not aligned:\n{table}"
    );
    let endpoints = run(&["endpoints"], true)?;
    assert!(endpoints.contains(&c.containers[0][0].name), "{endpoints}");
    Ok(())
}
