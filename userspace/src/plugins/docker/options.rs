//! What Docker's IPAM options mean for an oxlay network created on Docker's behalf.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{anyhow, bail, Result};

use crate::{
    model::{L2Settings, NetworkRecord, NetworkSpec},
    net::Ipv4Net,
};

/// A network created on Docker's behalf: IPAM options `vni`, `block-prefix`,
/// `direct`, `masquerade`, `masquerade-except` (comma-separated CIDRs), `encap`
/// (vxlan or gre), and for a layer-2 network `mode=l2`, `vlan` and `gateway` (Docker's
/// `--gateway` reaches the IPAM only after the pool) are oxlay's; the others become
/// labels. `--ip-range` is a layer-2 network's.
pub(super) fn network_spec(
    name: &str,
    (subnet, ip_range): (Option<Ipv4Net>, Option<Ipv4Net>),
    options: &BTreeMap<String, String>,
) -> Result<NetworkSpec> {
    let mut spec = NetworkSpec {
        name: name.to_owned(),
        subnet,
        ..NetworkSpec::default()
    };
    let mut l2 = L2Options::default();
    for (k, v) in options {
        match k.as_str() {
            "mode" | "vlan" | "gateway" => l2.set(k, v)?,
            "vni" => {
                spec.vni = Some(
                    v.parse()
                        .map_err(|_| anyhow!("--ipam-opt vni={v}: not a number"))?,
                )
            }
            "block-prefix" => {
                spec.block_prefix = Some(
                    v.parse()
                        .map_err(|_| anyhow!("--ipam-opt block-prefix={v}: not a number"))?,
                )
            }
            "direct" => {
                spec.direct = v
                    .parse()
                    .map_err(|_| anyhow!("--ipam-opt direct={v}: use true or false"))?
            }
            "encap" => {
                spec.encap = v
                    .parse()
                    .map_err(|e| anyhow!("--ipam-opt encap={v}: {e:#}"))?
            }
            "masquerade" => {
                spec.egress.masquerade = v
                    .parse()
                    .map_err(|_| anyhow!("--ipam-opt masquerade={v}: use true or false"))?
            }
            "masquerade-except" => {
                spec.egress.except = v
                    .split(',')
                    .map(|c| c.trim().parse::<Ipv4Net>())
                    .collect::<Result<_>>()
                    .map_err(|e| anyhow!("--ipam-opt masquerade-except={v}: {e:#}"))?
            }
            _ => {
                spec.labels.insert(k.clone(), v.clone());
            }
        }
    }
    spec.l2 = l2.settings(subnet, ip_range)?;
    spec.labels
        .insert("created-by".to_owned(), "docker".to_owned());
    Ok(spec)
}

/// A network asked for again (on another host, or by a restarted dockerd) as `asked`:
/// the same mode, and for a layer-2 network the same range and VLAN.
pub(super) fn check_same_l2(net: &NetworkRecord, asked: Option<L2Settings>) -> Result<()> {
    let same = |l: &L2Settings| (l.ip_range, l.vlan);
    if asked.is_some() == net.l2.is_some()
        && asked.zip(net.l2).is_none_or(|(a, n)| same(&a) == same(&n))
    {
        return Ok(());
    }
    let is = match net.l2 {
        Some(l2) => format!(
            "a layer-2 network (range {:?}, VLAN {})",
            l2.ip_range, l2.vlan
        ),
        None => "an overlay network".to_owned(),
    };
    bail!(
        "network {} exists as {is}: give the same --ip-range and --ipam-opt mode/vlan, or another network name",
        net.name
    )
}

/// The IPAM options of a layer-2 network, as given.
#[derive(Default)]
struct L2Options {
    l2: bool,
    vlan: u16,
    gateway: Option<Ipv4Addr>,
}

