//! Open vSwitch on a test host: Debian's `ovsdb-server` and `ovs-vswitchd` (the kernel
//! datapath, `openvswitch` module) in the host's namespace, with their database,
//! sockets and logs in a directory of their own; killed on drop. The host's containers
//! hang on an OVS bridge, and a VXLAN or GRE port joins it to an oxlay host.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{cmd::run, Host, Netns, TempDir};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Why Open vSwitch cannot run here, if it cannot: the binaries (`cargo xtask
/// install`) or the kernel's `openvswitch` module (the VMs load it; the machine's
/// kernel has none).
pub fn ovs_missing() -> Option<String> {
    for binary in ["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"] {
        if which(binary).is_none() {
            return Some(format!("{binary} is missing (cargo xtask install)"));
        }
    }
    if !Path::new("/sys/module/openvswitch").exists() {
        return Some("the kernel has no openvswitch module loaded".to_owned());
    }
    None
}

fn which(binary: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.exists())
}

/// A running Open vSwitch in one host's namespace.
pub struct Ovs {
    children: Vec<Child>,
    db: String,
    dir: TempDir,
}

impl Ovs {
    /// Creates the database and starts `ovsdb-server` and `ovs-vswitchd` in `host`'s
    /// namespace.
    pub fn start(host: &Host) -> Result<Self> {
        let dir = TempDir::new("ovs")?;
        let base = dir.path.clone();
        let path = |name: &str| base.join(name).display().to_string();
        run(Command::new("ovsdb-tool").args(["create", &path("conf.db"), SCHEMA]))?;
        let mut ovs = Self {
            children: Vec::new(),
            db: format!("unix:{}", path("db.sock")),
            dir,
        };
        let server = ovs.spawn(
            &host.ns,
            "ovsdb-server",
            &[
                &path("conf.db"),
                &format!("--remote=punix:{}", path("db.sock")),
                &format!("--unixctl={}", path("ovsdb.ctl")),
                &format!("--log-file={}", path("ovsdb.log")),
            ],
        )?;
        ovs.children.push(server);
        ovs.wait_for(&path("db.sock"))?;
        ovs.vsctl(&["--no-wait", "init"])?;
        let vswitchd = ovs.spawn(
            &host.ns,
            "ovs-vswitchd",
            &[
                &ovs.db.clone(),
                &format!("--unixctl={}", path("vswitchd.ctl")),
                &format!("--log-file={}", path("vswitchd.log")),
            ],
        )?;
        ovs.children.push(vswitchd);
        ovs.wait_for(&path("vswitchd.ctl"))?;
        Ok(ovs)
    }

    fn spawn(&self, ns: &Netns, program: &str, args: &[&str]) -> Result<Child> {
        let dir = self.dir.path.display().to_string();
        // What a daemon says before its log file is open goes next to it.
        let stderr = std::fs::File::create(self.dir.path.join(format!("{program}.stderr")))?;
        ns.command(program)
            .args(args)
            .envs([
                ("OVS_RUNDIR", &dir),
                ("OVS_DBDIR", &dir),
                ("OVS_LOGDIR", &dir),
            ])
            .env("OVS_SYSCONFDIR", &dir)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {program}"))
    }

    /// Waits for the last daemon started to open `socket`; one that exits meanwhile
    /// is an error at once, with the logs.
    fn wait_for(&mut self, socket: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(socket).exists() {
            if let Some(child) = self.children.last_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("Open vSwitch exited with {status}:\n{}", self.logs());
                }
            }
            if Instant::now() > deadline {
                bail!("Open vSwitch did not come up ({socket}):\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `ovs-vsctl ARGS` against this switch's database.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ovs-vsctl")
            .arg(format!("--db={}", self.db))
            .arg("--timeout=10")
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The daemons' logs, for a failure message.
    pub fn logs(&self) -> String {
        [
            "ovsdb-server.stderr",
            "ovsdb.log",
            "ovs-vswitchd.stderr",
            "vswitchd.log",
        ]
        .iter()
        .map(|f| std::fs::read_to_string(self.dir.path.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
