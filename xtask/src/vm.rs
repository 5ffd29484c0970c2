//! `cargo xtask vm-test`: the kernel-program suite (BPF_PROG_TEST_RUN) inside real
//! Debian kernels, 6.1 LTS and 6.12 LTS, booted with qemu (software emulation) from a
//! busybox initramfs built here. The machine's own kernel runs the full suite already.
//!
//! The initramfs holds busybox, the test binary and the C libraries it links; `/init`
//! mounts what the tests need, runs them, prints one `VMTEST PASS|FAIL` line and
//! powers off. A kernel that is not installable is reported, not skipped silently.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{root, step};

/// Kernel series and the Debian package name pattern of each.
const KERNELS: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$"),
];

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
echo "VMTEST kernel $(uname -r)"
cd /tmp
if /programs --test-threads=1 > /tmp/out 2>&1; then echo "VMTEST PASS"; else echo "VMTEST FAIL"; fi
cat /tmp/out
poweroff -f
"#;

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads (once) the newest package of a series and returns its vmlinuz.
fn kernel(dir: &Path, series: &str, pattern: &str) -> Result<PathBuf> {
    let found = sh(Command::new("apt-cache").args(["search", "--names-only", pattern]))?;
    let mut names: Vec<&str> = found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    names.sort_by_key(|n| {
        // Sort by the numbers in the name: 6.1.0-50 after 6.1.0-47.
        n.split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    let name = names
        .last()
        .with_context(|| format!("no Debian package matches {pattern} (run apt-get update)"))?;
    let unpacked = dir.join(name);
    if !unpacked.join("boot").exists() {
        step(&format!("downloading {name} for the {series} VM"));
        sh(Command::new("apt-get")
            .current_dir(dir)
            .args(["download", name]))?;
        let deb = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&format!("{name}_")) && f.ends_with(".deb"))
            })
            .context("apt-get download left no .deb")?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        std::fs::remove_file(deb).ok();
    }
    std::fs::read_dir(unpacked.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("vmlinuz"))
        })
        .context("the kernel package has no vmlinuz")
}

/// Builds the test binary and returns its path.
fn test_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "test",
            "-p",
            "oxlay-testbed",
            "--test",
            "programs",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the test binary failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "programs")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo reported no test executable")
}

/// The initramfs: busybox, the test binary, the libraries it needs, /init.
fn initramfs(dir: &Path, binary: &Path) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox"))
        .context("busybox-static is missing")?;
    for applet in ["sh", "mount", "mkdir", "cat", "uname", "poweroff", "echo"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    std::fs::copy(binary, tree.join("programs"))?;
    // The dynamic loader and libraries, at the paths the binary expects.
    for line in sh(Command::new("ldd").arg(binary))?.lines() {
        let path = line
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            let target = tree.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap())?;
            std::fs::copy(path, &target)?;
        }
    }
    let init = tree.join("init");
    std::fs::write(&init, INIT)?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let files = sh(Command::new("find").arg(".").current_dir(&tree))?;
    let image = dir.join("initramfs.cpio");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&tree)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&image)?)
        .spawn()
        .context("cpio is missing")?;
    cpio.stdin.take().unwrap().write_all(files.as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("cpio failed");
    }
    Ok(image)
}

pub fn run() -> Result<()> {
    let dir = root().join("target/vm");
    std::fs::create_dir_all(&dir)?;
    step("building the kernel-program tests for the VMs");
    let binary = test_binary()?;
    let image = initramfs(&dir, &binary)?;
    let mut failed = Vec::new();
    for (series, pattern) in KERNELS {
        let vmlinuz = kernel(&dir, series, pattern)?;
        step(&format!(
            "booting Linux {series} ({}) under qemu",
            vmlinuz.display()
        ));
        let start = Instant::now();
        let out = Command::new("timeout")
            .arg("600")
            .args([
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-m",
                "1024",
                "-smp",
                "2",
                "-nographic",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&vmlinuz)
            .arg("-initrd")
            .arg(&image)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .output()
            .context("qemu-system-x86_64 is missing")?;
        let console = String::from_utf8_lossy(&out.stdout);
        let kernel_line = console
            .lines()
            .find_map(|l| l.find("VMTEST kernel").map(|i| &l[i..]))
            .unwrap_or("(no kernel line)");
        let passed = console.lines().any(|l| l.trim_end() == "VMTEST PASS");
        println!(
            "    {} in {:.0?}",
            kernel_line.trim(),
            start.elapsed().min(Duration::from_secs(600))
        );
        for line in console
            .lines()
            .filter(|l| l.starts_with("test ") || l.contains("panicked"))
        {
            println!("    {line}");
        }
        if !passed {
            println!("{console}");
            failed.push(series.to_string());
        }
    }
    if !failed.is_empty() {
        bail!(
            "the kernel-program tests failed on Linux {}",
            failed.join(", ")
        );
    }
    println!("vm-test: {} passed, 0 failed", KERNELS.len());
    Ok(())
}
