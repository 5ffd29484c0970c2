//! Events for `oxlay monitor`: a counted packet is reported through the ring buffer
//! when a listener asked for its counter (drops, or a sample of the forwarded). With
//! no listener this is one array read per packet.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use oxlay_common::{
    monitor::{MonitorEvent, CAPTURE_LEN, WAKEUP_BYTES},
    Counter, DROP_MASK,
};

use crate::{
    counters::{bump, Frame},
    maps::{OXLAY_EVENTS, OXLAY_MONITOR},
};

/// Reports `frame`, counted under `counter` in network `vni` (0: unknown here), if a
/// listener wants it.
#[inline(always)]
pub fn report<F: Frame>(frame: &F, counter: Counter, vni: u32) {
    let Some(cfg) = OXLAY_MONITOR.get(0) else {
        return;
    };
    // Nobody listens for this counter (nobody at all: 0).
    if cfg.counters >> (counter as u32 & 63) & 1 == 0 {
        return;
    }
    let is_drop = DROP_MASK >> (counter as u32 & 63) & 1 != 0;
    // SAFETY: plain helper call without arguments.
    if !is_drop && cfg.sample > 1 && unsafe { bpf_get_prandom_u32() } % cfg.sample != 0 {
        return;
    }
    // SAFETY: as above.
    let now = unsafe { bpf_ktime_get_ns() };
    // A switch its daemon stopped renewing has lapsed.
    if now > cfg.until_ns {
        return;
    }
    let Some(mut entry) = OXLAY_EVENTS.reserve::<MonitorEvent>(0) else {
        // Full: the listener is too slow. Counted, never silent.
        bump(Counter::MonitorLost, 0);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring buffer record of MonitorEvent's size,
    // ours until submitted; every field is written before the submit.
    unsafe {
        (*event).time_ns = now;
        (*event).vni = vni;
        (*event)._pad = 0;
        (*event).counter = counter as u32;
        (*event).ifindex = frame.ifindex();
        (*event).len = frame.frame_len();
        (*event).captured = frame.capture(&mut (*event).headers) as u32;
    }
    // Waking the reader for each event would cost microseconds a packet: it is woken
    // once a batch is waiting, and drains the rest on its own timer.
    let waiting = OXLAY_EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let wakeup = if waiting >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup as u64);
}

/// Captures a frame's first bytes with `copy(n)` (true when the frame had `n`): as
/// many as the frame has, in steps the verifier can bound (each a constant size).
#[inline(always)]
pub fn capture_steps(mut copy: impl FnMut(usize) -> bool) -> usize {
    for n in [CAPTURE_LEN, 112, 96, 80, 64, 54, 42, 34, 14] {
        if copy(n) {
            return n;
        }
    }
    0
}
