//! The `oxlay` daemon under test: its binary, its config, starting and stopping it,
//! and its CLI (endpoints, counters).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{run, Host, Netns, TempDir};

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

    /// Makes this handle leave the pins alone on drop: for an old handle whose node a
    /// new daemon runs now, which must not clean up after it.
    pub(crate) fn leave_pins(&mut self) {
        self.pin_path = None;
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

    /// `oxlay endpoint create`: wires `sandbox` into `network`, at `ip` or at the
    /// address IPAM picks. Returns the CLI's line (it names the interface) and the
    /// address the endpoint got.
    pub fn create_endpoint(
        &self,
        network: &str,
        sandbox: &Netns,
        ip: Option<&str>,
    ) -> Result<(String, Ipv4Addr)> {
        self.create_named_endpoint(network, sandbox, ip, &[])
    }

    /// Like `create_endpoint`, with names the network's containers find it by.
    pub fn create_named_endpoint(
        &self,
        network: &str,
        sandbox: &Netns,
        ip: Option<&str>,
        names: &[&str],
    ) -> Result<(String, Ipv4Addr)> {
        let mut args = vec![
            "endpoint",
            "create",
            "--network",
            network,
            "--netns",
            &sandbox.name,
        ];
        if let Some(ip) = ip {
            args.extend(["--ip", ip]);
        }
        for name in names {
            args.extend(["--name", name]);
        }
        let out = self.cli(&args)?;
        // "created endpoint NETNS on NETWORK (vni N): eth0 as ADDRESS (MAC, ...) via ..."
        let address = out
            .split(" as ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address in the output of endpoint create: {out}"))?;
        Ok((out, address))
    }

    /// One counter's value from `oxlay stats --json`.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let v: serde_json::Value = serde_json::from_str(&self.cli(&["stats", "--json"])?)?;
        v["counters"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .and_then(|c| c["packets"].as_u64())
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

/// A running `oxlay ... --socket S` (e.g. `oxlay monitor`) whose output lines arrive as
/// they are printed; killed on drop.
pub struct CliStream {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl CliStream {
    /// The next line of standard output within `limit`.
    pub fn next_line(&self, limit: Duration) -> Result<String> {
        self.lines
            .recv_timeout(limit)
            .map_err(|_| anyhow::anyhow!("no output line within {limit:?}"))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for CliStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `oxlay args --socket <this daemon's>` and streams its output.
    pub fn cli_stream(&self, args: &[&str]) -> Result<CliStream> {
        let mut child = Command::new(oxlay_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start oxlay {args:?}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(CliStream { child, lines })
    }
}
