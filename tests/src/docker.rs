//! A real `dockerd` per test host: in the host's network namespace and a mount
//! namespace of its own, where /run/docker/plugins is the host's own plugin folder
//! (so each dockerd finds its own host's oxlay under the same plugin name).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{private_mounts_command, run, Host, TempDir};

/// Debian's docker.io client (the engine's own version; another `docker` on PATH may
/// be a different one).
pub const DOCKER: &str = "/usr/bin/docker";

/// The test image: busybox with an httpd document root saying `IMAGE_GREETING`.
pub const IMAGE: &str = "oxlay-test-busybox";
pub const IMAGE_GREETING: &str = "hello from oxlay";

/// Why Docker tests cannot run here, if they cannot.
pub fn docker_missing() -> Option<String> {
    for tool in ["/usr/sbin/dockerd", DOCKER] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is missing (apt-get install docker.io)"));
        }
    }
    None
}

pub struct Dockerd {
    /// The host's plugin folder, /run/docker/plugins inside dockerd's mount namespace.
    pub plugins: PathBuf,
    /// dockerd's data, exec root, socket and log.
    socket: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
}

/// One host's Docker folders, made before oxlay starts (its config names both sockets).
pub struct DockerDirs {
    dir: TempDir,
}

impl DockerDirs {
    pub fn new(tag: &str) -> Result<Self> {
        let dir = TempDir::new(&format!("docker-{tag}"))?;
        std::fs::create_dir_all(dir.path.join("plugins"))?;
        std::fs::create_dir_all(dir.path.join("engine"))?;
        Ok(Self { dir })
    }

    pub fn plugins(&self) -> PathBuf {
        self.dir.path.join("plugins")
    }

    /// Where oxlay serves its plugin for this host's dockerd.
    pub fn plugin_socket(&self) -> PathBuf {
        self.plugins().join("oxlay.sock")
    }

    fn engine(&self) -> PathBuf {
        self.dir.path.join("engine")
    }

    /// dockerd's API socket.
    pub fn engine_socket(&self) -> PathBuf {
        self.engine().join("docker.sock")
    }

    /// The `[docker]` section of this host's oxlay config.
    pub fn oxlay_toml(&self) -> String {
        format!(
            "[docker]\nenabled = true\nsocket = \"{}\"\nengine_socket = \"{}\"\n",
            self.plugin_socket().display(),
            self.engine_socket().display()
        )
    }
}

impl Dockerd {
    /// Starts dockerd in `host`'s namespace on `dirs` and waits until it answers.
    pub fn start(host: &Host, dirs: &DockerDirs) -> Result<Self> {
        let d = dirs.engine();
        std::fs::File::create(d.join("dockerd.log"))?;
        let child = Self::start_in(host, &dirs.plugins(), &d)?;
        let mut me = Self {
            plugins: dirs.plugins(),
            socket: dirs.engine_socket(),
            child: Some(child),
            dir: d,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!("dockerd exited ({status}): {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs the docker client against this dockerd; its output, trimmed.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Imports the test image from busybox-static, no registry involved.
    pub fn import_image(&self) -> Result<()> {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::create_dir_all(root.join("www"))?;
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox"))
            .context("busybox-static is missing")?;
        for applet in [
            "sh", "ip", "ping", "wget", "httpd", "sleep", "cat", "timeout", "nslookup",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        std::fs::write(root.join("www/index.html"), IMAGE_GREETING)?;
        let mut import = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | {DOCKER} -H unix://{} import - {IMAGE}",
                root.display(),
                self.socket.display()
            ))
            .stdout(Stdio::null())
            .spawn()?;
        if !import.wait()?.success() {
            bail!("docker import failed");
        }
        Ok(())
    }

    /// SIGTERM and wait: dockerd stops its containers and releases their networks.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = std::fs::read_to_string(self.dir.join("docker.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .unwrap_or(child.id() as i32);
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("dockerd did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops dockerd and starts it again on the same data.
    pub fn restart(&mut self, host: &Host) -> Result<()> {
        self.stop()?;
        let again = Self::start_in(host, &self.plugins, &self.dir)?;
        self.child = Some(again);
        self.wait_ready()
    }

    fn start_in(host: &Host, plugins: &Path, d: &Path) -> Result<Child> {
        let script = format!(
            "mkdir -p /run/docker/plugins && mount --bind {plugins} /run/docker/plugins && \
             exec dockerd --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock \
             --pidfile {d}/docker.pid --iptables=false --ip6tables=false --bridge=none \
             --dns 169.254.1.1",
            plugins = plugins.display(),
            d = d.display(),
        );
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("dockerd.log"))?;
        private_mounts_command(&host.ns.path(), &script)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start dockerd")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Containers first, so their endpoints go while oxlay still runs.
            if let Ok(ids) = self.docker(&["ps", "-aq"]) {
                for id in ids.split_whitespace() {
                    let _ = self.docker(&["rm", "-f", id]);
                }
            }
        }
        if let Err(e) = self.stop() {
            eprintln!("stopping dockerd: {e:#}");
        }
    }
}
