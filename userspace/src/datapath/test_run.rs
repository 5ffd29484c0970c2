//! Running a loaded program on a packet through BPF_PROG_TEST_RUN (tests, `cargo xtask
//! bench`).

use anyhow::{anyhow, Context, Result};
use aya::{programs::Program, TestRun, TestRunOptions};

use super::*;

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Clone, Debug)]
pub struct TestRunOutcome {
    pub verdict: u32,
    pub packet: Vec<u8>,
    /// The kernel's average duration of one run.
    pub ns_per_run: f64,
}

impl Datapath {
    /// Runs program `name` once per `repeat` on `packet` through BPF_PROG_TEST_RUN and
    /// returns its verdict, the packet it left, and the kernel's time per run.
    pub fn test_run(&self, name: &str, packet: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        self.test_run_ctx(name, packet, repeat, None)
    }

    /// Like [`Datapath::test_run`] once, for a TC program, with the packet marked as a
    /// GSO packet of `gso_size` (the test run sets no GSO type).
    pub fn test_run_gso(&self, name: &str, packet: &[u8], gso_size: u32) -> Result<TestRunOutcome> {
        // struct __sk_buff (uapi/linux/bpf.h): 192 bytes; the kernel takes only a few
        // fields from a test run's context, gso_segs (at 164) and gso_size (at 176)
        // among them, and wants the others zero.
        let mut ctx = [0u8; 192];
        ctx[164..168].copy_from_slice(&2u32.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        self.test_run_ctx(name, packet, 1, Some(&ctx))
    }

    /// Runs TC program `name` once on `packet` as `oxlay explain`'s probe, as if it
    /// arrived on interface `ifindex` (`via_wireguard`: decrypted by oxlay's WireGuard
    /// device): the verdict and the output, and the counter the program counted it
    /// under (the probe is counted nowhere else).
    pub fn probe(
        &mut self,
        name: &str,
        packet: &[u8],
        ifindex: u32,
        via_wireguard: bool,
    ) -> Result<(TestRunOutcome, Option<&'static oxlay_common::CounterInfo>)> {
        use aya::maps::{MapData, PerCpuArray, PerCpuValues};
        use oxlay_common::{
            map_names,
            monitor::{PROBE_MARK, PROBE_VIA_WIREGUARD},
            COUNTERS,
        };
        // struct __sk_buff (uapi/linux/bpf.h): mark at 8, ifindex at 40, cb[0] at 48,
        // cb[1] at 52.
        let mut ctx = [0u8; 192];
        ctx[8..12].copy_from_slice(&PROBE_MARK.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[48..52].copy_from_slice(&PROBE_MARK.to_ne_bytes());
        if via_wireguard {
            ctx[52..56].copy_from_slice(&PROBE_VIA_WIREGUARD.to_ne_bytes());
        }
        let zero = || PerCpuValues::try_from(vec![0u32; aya::util::nr_cpus().map_err(|(_, e)| e)?]);
        {
            let mut probe: PerCpuArray<&mut MapData, u32> = self.map_mut(map_names::PROBE)?;
            probe
                .set(0, zero()?, 0)
                .context("cannot clear the probe map")?;
        }
        let outcome = self.test_run_ctx(name, packet, 1, Some(&ctx))?;
        let probe: PerCpuArray<&MapData, u32> = self.map(map_names::PROBE)?;
        let counted = probe.get(&0, 0)?.iter().find(|v| **v != 0).copied();
        Ok((outcome, counted.and_then(|c| COUNTERS.get(c as usize - 1))))
    }

    pub(super) fn test_run_ctx(
        &self,
        name: &str,
        packet: &[u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> Result<TestRunOutcome> {
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat,
            ..TestRunOptions::default()
        };
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        let result = match program {
            Program::SchedClassifier(p) => p.test_run(opts),
            Program::Xdp(p) => p.test_run(opts),
            _ => return Err(anyhow!("program {name} cannot be test-run")),
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of {name} failed"))?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            verdict: result.return_value,
            packet: out,
            ns_per_run: result.duration.as_nanos() as f64,
        })
    }
}
