//! `cargo xtask vm-test`: oxlay inside real Debian kernels, 6.1 LTS and 6.12 LTS,
//! booted with qemu (software emulation) from a busybox initramfs built here. The
//! machine's own kernel runs the full suite already.
//!
//! Each VM runs the kernel-program suite (BPF_PROG_TEST_RUN) and the end-to-end tests
//! with real daemons: hosts and containers in namespaces on a bridge, cross-host
//! traffic in both decap modes, SIGTERM/SIGKILL restarts and upgrades without loss,
//! uninstall, containers reaching an outside host through the NAT, oxlay's GRE
//! with the kernel's gretap device (the machine's kernel has no GRE module),
//! layer-2 networks with a machine on an 802.1Q VLAN (nor 8021q), and Open vSwitch
//! hosts with VXLAN and GRE ports (nor openvswitch), and encryption between hosts with
//! WireGuard (nor wireguard). Before 6.6 these exercise the netlink (cls_bpf) attachment instead
//! of TCX links.
//!
//! The initramfs holds busybox, iproute2's `ip` and `tc`, bpftool, nft, the `oxlay`
//! binary, the test binaries, the C libraries they link and the kernel's modules for
//! veth, bridge, clsact/cls_bpf, (for egress) conntrack, NAT and nftables, and GRE. `/init` loads the modules, runs each suite, prints one
//! `VMTEST <suite> PASS|FAIL` line per suite and powers off. A kernel that is not
//! installable is reported, not skipped silently.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{root, step, testcount::Counts};

/// Kernel series and the Debian package name pattern of each.
const KERNELS: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$"),
];

