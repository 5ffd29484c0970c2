//! Builds the eBPF crate for `bpfel-unknown-none`. Shared, as source, by
//! `userspace/build.rs` and `cargo xtask build-ebpf` (xtask cannot depend on a crate
//! whose build script needs the toolchain that xtask installs).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Debian's rustc-web: the one compiler here with a precompiled `core` for BPF.
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Builds `<root>/ebpf` into `target_dir` and returns the object's path.
pub fn build_ebpf(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    for tool in [DEBIAN_CARGO, DEBIAN_RUSTC] {
        if !Path::new(tool).exists() {
            return Err(format!(
                "{tool} is missing: the eBPF programs need Debian's rustc-web toolchain; run `cargo xtask install`"
            ));
        }
    }
    let mut cmd = Command::new(DEBIAN_CARGO);
    // A clean slate: an outer cargo's variables (RUSTC, RUSTFLAGS, target dir, ...)
    // belong to the userspace build.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key);
        }
    }
    let home_bin = std::env::var("HOME")
        .map(|h| format!("{h}/.cargo/bin:"))
        .unwrap_or_default();
    let status = cmd
        .current_dir(root.join("ebpf"))
        .env(
            "PATH",
            format!("{home_bin}{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf uses #![feature(asm_experimental_arch)]; this compiler is stable.
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF makes maps and programs readable in bpftool.
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
        .arg(target_dir)
        .status()
        .map_err(|e| format!("cannot run {DEBIAN_CARGO}: {e}"))?;
    if !status.success() {
        return Err("building the eBPF programs failed (see above)".into());
    }
    Ok(target_dir.join("bpfel-unknown-none/release/oxlay"))
}
