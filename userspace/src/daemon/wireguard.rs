//! Encryption between hosts (`[wireguard]`): oxlay's WireGuard device, its key, its
//! program and its peers.
//!
//! The kernel's WireGuard does the cryptography; oxlay only steers. Encapsulation sends
//! a packet for a peer that also encrypts to the device instead of the underlay, and the
//! program on the device hands what it decrypts to the same decapsulation as the
//! underlay's. WireGuard picks the peer by the outer destination (the peer's underlay
//! address) and checks, on receipt, that the source is one that peer may use, so a
//! packet from the device is authenticated as that peer's. Unencrypted packets from a
//! peer that encrypts are dropped (`drop_unencrypted`).
use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use log::{info, warn};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{LinkUnspec, LinkWireguard};

use super::State;
use crate::{
    config::Config,
    datapath::Datapath,
    model::WireguardEndpoint,
    net::{
        netlink::{self, LinkInfo},
        wireguard::{self as wg, Key, PeerSpec},
    },
    reconcile,
};

/// What WireGuard adds to a packet over IPv4: outer IPv4 (20) and UDP (8), its header
/// (16) and authentication tag (16).
pub const WIREGUARD_OVERHEAD: u32 = 60;

/// This host's WireGuard device, once set up.
#[derive(Clone, Debug)]
pub(crate) struct Encryption {
    pub device: String,
    pub ifindex: u32,
    /// The device's MTU: the underlay's less WireGuard's overhead. Encapsulated packets
    /// must fit in it.
    pub mtu: u32,
    /// What the host's store record tells peers.
    pub endpoint: WireguardEndpoint,
}

/// The alias that marks a WireGuard device as this node's oxlay device: only such a
/// device is taken over, reconfigured or deleted.
fn mark(config: &Config) -> String {
    format!("oxlay:{}", config.node_name)
}

/// Creates the device (or takes over the one a previous daemon made), gives it this
/// host's key, port and MTU, brings it up and attaches the program that receives from
/// it. Removes this node's devices an earlier config made (turned off, or renamed).
pub(crate) async fn setup(
    handle: &rtnetlink::Handle,
    config: &Config,
    underlay: &LinkInfo,
    datapath: &mut Datapath,
) -> Result<Option<Encryption>> {
    let wanted = config.wireguard.as_ref().map(|w| w.device.as_str());
    for old in netlink::links(handle).await? {
        if old.alias.as_deref() == Some(mark(config).as_str()) && Some(old.name.as_str()) != wanted
        {
            remove_device(handle, config, &old.name).await?;
            datapath.detach_wireguard(&old.name);
        }
    }
    let Some(wg_config) = &config.wireguard else {
        return Ok(None);
    };
    let key_file = config
        .wireguard_key_file()
        .ok_or_else(|| anyhow!("no WireGuard key file"))?;
    let private_key = load_or_create_key(&key_file)?;
    let mtu = underlay.mtu.saturating_sub(WIREGUARD_OVERHEAD);
    let device = &wg_config.device;
    match netlink::link_by_name(handle, device).await? {
        Some(link) if link.alias.as_deref() != Some(mark(config).as_str()) => bail!(
            "an interface {device} exists that is not this node's oxlay device (its alias is {:?}, not {:?}): name another with wireguard.device, or delete it",
            link.alias.unwrap_or_default(),
            mark(config)
        ),
        Some(_) => {}
        None => {
            handle
                .link()
                .add(LinkWireguard::new(device).mtu(mtu).build())
                .execute()
                .await
                .with_context(|| {
                    format!("cannot create WireGuard device {device}: the kernel needs the wireguard module (Linux 5.6+)")
                })?;
            info!("created WireGuard device {device}");
        }
    }
    let link = netlink::link_by_name(handle, device)
        .await?
        .ok_or_else(|| anyhow!("WireGuard device {device} vanished"))?;
    wg::set_key_and_port(device, &private_key, wg_config.listen_port).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(link.index)
                .mtu(mtu)
                .up()
                // The mark (the kernel takes an alias only on a change, not at creation).
                .append_extra_attribute(LinkAttribute::IfAlias(mark(config)))
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("cannot mark {device} as oxlay's, set its MTU and bring it up"))?;
    let public_key = wg::device_state(device)
        .await?
        .public_key
        .ok_or_else(|| anyhow!("{device} has no public key after its private key was set"))?;
    datapath.attach_wireguard(device)?;
    Ok(Some(Encryption {
        device: device.clone(),
        ifindex: link.index,
        mtu,
        endpoint: WireguardEndpoint {
            public_key: reconcile::encode_key(&public_key),
            port: wg_config.listen_port,
        },
    }))
}

