//! Runs `cargo test` with every prerequisite required, and counts what libtest reports:
//! passed, failed and ignored tests, plus the skips the testbed recorded (there should be
//! none: under `cargo xtask test` a missing prerequisite fails its test).
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::root;

/// Set for every test run by xtask, here and inside the VMs (the testbed reads it).
pub const REQUIRE_ALL_ENV: &str = "OXLAY_TEST_REQUIRE_ALL";
const SKIP_LOG_ENV: &str = "OXLAY_TEST_SKIP_LOG";

/// Test counts summed over libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Tests that skipped for a missing prerequisite (outside `cargo xtask test` only).
    pub skipped: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.skipped += other.skipped;
    }

    /// Adds one libtest summary line (`test result: ok. 13 passed; 0 failed; 1 ignored; ...`).
    pub fn add_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return false;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
        true
    }

    /// The closing line: `N passed, N failed, N skipped`.
    pub fn print_summary(&self) {
        println!(
            "==> tests: {} passed, {} failed, {} skipped ({} ignored, {} skipped for a missing prerequisite)",
            self.passed,
            self.failed,
            self.ignored + self.skipped,
            self.ignored,
            self.skipped
        );
    }
}

/// Runs cargo with `args`, echoing its output, and returns the counts. A cargo that fails
/// to build or whose tests fail still returns counts (failures are counted); a run that
/// executed no test at all is an error.
pub fn cargo_test(args: &[&str], skip_log: &Path) -> Result<Counts> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .current_dir(root())
        .args(args)
        .env(REQUIRE_ALL_ENV, "1")
        .env(SKIP_LOG_ENV, skip_log)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cargo}"))?;
    let mut counts = Counts::default();
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        counts.add_line(&line);
    }
    let status = child.wait()?;
    counts.skipped = std::fs::read_to_string(skip_log)
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0);
    if !status.success() && counts.failed == 0 {
        bail!(
            "cargo {} failed ({status}) before any test failed: see above",
            args.join(" ")
        );
    }
    if counts.passed + counts.failed == 0 {
        bail!("cargo {} ran no test", args.join(" "));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summaries_are_summed() {
        let mut c = Counts::default();
        assert!(c.add_line("test result: ok. 13 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.2s"));
        assert!(c.add_line(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 5 filtered out"
        ));
        assert!(!c.add_line("test foo ... ok"));
        assert_eq!(
            c,
            Counts {
                passed: 15,
                failed: 3,
                ignored: 1,
                skipped: 0
            }
        );
    }
}
