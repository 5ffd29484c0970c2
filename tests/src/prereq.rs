//! Prerequisites (root, etcd) and the one way a test gives up without one: skipped with
//! a reason, or failed under `cargo xtask test`.
use std::{io::Write, process::Command};

/// Whether this process may create namespaces and load programs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Set by `cargo xtask test` (and inside the VMs): a missing prerequisite fails the test.
pub const REQUIRE_ALL_ENV: &str = "OXLAY_TEST_REQUIRE_ALL";
/// Where skips are recorded, one line each, so the runner can count them.
pub const SKIP_LOG_ENV: &str = "OXLAY_TEST_SKIP_LOG";

/// The one way a test gives up for lack of a prerequisite (`missing` names it). Under
/// `cargo xtask test` (`OXLAY_TEST_REQUIRE_ALL=1`) that fails the test with the name of
/// what is missing; elsewhere (a plain `cargo test` as a normal user) the test is
/// skipped, with the reason printed and recorded. Returns true when the caller must
/// return.
pub fn skip(missing: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    if std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: missing prerequisite: {missing} (a test under `cargo xtask test` may not skip; run `cargo xtask install` and run as root)");
    }
    eprintln!("skipped: {test}: {missing}");
    if let Ok(log) = std::env::var(SKIP_LOG_ENV) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {missing}");
        }
    }
    true
}

/// Tests that need root skip (see [`skip`]) when not run as root.
pub fn skip_without_root() -> bool {
    !is_root() && skip("root, to create namespaces and load eBPF programs")
}

/// Whether an etcd binary runs here.
pub fn has_etcd() -> bool {
    Command::new("etcd").arg("--version").output().is_ok()
}

/// Like `skip_without_root`, for tests that also need an etcd binary.
pub fn skip_without_root_or_etcd() -> bool {
    skip_without_root() || skip_without_etcd()
}

/// Tests that need a real etcd skip (see [`skip`]) without one.
pub fn skip_without_etcd() -> bool {
    !has_etcd() && skip("the etcd binary (package etcd-server; `cargo xtask install`)")
}
