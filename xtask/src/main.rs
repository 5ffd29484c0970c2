//! `cargo xtask`: the project's commands. `install` and the others that call it set up a
//! fresh Debian 12 machine; every step prints what it does.
mod bench;
mod demo;
mod figure;
mod install;
mod lint;
mod testcount;
mod vm;

#[path = "../../userspace/build_ebpf.rs"]
mod build_ebpf;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "oxlay's build, test, demo and benchmark commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (Debian packages, bpf-linker). Idempotent.
    Install,
    /// Build the kernel programs alone.
    BuildEbpf,
    /// Install, build, and run the whole test suite.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the kernel-program and end-to-end tests inside Debian's 6.1 and 6.12
    /// kernels under qemu.
    VmTest {
        /// Only these kernel series (e.g. 6.1); all when none is given.
        series: Vec<String>,
        /// Only these suites (e.g. --suite wireguard), for working on one feature;
        /// all when none is given.
        #[arg(long = "suite")]
        suites: Vec<String>,
    },
    /// Install, build, and run the three-host demo.
    Demo {
        /// Where hosts share networks and endpoints: "embedded" or "etcd".
        #[arg(long, default_value = "embedded", value_parser = ["embedded", "etcd"])]
        store: String,
    },
    /// Install, build, and benchmark oxlay against host routing and the Linux vxlan.
    Bench {
        /// Rounds of each variant (interleaved).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds per throughput and latency run.
        #[arg(long, default_value_t = 4)]
        seconds: u32,
        /// Only this regime (wire, super-packets, per-packet); a partial run prints its
        /// table and leaves docs/benchmarks.md alone.
        #[arg(long, value_parser = ["wire", "super-packets", "per-packet"])]
        regime: Option<String>,
        /// Only these variants (repeatable); host-gw and linux-vxlan always run, as the
        /// baselines of the ratios.
        #[arg(long = "variant", value_parser = ["oxlay-tc", "oxlay-xdp", "oxlay-gre"])]
        variants: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Cmd) -> Result<()> {
    match command {
        Cmd::Install => install::run(),
        Cmd::BuildEbpf => {
            install::run()?;
            let object = build_ebpf::build_ebpf(&root(), &root().join("target/ebpf"))
                .map_err(anyhow::Error::msg)?;
            println!("==> eBPF object: {}", object.display());
            Ok(())
        }
        Cmd::Test { args } => {
            install::run()?;
            step("building oxlay (userspace and kernel programs)");
            cargo(&["build", "--workspace"])?;
            step("running the test suite (serially: tests share the kernel; a missing prerequisite fails its test)");
            let mut test_args: Vec<&str> = vec!["test", "--workspace"];
            let (filters, rest): (Vec<&String>, Vec<&String>) =
                args.iter().partition(|a| !a.starts_with('-'));
            test_args.extend(rest.iter().map(|s| s.as_str()));
            // Run every test binary even when one fails, so the counts are whole.
            test_args.push("--no-fail-fast");
            test_args.push("--");
            test_args.push("--test-threads=1");
            test_args.extend(filters.iter().map(|s| s.as_str()));
            let skip_log = root().join("target/test-skips.log");
            let _ = std::fs::remove_file(&skip_log);
            let mut total = testcount::cargo_test(&test_args, &skip_log)?;
            if total.failed == 0 && args.is_empty() {
                step("the kernel matrix: oxlay in Linux 6.1 and 6.12 VMs");
                total.add(vm::run(&[], &[])?);
            }
            total.print_summary();
            if total.failed > 0 {
                bail!("{} tests failed", total.failed);
            }
            Ok(())
        }
        Cmd::VmTest { series, suites } => {
            install::run()?;
            let counts = vm::run(&series, &suites)?;
            counts.print_summary();
            Ok(())
        }
        Cmd::Demo { store } => {
            install::run()?;
            step("building oxlay (release)");
            cargo(&["build", "--release", "-p", "oxlay"])?;
            demo::run(&root().join("target/release/oxlay"), store == "etcd")
        }
        Cmd::Bench {
            rounds,
            seconds,
            regime,
            variants,
        } => {
            install::run()?;
            step("building oxlay (release)");
            cargo(&[
                "build",
                "--release",
                "-p",
                "oxlay",
                "-p",
                "oxlay-testbed",
                // The daemon binary too: --examples alone builds only the examples.
                "--bins",
                "--examples",
            ])?;
            bench::run(&root(), rounds, seconds, regime.as_deref(), &variants)
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Prints a progress line.
pub fn step(what: &str) {
    println!("==> {what}");
}

/// Runs cargo (the one running xtask) in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root())
        .args(args)
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