impl L2Options {
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |what: &str| anyhow!("--ipam-opt {key}={value}: {what}");
        match key {
            "mode" => {
                self.l2 = match value {
                    "l2" => true,
                    "overlay" => false,
                    _ => return Err(bad("use l2 or overlay")),
                }
            }
            "vlan" => {
                self.vlan = value
                    .parse()
                    .ok()
                    .filter(|v| (1..=crate::model::VLAN_MAX).contains(v))
                    .ok_or_else(|| bad("use a VLAN id from 1 to 4094"))?
            }
            _ => self.gateway = Some(value.parse().map_err(|_| bad("not an IPv4 address"))?),
        }
        Ok(())
    }

    /// The network's layer-2 settings; the gateway defaults to the subnet's first
    /// address, as Docker's does.
    fn settings(
        self,
        subnet: Option<Ipv4Net>,
        ip_range: Option<Ipv4Net>,
    ) -> Result<Option<L2Settings>> {
        if !self.l2 {
            if ip_range.is_some() || self.vlan != 0 || self.gateway.is_some() {
                bail!("--ip-range and --ipam-opt vlan/gateway are for layer-2 networks: add --ipam-opt mode=l2");
            }
            return Ok(None);
        }
        let subnet = subnet.ok_or_else(|| {
            anyhow!("a layer-2 network is the LAN's subnet: give it with --subnet")
        })?;
        let first = Ipv4Addr::from(u32::from(subnet.addr()) + 1);
        Ok(Some(L2Settings {
            gateway: self.gateway.unwrap_or(first),
            ip_range,
            vlan: self.vlan,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_options_become_network_settings_and_labels() {
        let options = BTreeMap::from([
            ("vni".to_owned(), "77".to_owned()),
            ("block-prefix".to_owned(), "26".to_owned()),
            ("direct".to_owned(), "true".to_owned()),
            ("masquerade".to_owned(), "false".to_owned()),
            (
                "masquerade-except".to_owned(),
                "10.0.0.0/8, 172.16.0.0/12".to_owned(),
            ),
            ("encap".to_owned(), "gre".to_owned()),
            ("team".to_owned(), "a".to_owned()),
        ]);
        let spec = network_spec("blue", (None, None), &options).unwrap();
        assert_eq!(spec.vni, Some(77));
        assert_eq!(spec.block_prefix, Some(26));
        assert!(spec.direct);
        assert_eq!(spec.encap, crate::model::Encap::Gre);
        assert!(!spec.egress.masquerade);
        let except: Vec<String> = spec.egress.except.iter().map(|c| c.to_string()).collect();
        assert_eq!(except, ["10.0.0.0/8", "172.16.0.0/12"]);
        assert_eq!(spec.labels["team"], "a");
        assert_eq!(spec.labels["created-by"], "docker");
        for (k, v, says) in [
            ("vni", "x", "vni=x"),
            ("block-prefix", "-1", "block-prefix"),
            ("direct", "yes", "true or false"),
            ("masquerade", "no", "masquerade=no"),
            ("masquerade-except", "10.0.0.0/33", "masquerade-except"),
            ("encap", "geneve", "use vxlan or gre"),
        ] {
            let bad = BTreeMap::from([(k.to_owned(), v.to_owned())]);
            let e = network_spec("blue", (None, None), &bad).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn l2_options_make_a_layer2_network() {
        let subnet = Some("192.168.77.0/24".parse().unwrap());
        let range = Some("192.168.77.0/25".parse().unwrap());
        let options = BTreeMap::from([
            ("mode".to_owned(), "l2".to_owned()),
            ("vlan".to_owned(), "100".to_owned()),
        ]);
        let l2 = network_spec("lan", (subnet, range), &options)
            .unwrap()
            .l2
            .unwrap();
        assert_eq!(
            l2.gateway,
            Ipv4Addr::new(192, 168, 77, 1),
            "Docker's default"
        );
        assert_eq!((l2.ip_range, l2.vlan), (range, 100));
        let e = network_spec("blue", (subnet, range), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("mode=l2"), "{e}");
        let bad = BTreeMap::from([
            ("mode".to_owned(), "l2".to_owned()),
            ("vlan".to_owned(), "4095".to_owned()),
        ]);
        assert!(network_spec("lan", (subnet, None), &bad).is_err());
    }

    #[test]
    fn a_network_asked_for_again_must_be_the_same_kind() {
        let l2 = |range: &str, vlan| {
            Some(L2Settings {
                gateway: "192.168.77.1".parse().unwrap(),
                ip_range: Some(range.parse().unwrap()),
                vlan,
            })
        };
        let net = |l2| NetworkRecord {
            name: "lan".into(),
            vni: 1,
            subnet: "192.168.77.0/24".parse().unwrap(),
            block_prefix: 28,
            labels: BTreeMap::new(),
            direct: false,
            removing: false,
            egress: Default::default(),
            encap: Default::default(),
            l2,
        };
        let lan = net(l2("192.168.77.0/25", 100));
        assert!(check_same_l2(&lan, l2("192.168.77.0/25", 100)).is_ok());
        for other in [None, l2("192.168.77.0/26", 100), l2("192.168.77.0/25", 200)] {
            let e = check_same_l2(&lan, other).unwrap_err();
            assert!(e.to_string().contains("layer-2 network"), "{e}");
        }
        let overlay = net(None);
        assert!(check_same_l2(&overlay, None).is_ok());
        let e = check_same_l2(&overlay, l2("192.168.77.0/25", 0)).unwrap_err();
        assert!(e.to_string().contains("an overlay network"), "{e}");
    }
}
