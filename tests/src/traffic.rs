//! Traffic whose every byte or datagram is checked: a patterned TCP transfer and a
//! paced, sequence-numbered UDP stream.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::Netns;

/// Deterministic pseudo-random bytes, a function of (seed, position), so a receiver
/// can check a stream without the sender's copy, however reads split it.
pub struct PatternStream {
    seed: u64,
    pos: u64,
}

impl PatternStream {
    pub fn new(seed: u64) -> Self {
        Self { seed, pos: 0 }
    }
    /// The 8-byte block `block` of the stream: splitmix64 of its index.
    fn block(&self, block: u64) -> [u8; 8] {
        let mut z = self
            .seed
            .wrapping_add(block.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let (block, offset) = (self.pos / 8, (self.pos % 8) as usize);
            let bytes = self.block(block);
            let n = (8 - offset).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&bytes[offset..offset + n]);
            i += n;
            self.pos += n as u64;
        }
    }
}

/// Sends `bytes` of a pattern over TCP from namespace `from` to a listener in `to` at
/// `to_addr`, checks every byte on arrival, and returns the elapsed time.
pub fn tcp_transfer(from: &Netns, to: &Netns, to_addr: Ipv4Addr, bytes: u64) -> Result<Duration> {
    const PORT: u16 = 5201;
    const CHUNK: usize = 256 * 1024;
    let seed = 0x6f78_6c61_7900 ^ bytes;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.spawn(move || -> Result<u64> {
        let listener = TcpListener::bind(SocketAddr::from((to_addr, PORT)))?;
        ready_tx.send(()).ok();
        // Never block forever: a sender that cannot connect must fail the test.
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e).context("no connection arrived"),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut expected = PatternStream::new(seed);
        let (mut buf, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        let mut got = 0u64;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            expected.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                bail!("corrupted data at byte offset {got}..{}", got + n as u64);
            }
            got += n as u64;
        }
        Ok(got)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the receiver did not start")?;
    let client = from.spawn(move || -> Result<Duration> {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((to_addr, PORT)), Duration::from_secs(5))?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut pattern = PatternStream::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(CHUNK as u64) as usize;
            pattern.fill(&mut buf[..n]);
            conn.write_all(&buf[..n])?;
            sent += n as u64;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        // Wait for the receiver to close: all bytes were read.
        let _ = conn.read(&mut [0u8; 1]);
        Ok(start.elapsed())
    });
    let sent = client
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?;
    // The receiver's error (e.g. corruption) explains a sender's reset: report it first.
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let elapsed = sent?;
    if got != bytes {
        bail!("receiver got {got} of {bytes} bytes");
    }
    Ok(elapsed)
}

/// Interoperability, once a first ping has shown the path: `a` (a container of
/// `daemon`'s oxlay host) and `b` (one behind another implementation) ping and move
/// 16 MiB of checked TCP each way, and the oxlay host both encapsulated and
/// decapsulated.
pub fn both_ways(
    daemon: &crate::Daemon,
    a: (&Netns, Ipv4Addr),
    b: (&Netns, Ipv4Addr),
) -> Result<()> {
    b.0.ping(&a.1.to_string(), 2)?;
    tcp_transfer(a.0, b.0, b.1, 16 << 20)?;
    tcp_transfer(b.0, a.0, a.1, 16 << 20)?;
    let (out, into) = (
        daemon.counter("encapsulated")?,
        daemon.counter("decapsulated")?,
    );
    anyhow::ensure!(
        out >= 2 && into >= 2,
        "encapsulated {out}, decapsulated {into}"
    );
    Ok(())
}

/// A paced UDP stream, one sequence-numbered datagram per millisecond from a container
/// to a listener in another, counted at the receiver: the way the restart, churn and
/// fault tests prove that nothing was lost.
pub struct PacedUdp {
    sending: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<Result<u32>>,
    receiver: std::thread::JoinHandle<Result<std::collections::BTreeSet<u32>>>,
}

impl PacedUdp {
    pub fn start(from: &Netns, to_ns: &Netns, to: Ipv4Addr, port: u16) -> Result<Self> {
        use std::sync::{atomic::AtomicBool, Arc};
        let receiver = to_ns.spawn(move || {
            let sock = std::net::UdpSocket::bind(SocketAddr::from((to, port)))?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            let (mut got, mut buf) = (std::collections::BTreeSet::new(), [0u8; 8]);
            while let Ok(n) = sock.recv(&mut buf) {
                if n == 4 {
                    got.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                }
            }
            Ok(got)
        });
        std::thread::sleep(Duration::from_millis(100));
        let sending = Arc::new(AtomicBool::new(true));
        let flag = sending.clone();
        let sender = from.spawn(move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let (start, mut seq) = (Instant::now(), 0u32);
            while flag.load(Ordering::SeqCst) {
                sock.send_to(&seq.to_be_bytes(), SocketAddr::from((to, port)))?;
                seq += 1;
                // Pace against the clock, not the loop: 1 datagram per ms on average.
                let due = start + Duration::from_millis(seq as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(seq)
        });
        Ok(Self {
            sending,
            sender,
            receiver,
        })
    }

    /// Stops sending, waits for the receiver, and returns (sent, the first lost
    /// sequence numbers, how many were lost).
    pub fn stop(self) -> Result<(u32, Vec<u32>, usize)> {
        self.sending.store(false, Ordering::SeqCst);
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        let got = self
            .receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        let lost: Vec<u32> = (0..sent).filter(|s| !got.contains(s)).collect();
        let count = lost.len();
        Ok((sent, lost.into_iter().take(20).collect(), count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_does_not_depend_on_how_it_is_split() {
        let mut whole = vec![0u8; 1000];
        PatternStream::new(7).fill(&mut whole);
        let mut parts = PatternStream::new(7);
        let mut joined = Vec::new();
        for n in [3usize, 250, 1, 746] {
            let mut b = vec![0u8; n];
            parts.fill(&mut b);
            joined.extend(b);
        }
        assert_eq!(whole, joined);
        let mut other = vec![0u8; 1000];
        PatternStream::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }
}
