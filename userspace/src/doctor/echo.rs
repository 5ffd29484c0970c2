//! Probing a peer through its program: a VXLAN packet without the I flag and with
//! `ECHO_MAGIC` goes to the peer's VXLAN port with DF set; the peer's decapsulation
//! program sends it back (`ebpf/src/echo.rs`). A reply proves the port open and the
//! program attached; replies at each size show what the path carries.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{Context, Result};
use oxlay_common::wire::ECHO_MAGIC;

/// IPv4 and UDP headers in front of the probe's payload.
const HEADERS: usize = 20 + 8;
/// A probe is asked this many times before it counts as lost.
const TRIES: usize = 3;
const WAIT: Duration = Duration::from_millis(400);

/// Whether `peer` answers a probe whose IPv4 packet is `size` bytes (DF set), sent
/// from `local` to the peer's `port`.
pub async fn answers(local: Ipv4Addr, peer: Ipv4Addr, port: u16, size: usize) -> Result<bool> {
    let socket = probe_socket(local, port)?;
    // DF on, and sizes above the cached path MTU sent all the same: the probe is
    // what finds the path MTU.
    let probe = libc::IP_PMTUDISC_PROBE;
    // SAFETY: setsockopt reads an int from a valid pointer for the socket we own.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&probe as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot set DF on the probe socket");
    }
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    socket.connect(SocketAddrV4::new(peer, port)).await?;
    let token: u32 = rand_token();
    let mut payload = vec![0u8; size.saturating_sub(HEADERS).max(16)];
    payload[1..4].copy_from_slice(&ECHO_MAGIC);
    payload[8..12].copy_from_slice(&token.to_be_bytes());
    let mut buf = vec![0u8; payload.len() + 64];
    for _ in 0..TRIES {
        if socket.send(&payload).await.is_err() {
            // Too big for our own link, or no route: no answer.
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            if n == payload.len() && buf[8..12] == token.to_be_bytes() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A UDP socket on `local` whose port the peer's program answers: not a system port
/// and not the VXLAN port (`ebpf/src/parse.rs` refuses both as reply ports).
fn probe_socket(local: Ipv4Addr, vxlan_port: u16) -> Result<std::net::UdpSocket> {
    for _ in 0..8 {
        let socket = std::net::UdpSocket::bind(SocketAddrV4::new(local, 0))
            .with_context(|| format!("cannot bind a UDP socket to {local}"))?;
        let port = socket.local_addr()?.port();
        if port >= 1024 && port != vxlan_port && port != 4789 {
            return Ok(socket);
        }
    }
    anyhow::bail!("the kernel gives only ports the peer does not answer (below 1024, or {vxlan_port}): check net.ipv4.ip_local_port_range")
}

/// A token that tells this probe's reply from a late one of another.
fn rand_token() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}
