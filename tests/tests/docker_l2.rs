//! A layer-2 network made by Docker: two hosts with their own dockerd and oxlay daemon,
//! their `eth1` on a LAN with a router that is not an oxlay host. `docker network
//! create --subnet --gateway --ip-range --ipam-opt mode=l2` on each host makes one
//! oxlay network; containers get LAN addresses, route through the LAN's router, and
//! reach each other, the router and what lies beyond it; the router reaches them.
use anyhow::{ensure, Result};
use oxlay_testbed::{
    docker::{docker_missing, DockerDirs, Dockerd, IMAGE},
    skip_without_root_or_etcd, Lan, StoreCluster, UNDERLAY_PREFIX,
};

/// Not the subnet's first address (Docker's default): the gateway comes from the
/// options.
const ROUTER: &str = "192.168.77.254";
const BEYOND: &str = "198.51.100.1";

fn run_idle(d: &Dockerd, name: &str) -> Result<String> {
    d.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "lan",
        IMAGE,
        "sleep",
        "600",
    ])?;
    d.docker(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"lan\").IPAddress}}",
        name,
    ])
}

/// `docker network create` of oxlay network `lan` (layer-2, 192.168.77.0/24, range
/// .0/25) as Docker network `name`, with `--gateway gateway` and more IPAM options.
fn create_lan(d: &Dockerd, name: &str, gateway: &str, options: &[&str]) -> Result<String> {
    let mut args = vec![
        "network",
        "create",
        "-d",
        "oxlay",
        "--ipam-driver",
        "oxlay",
        "--subnet",
        "192.168.77.0/24",
        "--gateway",
        gateway,
        "--ip-range",
        "192.168.77.0/25",
        "--ipam-opt",
        "mode=l2",
        "--ipam-opt",
        "network=lan",
    ];
    for option in options {
        args.extend(["--ipam-opt", option]);
    }
    args.push(name);
    d.docker(&args)
}

fn ping(d: &Dockerd, from: &str, to: &str) -> Result<()> {
    d.docker(&["exec", from, "ping", "-c", "2", "-W", "2", to])
        .map(|_| ())
}

#[test]
fn docker_makes_layer2_networks() -> Result<()> {
    if skip_without_root_or_etcd() {
        return Ok(());
    }
    if let Some(why) = docker_missing() {
        oxlay_testbed::skip(&why);
        return Ok(());
    }
    let dirs = [DockerDirs::new("l2a")?, DockerDirs::new("l2b")?];
    let extra: Vec<String> = dirs
        .iter()
        .map(|d| d.oxlay_toml() + "[l2]\nparent = \"eth1\"\n")
        .collect();
    let addrs: Vec<String> = (0..2)
        .map(|i| format!("{UNDERLAY_PREFIX}.{}", 11 + i))
        .collect();
    let mut lan = Lan::new()?;
    let c = StoreCluster::with_setup(&addrs, true, 10, extra, |hosts| {
        hosts.iter().try_for_each(|h| lan.plug(&h.ns, "eth1"))
    })?;
    let router = lan.machine("router", &format!("{ROUTER}/24"), None)?;
    router.ip(&["addr", "add", &format!("{BEYOND}/32"), "dev", "lo"])?;
    let mut dockers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let d = Dockerd::start(&c.hosts[i], dir)?;
        d.import_image()?;
        create_lan(&d, "lan", ROUTER, &[&format!("gateway={ROUTER}")])?;
        dockers.push(d);
    }
    let a = run_idle(&dockers[0], "l2a")?;
    let b = run_idle(&dockers[1], "l2b")?;
    let routes = dockers[0].docker(&["exec", "l2a", "ip", "route"])?;
    ensure!(
        routes.contains(&format!("default via {ROUTER}")),
        "routes: {routes}"
    );
    let net = c.daemons[0].cli(&["network", "inspect", "lan"])?;
    ensure!(net.contains("\"gateway\": \"192.168.77.254\""), "{net}");
    ping(&dockers[0], "l2a", &b)?;
    ping(&dockers[1], "l2b", &a)?;
    ping(&dockers[0], "l2a", ROUTER)?;
    ping(&dockers[1], "l2b", BEYOND)?;
    router.ping(&a, 2)?;
    router.ping(&b, 2)?;
    // A network whose --gateway is not its gateway is refused, saying what to give.
    let clash = create_lan(&dockers[1], "lan2", "192.168.77.1", &[]);
    let why = format!(
        "{:#}",
        clash.err().ok_or_else(|| anyhow::anyhow!("accepted"))?
    );
    ensure!(why.contains("--ipam-opt gateway="), "{why}");
    Ok(())
}