/// A suite: (name, test binary, libtest arguments).
type Suite = (&'static str, &'static str, &'static str);

/// The suites each VM runs.
const SUITES: &[Suite] = &[
    ("programs", "programs", ""),
    ("l2-programs", "l2_programs", ""),
    (
        "overlay",
        "overlay",
        "three_hosts sigterm_keeps_the_datapath_and_uninstall_removes_it",
    ),
    ("restart", "restart", ""),
    ("egress", "egress", ""),
    // The ring buffer and its switch on the oldest kernel.
    ("monitor", "monitor", ""),
    // Probes with an ifindex in BPF_PROG_TEST_RUN's context.
    ("explain", "explain", ""),
    // Probes answered by the peer's program (XDP_TX and TC redirect), path MTU.
    ("doctor", "doctor", "doctor_probes_peers"),
    // The kernel's gretap on the other side needs ip_gre, which the machine lacks.
    (
        "gre",
        "gre",
        "--include-ignored interoperates_with_the_linux_gretap_device",
    ),
    // A tagged machine on the LAN needs 8021q, which the machine lacks; the cls_bpf
    // attachment (6.1) to the parent NIC and its removal at uninstall.
    (
        "l2",
        "l2",
        "--include-ignored l2_tagged l2_containers l2_restart",
    ),
    // Encryption needs the wireguard module, which the machine lacks.
    ("wireguard", "wireguard", "--include-ignored wireguard_"),
    // Open vSwitch needs the openvswitch module, which the machine lacks.
    (
        "ovs",
        "ovs",
        "--include-ignored interoperates_with_an_open_vswitch",
    ),
];

/// Modules the end-to-end tests need (Debian builds them as modules), dependencies
/// first; one built into a kernel is skipped.
const MODULES: &[&str] = &[
    "net/llc/llc",
    "net/802/stp",
    "net/bridge/bridge",
    "drivers/net/veth",
    "net/sched/sch_ingress",
    "net/sched/cls_bpf",
    // Egress: conntrack, NAT and nftables' masquerade.
    "lib/libcrc32c",
    "net/ipv4/netfilter/nf_defrag_ipv4",
    "net/ipv6/netfilter/nf_defrag_ipv6",
    "net/netfilter/nf_conntrack",
    "net/netfilter/nf_nat",
    "net/netfilter/nfnetlink",
    "net/netfilter/nf_tables",
    "net/netfilter/nft_chain_nat",
    "net/netfilter/nft_masq",
    // doctor's test: a firewall on the switch between the hosts (meta in the bridge
    // family, which `udp dport` needs).
    "net/bridge/netfilter/nft_meta_bridge",
    // GRE: the kernel's gretap device that oxlay interoperates with.
    "net/ipv4/gre",
    "net/ipv4/ip_tunnel",
    "net/ipv4/ip_gre",
    // Layer-2 networks: a machine on an 802.1Q VLAN (stp and llc are above).
    "net/802/garp",
    "net/802/mrp",
    "net/8021q/8021q",
    // Open vSwitch's kernel datapath and its VXLAN and GRE ports (conntrack, NAT and
    // ip_gre are above).
    "net/ipv4/udp_tunnel",
    "net/ipv6/ip6_udp_tunnel",
    "drivers/net/vxlan/vxlan",
    "net/nsh/nsh",
    "net/netfilter/nf_conncount",
    "net/psample/psample",
    "net/openvswitch/openvswitch",
    "net/openvswitch/vport-vxlan",
    "net/openvswitch/vport-gre",
    // WireGuard (udp_tunnel and ip6_udp_tunnel are above) and its ciphers.
    "lib/crypto/libcurve25519-generic",
    "arch/x86/crypto/curve25519-x86_64",
    "lib/crypto/libchacha",
    "arch/x86/crypto/chacha-x86_64",
    "arch/x86/crypto/poly1305-x86_64",
    "lib/crypto/libchacha20poly1305",
    "drivers/net/wireguard/wireguard",
];

const INIT_HEAD: &str = r#"#!/bin/sh
export PATH=/bin OXLAY_BIN=/bin/oxlay OXLAY_TEST_REQUIRE_ALL=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# What udev would make: nft reads its input from /dev/stdin.
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
for m in /modules/*.ko; do insmod "$m" || echo "VMTEST cannot load $m"; done
echo "VMTEST kernel $(uname -r)"
cd /tmp
suite() {
    name=$1; shift
    if "$@" --test-threads=1 > /tmp/out 2>&1; then echo "VMTEST $name PASS"; else echo "VMTEST $name FAIL"; fi
    cat /tmp/out
}
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

/// Builds the test binaries and the `oxlay` binary; returns (test name, path) pairs
/// and the path of `oxlay`.
fn binaries() -> Result<(Vec<(String, PathBuf)>, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec![
        "test",
        "-p",
        "oxlay-testbed",
        "--no-run",
        "--message-format=json",
    ];
    for (_, test, _) in SUITES {
        args.extend(["--test", test]);
    }
    let out = Command::new(&cargo)
        .current_dir(root())
        .args(&args)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let tests: Vec<(String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["kind"][0] == "test")
        .filter_map(|v| {
            let name = v["target"]["name"].as_str()?.to_owned();
            Some((name, PathBuf::from(v["executable"].as_str()?)))
        })
        .collect();
    for (_, test, _) in SUITES {
        if !tests.iter().any(|(name, _)| name == test) {
            bail!("cargo built no test binary {test}");
        }
    }
    let status = Command::new(&cargo)
        .current_dir(root())
        .args(["build", "-p", "oxlay", "--bin", "oxlay"])
        .status()?;
    if !status.success() {
        bail!("building oxlay failed");
    }
    Ok((tests, root().join("target/debug/oxlay")))
}

/// Copies an executable into the tree without its debug information (the initramfs
/// lives in the VM's memory), and the libraries it links at the paths it expects.
fn add_executable(tree: &Path, from: &Path, to: &str) -> Result<()> {
    let target = tree.join(to);
    std::fs::create_dir_all(target.parent().unwrap())?;
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg(from)
        .arg("-o")
        .arg(&target)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(from, &target).with_context(|| format!("cannot copy {}", from.display()))?;
    }
    for line in sh(Command::new("ldd").arg(from))?.lines() {
        let path = line
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            let lib = tree.join(path.trim_start_matches('/'));
            if !lib.exists() {
                std::fs::create_dir_all(lib.parent().unwrap())?;
                std::fs::copy(path, &lib)?;
            }
        }
    }
    Ok(())
}

/// Copies the kernel's modules the tests need into `/modules`, numbered in load order
/// and uncompressed (busybox insmod reads plain .ko files).
fn add_modules(tree: &Path, kernel_root: &Path) -> Result<()> {
    let modules = tree.join("modules");
    let _ = std::fs::remove_dir_all(&modules);
    std::fs::create_dir_all(&modules)?;
    let base = std::fs::read_dir(kernel_root.join("lib/modules"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .next()
        .context("the kernel package has no lib/modules")?;
    let builtin = std::fs::read_to_string(base.join("modules.builtin")).unwrap_or_default();
    for (i, module) in MODULES.iter().enumerate() {
        let name = module.rsplit('/').next().unwrap();
        // Zero-padded: the shell loads them in glob (lexical) order.
        let target = modules.join(format!("{i:02}-{name}.ko"));
        let plain = base.join(format!("kernel/{module}.ko"));
        let xz = base.join(format!("kernel/{module}.ko.xz"));
        if plain.exists() {
            std::fs::copy(&plain, &target)?;
        } else if xz.exists() {
            let raw = Command::new("busybox").arg("xzcat").arg(&xz).output()?;
            if !raw.status.success() {
                bail!("cannot decompress {}", xz.display());
            }
            std::fs::write(&target, raw.stdout)?;
        } else if builtin.contains(&format!("kernel/{module}.ko")) {
            continue;
        } else {
            bail!("the kernel has no module {module}");
        }
    }
    Ok(())
}

/// The parts of the initramfs every kernel shares: busybox, ip, tc, oxlay, the test
/// binaries with their libraries, /init.
fn initramfs_tree(
    dir: &Path,
    tests: &[(String, PathBuf)],
    oxlay: &Path,
    suites: &[&Suite],
) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "tmp", "run", "var"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    // iproute2 keeps namespaces in /var/run/netns, the tests look in /run/netns.
    std::os::unix::fs::symlink("../run", tree.join("var/run"))?;
    std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox"))
        .context("busybox-static is missing")?;
    for applet in [
        "sh", "mount", "mkdir", "cat", "uname", "poweroff", "echo", "insmod", "nsenter", "ping",
        "sysctl", "sleep", "kill", "ln", "timeout",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    // bridge: the layer-2 test reads the parent NIC's unicast filter.
    // bpftool: the map-migration test pins maps the way an older build did; nft: the
    // daemon's NAT table (and the doctor test's firewall); ethtool: the doctor test's
    // offloads.
    for tool in ["ip", "tc", "bpftool", "nft", "bridge", "ethtool"] {
        add_executable(
            &tree,
            &Path::new("/usr/sbin").join(tool),
            &format!("bin/{tool}"),
        )?;
    }
    add_executable(&tree, oxlay, "bin/oxlay")?;
    // Open vSwitch for the interoperability test: its daemons, tools and schema.
    for tool in [
        "/usr/sbin/ovsdb-server",
        "/usr/sbin/ovs-vswitchd",
        "/usr/bin/ovsdb-tool",
        "/usr/bin/ovs-vsctl",
    ] {
        let name = tool.rsplit('/').next().unwrap();
        add_executable(&tree, Path::new(tool), &format!("bin/{name}"))?;
    }
    let schema = "usr/share/openvswitch/vswitch.ovsschema";
    std::fs::create_dir_all(tree.join(schema).parent().unwrap())?;
    std::fs::copy(Path::new("/").join(schema), tree.join(schema))
        .context("the Open vSwitch schema is missing (cargo xtask install)")?;
    let mut init = INIT_HEAD.to_owned();
    for (suite, test, args) in suites.iter().copied() {
        let (_, path) = tests.iter().find(|(name, _)| name == test).unwrap();
        add_executable(&tree, path, test)?;
        init += &format!("suite {suite} /{test} {args}\n");
    }
    init += "poweroff -f\n";
    let init_path = tree.join("init");
    std::fs::write(&init_path, init)?;
    std::fs::set_permissions(
        &init_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(tree)
}

/// Packs the tree, with the modules of one kernel, into a cpio archive.
fn pack(tree: &Path, kernel_root: &Path, image: &Path) -> Result<()> {
    add_modules(tree, kernel_root)?;
    let files = sh(Command::new("find").arg(".").current_dir(tree))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(tree)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(image)?)
        .spawn()
        .context("cpio is missing")?;
    cpio.stdin.take().unwrap().write_all(files.as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("cpio failed");
    }
    Ok(())
}

/// Runs the suites named in `suites` (all when empty) in the kernels of `only` (all
/// when empty).
pub fn run(only: &[String], suites: &[String]) -> Result<Counts> {
    let selected: Vec<&Suite> = SUITES
        .iter()
        .filter(|(name, _, _)| suites.is_empty() || suites.iter().any(|s| s == name))
        .collect();
    if selected.len() < suites.len().max(1) {
        let known: Vec<&str> = SUITES.iter().map(|(s, _, _)| *s).collect();
        bail!("unknown suite in {suites:?}; known: {}", known.join(", "));
    }
    let kernels: Vec<_> = KERNELS
        .iter()
        .filter(|(series, _)| only.is_empty() || only.iter().any(|o| o == series))
        .collect();
    if kernels.is_empty() {
        let known: Vec<&str> = KERNELS.iter().map(|(s, _)| *s).collect();
        bail!("no kernel series {only:?}; known: {}", known.join(", "));
    }
    let dir = root().join("target/vm");
    std::fs::create_dir_all(&dir)?;
    step("building oxlay and its tests for the VMs");
    let (tests, oxlay) = binaries()?;
    let tree = initramfs_tree(&dir, &tests, &oxlay, &selected)?;
    let image = dir.join("initramfs.cpio");
    let mut failed = Vec::new();
    let mut counts = Counts::default();
    for (series, pattern) in &kernels {
        let vmlinuz = kernel(&dir, series, pattern)?;
        let kernel_root = vmlinuz.parent().and_then(Path::parent).unwrap();
        pack(&tree, kernel_root, &image)?;
        step(&format!(
            "booting Linux {series} ({}) under qemu: {} suites",
            vmlinuz.display(),
            selected.len()
        ));
        let start = Instant::now();
        let out = Command::new("timeout")
            .arg("900")
            .args([
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-m",
                "2048",
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
        println!(
            "    {} in {:.0?}",
            kernel_line.trim(),
            start.elapsed().min(Duration::from_secs(900))
        );
        for line in console.lines().filter(|l| {
            l.starts_with("test ") || l.contains("panicked") || l.starts_with("VMTEST cannot")
        }) {
            println!("    {line}");
        }
        let mut ok = true;
        for (suite, _, _) in selected.iter().copied() {
            let (passed, suite_counts) = suite_result(&console, suite);
            let verdict = match (passed, suite_counts.passed) {
                (false, _) => "FAILED".to_owned(),
                (true, 0) => "FAILED: ran no test".to_owned(),
                (true, n) => format!("passed ({n} tests)"),
            };
            println!("    {suite}: {verdict}");
            ok &= passed && suite_counts.passed > 0;
            counts.add(suite_counts);
        }
        if !ok {
            println!("{console}");
            failed.push(series.to_string());
        }
    }
    if !failed.is_empty() {
        bail!("the VM tests failed on Linux {}", failed.join(", "));
    }
    println!("vm-test: {} kernels passed", kernels.len());
    Ok(counts)
}

/// Whether a suite's `/init` line says PASS, and libtest's counts from its output (the
/// lines between its `VMTEST <suite>` line and the next `VMTEST` line).
fn suite_result(console: &str, suite: &str) -> (bool, Counts) {
    let mut counts = Counts::default();
    let mut verdict = None;
    let mut inside = false;
    for line in console.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("VMTEST ") {
            inside = rest.starts_with(&format!("{suite} "));
            if inside {
                verdict = Some(rest.ends_with(" PASS"));
            }
            continue;
        }
        if inside {
            counts.add_line(line);
        }
    }
    (verdict == Some(true), counts)
}
