//! Installs what the build and the tests need on a Debian 12 machine. Quick when all is
//! present: it only asks dpkg and looks for bpf-linker.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::step;

/// Debian packages and why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "rustc with a precompiled core for bpfel-unknown-none",
    ),
    ("cargo-web", "the cargo that goes with it"),
    ("libstd-rust-web-dev-bpf", "core for the BPF target"),
    (
        "llvm-22-dev",
        "LLVM for bpf-linker (same LLVM as rustc-web)",
    ),
    ("zlib1g-dev", "bpf-linker link dependency"),
    ("libzstd-dev", "bpf-linker link dependency"),
    ("iproute2", "namespaces, veths and bridges in tests"),
    ("iputils-ping", "ping in tests"),
    ("ethtool", "offload settings in the benchmark"),
    ("bpftool", "inspecting attached programs in tests"),
    ("tshark", "VXLAN capture in the interoperability test"),
    ("iperf3", "throughput benchmark"),
    ("sockperf", "latency benchmark"),
    (
        "protobuf-compiler",
        "protoc, for the etcd client's generated gRPC code",
    ),
    ("etcd-server", "a real etcd for the store tests"),
    (
        "qemu-system-x86",
        "booting the 6.1 and 6.12 kernels of the VM tests",
    ),
    ("busybox-static", "the VM tests' initramfs"),
    ("cpio", "packing the VM tests' initramfs"),
    (
        "binutils",
        "stripping the binaries that go into the VM tests' initramfs",
    ),
    (
        "docker.io",
        "the real Docker engine for the network driver tests",
    ),
    (
        "containernetworking-plugins",
        "reference CNI plugins chained with oxlay's in the CNI tests",
    ),
    (
        "containerd",
        "a real runtime (ctr run --cni) for the CNI tests",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
    } else {
        step(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))?;
    }
    if bpf_linker_ok() {
        step("bpf-linker: present");
    } else {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes 3-4 minutes, once)"
        ));
        sh(Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ]))?;
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    let home = std::env::var("HOME").unwrap_or_default();
    [format!("{home}/.cargo/bin/bpf-linker"), "bpf-linker".into()]
        .iter()
        .any(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
}

fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
