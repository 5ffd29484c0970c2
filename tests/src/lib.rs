//! Test hosts in network namespaces: an underlay L2 segment (a bridge in a namespace of
//! its own), hosts on it, containers in hosts, and an oxlay daemon per host.
//!
//! Used by the integration tests, `cargo xtask demo` and `cargo xtask bench`. Every
//! object cleans up on drop, also when a test panics; names carry the process id, so
//! parallel runs do not collide and leftovers of dead runs are recognised and removed.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace this crate makes.
pub const PREFIX: &str = "oxt";
pub mod containerd;
pub mod docker;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Runs a shell-like argument list, e.g. `sh(&["ip", "link"])`.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = run(Command::new(args[0]).args(&args[1..]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process may create namespaces and load programs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Set by `cargo xtask test` (and inside the VMs): a missing prerequisite fails the test.
pub const REQUIRE_ALL_ENV: &str = "OXLAY_TEST_REQUIRE_ALL";
/// Where skips are recorded, one line each, so the runner can count them.
pub const SKIP_LOG_ENV: &str = "OXLAY_TEST_SKIP_LOG";

/// The one way a test gives up for lack of a prerequisite (`missing` names it). Under
/// `cargo xtask test` (`OXLAY_TEST_REQUIRE_ALL=1`) that fails the test with the name of
/// what is missing; elsewhere (a plain `cargo test` as a normal user) the test is
/// skipped, with the reason printed and recorded. Returns true when the caller must
/// return.
pub fn skip(missing: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    if std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: missing prerequisite: {missing} (a test under `cargo xtask test` may not skip; run `cargo xtask install` and run as root)");
    }
    eprintln!("skipped: {test}: {missing}");
    if let Ok(log) = std::env::var(SKIP_LOG_ENV) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {missing}");
        }
    }
    true
}

/// Tests that need root skip (see [`skip`]) when not run as root.
pub fn skip_without_root() -> bool {
    !is_root() && skip("root, to create namespaces and load eBPF programs")
}

/// Whether an etcd binary runs here.
pub fn has_etcd() -> bool {
    Command::new("etcd").arg("--version").output().is_ok()
}

/// Like `skip_without_root`, for tests that also need an etcd binary.
pub fn skip_without_root_or_etcd() -> bool {
    skip_without_root() || skip_without_etcd()
}

/// Tests that need a real etcd skip (see [`skip`]) without one.
pub fn skip_without_etcd() -> bool {
    !has_etcd() && skip("the etcd binary (package etcd-server; `cargo xtask install`)")
}

