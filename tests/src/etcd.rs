//! A real etcd server, on loopback or inside a namespace, that tests can stop, pause
//! and restart on the same data.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{Netns, TempDir};

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
    /// with a stalled etcd. (In a namespace too: `ip netns exec` execs etcd in place,
    /// so the child is etcd itself.)
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
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
