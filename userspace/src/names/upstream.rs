//! The host's resolvers, which answer every name that is not a container's: the
//! configured ones, or those of /etc/resolv.conf (read again when it changes). Queries
//! are relayed as they came, from the host, so loopback resolvers work too.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use super::RESOLVER;

/// How long one upstream resolver has to answer before the next one is asked.
const PER_UPSTREAM: Duration = Duration::from_secs(2);

pub struct Upstream {
    configured: Vec<SocketAddr>,
    resolv_conf: PathBuf,
    /// resolv.conf's servers as last read, and when it was last changed then.
    read: Mutex<(Option<SystemTime>, Vec<SocketAddr>)>,
}

/// The `nameserver` lines of a resolv.conf (port 53), without oxlay's own address.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| *ip != IpAddr::V4(RESOLVER))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Upstream {
    /// `configured` servers if any, else those of `resolv_conf`.
    pub fn new(configured: Vec<SocketAddr>, resolv_conf: PathBuf) -> Self {
        Self {
            configured,
            resolv_conf,
            read: Mutex::new((None, Vec::new())),
        }
    }

    /// The servers to ask, in order.
    pub fn servers(&self) -> Vec<SocketAddr> {
        if !self.configured.is_empty() {
            return self.configured.clone();
        }
        let modified = std::fs::metadata(&self.resolv_conf)
            .and_then(|m| m.modified())
            .ok();
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if read.0 != modified || modified.is_none() {
            let text = std::fs::read_to_string(&self.resolv_conf).unwrap_or_default();
            *read = (modified, parse_resolv_conf(&text));
        }
        read.1.clone()
    }

    /// The first answer of an upstream resolver to `query` over UDP.
    pub async fn ask_udp(&self, query: &[u8]) -> Result<Vec<u8>> {
        let servers = self.servers();
        let mut last = None;
        for server in &servers {
            match tokio::time::timeout(PER_UPSTREAM, udp_exchange(*server, query)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow::anyhow!("{server} did not answer in time")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no upstream resolver configured")))
    }

    /// The first answer of an upstream resolver to `query` over TCP.
    pub async fn ask_tcp(&self, query: &[u8]) -> Result<Vec<u8>> {
        let servers = self.servers();
        let mut last = None;
        for server in &servers {
            match tokio::time::timeout(PER_UPSTREAM, tcp_exchange(*server, query)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow::anyhow!("{server} did not answer in time")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no upstream resolver configured")))
    }
}

async fn udp_exchange(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    // A socket a query: only the server's answer reaches it (connected), and its
    // ephemeral port is the query's own.
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .with_context(|| format!("asking {server}"))?;
        // An answer to another query (a late retry) is not this one's.
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    write_framed(&mut stream, query).await?;
    match read_framed(&mut stream).await? {
        Some(answer) => Ok(answer),
        None => bail!("{server} closed the connection without an answer"),
    }
}

/// Reads one length-prefixed DNS message (RFC 1035 4.2.2); `None` at a clean end.
pub async fn read_framed<S: AsyncReadExt + Unpin>(stream: &mut S) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

pub async fn write_framed<S: AsyncWriteExt + Unpin>(stream: &mut S, message: &[u8]) -> Result<()> {
    let len = u16::try_from(message.len()).context("DNS message longer than 64 KiB")?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(message).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_servers_without_ourselves() {
        let text = "# comment\nsearch example.org\nnameserver 192.0.2.53\n\
                    nameserver 169.254.1.1\nnameserver fe80::1%eth0\n nameserver 127.0.0.53 \n\
                    nameserver bogus\n";
        let servers: Vec<String> = parse_resolv_conf(text)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(servers, ["192.0.2.53:53", "[fe80::1]:53", "127.0.0.53:53"],);
    }
}