/// Retries `f` until it succeeds or `limit` passes (for convergence through the store
/// or after a fault), returning its last error if it never does.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Removes namespaces left by runs whose process is gone.
pub fn remove_stale() {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `oxt<pid>-<seq>-<role>`, with lo up.
    pub fn new(role: &str) -> Result<Self> {
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A handle on a namespace someone else owns (not deleted on drop).
    pub fn existing(name: &str) -> std::mem::ManuallyDrop<Netns> {
        std::mem::ManuallyDrop::new(Netns {
            name: name.to_owned(),
        })
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A command that runs inside the namespace without remounting /sys (so bpffs and
    /// cgroups stay visible), for daemons.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg(program);
        c
    }

    /// Programs on TC ingress of `interface` in this namespace: (name, program id).
    /// TCX attachments from 6.6 on (Debian's bpftool 7.1 cannot list them), cls_bpf
    /// filters (`tc filter show`) before.
    pub fn tc_ingress(&self, interface: &'static str) -> Result<Vec<(String, u32)>> {
        use aya::{
            programs::{SchedClassifier, TcAttachType},
            util::KernelVersion,
        };
        if KernelVersion::current()? < KernelVersion::new(6, 6, 0) {
            let out = self.exec(&["tc", "filter", "show", "dev", interface, "ingress"])?;
            return Ok(out
                .lines()
                .filter_map(|line| {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let after = |key: &str| {
                        let i = words.iter().position(|w| *w == key)?;
                        words.get(i + 1).copied()
                    };
                    let id = after("id")?.parse().ok()?;
                    Some((after("name").unwrap_or("?").to_owned(), id))
                })
                .collect());
        }
        self.spawn(move || {
            let (_, programs) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress)?;
            Ok(programs
                .iter()
                .map(|p| (p.name_as_str().unwrap_or("?").to_owned(), p.id()))
                .collect())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("query thread panicked"))?
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Pings `addr` `count` times; Ok when all replies arrived.
    pub fn ping(&self, addr: &str, count: u32) -> Result<()> {
        self.exec(&[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            "-q",
            addr,
        ])
        .map(|_| ())
        .with_context(|| format!("ping from {} to {addr}", self.name))
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            // SAFETY: file is an open namespace file; setns changes only this thread,
            // which ends when `f` returns.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// The underlay: a bridge in a namespace of its own, 192.168.50.0/24.
pub struct Underlay {
    pub ns: Netns,
    ports: u32,
    /// MTU of the segment (every port and host interface); 1500 unless set.
    pub mtu: u32,
}

pub const UNDERLAY_PREFIX: &str = "192.168.50";
/// Address of the underlay namespace itself on the segment (for etcd).
pub const UNDERLAY_SERVICE: &str = "192.168.50.1";

impl Underlay {
    pub fn new() -> Result<Self> {
        remove_stale();
        let ns = Netns::new("ul")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        // A switch does not run iptables on the frames it forwards: keep bridge
        // netfilter (on wherever br_netfilter is, as with Docker) off this segment, or
        // every frame between hosts pays for it. (Absent without br_netfilter.)
        let _ = ns.exec(&[
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ]);
        // The segment's own address, where shared services (etcd) listen.
        ns.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_SERVICE}/24"),
            "dev",
            "br0",
        ])?;
        Ok(Self {
            ns,
            ports: 0,
            mtu: 1500,
        })
    }

    /// Adds a host namespace whose `eth0` is on the bridge with address
    /// 192.168.50.`octet`/24.
    pub fn add_host(&mut self, role: &str, octet: u8) -> Result<Host> {
        self.add_host_at(role, &format!("{UNDERLAY_PREFIX}.{octet}"))
    }

    /// Adds a host with address `addr`/24 on the bridge. One outside 192.168.50.0/24
    /// is another underlay subnet on the same segment; every host reaches every
    /// other through on-link routes, as if a router joined them.
    pub fn add_host_at(&mut self, role: &str, addr: &str) -> Result<Host> {
        let ns = Netns::new(role)?;
        self.ports += 1;
        let port = format!("p{}", self.ports);
        sh(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.ns.name,
        ])?;
        self.ns.ip(&[
            "link",
            "set",
            &port,
            "mtu",
            &self.mtu.to_string(),
            "master",
            "br0",
            "up",
        ])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "mtu", &self.mtu.to_string(), "up"])?;
        for other in ["192.168.50.0/24", "192.168.60.0/24"] {
            // The connected route already covers the host's own subnet.
            let _ = ns.ip(&["route", "add", other, "dev", "eth0"]);
        }
        Ok(Host {
            ns,
            addr: addr.parse()?,
            underlay_port: port,
        })
    }
}

/// A host: a namespace with `eth0` on the underlay.
pub struct Host {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// Its port's name on the underlay bridge.
    pub underlay_port: String,
}

impl Host {
    /// A container namespace (not yet wired to anything).
    pub fn container(&self, role: &str) -> Result<Netns> {
        Netns::new(role)
    }

