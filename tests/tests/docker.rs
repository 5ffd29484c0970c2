//! The Docker network and IPAM driver with the real engine: two hosts, each a network
//! namespace with its own dockerd and oxlay daemon, sharing etcd.
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{
    dns::{ensure_unknown, time_until_unknown},
    docker::{docker_missing, DockerDirs, Dockerd, IMAGE, IMAGE_GREETING},
    eventually, skip_without_root_or_etcd, StoreCluster, UNDERLAY_PREFIX,
};

/// An outside host on the underlay: not an oxlay host, no container route.
const OUTSIDE: &str = "192.168.50.100";

/// The address Docker gave `container` on `network`.
fn address(d: &Dockerd, container: &str, network: &str) -> Result<String> {
    d.docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
}

/// oxlay's veths in a host namespace.
fn oxlay_links(c: &StoreCluster, host: usize) -> Result<Vec<String>> {
    Ok(c.hosts[host]
        .ns
        .ip(&["-o", "link"])?
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .filter(|n| n.starts_with("oxl"))
        .collect())
}

/// Client container `client` on `d` fetches the page of the server at `addr` (TCP).
fn fetch(d: &Dockerd, client: &str, addr: &str) -> Result<String> {
    d.docker(&[
        "exec",
        client,
        // (this busybox's wget crashes on -T)
        "timeout",
        "10",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{addr}:8080/index.html"),
    ])
}

/// `docker network create -d oxlay --ipam-driver oxlay ARGS...` on `d`.
fn create_network(d: &Dockerd, args: &[&str]) -> Result<String> {
    let mut all = vec!["network", "create", "-d", "oxlay", "--ipam-driver", "oxlay"];
    all.extend_from_slice(args);
    d.docker(&all)
}

/// Starts a web server container `name` on network web; its address.
fn start_server(d: &Dockerd, name: &str) -> Result<String> {
    d.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "web",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ])?;
    address(d, name, "web")
}

/// Starts a container `name` on `network` that only waits (a client to exec in).
fn start_idle(d: &Dockerd, name: &str, network: &str) -> Result<()> {
    d.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        IMAGE,
        "sleep",
        "600",
    ])
    .map(|_| ())
}

/// What each host holds, for a failure message.
fn diagnose(c: &StoreCluster, dockers: &[Dockerd]) -> String {
    let mut out = String::new();
    for (i, d) in dockers.iter().enumerate() {
        out += &format!("--- host {i}\n");
        for args in [&["routes"][..], &["endpoints"], &["stats"]] {
            out += &format!("{:?}\n", c.daemons[i].cli(args));
        }
        out += &format!("{:?}\n", c.hosts[i].ns.ip(&["-o", "addr"]));
        out += &format!("{:?}\n", c.hosts[i].ns.ip(&["route"]));
        if let Ok(ids) = d.docker(&["ps", "-q"]) {
            for id in ids.split_whitespace() {
                out += &format!("{:?}\n", d.docker(&["exec", id, "ip", "addr"]));
                out += &format!("{:?}\n", d.docker(&["exec", id, "ip", "route"]));
                out += &format!("{:?}\n", d.docker(&["exec", id, "ip", "neigh"]));
            }
        }
        out += &d.log();
    }
    for d in &c.daemons {
        out += &d.log();
    }
    out
}

/// Two hosts sharing etcd, each with its own dockerd (the test image imported) and an
/// oxlay daemon serving the Docker plugin. Fields drop in order: the engines first.
struct DockerHosts {
    dockers: Vec<Dockerd>,
    c: StoreCluster,
    dirs: [DockerDirs; 2],
}

/// `None` when dockerd is missing (the test is then skipped, saying why).
fn docker_hosts(tag: &str) -> Result<Option<DockerHosts>> {
    if skip_without_root_or_etcd() {
        return Ok(None);
    }
    if let Some(why) = docker_missing() {
        oxlay_testbed::skip(&why);
        return Ok(None);
    }
    let dirs = [
        DockerDirs::new(&format!("{tag}a"))?,
        DockerDirs::new(&format!("{tag}b"))?,
    ];
    // Names that are not containers' go to the outside host's DNS server (the tests
    // that need it start it).
    let names = format!("[names]\nupstream = [\"{OUTSIDE}\"]\n");
    let extra: Vec<String> = dirs.iter().map(|d| d.oxlay_toml() + &names).collect();
    let addrs: Vec<String> = (0..2)
        .map(|i| format!("{UNDERLAY_PREFIX}.{}", 11 + i))
        .collect();
    let c = StoreCluster::with_config(&addrs, true, 10, extra)?;
    let mut dockers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let d = Dockerd::start(&c.hosts[i], dir)?;
        d.import_image()?;
        dockers.push(d);
    }
    Ok(Some(DockerHosts { dockers, c, dirs }))
}

