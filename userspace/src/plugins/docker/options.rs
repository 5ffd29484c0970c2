//! What Docker's IPAM options mean for an oxlay network created on Docker's behalf.
use std::collections::BTreeMap;

use anyhow::{anyhow, Result};

use crate::{model::NetworkSpec, net::Ipv4Net};

/// A network created on Docker's behalf: IPAM options `vni`, `block-prefix`,
/// `direct`, `masquerade`, `masquerade-except` (comma-separated CIDRs) and `encap`
/// (vxlan or gre) are oxlay's; the others become labels.
pub(super) fn network_spec(
    name: &str,
    subnet: Option<Ipv4Net>,
    options: &BTreeMap<String, String>,
) -> Result<NetworkSpec> {
    let mut spec = NetworkSpec {
        name: name.to_owned(),
        subnet,
        ..NetworkSpec::default()
    };
    for (k, v) in options {
        match k.as_str() {
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
    spec.labels
        .insert("created-by".to_owned(), "docker".to_owned());
    Ok(spec)
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
        let spec = network_spec("blue", None, &options).unwrap();
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
            let e = network_spec("blue", None, &bad).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
