//! The resolver's sockets: UDP and TCP on [`RESOLVER`]:53. Container names are
//! answered at once from the directory; other queries are relayed upstream on a task
//! of their own, a bounded number at a time.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context, Result};
use log::{debug, warn};
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};

use crate::net::Ipv4Net;
use std::net::Ipv4Addr;

use super::{
    answer::{refused, reply, servfail, Reply},
    directory::Directory,
    upstream::{read_framed, write_framed, Upstream},
    RESOLVER,
};

/// Queries relayed upstream at once; more are answered SERVFAIL (a flood from one
/// container must not exhaust the daemon).
const MAX_RELAYED: usize = 256;
/// A TCP client that sends nothing for this long is let go.
const TCP_IDLE: Duration = Duration::from_secs(10);

pub struct Resolver {
    pub directory: RwLock<Directory>,
    upstream: Upstream,
    relaying: Arc<Semaphore>,
    /// The underlay's subnet and the host's address on it: other machines there reach
    /// the resolver's address through this host, and are refused (no open resolver).
    underlay: (Ipv4Net, Ipv4Addr),
}

impl Resolver {
    pub fn new(directory: Directory, upstream: Upstream, underlay: (Ipv4Net, Ipv4Addr)) -> Self {
        Self {
            directory: RwLock::new(directory),
            upstream,
            relaying: Arc::new(Semaphore::new(MAX_RELAYED)),
            underlay,
        }
    }

    /// What the directory says to `query` from `source`.
    fn reply(&self, source: SocketAddr, query: &[u8]) -> Reply {
        let IpAddr::V4(source) = source.ip() else {
            return Reply::Forward;
        };
        let (subnet, own) = self.underlay;
        if subnet.contains(source) && source != own {
            return refused(query).map_or(Reply::Drop, Reply::Answer);
        }
        let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
        reply(&directory, source, query)
    }

    pub fn upstream(&self) -> Vec<SocketAddr> {
        self.upstream.servers()
    }
}

/// The resolver's sockets, bound on its address (which must be the host's already).
pub async fn bind() -> Result<(UdpSocket, TcpListener)> {
    let at = SocketAddr::from((RESOLVER, 53));
    let udp = UdpSocket::bind(at)
        .await
        .with_context(|| format!("cannot listen on {at}/udp"))?;
    let tcp = TcpListener::bind(at)
        .await
        .with_context(|| format!("cannot listen on {at}/tcp"))?;
    Ok((udp, tcp))
}

/// Answers queries until the task is aborted.
pub async fn serve(resolver: Arc<Resolver>, udp: UdpSocket, tcp: TcpListener) {
    let udp = Arc::new(udp);
    let tcp_side = resolver.clone();
    let tcp_task = tokio::spawn(async move {
        loop {
            match tcp.accept().await {
                Ok((stream, peer)) => {
                    let resolver = tcp_side.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_tcp(&resolver, stream, peer).await {
                            debug!("names: tcp client {peer}: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    warn!("names: tcp accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    // The TCP side ends with this task (an abort drops it).
    let _tcp_task = AbortOnDrop(tcp_task);
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match udp.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                warn!("names: udp receive: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = &buf[..n];
        match resolver.reply(peer, query) {
            Reply::Answer(bytes) => {
                udp.send_to(&bytes, peer).await.ok();
            }
            Reply::Drop => {}
            Reply::Forward => {
                let Ok(permit) = resolver.relaying.clone().try_acquire_owned() else {
                    if let Some(bytes) = servfail(query) {
                        udp.send_to(&bytes, peer).await.ok();
                    }
                    continue;
                };
                let (resolver, udp, query) = (resolver.clone(), udp.clone(), query.to_vec());
                tokio::spawn(async move {
                    let answer = match resolver.upstream.ask_udp(&query).await {
                        Ok(answer) => Some(answer),
                        Err(e) => {
                            debug!("names: relaying a query from {peer}: {e:#}");
                            servfail(&query)
                        }
                    };
                    if let Some(bytes) = answer {
                        udp.send_to(&bytes, peer).await.ok();
                    }
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp(resolver: &Resolver, mut stream: TcpStream, peer: SocketAddr) -> Result<()> {
    loop {
        let Ok(query) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else {
            return Ok(());
        };
        let Some(query) = query? else {
            return Ok(());
        };
        let answer = match resolver.reply(peer, &query) {
            Reply::Answer(bytes) => Some(bytes),
            Reply::Drop => return Ok(()),
            Reply::Forward => {
                let _permit = resolver.relaying.acquire().await?;
                match resolver.upstream.ask_tcp(&query).await {
                    Ok(answer) => Some(answer),
                    Err(e) => {
                        debug!("names: relaying a query from {peer}: {e:#}");
                        servfail(&query)
                    }
                }
            }
        };
        if let Some(bytes) = answer {
            write_framed(&mut stream, &bytes).await?;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