#[test]
fn docker_containers_on_two_hosts_talk_over_oxlay() -> Result<()> {
    let Some(mut hosts) = docker_hosts("")? else {
        return Ok(());
    };
    let DockerHosts { dockers, c, dirs } = &mut hosts;
    let socket = dirs[0].plugin_socket();
    let mode = std::fs::metadata(&socket)
        .with_context(|| format!("no plugin socket at {}", socket.display()))?;
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077 == 0,
        "the plugin socket is open to others"
    );

    // The same command on both hosts: one oxlay network ("docker", as none is named).
    // IPAM options (--ipam-opt), driver options (-o) and labels (--label, read from
    // dockerd) become its labels.
    for d in dockers.iter() {
        create_network(
            d,
            &[
                "--ipam-opt",
                "team=red",
                "-o",
                "color=green",
                "--label",
                "owner=ops",
                "web",
            ],
        )?;
    }
    eventually(Duration::from_secs(10), || {
        let networks = c.daemons[0].cli(&["network", "ls"])?;
        ensure!(
            ["team=red", "color=green", "owner=ops"]
                .iter()
                .all(|l| networks.contains(l)),
            "options and labels did not reach the oxlay network: {networks}"
        );
        Ok(())
    })?;

    // A network named in the IPAM options, with a subnet; a host asking for another
    // subnet under the same name is told why not.
    create_network(
        &dockers[0],
        &[
            "--ipam-opt",
            "network=blue",
            "--subnet",
            "10.60.0.0/16",
            "blue",
        ],
    )?;
    let clash = create_network(
        &dockers[1],
        &[
            "--ipam-opt",
            "network=blue",
            "--subnet",
            "10.61.0.0/16",
            "blue",
        ],
    );
    let why = format!(
        "{:#}",
        clash.err().context("a clashing subnet was accepted")?
    );
    ensure!(why.contains("exists with subnet 10.60.0.0/16"), "{why}");
    start_idle(&dockers[0], "on-blue", "blue")?;
    let blue_addr = address(&dockers[0], "on-blue", "blue")?;
    ensure!(
        blue_addr.starts_with("10.60."),
        "address on blue: {blue_addr:?}"
    );
    dockers[0].docker(&["rm", "-f", "on-blue"])?;
    dockers[0].docker(&["network", "rm", "blue"])?;

    // A web server on host B, a client on host A.
    let srv = start_server(&dockers[1], "srv")?;
    ensure!(!srv.is_empty(), "the server has no address on web");
    start_idle(&dockers[0], "cli", "web")?;
    let link = dockers[0].docker(&["exec", "cli", "ip", "link", "show", "eth0"])?;
    ensure!(
        link.contains("mtu 1450"),
        "container MTU is not the overlay's: {link}"
    );
    let ping = dockers[0].docker(&["exec", "cli", "ping", "-c", "2", "-W", "2", &srv]);
    ensure!(ping.is_ok(), "ping: {ping:?}\n{}", diagnose(c, dockers));
    let page = fetch(&dockers[0], "cli", &srv).with_context(|| diagnose(c, dockers))?;
    ensure!(page == IMAGE_GREETING, "fetched {page:?}");
    let decapsulated = c.daemons[1].counter("decapsulated")?;
    ensure!(decapsulated > 0, "host B decapsulated nothing");

    // oxlay restarts under a running container: the server stays reachable.
    c.restart_daemon(1)?;
    let page = fetch(&dockers[0], "cli", &srv).context("after restarting oxlay on B")?;
    ensure!(page == IMAGE_GREETING, "fetched {page:?}");

    // An endpoint whose store record cannot be written is unwired whole (veth and map
    // entry), and Docker is told: the container does not start.
    c.restart_daemon_with_env(1, &[("OXLAY_FAULT", oxlay::fault::step::ENDPOINT_RECORD)])?;
    let before = oxlay_links(c, 1)?;
    let failed = start_idle(&dockers[1], "faulty", "web");
    ensure!(
        failed.is_err(),
        "a container started although its endpoint could not be recorded"
    );
    eventually(Duration::from_secs(10), || {
        let links = oxlay_links(c, 1)?;
        ensure!(links == before, "veths on B: {links:?}, before: {before:?}");
        Ok(())
    })
    .context("after a failed endpoint creation")?;
    dockers[1].docker(&["rm", "-f", "faulty"])?;
    let page = fetch(&dockers[0], "cli", &srv).context("after the failed creation")?;
    ensure!(page == IMAGE_GREETING, "fetched {page:?}");

    // Stopping the container leaves nothing behind on its host; started again, it is
    // reachable again; removing it leaves nothing either.
    let nothing_left_on_b = || {
        eventually(Duration::from_secs(10), || {
            let links = oxlay_links(c, 1)?;
            ensure!(links.is_empty(), "veths left on B: {links:?}");
            let eps = c.daemons[1].cli(&["endpoints"])?;
            ensure!(!eps.contains("docker-"), "endpoints left on B: {eps}");
            Ok(())
        })
    };
    dockers[1].docker(&["stop", "-t", "1", "srv"])?;
    nothing_left_on_b().context("after docker stop")?;
    dockers[1].docker(&["start", "srv"])?;
    let again = address(&dockers[1], "srv", "web")?;
    let page = eventually(Duration::from_secs(10), || {
        fetch(&dockers[0], "cli", &again)
    })
    .context("after docker start")?;
    ensure!(page == IMAGE_GREETING, "fetched {page:?}");
    dockers[1].docker(&["rm", "-f", "srv"])?;
    nothing_left_on_b().context("after docker rm")?;

    // dockerd restarts: its containers stop and release everything; the network works
    // again afterwards.
    start_idle(&dockers[0], "idle", "web")?;
    ensure!(
        oxlay_links(c, 0)?.len() == 2,
        "no veth for the idle container"
    );
    let host_a = &c.hosts[0];
    dockers[0].restart(host_a)?;
    eventually(Duration::from_secs(10), || {
        let links = oxlay_links(c, 0)?;
        ensure!(
            links.is_empty(),
            "veths left on A after dockerd restarted: {links:?}"
        );
        Ok(())
    })?;
    let srv2 = start_server(&dockers[1], "srv2")?;
    // (the stopped containers stay, without their networks, until removed)
    start_idle(&dockers[0], "cli2", "web")?;
    let page = fetch(&dockers[0], "cli2", &srv2).with_context(|| diagnose(c, dockers))?;
    ensure!(
        page == IMAGE_GREETING,
        "after the dockerd restart: {page:?}"
    );

    // docker network rm leaves nothing behind either.
    for d in dockers.iter() {
        let ids = d.docker(&["ps", "-aq"])?;
        for id in ids.split_whitespace() {
            d.docker(&["rm", "-f", id])?;
        }
        d.docker(&["network", "rm", "web"])?;
    }
    for h in 0..2 {
        let links = oxlay_links(c, h)?;
        ensure!(links.is_empty(), "veths left on host {h}: {links:?}");
    }
    let left = c.daemons[0].cli(&["endpoint", "ls"])?;
    ensure!(!left.contains("docker"), "endpoint records left: {left}");
    dockers.clear();
    Ok(())
}

