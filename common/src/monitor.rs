//! `oxlay monitor`: what the programs tell a listener through the `OXLAY_EVENTS` ring
//! buffer, and the switch (`OXLAY_MONITOR`) that says whether anyone listens. With no
//! listener the programs read the switch and emit nothing.

/// How long a switch holds unless the daemon's reader renews it (every second): a
/// daemon that died leaves a switch that lapses, not programs that report into a ring
/// nobody reads.
pub const SWITCH_HOLDS_NS: u64 = 3_000_000_000;

/// Bytes of each packet an event carries, from its first byte: enough for outer
/// Ethernet, IPv4, UDP and VXLAN, then inner Ethernet, IPv4 and the ports.
pub const CAPTURE_LEN: usize = 128;

/// Size of the ring buffer: 2048 events of ~160 bytes.
pub const EVENTS_BYTES: u32 = 512 * 1024;

/// The programs wake the reader once this much is waiting (64 events); below it the
/// reader drains on its own timer ([`DRAIN_EVERY_MS`]).
pub const WAKEUP_BYTES: u64 = 64 * (core::mem::size_of::<MonitorEvent>() as u64 + 8);
/// How often the reader drains the ring buffer without being woken.
pub const DRAIN_EVERY_MS: u64 = 50;

/// `oxlay explain`'s probe packets carry this in `skb->mark` and `cb[0]` (set through
/// BPF_PROG_TEST_RUN's context): the programs record the counter they would bump in
/// `OXLAY_PROBE` instead, so a probe never shows in the counters or the monitor.
pub const PROBE_MARK: u32 = 0x6f78_7072; // "oxpr"

/// In a probe's `cb[1]`: classify it as if it came through oxlay's WireGuard device
/// (`oxlay explain --receive` from a peer that encrypts: on the underlay it would be
/// `drop_unencrypted`).
pub const PROBE_VIA_WIREGUARD: u32 = 0x6f78_7767; // "oxwg"

/// The single entry of `OXLAY_MONITOR`, written by the daemon while monitors listen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Bit `i`: report packets counted under counter `i` (0: nobody listens).
    pub counters: u64,
    /// `bpf_ktime_get_ns` time after which the switch no longer holds.
    pub until_ns: u64,
    /// One forwarded packet in this many is reported (0 and 1: every one); drops
    /// always.
    pub sample: u32,
    pub _pad: u32,
}

/// One event: which counter the packet was counted under (a drop reason, or what was
/// done with it), where, when, and its first bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC.
    pub time_ns: u64,
    /// Index into the counter table.
    pub counter: u32,
    /// The interface the packet came in on.
    pub ifindex: u32,
    /// The frame's length when counted.
    pub len: u32,
    /// How many bytes of `headers` hold the frame's first bytes.
    pub captured: u32,
    /// The network, where the program knew it (0: read it from the headers).
    pub vni: u32,
    pub _pad: u32,
    pub headers: [u8; CAPTURE_LEN],
}

impl Default for MonitorEvent {
    fn default() -> Self {
        Self {
            time_ns: 0,
            counter: 0,
            ifindex: 0,
            len: 0,
            captured: 0,
            vni: 0,
            _pad: 0,
            headers: [0; CAPTURE_LEN],
        }
    }
}
