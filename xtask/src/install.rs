//! Installs what the build and the tests need on a Debian 12 machine. It checks the files
//! and binaries the build and the tests actually use, not package names, so a package
//! installed by hand for some other reason cannot hide a missing step; a check that still
//! fails after the install stops with its name. Quick when all is present.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::step;

/// What one Debian package must provide.
enum Provides {
    /// An executable found on `PATH` (or in the sbin folders root's `PATH` usually has).
    Binary(&'static str),
    /// A file or folder at this path.
    Path(&'static str),
}
use Provides::{Binary, Path as File};

/// Each need: the package that brings it, what must then exist, and why it is needed.
const NEEDS: &[(&str, Provides, &str)] = &[
    (
        "rustc-web",
        File("/usr/bin/rustc"),
        "rustc that goes with the precompiled BPF core",
    ),
    ("cargo-web", File("/usr/bin/cargo"), "the cargo for it"),
    (
        "libstd-rust-web-dev-bpf",
        File("/usr/lib/rustlib/bpfel-unknown-none/lib"),
        "core for the BPF target",
    ),
    (
        "llvm-22-dev",
        File("/usr/lib/llvm-22/bin/llvm-config"),
        "LLVM for bpf-linker (the same LLVM as rustc-web)",
    ),
    (
        "zlib1g-dev",
        File("/usr/include/zlib.h"),
        "bpf-linker link dependency",
    ),
    (
        "libzstd-dev",
        File("/usr/include/zstd.h"),
        "bpf-linker link dependency",
    ),
    (
        "protobuf-compiler",
        Binary("protoc"),
        "protoc, for the etcd client's generated gRPC code",
    ),
    (
        "libprotobuf-dev",
        File("/usr/include/google/protobuf/descriptor.proto"),
        "the well-known .proto files the etcd client's protos import",
    ),
    (
        "iproute2",
        Binary("ip"),
        "namespaces, veths and bridges in tests",
    ),
    ("iproute2", Binary("tc"), "clsact filters in tests"),
    ("iputils-ping", Binary("ping"), "ping in tests"),
    (
        "ethtool",
        Binary("ethtool"),
        "offload settings in tests and the benchmark",
    ),
    (
        "bpftool",
        Binary("bpftool"),
        "inspecting attached programs in tests",
    ),
    (
        "tshark",
        Binary("tshark"),
        "VXLAN capture in the interoperability test",
    ),
    (
        "nftables",
        Binary("nft"),
        "the daemon's NAT table (masquerade) and its tests",
    ),
    (
        "dnsmasq-base",
        Binary("dnsmasq"),
        "the outside DNS server of the names tests",
    ),
    ("iperf3", Binary("iperf3"), "throughput benchmark"),
    ("sockperf", Binary("sockperf"), "latency benchmark"),
    (
        "etcd-server",
        Binary("etcd"),
        "a real etcd for the store tests",
    ),
    (
        "prometheus",
        Binary("prometheus"),
        "a real Prometheus server that scrapes daemons in the metrics test",
    ),
    (
        "prometheus",
        Binary("promtool"),
        "checking the example alert rules (and their unit tests) in docs/",
    ),
    (
        "qemu-system-x86",
        Binary("qemu-system-x86_64"),
        "booting the 6.1 and 6.12 kernels of the VM tests",
    ),
    (
        "busybox-static",
        File("/usr/bin/busybox"),
        "the VM tests' initramfs and the CNI test's image",
    ),
    ("cpio", Binary("cpio"), "packing the VM tests' initramfs"),
    (
        "binutils",
        Binary("strip"),
        "stripping the binaries that go into the VM tests' initramfs",
    ),
    (
        "docker.io",
        Binary("dockerd"),
        "the real Docker engine for the network driver tests",
    ),
    (
        "docker.io",
        Binary("docker"),
        "the Docker CLI for the same tests",
    ),
    (
        "containernetworking-plugins",
        File("/usr/lib/cni/portmap"),
        "reference CNI plugins chained with oxlay's in the CNI tests",
    ),
    (
        "containerd",
        Binary("containerd"),
        "a real runtime for the CNI tests",
    ),
    (
        "containerd",
        Binary("ctr"),
        "ctr run --cni in the CNI tests",
    ),
    (
        "openvswitch-switch",
        File("/usr/sbin/ovs-vswitchd"),
        "Open vSwitch hosts in the VM interoperability test",
    ),
    (
        "openvswitch-common",
        File("/usr/sbin/ovsdb-server"),
        "Open vSwitch's database server, same test",
    ),
    (
        "openvswitch-switch",
        File("/usr/bin/ovs-vsctl"),
        "Open vSwitch's configuration tool, same test",
    ),
    (
        "openvswitch-common",
        File("/usr/bin/ovsdb-tool"),
        "creating Open vSwitch's database, same test",
    ),
    (
        "openvswitch-switch",
        File("/usr/share/openvswitch/vswitch.ovsschema"),
        "Open vSwitch's database schema, same test",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    let missing = missing_needs();
    if missing.is_empty() {
        step(&format!(
            "build and test tools: all {} present (files and binaries checked)",
            NEEDS.len()
        ));
    } else {
        for (package, provides, why) in &missing {
            step(&format!(
                "missing {} ({why}): from {package}",
                describe(provides)
            ));
        }
        // Each package once, in the order first needed (a package provides several files).
        let mut packages: Vec<&str> = Vec::new();
        for (package, _, _) in &missing {
            if !packages.contains(package) {
                packages.push(package);
            }
        }
        step(&format!(
            "installing Debian packages: {}",
            packages.join(" ")
        ));
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages))?;
        let still = missing_needs();
        if !still.is_empty() {
            let what: Vec<String> = still
                .iter()
                .map(|(p, provides, _)| format!("{} (package {p})", describe(provides)))
                .collect();
            bail!(
                "still missing after apt-get install: {}; install them by hand and run again",
                what.join(", ")
            );
        }
        step("build and test tools: all present now");
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
        if !bpf_linker_ok() {
            bail!("bpf-linker was built but does not run (`bpf-linker --version`)");
        }
    }
    Ok(())
}

fn missing_needs() -> Vec<&'static (&'static str, Provides, &'static str)> {
    NEEDS.iter().filter(|(_, p, _)| !present(p)).collect()
}

fn describe(provides: &Provides) -> String {
    match provides {
        Binary(b) => format!("binary `{b}`"),
        File(p) => format!("file {p}"),
    }
}

fn present(provides: &Provides) -> bool {
    match provides {
        File(p) => Path::new(p).exists(),
        Binary(b) => find_binary(b).is_some(),
    }
}

/// Looks for an executable on `PATH` and in the sbin folders (CI's `PATH` may lack them).
pub fn find_binary(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain([
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        });
    found
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
