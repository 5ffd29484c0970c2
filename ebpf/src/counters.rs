//! Per-CPU counters, indexed by the shared table in `oxlay_common::counters`, and each
//! overlay network's traffic. Each counts packets and bytes; a counted packet is also
//! reported to `oxlay monitor` when someone listens (`monitor.rs`).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use oxlay_common::{
    monitor::{CAPTURE_LEN, PROBE_MARK},
    Counter, CounterValue, NetworkTraffic,
};

use crate::{
    maps::{OXLAY_COUNTERS, OXLAY_NETWORK_TRAFFIC, OXLAY_PROBE},
    monitor::{capture_steps, report},
};

/// A packet being counted: its length and interface now, and its first bytes.
pub trait Frame {
    fn frame_len(&self) -> u32;
    fn ifindex(&self) -> u32;
    /// Copies up to `CAPTURE_LEN` first bytes into `dst`; how many.
    fn capture(&self, dst: &mut [u8; CAPTURE_LEN]) -> usize;
    /// Whether this is `oxlay explain`'s probe (see `PROBE_MARK`).
    fn is_probe(&self) -> bool;
}

impl Frame for TcContext {
    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: self.skb.skb is the __sk_buff the kernel passed to this program.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn capture(&self, dst: &mut [u8; CAPTURE_LEN]) -> usize {
        let skb = self.skb.skb;
        capture_steps(|n| {
            // SAFETY: dst holds CAPTURE_LEN >= n bytes; the helper checks the packet's.
            unsafe {
                bpf_skb_load_bytes(skb as *const _, 0, dst.as_mut_ptr() as *mut _, n as u32) == 0
            }
        })
    }

    #[inline(always)]
    fn is_probe(&self) -> bool {
        // SAFETY: self.skb.skb is the __sk_buff the kernel passed to this program.
        let (mark, cb0) = unsafe { ((*self.skb.skb).mark, (*self.skb.skb).cb[0]) };
        mark == PROBE_MARK && cb0 == PROBE_MARK
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn frame_len(&self) -> u32 {
        // SAFETY: plain helper call on this program's own context (with frags, the
        // first buffer may be only part of the frame; this is the whole).
        unsafe { bpf_xdp_get_buff_len(self.as_ptr() as *mut _) as u32 }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: self.ctx is the xdp_md the kernel passed to this program.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn capture(&self, dst: &mut [u8; CAPTURE_LEN]) -> usize {
        let ctx = self.ctx;
        capture_steps(|n| {
            // SAFETY: dst holds CAPTURE_LEN >= n bytes; the helper checks the frame's.
            unsafe { bpf_xdp_load_bytes(ctx, 0, dst.as_mut_ptr() as *mut _, n as u32) == 0 }
        })
    }

    /// Probes run the TC programs only.
    #[inline(always)]
    fn is_probe(&self) -> bool {
        false
    }
}

#[inline(always)]
fn add(value: &mut CounterValue, bytes: u32) {
    value.packets += 1;
    value.bytes += u64::from(bytes);
}

/// Counts `frame` under `counter` (and reports it to a listening monitor).
#[inline(always)]
pub fn count<F: Frame>(frame: &F, counter: Counter) {
    count_in(frame, counter, 0);
}

/// `count` for a packet of network `vni` (which the monitor's event then names).
#[inline(always)]
pub fn count_in<F: Frame>(frame: &F, counter: Counter, vni: u32) {
    if frame.is_probe() {
        if let Some(slot) = OXLAY_PROBE.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array, as in `bump`.
            unsafe { *slot = counter as u32 + 1 };
        }
        return;
    }
    bump(counter, frame.frame_len());
    report(frame, counter, vni);
}

/// Counts `frame` under a second `counter` with no monitor event: for a packet already
/// counted (and reported) under another.
#[inline(always)]
pub fn count_also<F: Frame>(frame: &F, counter: Counter) {
    if !frame.is_probe() {
        bump(counter, frame.frame_len());
    }
}

/// Adds one packet of `bytes` to `counter`.
#[inline(always)]
pub fn bump(counter: Counter, bytes: u32) {
    if let Some(slot) = OXLAY_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it points
        // at this CPU's slot; programs do not migrate CPUs while running, so no other
        // writer touches it concurrently.
        add(unsafe { &mut *slot }, bytes);
    }
}

/// Which way a packet crossed the overlay.
#[derive(Clone, Copy)]
pub enum Direction {
    Encapsulated,
    Decapsulated,
}

/// Counts `frame` in network `vni`'s traffic (after `count`: its length then).
#[inline(always)]
pub fn count_network<F: Frame>(frame: &F, vni: u32, direction: Direction) {
    if frame.is_probe() {
        return;
    }
    let bytes = frame.frame_len();
    let mut slot = OXLAY_NETWORK_TRAFFIC.get_ptr_mut(&vni);
    if slot.is_none() {
        // The first packet of a network on this host makes its entry (only VNIs of
        // this host's networks get here); a racing CPU's insert wins just as well.
        let _ = OXLAY_NETWORK_TRAFFIC.insert(&vni, &NetworkTraffic::default(), BPF_NOEXIST as u64);
        slot = OXLAY_NETWORK_TRAFFIC.get_ptr_mut(&vni);
    }
    if let Some(slot) = slot {
        // SAFETY: as in `count`: this CPU's value of a per-CPU hash entry.
        let traffic = unsafe { &mut *slot };
        match direction {
            Direction::Encapsulated => add(&mut traffic.encapsulated, bytes),
            Direction::Decapsulated => add(&mut traffic.decapsulated, bytes),
        }
    }
}
