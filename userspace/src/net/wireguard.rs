//! The kernel's WireGuard device through its generic netlink family: its key and port,
//! and its peers (added, changed in place, removed; read back with their handshakes).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

use crate::net::Ipv4Net;

pub type Key = [u8; 32];

/// A peer as oxlay wants it on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: Key,
    pub endpoint: SocketAddrV4,
    pub allowed_ips: Vec<Ipv4Net>,
}

/// A peer as the device has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub spec: PeerSpec,
    /// When the last handshake completed (None: never).
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The device's public key (derived by the kernel from the private key) and peers.
#[derive(Clone, Debug, Default)]
pub struct DeviceState {
    pub public_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

async fn request(message: WireguardMessage, flags: u16) -> Result<Vec<WireguardMessage>> {
    let (conn, mut handle, _) =
        genetlink::new_connection().context("cannot open a generic netlink socket")?;
    let conn = tokio::spawn(conn);
    let mut nl = NetlinkMessage::from(GenlMessage::from_payload(message));
    nl.header.flags = NLM_F_REQUEST | flags;
    let result = async {
        let mut answers = handle.request(nl).await.map_err(|e| {
            anyhow!("the kernel has no WireGuard ({e}): it needs the wireguard module (Linux 5.6+)")
        })?;
        let mut out = Vec::new();
        while let Some(answer) = answers.next().await {
            match answer?.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io().into()),
                _ => {}
            }
        }
        Ok(out)
    }
    .await;
    conn.abort();
    result
}

/// Sets the device's private key and listen port.
pub async fn set_key_and_port(device: &str, private_key: &Key, port: u16) -> Result<()> {
    let message = WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(device.to_owned()),
            WireguardAttribute::PrivateKey(*private_key),
            WireguardAttribute::ListenPort(port),
        ],
    };
    request(message, NLM_F_ACK)
        .await
        .with_context(|| format!("cannot set the key and port {port} of {device}"))?;
    Ok(())
}

/// Adds or updates `set` (allowed IPs replaced, the session kept) and removes `remove`.
pub async fn change_peers(device: &str, set: &[PeerSpec], remove: &[Key]) -> Result<()> {
    if set.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let mut peers: Vec<WireguardPeer> = set
        .iter()
        .map(|p| {
            let allowed = p
                .allowed_ips
                .iter()
                .map(|net| {
                    WireguardAllowedIp(vec![
                        WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                        WireguardAllowedIpAttr::IpAddr(IpAddr::V4(net.addr())),
                        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
                    ])
                })
                .collect();
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(p.public_key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                WireguardPeerAttribute::Endpoint(SocketAddr::V4(p.endpoint)),
                WireguardPeerAttribute::AllowedIps(allowed),
            ])
        })
        .collect();
    peers.extend(remove.iter().map(|key| {
        WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(*key),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ])
    }));
    let message = WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(device.to_owned()),
            WireguardAttribute::Peers(peers),
        ],
    };
    request(message, NLM_F_ACK)
        .await
        .with_context(|| format!("cannot change the peers of {device}"))?;
    Ok(())
}

/// What the device holds now.
pub async fn device_state(device: &str) -> Result<DeviceState> {
    let message = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(device.to_owned())],
    };
    let answers = request(message, NLM_F_DUMP)
        .await
        .with_context(|| format!("cannot read WireGuard device {device}"))?;
    let mut state = DeviceState::default();
    // A device with many peers comes in several messages.
    for answer in answers {
        for attr in answer.attributes {
            match attr {
                WireguardAttribute::PublicKey(k) if k != [0; 32] => state.public_key = Some(k),
                WireguardAttribute::ListenPort(p) => state.listen_port = p,
                WireguardAttribute::Peers(peers) => {
                    state.peers.extend(peers.iter().filter_map(peer_state))
                }
                _ => {}
            }
        }
    }
    Ok(state)
}

fn peer_state(peer: &WireguardPeer) -> Option<PeerState> {
    let mut key = None;
    let mut endpoint = None;
    let mut allowed_ips = Vec::new();
    let mut state = PeerState {
        spec: PeerSpec {
            public_key: [0; 32],
            endpoint: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            allowed_ips: Vec::new(),
        },
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
    };
    for attr in peer.iter() {
        match attr {
            WireguardPeerAttribute::PublicKey(k) => key = Some(*k),
            WireguardPeerAttribute::Endpoint(SocketAddr::V4(a)) => endpoint = Some(*a),
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let (mut addr, mut len) = (None, None);
                    for a in ip.iter() {
                        match a {
                            WireguardAllowedIpAttr::IpAddr(IpAddr::V4(v)) => addr = Some(*v),
                            WireguardAllowedIpAttr::Cidr(c) => len = Some(*c),
                            _ => {}
                        }
                    }
                    if let (Some(addr), Some(len)) = (addr, len) {
                        if let Ok(net) = Ipv4Net::new(addr, len) {
                            allowed_ips.push(net);
                        }
                    }
                }
            }
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 => {
                state.last_handshake = Some(
                    SystemTime::UNIX_EPOCH
                        + Duration::new(
                            t.seconds as u64,
                            t.nano_seconds.clamp(0, 999_999_999) as u32,
                        ),
                );
            }
            WireguardPeerAttribute::RxBytes(b) => state.rx_bytes = *b,
            WireguardPeerAttribute::TxBytes(b) => state.tx_bytes = *b,
            _ => {}
        }
    }
    allowed_ips.sort();
    state.spec = PeerSpec {
        public_key: key?,
        endpoint: endpoint.unwrap_or(state.spec.endpoint),
        allowed_ips,
    };
    Some(state)
}

/// A fresh private key: 32 random bytes (the kernel clamps them into a Curve25519
/// scalar and derives the public key).
pub fn new_private_key() -> Result<Key> {
    let mut key = [0u8; 32];
    // SAFETY: the buffer is 32 writable bytes and its length is passed along.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    if n != key.len() as isize {
        bail!(
            "cannot read random bytes for a WireGuard key: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(key)
}