    /// A container wired the classic way, without oxlay: a veth whose host end has
    /// `gateway`/24 and whose container end has `address`/24 and a default route via
    /// the gateway; the host forwards.
    pub fn routed_container(
        &self,
        role: &str,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> Result<Netns> {
        let c = Netns::new(role)?;
        let host_if = format!("v{role}");
        sh(&[
            "ip",
            "link",
            "add",
            &host_if,
            "netns",
            &self.ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &c.name,
        ])?;
        self.ns
            .ip(&["addr", "add", &format!("{gateway}/24"), "dev", &host_if])?;
        self.ns
            .ip(&["link", "set", &host_if, "mtu", &mtu.to_string(), "up"])?;
        c.ip(&["link", "set", "eth0", "mtu", &mtu.to_string(), "up"])?;
        c.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        c.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        self.ns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(c)
    }

    /// Sets up the kernel's `vxlan` device the way flannel does: `nolearning`, port
    /// 4789, VNI 42, address `<pod_subnet>.0/32`, and for each peer (underlay address,
    /// its /24 pod subnet's first three octets, its VTEP MAC) a route, a permanent
    /// neighbour and a static fdb entry.
    pub fn linux_vxlan(
        &self,
        vtep_mac: &str,
        pod_net: [u8; 3],
        peers: &[(Ipv4Addr, [u8; 3], &str)],
    ) -> Result<()> {
        let ns = &self.ns;
        ns.ip(&[
            "link",
            "add",
            "vxlan0",
            "address",
            vtep_mac,
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            &self.addr.to_string(),
            "dev",
            "eth0",
            "nolearning",
        ])?;
        ns.ip(&["link", "set", "vxlan0", "up"])?;
        let net = |n: [u8; 3]| format!("{}.{}.{}", n[0], n[1], n[2]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}.0/32", net(pod_net)),
            "dev",
            "vxlan0",
        ])?;
        for (underlay, subnet, mac) in peers {
            let gw = format!("{}.0", net(*subnet));
            ns.ip(&[
                "route",
                "add",
                &format!("{gw}/24"),
                "via",
                &gw,
                "dev",
                "vxlan0",
                "onlink",
            ])?;
            ns.ip(&[
                "neigh",
                "add",
                &gw,
                "lladdr",
                mac,
                "dev",
                "vxlan0",
                "nud",
                "permanent",
            ])?;
            ns.exec(&[
                "bridge",
                "fdb",
                "add",
                mac,
                "dev",
                "vxlan0",
                "dst",
                &underlay.to_string(),
            ])?;
        }
        ns.sysctl("net.ipv4.ip_forward", "1")
    }
}

/// `sh -c script` in namespace `netns` (a path) and in a mount namespace of its own,
/// where the script may bind-mount over system folders (e.g. /run/docker/plugins)
/// without touching the machine's.
pub fn private_mounts_command(netns: &Path, script: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display())).args([
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
    ]);
    c
}

/// Path of the `oxlay` binary: `$OXLAY_BIN`, or the workspace's debug build.
pub fn oxlay_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OXLAY_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/oxlay")
}

/// An `oxlay daemon` running in a host namespace; SIGTERM and wait on drop.
pub struct Daemon {
    pub node: String,
    pub socket: PathBuf,
    /// The pin path the config names, for cleaning up after a killed daemon.
    pin_path: Option<PathBuf>,
    child: Option<Child>,
    _dir: TempDir,
}

impl Daemon {
    /// Where this daemon pins its maps and links, if its config names it.
    pub fn pin_path(&self) -> Option<&Path> {
        self.pin_path.as_deref()
    }

    /// Starts a daemon with `config` (TOML; `api_socket` is added) and waits until its
    /// API answers.
    pub fn start(host: &Host, node: &str, config: &str) -> Result<Self> {
        Self::start_with(host.ns.command(oxlay_bin().to_str().unwrap()), node, config)
    }

