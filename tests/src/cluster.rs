//! Ready clusters: hosts on an underlay with a daemon each, either sharing a store
//! (`StoreCluster`: networks and endpoints come from the CLI) or configured statically
//! with containers attached (`Cluster`); and `eventually`, to wait for them to converge.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    oxlay_bin, tempdir::unique_tag, Daemon, Etcd, Host, Netns, NodeConfig, TempDir, Underlay,
    UNDERLAY_PREFIX, UNDERLAY_SERVICE,
};

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
        Self::with_setup(addrs, etcd, lease_ttl_secs, extra_toml, |_| Ok(()))
    }

    /// Like `with_config`, with `setup` run on the hosts before their daemons start
    /// (e.g. to give them a second NIC).
    pub fn with_setup(
        addrs: &[String],
        etcd: bool,
        lease_ttl_secs: u64,
        extra_toml: Vec<String>,
        setup: impl FnOnce(&[Host]) -> Result<()>,
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
        let tag = unique_tag();
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
        setup(&c.hosts)?;
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
        // The socket (and the state files beside it) stay where they are across
        // restarts, as on a real host.
        let socket = self._store_dir.path.join(format!("{}.sock", self.names[i]));
        let config = format!(
            "api_socket = \"{3}\"\nnode_name = \"{0}\"\nunderlay_interface = \"eth0\"\npin_path = \"/sys/fs/bpf/oxlay-test/{0}\"\n{1}\n{2}",
            self.names[i],
            self.store_toml,
            self.extra_toml.get(i).map(String::as_str).unwrap_or(""),
            socket.display()
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
        old.leave_pins();
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
        old.leave_pins();
        Ok(())
    }

    /// Replaces the extra TOML of host `i`'s config (for its next start).
    pub fn set_extra_toml(&mut self, i: usize, toml: String) {
        if self.extra_toml.len() <= i {
            self.extra_toml.resize(i + 1, String::new());
        }
        self.extra_toml[i] = toml;
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// A new sandbox namespace (named after `role`) with an endpoint on `network`,
    /// created through host `h`'s daemon at `ip`, or where IPAM puts it when `None`.
    /// Returns the namespace and the endpoint's address.
    pub fn endpoint(
        &self,
        h: usize,
        network: &str,
        role: &str,
        ip: Option<&str>,
    ) -> Result<(Netns, Ipv4Addr)> {
        let sandbox = Netns::new(role)?;
        let (_, address) = self.daemons[h].create_endpoint(network, &sandbox, ip)?;
        Ok((sandbox, address))
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
        Self::with_config(hosts, containers_per_host, decap, mtu, "")
    }

    /// Like `with_mtu`, with `extra` (top-level TOML, e.g. `encap = "gre"`) in every
    /// node's config.
    pub fn with_config(
        hosts: usize,
        containers_per_host: usize,
        decap: &str,
        mtu: u32,
        extra: &str,
    ) -> Result<Self> {
        let mut underlay = Underlay::new()?;
        underlay.mtu = mtu;
        underlay
            .ns
            .ip(&["link", "set", "br0", "mtu", &mtu.to_string()])?;
        let tag = unique_tag();
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
            let toml = format!("{extra}\n{}", cfg.toml());
            daemons.push(Daemon::start(host, &names[i], &toml)?);
            configs.push((names[i].clone(), toml));
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
        old.leave_pins();
        self.retired.push(old);
        Ok(())
    }

    pub fn container_addr(host: usize, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, host as u8 + 1, 2 + index as u8)
    }
}
