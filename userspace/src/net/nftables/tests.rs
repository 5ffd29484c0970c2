use super::*;

#[test]
fn the_transaction_recreates_the_table_with_one_rule_per_source() {
    let mut nat = Nat::default();
    nat.overlay.insert("10.1.0.0/16".parse().unwrap());
    nat.masquerade.insert(
        "10.1.0.0/16".parse().unwrap(),
        ["172.16.0.0/12".parse().unwrap()].into(),
    );
    let json = serde_json::to_value(ruleset(&nat)).unwrap();
    let cmds = json["nftables"].as_array().unwrap();
    let verbs: Vec<String> = cmds
        .iter()
        .map(|c| {
            let (verb, obj) = c.as_object().unwrap().iter().next().unwrap();
            format!("{verb} {}", obj.as_object().unwrap().keys().next().unwrap())
        })
        .collect();
    let chains = ["add chain"; 3];
    let flushes = ["flush chain"; 3];
    let want: Vec<&str> = ["add table", "add set"]
        .into_iter()
        .chain(chains)
        .chain(["flush set"])
        .chain(flushes)
        .chain(["add element", "add rule"])
        .collect();
    assert_eq!(verbs, want);
    let rule = cmds[10]["add"]["rule"]["expr"].to_string();
    for part in [
        r#""field":"saddr""#,
        r#""addr":"10.1.0.0","len":16"#,
        r#""right":"@overlay""#,
        r#""addr":"172.16.0.0","len":12"#,
        r#""masquerade""#,
    ] {
        assert!(rule.contains(part), "{part} missing in {rule}");
    }
}

#[test]
fn published_ports_become_dnat_rules_and_a_hairpin_masquerade() {
    let mut nat = Nat::default();
    let port = PublishedPort {
        proto: crate::model::PortProto::Udp,
        host_ip: None,
        host_port: 5353,
        container_port: 53,
    };
    nat.forwards.insert((port, "10.1.0.5".parse().unwrap()));
    let json = serde_json::to_value(ruleset(&nat)).unwrap().to_string();
    for part in [
        r#""chain":"prerouting""#,
        r#""chain":"output""#,
        r#""fib":{"#,
        r#""field":"dport","protocol":"udp""#,
        r#""right":5353"#,
        r#""dnat":{"addr":"10.1.0.5","port":53}"#,
        r#""ct":{"key":"status"}"#,
    ] {
        assert!(json.contains(part), "{part} missing in {json}");
    }
}

#[test]
fn a_network_inside_another_follows_its_own_settings() {
    let mut nat = Nat::default();
    nat.overlay.insert("10.1.0.0/16".parse().unwrap());
    nat.masquerade
        .insert("10.1.0.0/16".parse().unwrap(), BTreeSet::new());
    nat.keep.insert("10.1.5.0/24".parse().unwrap());
    let rules: Vec<String> = egress_rules(&nat)
        .iter()
        .map(|r| serde_json::to_string(&r.expr).unwrap())
        .collect();
    assert_eq!(rules.len(), 2);
    assert!(
        rules[0].contains(r#""len":24"#) && rules[0].contains("return"),
        "the inner network's return comes first: {rules:?}"
    );
    assert!(rules[1].contains(r#""len":16"#) && rules[1].contains("masquerade"));
}
