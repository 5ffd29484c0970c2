//! Network namespaces, deleted on drop, and the removal of namespaces left by runs
//! whose process is gone.
use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{sh, tempdir::unique_tag};

/// Prefix of every namespace this crate makes.
pub const PREFIX: &str = "oxt";

/// Removes namespaces left by runs whose process is gone.
pub fn remove_stale() {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `oxt<pid>-<seq>-<role>`, with lo up.
    pub fn new(role: &str) -> Result<Self> {
        let name = format!("{PREFIX}{}-{role}", unique_tag());
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A handle on a namespace someone else owns (not deleted on drop).
    pub fn existing(name: &str) -> std::mem::ManuallyDrop<Netns> {
        std::mem::ManuallyDrop::new(Netns {
            name: name.to_owned(),
        })
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A command that runs inside the namespace without remounting /sys (so bpffs and
    /// cgroups stay visible), for daemons.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg(program);
        c
    }

    /// Programs on TC ingress of `interface` in this namespace: (name, program id).
    /// TCX attachments from 6.6 on (Debian's bpftool 7.1 cannot list them), cls_bpf
    /// filters (`tc filter show`) before.
    pub fn tc_ingress(&self, interface: &'static str) -> Result<Vec<(String, u32)>> {
        use aya::{
            programs::{SchedClassifier, TcAttachType},
            util::KernelVersion,
        };
        if KernelVersion::current()? < KernelVersion::new(6, 6, 0) {
            let out = self.exec(&["tc", "filter", "show", "dev", interface, "ingress"])?;
            return Ok(out
                .lines()
                .filter_map(|line| {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let after = |key: &str| {
                        let i = words.iter().position(|w| *w == key)?;
                        words.get(i + 1).copied()
                    };
                    let id = after("id")?.parse().ok()?;
                    Some((after("name").unwrap_or("?").to_owned(), id))
                })
                .collect());
        }
        self.spawn(move || {
            let (_, programs) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress)?;
            Ok(programs
                .iter()
                .map(|p| (p.name_as_str().unwrap_or("?").to_owned(), p.id()))
                .collect())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("query thread panicked"))?
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Pings `addr` `count` times; Ok when all replies arrived.
    pub fn ping(&self, addr: &str, count: u32) -> Result<()> {
        self.exec(&[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            "-q",
            addr,
        ])
        .map(|_| ())
        .with_context(|| format!("ping from {} to {addr}", self.name))
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            // SAFETY: file is an open namespace file; setns changes only this thread,
            // which ends when `f` returns.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}
