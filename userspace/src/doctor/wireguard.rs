//! doctor's findings about encryption: the WireGuard device and, for each other host,
//! whether traffic to it is encrypted and when the last handshake was. WireGuard shakes
//! hands again every two minutes while traffic flows, and only then.
use std::time::{Duration, SystemTime};

use super::Finding;
use crate::{net::wireguard::DeviceState, reconcile::decode_key};

/// A failure when the device is no longer the interface the programs send to.
pub fn device_moved(
    device: &str,
    ifindex: u32,
    now: anyhow::Result<Option<u32>>,
) -> Option<Finding> {
    let now = match now {
        Ok(Some(index)) if index == ifindex => return None,
        Ok(Some(index)) => format!("is interface {index} now"),
        Ok(None) => "is gone".to_owned(),
        Err(e) => format!("cannot be looked up ({e:#})"),
    };
    Some(Finding::fail(
        "wireguard",
        format!("{device} was interface {ifindex} when the daemon started and {now}: packets to hosts that encrypt are lost"),
        "restart the daemon (it makes the device again and sends to it)",
    ))
}

/// The device's finding, then one per other host (name, published key).
pub fn findings(
    device: &str,
    state: &DeviceState,
    hosts: &[(String, Option<String>)],
    now: SystemTime,
) -> Vec<Finding> {
    let port = state.listen_port;
    let mut found = vec![Finding::ok(
        "wireguard",
        format!(
            "{device} listens on UDP {port} with {} peers",
            state.peers.len()
        ),
    )];
    for (name, key) in hosts {
        let check = format!("wireguard {name}");
        let Some(key) = key else {
            found.push(Finding::warn(
                &check,
                format!(
                    "{name} does not encrypt: traffic to and from it crosses the underlay in plain"
                ),
                format!("add [wireguard] to {name}'s config and restart its daemon"),
            ));
            continue;
        };
        let peer =
            decode_key(key).and_then(|k| state.peers.iter().find(|p| p.spec.public_key == k));
        let Some(p) = peer else {
            found.push(Finding::fail(
                &check,
                format!("{name} publishes a WireGuard key but {device} has no peer with it: traffic with {name} is in plain, and {name} drops it"),
                "the daemon's log says why (a key that does not decode, or one that another host shares); `oxlay status` on both hosts",
            ));
            continue;
        };
        let age = p.last_handshake.and_then(|t| now.duration_since(t).ok());
        found.push(match age {
            Some(age) if age < Duration::from_secs(180) => Finding::ok(
                &check,
                format!(
                    "handshake {:.0} s ago; {} bytes received, {} sent",
                    age.as_secs_f64(),
                    p.rx_bytes,
                    p.tx_bytes
                ),
            ),
            age => Finding::warn(
                &check,
                format!(
                    "{}: fine while no container talks to {name}; if they do, UDP {port} is blocked between the hosts",
                    age.map_or("no handshake yet".to_owned(), |a| format!("last handshake {:.0} s ago", a.as_secs_f64()))
                ),
                format!("open UDP {port} between the hosts (both ways), then ping a container on {name}"),
            ),
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::{
        doctor::Status,
        net::wireguard::{PeerSpec, PeerState},
        reconcile::encode_key,
    };

    #[test]
    fn each_host_is_named_with_its_state() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let peer = |key: u8, handshake: Option<u64>| PeerState {
            spec: PeerSpec {
                public_key: [key; 32],
                endpoint: SocketAddrV4::new([192, 168, 50, key].into(), 51871),
                allowed_ips: Vec::new(),
            },
            last_handshake: handshake.map(|ago| now - Duration::from_secs(ago)),
            rx_bytes: 10,
            tx_bytes: 20,
        };
        let state = DeviceState {
            public_key: Some([9; 32]),
            listen_port: 51871,
            peers: vec![peer(1, Some(5)), peer(2, Some(600)), peer(3, None)],
        };
        let host =
            |name: &str, key: Option<u8>| (name.to_owned(), key.map(|k| encode_key(&[k; 32])));
        let hosts = [
            host("fresh", Some(1)),
            host("stale", Some(2)),
            host("never", Some(3)),
            host("plain", None),
            host("unknown", Some(4)),
        ];
        let found = findings("oxlay-wg", &state, &hosts, now);
        let status: Vec<(&str, Status)> =
            found.iter().map(|f| (f.check.as_str(), f.status)).collect();
        assert_eq!(
            status,
            [
                ("wireguard", Status::Ok),
                ("wireguard fresh", Status::Ok),
                ("wireguard stale", Status::Warn),
                ("wireguard never", Status::Warn),
                ("wireguard plain", Status::Warn),
                ("wireguard unknown", Status::Fail),
            ]
        );
        assert!(
            found[1].detail.contains("handshake 5 s ago"),
            "{}",
            found[1].detail
        );
        assert!(found[3].detail.contains("no handshake yet"));
        assert!(device_moved("oxlay-wg", 7, Ok(Some(7))).is_none());
        let moved = device_moved("oxlay-wg", 7, Ok(Some(9))).unwrap();
        assert!(
            moved.detail.contains("is interface 9 now"),
            "{}",
            moved.detail
        );
        assert!(device_moved("oxlay-wg", 7, Ok(None))
            .unwrap()
            .detail
            .contains("is gone"));
    }
}