/// Deletes `name` if it is this node's oxlay WireGuard device (`oxlay uninstall`, a
/// failed first start, or a config that no longer has it). Anything else of that name
/// is left alone.
pub(crate) async fn remove_device(
    handle: &rtnetlink::Handle,
    config: &Config,
    name: &str,
) -> Result<()> {
    match netlink::link_by_name(handle, name).await? {
        Some(link) if link.alias.as_deref() == Some(mark(config).as_str()) => {
            netlink::delete_link(handle, name).await?;
            info!("removed WireGuard device {name}");
        }
        _ => {}
    }
    Ok(())
}

/// This host's private key: read from `path`, or made and kept there (mode 0600) on the
/// first start. A key that changes would make every peer re-learn it from the store.
pub(crate) fn load_or_create_key(path: &Path) -> Result<Key> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} holds this host's WireGuard private key but others may read it (mode {:o}): chmod 600 it, and make a new key (remove the file) if someone did",
                    path.display(),
                    mode & 0o777
                );
            }
            reconcile::decode_key(text.trim()).ok_or_else(|| {
                anyhow!(
                    "{} does not hold a WireGuard private key (32 bytes of base64): remove it to make a new one",
                    path.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = wg::new_private_key()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let tmp = path.with_extension("tmp");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            let text = base64::engine::general_purpose::STANDARD.encode(key);
            file.write_all(format!("{text}\n").as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            info!("made a WireGuard key for this host in {}", path.display());
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

impl State {
    /// Marks a peer as encrypting only when oxlay's WireGuard device has it: a packet
    /// is never sent into the device for a peer it does not know (a key that did not
    /// decode, two hosts with one key, or a WireGuard reconcile that failed). When the
    /// device's peers are unknown (that reconcile failed), peers keep the mark the maps
    /// hold.
    pub(crate) fn confirm_encrypted_peers(&self, base: &mut reconcile::Desired) {
        use oxlay_common::PEER_WIREGUARD;
        for (addr, peer) in base.peers.iter_mut() {
            if peer.flags & PEER_WIREGUARD == 0 {
                continue;
            }
            let on_device = match &self.wireguard_peers {
                Some(written) => written.iter().any(|w| w.endpoint.ip() == addr),
                None => self
                    .shadow
                    .as_ref()
                    .and_then(|m| m.peers.get(addr))
                    .is_some_and(|p| p.flags & PEER_WIREGUARD != 0),
            };
            if !on_device {
                peer.flags &= !PEER_WIREGUARD;
            }
        }
    }

    /// Brings the device's peers in step with the store's hosts that encrypt: new and
    /// changed peers are set in place (their sessions kept), gone ones removed. Compares
    /// with what was last written; reads the device when nothing was.
    pub(crate) async fn reconcile_wireguard(&mut self) -> Result<()> {
        let Some(encryption) = &self.encryption else {
            return Ok(());
        };
        let device = encryption.device.clone();
        let (want, warnings) =
            reconcile::desired_wireguard_peers(&self.config.node_name, &self.snapshot);
        for w in warnings {
            warn!("{w}");
        }
        let have = match self.wireguard_peers.take() {
            Some(have) => have,
            None => wg::device_state(&device)
                .await?
                .peers
                .into_iter()
                .map(|p| p.spec)
                .collect(),
        };
        let set: Vec<PeerSpec> = want.iter().filter(|p| !have.contains(p)).cloned().collect();
        let remove: Vec<Key> = have
            .iter()
            .filter(|h| !want.iter().any(|w| w.public_key == h.public_key))
            .map(|h| h.public_key)
            .collect();
        if set.is_empty() && remove.is_empty() {
            self.wireguard_peers = Some(have);
            return Ok(());
        }
        // On failure the device is read again next time.
        wg::change_peers(&device, &set, &remove).await?;
        info!(
            "WireGuard peers updated: {} added or changed, {} removed",
            set.len(),
            remove.len()
        );
        self.wireguard_peers = Some(want);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_is_made_once_kept_private_and_checked() {
        let dir = std::env::temp_dir().join(format!("oxlay-wgkey-{}", std::process::id()));
        let path = dir.join("sub").join("node.wireguard.key");
        let made = load_or_create_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_key(&path).unwrap(), made, "read back");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_key(&path).unwrap_err().to_string();
        assert!(e.contains("others may read it") && e.contains("644"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        let e = load_or_create_key(&path).unwrap_err().to_string();
        assert!(e.contains("does not hold a WireGuard private key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
