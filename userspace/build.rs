//! Builds the eBPF object (crate `ebpf/`) for `bpfel-unknown-none` and puts it in
//! OUT_DIR, where `datapath.rs` embeds it.
//!
//! The kernel programs need Debian's rustc (it ships a precompiled `core` for the BPF
//! target) and bpf-linker; `cargo xtask` installs both. The userspace build may use any
//! other toolchain, so the eBPF build runs as its own cargo with a clean environment.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let ebpf_dir = root.join("ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    for watched in [
        "ebpf/src",
        "ebpf/Cargo.toml",
        "ebpf/Cargo.lock",
        "common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=OXLAY_EBPF_OBJECT");

    let object = out_dir.join("oxlay.bpf.o");
    // A prebuilt object may be supplied (e.g. by a packager); otherwise build it.
    if let Ok(prebuilt) = env::var("OXLAY_EBPF_OBJECT") {
        std::fs::copy(&prebuilt, &object).expect("cannot copy OXLAY_EBPF_OBJECT");
        return;
    }
    for tool in [DEBIAN_CARGO, DEBIAN_RUSTC] {
        if !Path::new(tool).exists() {
            panic!("{tool} is missing: the eBPF programs need Debian's rustc-web toolchain; run `cargo xtask install` (or `cargo xtask build-ebpf`)");
        }
    }
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new(DEBIAN_CARGO);
    // Start from a clean slate: the outer cargo's variables (RUSTC, RUSTFLAGS,
    // CARGO_ENCODED_RUSTFLAGS, target dir, ...) belong to the userspace build.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key);
        }
    }
    let path = format!(
        "{}:{}",
        env::var("HOME")
            .map(|h| format!("{h}/.cargo/bin"))
            .unwrap_or_default(),
        env::var("PATH").unwrap_or_default()
    );
    let status = cmd
        .current_dir(&ebpf_dir)
        .env("PATH", path)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .expect("cannot run Debian's cargo for the eBPF build");
    if !status.success() {
        panic!("building the eBPF programs failed (see above); `cargo xtask install` installs the toolchain");
    }
    let built = target_dir.join("bpfel-unknown-none/release/oxlay");
    std::fs::copy(&built, &object)
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
}