/// `GET /index.html` from `ns` to `addr:port`; the body.
fn http_get(ns: &oxlay_testbed::Netns, addr: &str, port: u16) -> Result<String> {
    let to: std::net::SocketAddr = format!("{addr}:{port}").parse()?;
    ns.spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut page = String::new();
        s.read_to_string(&mut page)?;
        Ok(page)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// A UDP echo server inside the network namespace of process `pid` (the image has no
/// UDP server of its own); answers until `stop` is set.
fn udp_echo_in(
    pid: &str,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", pid.trim()))?;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || -> Result<()> {
        // SAFETY: ns is an open namespace file; setns changes only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let sock = std::net::UdpSocket::bind(("0.0.0.0", port))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        ready_tx.send(())?;
        let mut buf = [0u8; 64];
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                sock.send_to(&buf[..n], from)?;
            }
        }
        Ok(())
    });
    ready.recv_timeout(Duration::from_secs(5))?;
    Ok(())
}

/// `docker run -p` publishes ports on the container's host: a machine outside the
/// overlay reaches the container through the host's address, over TCP and UDP; a
/// container on another host does too, and one on the same host (hairpin). After
/// `docker stop` the port answers no more.
#[test]
fn published_ports_lead_to_the_container() -> Result<()> {
    let Some(mut hosts) = docker_hosts("p")? else {
        return Ok(());
    };
    let DockerHosts { dockers, c, .. } = &mut hosts;
    let outside = c.underlay.add_host_at("outside", "192.168.50.100")?;
    for d in dockers.iter() {
        create_network(d, &["web"])?;
    }
    let b = &dockers[1];
    b.docker(&[
        "run",
        "-d",
        "--name",
        "pub",
        "-p",
        "8080:8080",
        "-p",
        "5353:5353/udp",
        // a host address of its own, and a range
        "-p",
        "192.168.50.12:8081:8080",
        "-p",
        "9000-9001:8080-8081",
        "--network",
        "web",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ])?;
    let host_b = c.hosts[1].addr.to_string();
    let page = eventually(Duration::from_secs(10), || {
        http_get(&outside.ns, &host_b, 8080)
    })
    .with_context(|| diagnose(c, dockers))?;
    ensure!(page.contains(IMAGE_GREETING), "the outside got {page:?}");
    let listed = c.daemons[1].cli(&["endpoints"])?;
    ensure!(
        listed.contains("8080->8080/tcp") && listed.contains("192.168.50.12:8081->8080/tcp"),
        "oxlay endpoints does not show the published ports: {listed}"
    );
    for port in [8081, 9000] {
        let page = http_get(&outside.ns, &host_b, port)?;
        ensure!(page.contains(IMAGE_GREETING), "port {port} gave {page:?}");
    }
    // 8081 is bound to 192.168.50.12: on a second address of host B it is not
    // published, while 8080 (all addresses) is.
    c.hosts[1]
        .ns
        .ip(&["addr", "add", "192.168.50.112/24", "dev", "eth0"])?;
    ensure!(
        http_get(&outside.ns, "192.168.50.112", 8080)?.contains(IMAGE_GREETING),
        "a port published on all addresses did not answer on the second one"
    );
    ensure!(
        http_get(&outside.ns, "192.168.50.112", 8081).is_err(),
        "a port bound to one host address answered on another"
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    udp_echo_in(
        &b.docker(&["inspect", "-f", "{{.State.Pid}}", "pub"])?,
        5353,
        stop.clone(),
    )?;
    let to: std::net::SocketAddr = format!("{host_b}:5353").parse()?;
    let echoed = outside
        .ns
        .spawn(move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            sock.send_to(b"published", to)?;
            let mut buf = [0u8; 64];
            let (n, _) = sock.recv_from(&mut buf)?;
            Ok(buf[..n].to_vec())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    ensure!(
        echoed? == b"published",
        "the UDP port answered with something else"
    );

    start_idle(&dockers[0], "far", "web")?;
    ensure!(
        fetch(&dockers[0], "far", &host_b)?.contains(IMAGE_GREETING),
        "a container on another host did not reach the published port"
    );
    start_idle(b, "near", "web")?;
    ensure!(
        fetch(b, "near", &host_b)?.contains(IMAGE_GREETING),
        "a container on the same host did not reach the published port (hairpin)"
    );
    ensure!(
        fetch(b, "pub", &host_b)?.contains(IMAGE_GREETING),
        "the container did not reach its own published port (hairpin)"
    );
    // A restarted oxlay keeps the ports (they are recorded with the endpoint).
    c.restart_daemon(1)?;
    let page = http_get(&outside.ns, &host_b, 8080).context("after an oxlay restart")?;
    ensure!(
        page.contains(IMAGE_GREETING),
        "after an oxlay restart: {page:?}"
    );

    b.docker(&["stop", "-t", "1", "pub"])?;
    eventually(Duration::from_secs(5), || {
        ensure!(
            http_get(&outside.ns, &host_b, 8080).is_err(),
            "the port still answers after docker stop"
        );
        Ok(())
    })?;
    for (i, d) in dockers.iter().enumerate() {
        for id in d.docker(&["ps", "-aq"])?.split_whitespace() {
            d.docker(&["rm", "-f", id])?;
        }
        d.docker(&["network", "rm", "web"])?;
        ensure!(
            !c.hosts[i]
                .ns
                .exec(&["nft", "list", "table", "ip", "oxlay"])?
                .contains("dnat"),
            "a published port outlived its container on host {i}"
        );
    }
    Ok(())
}

/// A process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// `nslookup NAME` in container `client` (through Docker's embedded DNS, which asks
/// oxlay's resolver for what it does not know): the addresses, or an error.
fn resolve(d: &Dockerd, client: &str, name: &str) -> Result<Vec<String>> {
    let out = d.docker(&["exec", client, "timeout", "5", "nslookup", "-type=a", name])?;
    let found: Vec<String> = out
        .split("Name:")
        .skip(1)
        .flat_map(|a| a.lines().filter_map(|l| l.strip_prefix("Address:")))
        .map(|a| a.trim().to_owned())
        .collect();
    ensure!(!found.is_empty(), "{name} has no address: {out}");
    Ok(found)
}

/// Containers find each other by name across hosts (their names and
/// `--network-alias`es), only on the networks they share, until the container goes;
/// other names resolve through the host's resolvers, so `wget` of an outside name
/// works. All of it across an oxlay restart.
#[test]
fn docker_containers_find_each_other_by_name() -> Result<()> {
    if oxlay_testbed::dns::skip_without_dnsmasq() {
        return Ok(());
    }
    let Some(mut hosts) = docker_hosts("n")? else {
        return Ok(());
    };
    let DockerHosts { dockers, c, .. } = &mut hosts;
    let outside = c.underlay.add_host_at("outside", OUTSIDE)?;
    let _dns = oxlay_testbed::dns::Dnsmasq::start_in(
        &outside.ns,
        OUTSIDE,
        &[("mirror.outside.test", OUTSIDE)],
    )?;
    let www = oxlay_testbed::TempDir::new("outside-www")?;
    std::fs::write(www.path.join("index.html"), "outside page")?;
    let _web = KillOnDrop(
        outside
            .ns
            .command("busybox")
            .args(["httpd", "-f", "-p", &format!("{OUTSIDE}:8080"), "-h"])
            .arg(&www.path)
            .spawn()?,
    );
    for d in dockers.iter() {
        create_network(d, &["--ipam-opt", "network=web", "web"])?;
        create_network(d, &["--ipam-opt", "network=blue", "blue"])?;
    }
    let (a, b) = (&dockers[0], &dockers[1]);
    b.docker(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network-alias",
        "www",
        "--network",
        "web",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ])?;
    let srv = address(b, "srv", "web")?;
    start_idle(a, "client", "web")?;
    start_idle(a, "stranger", "blue")?;

    for name in ["srv", "www", "srv.web"] {
        let found = eventually(Duration::from_secs(5), || resolve(a, "client", name))
            .with_context(|| diagnose(c, dockers))?;
        ensure!(found == [srv.clone()], "{name} is {found:?}, not {srv}");
    }
    ensure!(
        fetch(a, "client", "srv")?.contains(IMAGE_GREETING),
        "wget by name across hosts failed"
    );
    // The outside by name, from both networks: the stranger's resolver answers.
    for client in ["client", "stranger"] {
        let page = fetch(a, client, "mirror.outside.test")?;
        ensure!(page.contains("outside page"), "{client} got {page:?}");
    }
    ensure_unknown("srv (from blue)", resolve(a, "stranger", "srv"))?;

    // A restarted oxlay answers the same.
    c.restart_daemon(0)?;
    let found = eventually(Duration::from_secs(5), || resolve(a, "client", "srv"))?;
    ensure!(
        found == [srv.clone()],
        "after an oxlay restart srv is {found:?}"
    );

    // A container whose names oxlay could not read when it joined (as if oxlay had
    // restarted in between) gets them when oxlay starts again.
    c.restart_daemon_with_env(1, &[("OXLAY_FAULT", oxlay::fault::step::DOCKER_NAMES)])?;
    b.docker(&[
        "run",
        "-d",
        "--name",
        "late",
        "--network",
        "web",
        IMAGE,
        "sleep",
        "600",
    ])?;
    let late = address(b, "late", "web")?;
    std::thread::sleep(Duration::from_secs(1));
    ensure_unknown("late (its names not read)", resolve(a, "client", "late"))?;
    c.restart_daemon(1)?;
    let found = eventually(Duration::from_secs(5), || resolve(a, "client", "late"))
        .with_context(|| diagnose(c, dockers))?;
    ensure!(
        found == [late],
        "late is {found:?} after oxlay read its names at start"
    );

    b.docker(&["rm", "-f", "srv"])?;
    let took = time_until_unknown(
        "srv",
        std::time::Instant::now(),
        Duration::from_secs(2),
        || resolve(a, "client", "srv"),
    )?;
    ensure!(
        took < Duration::from_secs(2),
        "srv resolved {took:?} after docker rm -f"
    );
    Ok(())
}
