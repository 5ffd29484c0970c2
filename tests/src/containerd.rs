//! A real containerd per test host, and `ctr run --cni` the way users run it: ctr
//! reads the CNI configuration from /etc/cni/net.d and plugins from /opt/cni/bin, which
//! here are the test's own folders, bind-mounted in a mount namespace of ctr's own.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{private_mounts_command, run, sh, Host, TempDir};

/// The image `import_image` makes.
pub const IMAGE: &str = "docker.io/library/oxlay-test:latest";

/// Why containerd tests cannot run here, if they cannot.
pub fn containerd_missing() -> Option<String> {
    for tool in ["/usr/bin/containerd", "/usr/bin/ctr"] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is missing (apt-get install containerd)"));
        }
    }
    None
}

pub struct Containerd {
    socket: PathBuf,
    host_ns: PathBuf,
    child: Child,
    dir: TempDir,
}

impl Containerd {
    /// Starts containerd in `host`'s network namespace and waits until it answers.
    pub fn start(host: &Host) -> Result<Self> {
        let dir = TempDir::new("containerd")?;
        let d = &dir.path;
        let socket = d.join("containerd.sock");
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", host.ns.path().display()))
            .arg("containerd")
            .arg("--address")
            .arg(&socket)
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start containerd")?;
        let mut me = Self {
            socket,
            host_ns: host.ns.path(),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while me.ctr(&["version"]).is_err() {
            if let Some(status) = me.child.try_wait()? {
                bail!("containerd exited ({status})");
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(me)
    }

    /// Runs `ctr` against this containerd; its output, trimmed.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ctr").arg("-a").arg(&self.socket).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Imports a busybox image (an OCI layout made here; no registry involved).
    pub fn import_image(&self, www: &str) -> Result<()> {
        let d = self.dir.path.join("image");
        let root = d.join("rootfs");
        let blobs = d.join("layout/blobs/sha256");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::create_dir_all(root.join("www"))?;
        std::fs::create_dir_all(&blobs)?;
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox"))
            .context("busybox-static is missing")?;
        for applet in ["sh", "ip", "ping", "wget", "httpd", "sleep", "timeout"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        std::fs::write(root.join("www/index.html"), www)?;
        let layer = d.join("layer.tar");
        sh(&[
            "tar",
            "-C",
            root.to_str().unwrap(),
            "-cf",
            layer.to_str().unwrap(),
            ".",
        ])?;
        let blob = |path: &Path| -> Result<(String, u64)> {
            let sum = sh(&["sha256sum", path.to_str().unwrap()])?;
            let digest = sum
                .split_whitespace()
                .next()
                .context("no digest")?
                .to_owned();
            let size = std::fs::metadata(path)?.len();
            std::fs::rename(path, blobs.join(&digest))?;
            Ok((format!("sha256:{digest}"), size))
        };
        let (layer_digest, layer_size) = blob(&layer)?;
        let config = d.join("config.json");
        std::fs::write(
            &config,
            serde_json::json!({
                "architecture": "amd64", "os": "linux", "config": { "Cmd": ["sh"] },
                "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            })
            .to_string(),
        )?;
        let (config_digest, config_size) = blob(&config)?;
        let manifest = d.join("manifest.json");
        std::fs::write(
            &manifest,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": config_digest, "size": config_size },
                "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                             "digest": layer_digest, "size": layer_size }],
            })
            .to_string(),
        )?;
        let (manifest_digest, manifest_size) = blob(&manifest)?;
        std::fs::write(
            d.join("layout/index.json"),
            serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest, "size": manifest_size,
                    "annotations": { "io.containerd.image.name": IMAGE,
                                     "org.opencontainers.image.ref.name": "latest" },
                }],
            })
            .to_string(),
        )?;
        std::fs::write(
            d.join("layout/oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let tar = d.join("image.tar");
        sh(&[
            "tar",
            "-C",
            d.join("layout").to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ])?;
        self.ctr(&["images", "import", tar.to_str().unwrap()])?;
        Ok(())
    }

    /// `ctr run --rm --cni IMAGE ID ARGS...` with `conf_dir` as /etc/cni/net.d and
    /// `bin_dir` as /opt/cni/bin; the container's output.
    pub fn run_cni(
        &self,
        conf_dir: &Path,
        bin_dir: &Path,
        id: &str,
        args: &[&str],
    ) -> Result<String> {
        let mut script = format!(
            "mkdir -p /etc/cni/net.d /opt/cni/bin && mount --bind {} /etc/cni/net.d && \
             mount --bind {} /opt/cni/bin && exec ctr -a {} run --rm --cni {IMAGE} {id}",
            conf_dir.display(),
            bin_dir.display(),
            self.socket.display()
        );
        for a in args {
            script += &format!(" '{a}'");
        }
        let out = run(private_mounts_command(&self.host_ns, &script).stdin(Stdio::null()))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(tasks) = self.ctr(&["tasks", "ls", "-q"]) {
            for id in tasks.split_whitespace() {
                let _ = self.ctr(&["tasks", "kill", "-s", "KILL", id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
