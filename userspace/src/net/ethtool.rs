//! The two offload settings an endpoint's veth gets, through the ethtool ioctl.
//!
//! Why: frames decapsulated from the wire arrive one MTU-size frame at a time (a NIC
//! sends no super-packets, and no kernel tunnel socket exists to coalesce VXLAN). The
//! decap program sends each one through the host-side veth; with GRO on the
//! container's end, that veth's NAPI coalesces a flow's frames before the container's
//! stack sees them. The kernel takes that path only when the sending end (the host's)
//! does not offer TSO (`veth_skb_is_eligible_for_gro`), so TSO goes off there. Measured
//! in docs/benchmarks.md.
//!
//! (The `ethtool` crate reads features but cannot set them; these are two legacy
//! ioctls, still served by every kernel through `ethtool_set_one_feature`.)
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

/// `ETHTOOL_STSO`: TCP segmentation offload (all TSO variants), on or off.
const ETHTOOL_STSO: u32 = 0x1f;
/// `ETHTOOL_SGRO`: generic receive offload, on or off.
const ETHTOOL_SGRO: u32 = 0x2c;
/// `ETHTOOL_GTXCSUM`: whether TX checksum offload is on.
const ETHTOOL_GTXCSUM: u32 = 0x16;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _rest: [u8; 16],
}

/// Sets up a new endpoint's veth pair, both ends still in the host's namespace (the
/// settings move with the container's end): TSO off on the host's end, GRO on the
/// container's.
pub fn tune_endpoint_veth(host_end: &str, container_end: &str) -> Result<()> {
    turn_gro_on(container_end)?;
    turn_tso_off(host_end)
}

/// The container's end (run in whichever namespace holds it).
pub fn turn_gro_on(container_end: &str) -> Result<()> {
    set(container_end, ETHTOOL_SGRO, true)
        .with_context(|| format!("cannot turn GRO on on {container_end}"))
}

/// The host's end.
pub fn turn_tso_off(host_end: &str) -> Result<()> {
    set(host_end, ETHTOOL_STSO, false).with_context(|| format!("cannot turn TSO off on {host_end}"))
}

/// Whether TX checksum offload is on (`ETHTOOL_GTXCSUM`: any of the checksum features,
/// on a vxlan device `tx-checksum-ip-generic`).
pub fn tx_checksum(ifname: &str) -> Result<bool> {
    call(ifname, ETHTOOL_GTXCSUM, 0)
        .map(|on| on != 0)
        .with_context(|| format!("cannot read the offloads of {ifname}"))
}

fn set(ifname: &str, cmd: u32, on: bool) -> Result<()> {
    call(ifname, cmd, on as u32).map(|_| ())
}

/// One legacy ethtool ioctl with an `ethtool_value`: what the kernel left in `data`.
fn call(ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        bail!("bad interface name {ifname:?}");
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot open a socket for ethtool");
    }
    // SAFETY: fd is a fresh descriptor this function owns from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _rest: [0; 16],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: req is a valid ifreq whose ifr_data points at an ethtool_value; both
    // outlive the call, and the kernel reads and writes within them.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(value.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        // struct ifreq is 40 bytes on 64-bit Linux: a 16-byte name and a 24-byte union.
        assert_eq!(std::mem::size_of::<IfreqData>(), 40);
        assert_eq!(std::mem::size_of::<EthtoolValue>(), 8);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(set("", ETHTOOL_SGRO, true).is_err());
        assert!(set("a-name-far-too-long", ETHTOOL_SGRO, true).is_err());
    }
}
