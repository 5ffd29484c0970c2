use oxlay_common::PEER_WIREGUARD;

use super::*;
use crate::model::WireguardEndpoint;

fn encrypting(name: &str, last: u8, key_byte: u8) -> HostRecord {
    HostRecord {
        wireguard: Some(WireguardEndpoint {
            public_key: encode_key(&[key_byte; 32]),
            port: 51871,
        }),
        ..host(name, last)
    }
}

fn bad_key(last: u8) -> HostRecord {
    let mut h = encrypting("bad", last, 9);
    h.wireguard.as_mut().unwrap().public_key = "not a key".into();
    h
}

#[test]
fn peers_that_encrypt_get_their_address_and_direct_blocks() {
    let mut direct = network("flat", 300);
    direct.direct = true;
    let mut bad_key = encrypting("c", 13, 3);
    bad_key.wireguard.as_mut().unwrap().public_key = "not a key".into();
    let snapshot = Snapshot::from_records(
        vec![
            encrypting("me", 11, 1),
            encrypting("b", 12, 2),
            bad_key,
            host("plain", 14),
        ],
        vec![network("blue", 100), direct],
        vec![
            block("blue", "10.10.1.0/24", "b"),
            block("flat", "10.30.1.0/24", "b"),
            block("flat", "10.30.0.0/24", "me"),
        ],
    );
    let (peers, warnings) = desired_wireguard_peers("me", &snapshot);
    assert_eq!(peers.len(), 1, "{peers:?}");
    let b = &peers[0];
    assert_eq!(b.public_key, [2; 32]);
    assert_eq!(b.endpoint, "192.168.50.12:51871".parse().unwrap());
    // Its underlay address (VXLAN comes from there) and its direct block; not its
    // overlay block, which travels inside VXLAN.
    let allowed: Vec<String> = b.allowed_ips.iter().map(|n| n.to_string()).collect();
    assert_eq!(allowed, ["10.30.1.0/24", "192.168.50.12/32"]);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("host c"), "{warnings:?}");
}

#[test]
fn hosts_sharing_a_key_are_not_peers() {
    let snapshot = Snapshot::from_records(
        vec![
            encrypting("me", 11, 1),
            encrypting("b", 12, 2),
            encrypting("copy-of-b", 13, 2),
            encrypting("copy-of-me", 14, 1),
            encrypting("d", 15, 4),
        ],
        vec![network("blue", 100)],
        vec![],
    );
    let (peers, warnings) = desired_wireguard_peers("me", &snapshot);
    let keys: Vec<u8> = peers.iter().map(|p| p.public_key[0]).collect();
    assert_eq!(keys, [4], "{warnings:?}");
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().all(|w| w.contains("like another host")));
}

#[test]
fn peers_are_marked_encrypted_only_when_both_ends_encrypt() {
    let snapshot = Snapshot::from_records(
        vec![
            host("me", 11),
            encrypting("b", 12, 2),
            host("plain", 14),
            bad_key(15),
        ],
        vec![network("blue", 100)],
        vec![],
    );
    let flags = |config: &Config| -> Vec<u32> {
        let d = desired(&me(), config, &snapshot, &[]).unwrap();
        d.peers.values().map(|p| p.flags).collect()
    };
    // This host does not encrypt: everyone in plain.
    assert_eq!(flags(&config()), [0, 0, 0]);
    let mut encrypts = config();
    encrypts.wireguard = Some(Default::default());
    // A key that does not decode: no WireGuard peer, so no mark either.
    assert_eq!(flags(&encrypts), [PEER_WIREGUARD, 0, 0]);
}

#[test]
fn keys_round_trip_and_wrong_lengths_are_refused() {
    let key = [7u8; 32];
    assert_eq!(decode_key(&encode_key(&key)), Some(key));
    // 31 bytes of base64: too short for a key.
    assert_eq!(
        decode_key("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw=="),
        None
    );
    assert_eq!(decode_key("%%%"), None);
}
