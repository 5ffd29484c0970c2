//! Running programs: `run` and `sh` fail with the program's stderr, and
//! `private_mounts_command` runs a script in a namespace with mounts of its own.
use std::{
    path::Path,
    process::{Command, Output},
};

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Runs a shell-like argument list, e.g. `sh(&["ip", "link"])`.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = run(Command::new(args[0]).args(&args[1..]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sh -c script` in namespace `netns` (a path) and in a mount namespace of its own,
/// where the script may bind-mount over system folders (e.g. /run/docker/plugins)
/// without touching the machine's.
pub fn private_mounts_command(netns: &Path, script: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display())).args([
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
    ]);
    c
}
