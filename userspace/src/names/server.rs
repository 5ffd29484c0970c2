//! The resolver's sockets: UDP and TCP on [`RESOLVER`]:53. Container names are
//! answered at once from the directory; other queries are relayed upstream on a task
//! of their own, a bounded number at a time.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
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
/// A TCP client that sends nothing for this long is let go; so is one that does not
/// read its answer within it.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP clients served at once; more are closed at once (each holds a file descriptor
/// the daemon needs for its own work).
const MAX_TCP_CLIENTS: usize = 64;

pub struct Resolver {
    directory: RwLock<Directory>,
    /// Whether the directory holds the store's names yet: until then every query is
    /// answered SERVFAIL (a stub retries), not relayed (upstream would deny the name).
    ready: AtomicBool,
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
            ready: AtomicBool::new(false),
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
        if !self.ready.load(Ordering::Acquire) {
            return servfail(query).map_or(Reply::Drop, Reply::Answer);
        }
        reply(&self.directory(), source, query)
    }

    /// The directory, to read.
    pub fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory, to apply watch events to.
    pub fn directory_mut(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a directory listed from the store in place; the resolver answers names
    /// from now on.
    pub fn replace_directory(&self, directory: Directory) {
        *self.directory_mut() = directory;
        self.ready.store(true, Ordering::Release);
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
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    let tcp_task = tokio::spawn(async move {
        loop {
            match tcp.accept().await {
                Ok((stream, peer)) => {
                    let Ok(client) = clients.clone().try_acquire_owned() else {
                        debug!("names: too many tcp clients; {peer} closed");
                        continue;
                    };
                    let resolver = tcp_side.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_tcp(&resolver, stream, peer).await {
                            debug!("names: tcp client {peer}: {e:#}");
                        }
                        drop(client);
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
            Reply::Forward => match resolver.relaying.try_acquire() {
                Ok(_permit) => match resolver.upstream.ask_tcp(&query).await {
                    Ok(answer) => Some(answer),
                    Err(e) => {
                        debug!("names: relaying a query from {peer}: {e:#}");
                        servfail(&query)
                    }
                },
                Err(_) => servfail(&query),
            },
        };
        if let Some(bytes) = answer {
            tokio::time::timeout(TCP_IDLE, write_framed(&mut stream, &bytes))
                .await
                .context("the client does not read its answer")??;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
