//! `cargo xtask bench`: oxlay (both decap modes, and GRE) against plain host routing ("host-gw")
//! and the kernel's vxlan device, in one run, interleaved, three regimes (wire-size
//! frames between hosts, the headline; veth super-packets; per packet), plus the
//! programs' ns/packet under test-run. Prints a table of ratios (medians with their
//! min-max) and writes it to docs/benchmarks.md.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use oxlay_testbed::{sh, Cluster, Daemon, Host, Netns, Underlay};

use crate::{demo::catch_interrupt, step};

/// The ways of connecting two containers on two hosts.
const VARIANTS: [&str; 5] = [
    "host-gw",
    "linux-vxlan",
    "oxlay-tc",
    "oxlay-xdp",
    "oxlay-gre",
];
/// Every variant's containers use this MTU, so all carry the same bytes per packet.
const MTU: u32 = 1450;

/// Two hosts with one container each; fields drop in order (containers first).
struct Setup {
    client: Netns,
    server: Netns,
    _daemons: Vec<Daemon>,
    _hosts: Vec<Host>,
    underlay: Underlay,
    server_addr: Ipv4Addr,
}

impl Setup {
    fn new(variant: &str) -> Result<Self> {
        match variant {
            "oxlay-tc" | "oxlay-xdp" | "oxlay-gre" => {
                let mut c = match variant {
                    // GRE with TC decapsulation, the default mode.
                    "oxlay-gre" => Cluster::with_config(2, 1, "tc", 1500, "encap = \"gre\"")?,
                    _ => Cluster::new(2, 1, variant.trim_start_matches("oxlay-"))?,
                };
                let server = c.containers[1].pop().unwrap();
                let client = c.containers[0].pop().unwrap();
                Ok(Self {
                    client,
                    server,
                    _daemons: std::mem::take(&mut c.daemons),
                    _hosts: std::mem::take(&mut c.hosts),
                    underlay: c.underlay,
                    server_addr: Cluster::container_addr(1, 0),
                })
            }
            "host-gw" | "linux-vxlan" => {
                let mut underlay = Underlay::new()?;
                let hosts = [underlay.add_host("h0", 11)?, underlay.add_host("h1", 12)?];
                let macs = ["02:00:00:00:00:01", "02:00:00:00:00:02"];
                let mut containers = Vec::new();
                for (i, host) in hosts.iter().enumerate() {
                    let other = 1 - i;
                    let net = [10, 244, other as u8 + 1];
                    if variant == "host-gw" {
                        host.ns.ip(&[
                            "route",
                            "add",
                            &format!("10.244.{}.0/24", other + 1),
                            "via",
                            &hosts[other].addr.to_string(),
                        ])?;
                    } else {
                        host.linux_vxlan(
                            macs[i],
                            [10, 244, i as u8 + 1],
                            &[(hosts[other].addr, net, macs[other])],
                        )?;
                    }
                    containers.push(host.routed_container(
                        &format!("c{i}"),
                        Ipv4Addr::new(10, 244, i as u8 + 1, 2),
                        Ipv4Addr::new(10, 244, i as u8 + 1, 1),
                        MTU,
                    )?);
                }
                let server = containers.pop().unwrap();
                let client = containers.pop().unwrap();
                Ok(Self {
                    client,
                    server,
                    _daemons: Vec::new(),
                    _hosts: hosts.into(),
                    underlay,
                    server_addr: Ipv4Addr::new(10, 244, 2, 2),
                })
            }
            _ => bail!("unknown variant {variant}"),
        }
    }

    fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.client, &self.server, &self.underlay.ns];
        v.extend(self._hosts.iter().map(|h| &h.ns));
        v
    }

    /// Sets the offloads of every veth of the setup for `regime`.
    fn set_offloads(&self, regime: Regime) -> Result<()> {
        let underlay_ns = self.underlay.ns.name.clone();
        let host_ns: Vec<String> = self._hosts.iter().map(|h| h.ns.name.clone()).collect();
        for ns in self.namespaces() {
            for line in ns.ip(&["-o", "link", "show", "type", "veth"])?.lines() {
                let name = line
                    .split(": ")
                    .nth(1)
                    .unwrap_or("")
                    .split('@')
                    .next()
                    .unwrap_or("");
                if name.is_empty() {
                    continue;
                }
                // The wire between hosts: the bridge ports and the hosts' eth0.
                let wire = ns.name == underlay_ns || (host_ns.contains(&ns.name) && name == "eth0");
                if let Some([tso, gso, gro]) = regime.offloads(wire) {
                    ns.exec(&["ethtool", "-K", name, "tso", tso, "gso", gso, "gro", gro])?;
                }
            }
        }
        Ok(())
    }

    fn throughput_gbps(&self, seconds: u32) -> Result<f64> {
        let addr = self.server_addr.to_string();
        let _server = Background::start(
            &self.server,
            &["iperf3", "-s", "-1", "-A", "1", "-B", &addr],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let out = self.client.exec(&[
            "iperf3",
            "-c",
            &addr,
            "-t",
            &seconds.to_string(),
            "-A",
            "0",
            "-J",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 printed no JSON")?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .context("iperf3 JSON has no end.sum_received.bits_per_second")
    }

    /// The programs' cost on live traffic: one more TCP run with the kernel's
    /// per-program statistics on; for each oxlay program that ran on the sending or
    /// receiving host, (name, runs, ns per run). Empty for the baselines.
    fn live_program_costs(&self, seconds: u32) -> Result<Vec<(String, u64, f64)>> {
        // The client's host encapsulates, the server's host decapsulates (ACKs go the
        // other way through the other host's programs, not counted here).
        let (Some(sender), Some(receiver)) = (self._daemons.first(), self._daemons.get(1)) else {
            return Ok(Vec::new());
        };
        let mut programs = Vec::new();
        for (daemon, side) in [(sender, "oxlay_from_container"), (receiver, "oxlay_decap")] {
            let dir = daemon
                .pin_path()
                .context("the daemon's config names no pin path")?;
            for entry in std::fs::read_dir(dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                let on_underlay = name.starts_with("link_eth0_");
                let wanted = if side == "oxlay_decap" {
                    on_underlay
                } else {
                    !on_underlay && name.ends_with(side)
                };
                if wanted {
                    let link: serde_json::Value = serde_json::from_str(&sh(&[
                        "bpftool",
                        "-j",
                        "link",
                        "show",
                        "pinned",
                        dir.join(&name).to_str().unwrap(),
                    ])?)?;
                    let id = link["prog_id"]
                        .as_u64()
                        .context("bpftool shows no prog_id")?;
                    programs.push(id);
                }
            }
        }
        let stats = |id: u64| -> Result<(String, u64, u64)> {
            let p: serde_json::Value = serde_json::from_str(&sh(&[
                "bpftool",
                "-j",
                "prog",
                "show",
                "id",
                &id.to_string(),
            ])?)?;
            Ok((
                p["name"].as_str().unwrap_or("?").to_owned(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ))
        };
        let all = || {
            programs
                .iter()
                .map(|&id| stats(id))
                .collect::<Result<Vec<_>>>()
        };
        sh(&["sysctl", "-qw", "kernel.bpf_stats_enabled=1"])?;
        let measured = all().and_then(|before| {
            self.throughput_gbps(seconds)?;
            Ok((before, all()?))
        });
        // Off again whatever happened: the statistics cost every program ~20 ns a run.
        sh(&["sysctl", "-qw", "kernel.bpf_stats_enabled=0"])?;
        let (before, after) = measured?;
        Ok(before
            .into_iter()
            .zip(after)
            .map(|((name, t0, n0), (_, t1, n1))| {
                let runs = n1.saturating_sub(n0);
                (
                    name,
                    runs,
                    t1.saturating_sub(t0) as f64 / runs.max(1) as f64,
                )
            })
            .collect())
    }

    /// UDP request/response latency (µs): p50 and p99.
    fn latency_us(&self, seconds: u32) -> Result<(f64, f64)> {
        let addr = self.server_addr.to_string();
        let _server = Background::start(
            &self.server,
            &[
                "taskset", "-c", "1", "sockperf", "sr", "-i", &addr, "-p", "11111",
            ],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let out = self.client.exec(&[
            "taskset",
            "-c",
            "0",
            "sockperf",
            "pp",
            "-i",
            &addr,
            "-p",
            "11111",
            "-t",
            &seconds.to_string(),
        ])?;
        let pct = |p: &str| -> Result<f64> {
            out.lines()
                .find(|l| l.contains(&format!("percentile {p} =")))
                .and_then(|l| l.rsplit('=').next())
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no percentile {p} in sockperf output:\n{out}"))
        };
        Ok((pct("50.000")?, pct("99.000")?))
    }
}

/// A process in a namespace, killed on drop.
struct Background(Child);

impl Background {
    fn start(ns: &Netns, args: &[&str]) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {args:?}"))?;
        Ok(Self(child))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How packets cross the virtual wire between hosts.
#[derive(Clone, Copy, Debug)]
enum Regime {
    /// MTU-size frames between hosts, as a physical NIC sends them (TSO and GSO off on
    /// the underlay links, GRO on); the containers' veths as each variant sets them up.
    /// The headline.
    Wire,
    /// veth offloads on between hosts: 64 KB super-packets cross the underlay.
    SuperPackets,
    /// TSO, GSO and GRO off everywhere: the cost of each packet.
    PerPacket,
}

impl Regime {
    const ALL: [Regime; 3] = [Regime::Wire, Regime::SuperPackets, Regime::PerPacket];

    /// The name `--regime` takes.
    fn name(self) -> &'static str {
        match self {
            Regime::Wire => "wire",
            Regime::SuperPackets => "super-packets",
            Regime::PerPacket => "per-packet",
        }
    }

    /// The figure's panel title.
    fn short_title(self) -> &'static str {
        match self {
            Regime::Wire => "wire-size frames (the headline)",
            Regime::SuperPackets => "64 KB super-packets on veth",
            Regime::PerPacket => "per packet (offloads off)",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Regime::Wire => "wire-size frames between hosts (underlay TSO/GSO off, GRO on)",
            Regime::SuperPackets => "veth offloads on (64 KB super-packets between hosts)",
            Regime::PerPacket => "offloads off everywhere (per packet)",
        }
    }

    /// tso, gso, gro for a veth (`wire`: an underlay link); `None`: as the variant set
    /// it up (veth defaults, or what oxlay's daemon chose for a container's veth).
    fn offloads(self, wire: bool) -> Option<[&'static str; 3]> {
        match (self, wire) {
            (Regime::Wire, true) => Some(["off", "off", "on"]),
            (Regime::SuperPackets, true) => Some(["on", "on", "on"]),
            (Regime::Wire | Regime::SuperPackets, false) => None,
            (Regime::PerPacket, _) => Some(["off", "off", "off"]),
        }
    }
}

#[derive(Default, Clone)]
struct Samples {
    gbps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// "median (min-max)".
fn spread(v: &[f64], decimals: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.*} ({:.*}–{:.*})",
        decimals,
        median(v),
        decimals,
        min,
        decimals,
        max
    )
}

/// Control-plane convergence (tests/examples/bench_convergence.rs), as Markdown.
fn convergence(root: &Path) -> Result<String> {
    step("control-plane convergence: a joining host, and 1,000 / 10,000 synthetic hosts in etcd");
    let out = sh(&[root
        .join("target/release/examples/bench_convergence")
        .to_str()
        .unwrap()])?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    let mut r = String::new();
    writeln!(r, "## Control plane (etcd)\n")?;
    writeln!(
        r,
        "A host joins a running cluster and creates an endpoint; time from its daemon's start until \
         every other host routes the new block, and until a container on each can ping the endpoint:\n"
    )?;
    writeln!(
        r,
        "| other hosts | routed everywhere (s) | pingable from all (s) |\n| ---: | ---: | ---: |"
    )?;
    if let Some(joins) = v["join"].as_object() {
        for (n, j) in joins {
            writeln!(
                r,
                "| {n} | {:.3} | {:.3} |",
                j["routed_s"].as_f64().unwrap_or(f64::NAN),
                j["pingable_s"].as_f64().unwrap_or(f64::NAN)
            )?;
        }
    }
    writeln!(
        r,
        "\nOne daemon with an endpoint on a network; N synthetic hosts, each with a block of that network, \
         written to etcd by 32 concurrent writers. Converged: from the first write until the daemon's route \
         map holds all N. Memory: the daemon's resident set before and after.\n"
    )?;
    writeln!(r, "| hosts | writing took (s) | converged (s) | after the last write (s) | RSS before (MiB) | RSS after (MiB) |")?;
    writeln!(r, "| ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for s in v["scale"].as_array().into_iter().flatten() {
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        writeln!(
            r,
            "| {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            s["hosts"],
            f("write_s"),
            f("converged_s"),
            f("converged_s") - f("write_s"),
            f("rss_before_mib"),
            f("rss_after_mib")
        )?;
    }
    writeln!(
        r,
        "\nThe daemon's CPU time per store event once the N hosts are in (100 events of each kind, \
         30 ms apart, so each is handled alone): another host's endpoint (a key routing does not read), \
         a block of a network this host has an endpoint on, and a block of a network it has none on.\n"
    )?;
    writeln!(r, "| hosts | CPU while converging (s) | endpoint event (ms) | block event, own network (ms) | block event, other network (ms) |")?;
    writeln!(r, "| ---: | ---: | ---: | ---: | ---: |")?;
    for s in v["scale"].as_array().into_iter().flatten() {
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        writeln!(
            r,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s["hosts"],
            f("cpu_converge_s"),
            f("cpu_ms_per_unrelated_event"),
            f("cpu_ms_per_block_event"),
            f("cpu_ms_per_other_network_block_event")
        )?;
    }
    Ok(r)
}

/// `only_regime` / `only_variants`: a partial run (for experiments) that prints its
/// tables and leaves docs/benchmarks.md alone.
/// The table of what `oxlay monitor` costs the forwarding programs (10 routes).
fn monitor_cost(programs: &serde_json::Value) -> Result<String> {
    let m = &programs["monitor"];
    let mut t = String::new();
    writeln!(
        t,
        "## What `oxlay monitor` costs (ns per packet, BPF_PROG_TEST_RUN)\n"
    )?;
    writeln!(
        t,
        "The forwarding programs as above (10 routes, without the no-op's fixed cost), with \
         nobody listening, with a listener for drops (`oxlay monitor`, the default: forwarded \
         packets then pay only the check of the switch), and with one tracing every forwarded \
         packet (`--type all --sample 1`: an event each, read from the ring buffer meanwhile; \
         `events` says how many were read).\n"
    )?;
    writeln!(
        t,
        "| program | nobody listens | drops listener | tracing every packet | events read |\n| --- | ---: | ---: | ---: | ---: |"
    )?;
    for (name, key, base) in [
        (
            "encapsulation (TC), with a flow hash",
            "encap_hashed_tc",
            "set_hash_tc",
        ),
        ("decapsulation (TC)", "decap_tc", "noop_tc"),
        ("decapsulation (XDP)", "decap_xdp", "noop_xdp"),
    ] {
        let base = programs[base].as_f64().unwrap_or(f64::NAN);
        let ns = |case: &str| m[case][key].as_f64().unwrap_or(f64::NAN) - base;
        writeln!(
            t,
            "| {name} | {:.0} | {:.0} | {:.0} | {} |",
            ns("none"),
            ns("drops"),
            ns("trace_all"),
            m["trace_all"]["events"]
        )?;
    }
    writeln!(t)?;
    Ok(t)
}

pub fn run(
    root: &Path,
    rounds: u32,
    seconds: u32,
    only_regime: Option<&str>,
    only_variants: &[String],
) -> Result<()> {
    if rounds == 0 || seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    std::env::set_var("OXLAY_BIN", root.join("target/release/oxlay"));
    catch_interrupt();
    let partial = only_regime.is_some() || !only_variants.is_empty();
    let variants: Vec<&str> = VARIANTS
        .into_iter()
        .enumerate()
        .filter(|(i, v)| *i < 2 || only_variants.is_empty() || only_variants.iter().any(|o| o == v))
        .map(|(_, v)| v)
        .collect();
    let regimes: Vec<Regime> = Regime::ALL
        .into_iter()
        .filter(|r| only_regime.is_none_or(|o| o == r.name()))
        .collect();
    // Per-program statistics add ~20 ns per run; keep them off while measuring.
    let _ = sh(&["sysctl", "-qw", "kernel.bpf_stats_enabled=0"]);

    let mut report = String::new();
    writeln!(report, "# Benchmarks\n")?;
    writeln!(
        report,
        "![TCP throughput and UDP latency per variant and regime: bars at the median, whiskers min to max](benchmarks.svg)\n"
    )?;
    writeln!(
        report,
        "Measured by `cargo xtask bench` on {} ({} CPUs), kernel {}. Two hosts, one container each, \
         all variants at container MTU {MTU}, interleaved {rounds} rounds of {seconds} s; medians shown. \
         host-gw: plain routing between hosts, no encapsulation. linux-vxlan: the kernel's vxlan device, \
         flannel-style. oxlay-tc / oxlay-xdp: oxlay's eBPF datapath with TC or XDP decapsulation. \
         oxlay-gre: oxlay's datapath with GRE instead of VXLAN (TC decapsulation).\n",
        sh(&["date", "-u", "+%Y-%m-%d"])?.trim(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        sh(&["uname", "-r"])?.trim()
    )?;
    let mut panels = Vec::new();
    for &regime in &regimes {
        let title = regime.title();
        step(&format!(
            "regime: {title}: setting up {} variants",
            variants.len()
        ));
        let setups: Vec<Setup> = variants
            .iter()
            .map(|v| Setup::new(v))
            .collect::<Result<_>>()?;
        for s in &setups {
            s.set_offloads(regime)?;
            s.client.ping(&s.server_addr.to_string(), 1)?;
        }
        let mut samples = vec![Samples::default(); variants.len()];
        for round in 1..=rounds {
            for (i, s) in setups.iter().enumerate() {
                if crate::demo::interrupted() {
                    bail!("interrupted; cleaning up");
                }
                let gbps = s.throughput_gbps(seconds)?;
                let (p50, p99) = s.latency_us(seconds)?;
                println!(
                    "    round {round} {:<12} {gbps:>6.2} Gbit/s   p50 {p50:>7.1} µs   p99 {p99:>7.1} µs",
                    variants[i]
                );
                samples[i].gbps.push(gbps);
                samples[i].p50.push(p50);
                samples[i].p99.push(p99);
            }
        }
        step("the programs on live traffic (kernel.bpf_stats_enabled=1, one more TCP run)");
        let mut live = Vec::new();
        for (i, s) in setups.iter().enumerate() {
            for (program, runs, ns) in s.live_program_costs(seconds)? {
                println!(
                    "    {:<12} {program:<22} {runs:>9} runs {ns:>7.0} ns/run",
                    variants[i]
                );
                live.push((variants[i], program, runs, ns));
            }
        }
        drop(setups);
        let base_gw = median(&samples[0].gbps);
        let base_vx = median(&samples[1].gbps);
        let lat_gw = median(&samples[0].p50);
        let lat_vx = median(&samples[1].p50);
        writeln!(report, "## {title}\n")?;
        writeln!(
            report,
            "Medians of {rounds} rounds, (min–max) beside them.\n"
        )?;
        writeln!(
            report,
            "| variant | TCP Gbit/s | vs host-gw | vs linux-vxlan | UDP RR p50 µs | p99 µs | p50 vs host-gw | p50 vs linux-vxlan |"
        )?;
        writeln!(
            report,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for (i, s) in samples.iter().enumerate() {
            let (g, p50) = (median(&s.gbps), median(&s.p50));
            writeln!(
                report,
                "| {} | {} | {:.2}x | {:.2}x | {} | {} | {:.2}x | {:.2}x |",
                variants[i],
                spread(&s.gbps, 2),
                g / base_gw,
                g / base_vx,
                spread(&s.p50, 1),
                spread(&s.p99, 1),
                p50 / lat_gw,
                p50 / lat_vx
            )?;
        }
        writeln!(report)?;
        panels.push(crate::figure::Panel {
            title: regime.short_title(),
            variants: variants.clone(),
            gbps: samples.iter().map(|s| s.gbps.clone()).collect(),
            p50: samples.iter().map(|s| s.p50.clone()).collect(),
        });
        if !live.is_empty() {
            writeln!(
                report,
                "The programs on live traffic: one more TCP run with `kernel.bpf_stats_enabled=1` \
                 (which adds its own ~20 ns per run); encapsulation on the sending host, \
                 decapsulation on the receiving one.\n"
            )?;
            writeln!(
                report,
                "| variant | program | runs | ns/run |\n| --- | --- | ---: | ---: |"
            )?;
            for (variant, program, runs, ns) in &live {
                writeln!(report, "| {variant} | {program} | {runs} | {ns:.0} |")?;
            }
            writeln!(report)?;
        }
    }
    if partial {
        println!("\n{report}");
        step("a partial run: docs/benchmarks.md left as it was");
        return Ok(());
    }
    step("per-packet cost of the programs (BPF_PROG_TEST_RUN, 20,000 single runs each, at 10, 10k and 100k routes)");
    let programs: serde_json::Value = serde_json::from_str(
        sh(&[root
            .join("target/release/examples/bench_programs")
            .to_str()
            .unwrap()])?
        .trim(),
    )?;
    println!("    {programs}");
    let counts = ["10", "10000", "100000"];
    let ns = |routes: &str, k: &str| programs[routes][k].as_f64().unwrap_or(f64::NAN);
    writeln!(
        report,
        "## Programs under BPF_PROG_TEST_RUN (ns per packet)\n"
    )?;
    writeln!(
        report,
        "Average of 20,000 single runs each (after 2,000 untimed ones), minus the program of the \
         same type that does nothing (`no-op`, shown: the fixed cost of a test run), at 10, 10,000 \
         and 100,000 routes in the trie. A test run cannot give a packet a flow hash, so \
         encapsulation without one pays for the flow dissector; `with a flow hash` sets one first, \
         as a socket's packets carry it, and subtracts a program that only sets it.\n"
    )?;
    writeln!(
        report,
        "| program | 10 routes | 10,000 routes | 100,000 routes |\n| --- | ---: | ---: | ---: |"
    )?;
    for (name, key, baseline) in [
        ("no-op (TC)", "noop_tc", ""),
        ("encapsulation (TC), no flow hash", "encap_tc", "noop_tc"),
        (
            "encapsulation (TC), with a flow hash",
            "encap_hashed_tc",
            "set_hash_tc",
        ),
        ("decapsulation (TC)", "decap_tc", "noop_tc"),
        ("no-op (XDP)", "noop_xdp", ""),
        ("decapsulation (XDP)", "decap_xdp", "noop_xdp"),
    ] {
        let cell = |routes: &str| {
            let base = if baseline.is_empty() {
                0.0
            } else {
                ns(routes, baseline)
            };
            format!("{:.0}", ns(routes, key) - base)
        };
        writeln!(
            report,
            "| {name} | {} | {} | {} |",
            cell(counts[0]),
            cell(counts[1]),
            cell(counts[2])
        )?;
    }
    writeln!(report)?;
    report += &monitor_cost(&programs["10"])?;
    report += &convergence(root)?;
    println!("\n{report}");
    let path = root.join("docs/benchmarks.md");
    std::fs::create_dir_all(path.parent().unwrap())?;
    let figure = root.join("docs/benchmarks.svg");
    crate::figure::draw(&figure, &panels)?;
    step(&format!("figure drawn to {}", figure.display()));
    std::fs::write(&path, &report)?;
    step(&format!("written to {}", path.display()));
    Ok(())
}