    /// Like `start`, with `launcher` (a command that runs the oxlay binary somewhere).
    pub fn start_with(mut launcher: Command, node: &str, config: &str) -> Result<Self> {
        let dir = TempDir::new(node)?;
        let given = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("api_socket = "))
            .map(|v| PathBuf::from(v.trim_matches('"')));
        let socket = given.clone().unwrap_or_else(|| dir.path.join("api.sock"));
        let mut config = match given {
            Some(_) => config.to_owned(),
            None => format!("api_socket = \"{}\"\n{config}", socket.display()),
        };
        if !config.contains("[store]") {
            // A store of its own, so tests never share the machine's default one.
            config += &format!(
                "\n[store]\npath = \"{}\"\n",
                dir.path.join("store.json").display()
            );
        }
        let config_path = dir.path.join("oxlay.toml");
        std::fs::write(&config_path, &config)?;
        let log = std::fs::File::create(dir.path.join("daemon.log"))?;
        let child = launcher
            .args(["daemon", "--config"])
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", oxlay_bin().display()))?;
        let pin_path = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("pin_path = "))
            .map(|v| PathBuf::from(v.trim_matches('"')));
        let mut d = Self {
            node: node.to_owned(),
            socket,
            pin_path,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if d.cli(&["stats", "--json"]).is_ok() {
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait()? {
                bail!("daemon {node} exited ({status}): {}", d.log());
            }
            if Instant::now() > deadline {
                bail!("daemon {node} did not answer within 20 s: {}", d.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path.join("daemon.log")).unwrap_or_default()
    }

    /// Runs `oxlay ARGS --socket S` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new(oxlay_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn attach(&self, container: &Netns, address: &str) -> Result<String> {
        self.cli(&["attach", "--netns", &container.name, "--address", address])
    }

    /// One counter's value from `oxlay stats --json`.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let v: serde_json::Value = serde_json::from_str(&self.cli(&["stats", "--json"])?)?;
        v.as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .and_then(|c| c["value"].as_u64())
            .with_context(|| format!("no counter {name}"))
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the daemon with SIGKILL: no cleanup, as in a crash.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: plain kill() on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("daemon {} exited with {status}: {}", self.node, self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("daemon {} ignored SIGTERM for 10 s", self.node);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Daemon {
    /// `oxlay uninstall`: the daemon removes everything it made and exits.
    pub fn uninstall(&mut self) -> Result<()> {
        if self.child.is_none() {
            bail!("daemon {} is not running", self.node);
        }
        self.cli(&["uninstall"])?;
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "daemon {} exited with {status} on uninstall: {}",
                        self.node,
                        self.log()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("daemon {} did not exit after uninstall", self.node);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    /// Uninstalls, so no test leaves programs or pins behind; after a crash (or a
    /// refused uninstall) the pins are removed by hand, which detaches the programs.
    fn drop(&mut self) {
        if self.uninstall().is_err() {
            let _ = self.stop();
            if let Some(pins) = &self.pin_path {
                let _ = std::fs::remove_dir_all(pins);
            }
        }
    }
}

/// A real etcd server on loopback with its own data directory; killed on drop.
pub struct Etcd {
    pub endpoint: String,
    child: Option<Child>,
    /// Namespace to run in (None: this one), listen address, client and peer ports.
    netns: Option<String>,
    ip: String,
    ports: (u16, u16),
    _dir: TempDir,
}

/// A free TCP port on loopback (bound, then released for the caller to use).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// An etcd on this machine's loopback.
    pub fn start() -> Result<Self> {
        Self::launch(None, "127.0.0.1", free_port()?, free_port()?)
    }

    /// An etcd inside `ns`, listening on `ip` (an address of that namespace), e.g. on
    /// the underlay, where every host can reach it.
    pub fn start_in(ns: &Netns, ip: &str) -> Result<Self> {
        Self::launch(Some(ns), ip, 2379, 2380)
    }

    fn launch(ns: Option<&Netns>, ip: &str, client: u16, peer: u16) -> Result<Self> {
        let mut etcd = Self {
            endpoint: format!("http://{ip}:{client}"),
            child: None,
            netns: ns.map(|n| n.name.clone()),
            ip: ip.to_owned(),
            ports: (client, peer),
            _dir: TempDir::new("etcd")?,
        };
        etcd.restart()?;
        Ok(etcd)
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as
    /// with a stalled etcd. Only for an etcd started with `start` (no namespace).
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        anyhow::ensure!(
            self.netns.is_none(),
            "pause/resume need an etcd started in this namespace"
        );
        let pid = self.child.as_ref().context("etcd is not running")?.id();
        // SAFETY: kill sends a signal to our own child process; no memory is involved.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling etcd");
        }
        Ok(())
    }

    /// Kills the server (its data stays): the store goes away.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server (again, on the same data) and waits until it listens.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let (ip, (client, peer)) = (self.ip.clone(), self.ports);
        let peer_url = format!("http://{ip}:{peer}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.path.join("etcd.log"))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        self.child = Some(
            cmd.args(["--name", "oxlay-test", "--data-dir"])
                .arg(self._dir.path.join("data"))
                .args([
                    "--listen-client-urls",
                    &self.endpoint,
                    "--advertise-client-urls",
                    &self.endpoint,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .args(["--initial-cluster", &format!("oxlay-test={peer_url}")])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start etcd (cargo xtask install provides etcd-server)")?,
        );
        let addr: SocketAddr = format!("{ip}:{client}").parse()?;
        let up = move || -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(20);
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    bail!("etcd did not listen on {addr} within 20 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        };
        let waited = match &self.netns {
            Some(ns) => Netns::existing(ns)
                .spawn(up)
                .join()
                .map_err(|_| anyhow::anyhow!("wait thread panicked"))?,
            None => up(),
        };
        waited.with_context(|| {
            std::fs::read_to_string(self._dir.path.join("etcd.log")).unwrap_or_default()
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "oxlay-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Deterministic pseudo-random bytes, a function of (seed, position), so a receiver
/// can check a stream without the sender's copy, however reads split it.
pub struct PatternStream {
    seed: u64,
    pos: u64,
}

impl PatternStream {
    pub fn new(seed: u64) -> Self {
        Self { seed, pos: 0 }
    }
    /// The 8-byte block `block` of the stream: splitmix64 of its index.
    fn block(&self, block: u64) -> [u8; 8] {
        let mut z = self
            .seed
            .wrapping_add(block.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let (block, offset) = (self.pos / 8, (self.pos % 8) as usize);
            let bytes = self.block(block);
            let n = (8 - offset).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&bytes[offset..offset + n]);
            i += n;
            self.pos += n as u64;
        }
    }
}

/// Sends `bytes` of a pattern over TCP from namespace `from` to a listener in `to` at
/// `to_addr`, checks every byte on arrival, and returns the elapsed time.
pub fn tcp_transfer(from: &Netns, to: &Netns, to_addr: Ipv4Addr, bytes: u64) -> Result<Duration> {
    const PORT: u16 = 5201;
    const CHUNK: usize = 256 * 1024;
    let seed = 0x6f78_6c61_7900 ^ bytes;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.spawn(move || -> Result<u64> {
        let listener = TcpListener::bind(SocketAddr::from((to_addr, PORT)))?;
        ready_tx.send(()).ok();
        // Never block forever: a sender that cannot connect must fail the test.
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e).context("no connection arrived"),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut expected = PatternStream::new(seed);
        let (mut buf, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        let mut got = 0u64;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            expected.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                bail!("corrupted data at byte offset {got}..{}", got + n as u64);
            }
            got += n as u64;
        }
        Ok(got)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the receiver did not start")?;
    let client = from.spawn(move || -> Result<Duration> {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((to_addr, PORT)), Duration::from_secs(5))?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut pattern = PatternStream::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(CHUNK as u64) as usize;
            pattern.fill(&mut buf[..n]);
            conn.write_all(&buf[..n])?;
            sent += n as u64;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        // Wait for the receiver to close: all bytes were read.
        let _ = conn.read(&mut [0u8; 1]);
        Ok(start.elapsed())
    });
    let sent = client
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?;
    // The receiver's error (e.g. corruption) explains a sender's reset: report it first.
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let elapsed = sent?;
    if got != bytes {
        bail!("receiver got {got} of {bytes} bytes");
    }
    Ok(elapsed)
}

/// A paced UDP stream, one sequence-numbered datagram per millisecond from a container
/// to a listener in another, counted at the receiver: the way the restart, churn and
/// fault tests prove that nothing was lost.
pub struct PacedUdp {
    sending: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<Result<u32>>,
    receiver: std::thread::JoinHandle<Result<std::collections::BTreeSet<u32>>>,
}

impl PacedUdp {
    pub fn start(from: &Netns, to_ns: &Netns, to: Ipv4Addr, port: u16) -> Result<Self> {
        use std::sync::{atomic::AtomicBool, Arc};
        let receiver = to_ns.spawn(move || {
            let sock = std::net::UdpSocket::bind(SocketAddr::from((to, port)))?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            let (mut got, mut buf) = (std::collections::BTreeSet::new(), [0u8; 8]);
            while let Ok(n) = sock.recv(&mut buf) {
                if n == 4 {
                    got.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                }
            }
            Ok(got)
        });
        std::thread::sleep(Duration::from_millis(100));
        let sending = Arc::new(AtomicBool::new(true));
        let flag = sending.clone();
        let sender = from.spawn(move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let (start, mut seq) = (Instant::now(), 0u32);
            while flag.load(Ordering::SeqCst) {
                sock.send_to(&seq.to_be_bytes(), SocketAddr::from((to, port)))?;
                seq += 1;
                // Pace against the clock, not the loop: 1 datagram per ms on average.
                let due = start + Duration::from_millis(seq as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(seq)
        });
        Ok(Self {
            sending,
            sender,
            receiver,
        })
    }

    /// Stops sending, waits for the receiver, and returns (sent, the first lost
    /// sequence numbers, how many were lost).
    pub fn stop(self) -> Result<(u32, Vec<u32>, usize)> {
        self.sending.store(false, Ordering::SeqCst);
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        let got = self
            .receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        let lost: Vec<u32> = (0..sent).filter(|s| !got.contains(s)).collect();
        let count = lost.len();
        Ok((sent, lost.into_iter().take(20).collect(), count))
    }
}

/// The TOML of one oxlay node.
pub struct NodeConfig<'a> {
    pub node: &'a str,
    pub pod_subnet: &'a str,
    pub decap: &'a str,
    pub vni: u32,
    /// (name, underlay address, pod subnet, optional vtep MAC)
    pub peers: Vec<(String, Ipv4Addr, String, Option<String>)>,
}

impl NodeConfig<'_> {
    pub fn toml(&self) -> String {
        let mut s = format!(
            "node_name = \"{}\"\nunderlay_interface = \"eth0\"\nvni = {}\npod_subnet = \"{}\"\ndecap = \"{}\"\npin_path = \"/sys/fs/bpf/oxlay-test/{}\"\n",
            self.node, self.vni, self.pod_subnet, self.decap, self.node
        );
        for (name, addr, subnet, mac) in &self.peers {
            s += &format!(
                "\n[[peers]]\nname = \"{name}\"\nunderlay_address = \"{addr}\"\npod_subnet = \"{subnet}\"\n"
            );
            if let Some(mac) = mac {
                s += &format!("vtep_mac = \"{mac}\"\n");
            }
        }
        s
    }
}

/// Hosts whose daemons share a store (etcd at `etcd`, or an embedded store file) and
/// have no static network: networks and endpoints come from the CLI.
pub struct StoreCluster {
    pub daemons: Vec<Daemon>,
    pub hosts: Vec<Host>,
    pub etcd: Option<Etcd>,
    pub underlay: Underlay,
    store_toml: String,
    /// More TOML for each host's config (e.g. a [docker] section).
    extra_toml: Vec<String>,
    names: Vec<String>,
    _store_dir: TempDir,
}

impl StoreCluster {
    /// With `etcd`, a real etcd runs on the underlay (192.168.50.1:2379); else the
    /// daemons share an embedded store file.
    pub fn new(hosts: usize, etcd: bool, lease_ttl_secs: u64) -> Result<Self> {
        let addrs: Vec<String> = (0..hosts)
            .map(|i| format!("{UNDERLAY_PREFIX}.{}", 11 + i))
            .collect();
        Self::with_hosts(&addrs, etcd, lease_ttl_secs)
    }

    /// Like `new`, with the hosts' underlay addresses given.
    pub fn with_hosts(addrs: &[String], etcd: bool, lease_ttl_secs: u64) -> Result<Self> {
        Self::with_config(addrs, etcd, lease_ttl_secs, Vec::new())
    }

    /// Like `with_hosts`, with `extra_toml[i]` added to host `i`'s config.
    pub fn with_config(
        addrs: &[String],
        etcd: bool,
        lease_ttl_secs: u64,
        extra_toml: Vec<String>,
    ) -> Result<Self> {
        let hosts = addrs.len();
        let mut underlay = Underlay::new()?;
        let dir = TempDir::new("store")?;
        let etcd_server = if etcd {
            Some(Etcd::start_in(&underlay.ns, UNDERLAY_SERVICE)?)
        } else {
            None
        };
        let store_toml = match &etcd_server {
            Some(e) => format!(
                "\n[store]\netcd_endpoints = [\"{}\"]\nlease_ttl_secs = {lease_ttl_secs}\n",
                e.endpoint
            ),
            None => format!(
                "\n[store]\npath = \"{}\"\nlease_ttl_secs = {lease_ttl_secs}\n",
                dir.path.join("store.json").display()
            ),
        };
        let tag = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut hs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            hs.push(underlay.add_host_at(&format!("host{i}"), addr)?);
        }
        let mut c = Self {
            daemons: Vec::new(),
            hosts: hs,
            etcd: etcd_server,
            underlay,
            store_toml,
            extra_toml,
            names: (0..hosts).map(|i| format!("s{i}-{tag}")).collect(),
            _store_dir: dir,
        };
        for i in 0..hosts {
            let d = c.start_daemon(i)?;
            c.daemons.push(d);
        }
        Ok(c)
    }

    /// Starts host `i`'s daemon (again).
    pub fn start_daemon(&self, i: usize) -> Result<Daemon> {
        self.start_daemon_with_env(i, &[])
    }

    /// Like `start_daemon`, with extra environment variables (e.g. `OXLAY_FAULT`).
    pub fn start_daemon_with_env(&self, i: usize, env: &[(&str, &str)]) -> Result<Daemon> {
        let config = format!(
            "node_name = \"{0}\"\nunderlay_interface = \"eth0\"\npin_path = \"/sys/fs/bpf/oxlay-test/{0}\"\n{1}\n{2}",
            self.names[i],
            self.store_toml,
            self.extra_toml.get(i).map(String::as_str).unwrap_or("")
        );
        let mut launcher = self.hosts[i].ns.command(oxlay_bin().to_str().unwrap());
        launcher.envs(env.iter().copied());
        Daemon::start_with(launcher, &self.names[i], &config)
    }

    /// Like `restart_daemon`, the new daemon with extra environment variables.
    pub fn restart_daemon_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> Result<()> {
        self.daemons[i].stop()?;
        let fresh = self.start_daemon_with_env(i, env)?;
        let mut old = std::mem::replace(&mut self.daemons[i], fresh);
        old.pin_path = None;
        Ok(())
    }

    /// Stops host `i`'s daemon (SIGTERM: the datapath stays; nothing to do if it was
    /// stopped or killed already) and starts a new one. Use this, not assignment: a
    /// dropped handle of a stopped daemon removes the node's pins.
    pub fn restart_daemon(&mut self, i: usize) -> Result<()> {
        self.daemons[i].stop()?;
        let fresh = self.start_daemon(i)?;
        let mut old = std::mem::replace(&mut self.daemons[i], fresh);
        // The old handle must not clean up after the new daemon.
        old.pin_path = None;
        Ok(())
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }
}

/// A ready overlay: hosts on an underlay, a daemon per host, containers attached.
/// Host `i` owns 10.244.`i+1`.0/24; its containers are 10.244.`i+1`.`2+j`.
pub struct Cluster {
    pub containers: Vec<Vec<Netns>>,
    pub daemons: Vec<Daemon>,
    pub hosts: Vec<Host>,
    pub underlay: Underlay,
    /// (node name, config) of every host, to start its daemon again.
    configs: Vec<(String, String)>,
    retired: Vec<Daemon>,
}

impl Cluster {
    pub fn new(hosts: usize, containers_per_host: usize, decap: &str) -> Result<Self> {
        Self::with_mtu(hosts, containers_per_host, decap, 1500)
    }

    /// Like `new`, on an underlay with the given MTU (e.g. 9000 for jumbo frames).
    pub fn with_mtu(
        hosts: usize,
        containers_per_host: usize,
        decap: &str,
        mtu: u32,
    ) -> Result<Self> {
        let mut underlay = Underlay::new()?;
        underlay.mtu = mtu;
        underlay
            .ns
            .ip(&["link", "set", "br0", "mtu", &mtu.to_string()])?;
        let tag = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut hs = Vec::new();
        for i in 0..hosts {
            hs.push(underlay.add_host(&format!("host{i}"), 11 + i as u8)?);
        }
        let names: Vec<String> = (0..hosts).map(|i| format!("h{i}-{tag}")).collect();
        let mut daemons = Vec::new();
        let mut configs = Vec::new();
        for (i, host) in hs.iter().enumerate() {
            let subnet = format!("10.244.{}.0/24", i + 1);
            let peers = (0..hosts)
                .filter(|&j| j != i)
                .map(|j| {
                    (
                        names[j].clone(),
                        hs[j].addr,
                        format!("10.244.{}.0/24", j + 1),
                        None,
                    )
                })
                .collect();
            let cfg = NodeConfig {
                node: &names[i],
                pod_subnet: &subnet,
                decap,
                vni: 42,
                peers,
            };
            configs.push((names[i].clone(), cfg.toml()));
            daemons.push(Daemon::start(host, &names[i], &cfg.toml())?);
        }
        let mut containers = Vec::new();
        for (i, host) in hs.iter().enumerate() {
            let mut cs = Vec::new();
            for j in 0..containers_per_host {
                let c = host.container(&format!("c{i}{j}"))?;
                daemons[i].attach(&c, &Self::container_addr(i, j).to_string())?;
                cs.push(c);
            }
            containers.push(cs);
        }
        Ok(Self {
            containers,
            daemons,
            hosts: hs,
            underlay,
            configs,
            retired: Vec::new(),
        })
    }

    /// Starts host `i`'s daemon again (after `stop` or `kill`), with the same config
    /// and the same API socket.
    pub fn restart_daemon(&mut self, i: usize) -> Result<()> {
        let (node, config) = &self.configs[i];
        let socket = self.daemons[i].socket.clone();
        let config = format!("api_socket = \"{}\"\n{config}", socket.display());
        let fresh = Daemon::start(&self.hosts[i], node, &config)?;
        let mut old = std::mem::replace(&mut self.daemons[i], fresh);
        // The old handle must not clean up after the new daemon; its directory (with
        // the socket's state file) stays until the cluster goes.
        old.pin_path = None;
        self.retired.push(old);
        Ok(())
    }

    pub fn container_addr(host: usize, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, host as u8 + 1, 2 + index as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_does_not_depend_on_how_it_is_split() {
        let mut whole = vec![0u8; 1000];
        PatternStream::new(7).fill(&mut whole);
        let mut parts = PatternStream::new(7);
        let mut joined = Vec::new();
        for n in [3usize, 250, 1, 746] {
            let mut b = vec![0u8; n];
            parts.fill(&mut b);
            joined.extend(b);
        }
        assert_eq!(whole, joined);
        let mut other = vec![0u8; 1000];
        PatternStream::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }
}
