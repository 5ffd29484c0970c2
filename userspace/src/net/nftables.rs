//! oxlay's own nftables table, `ip oxlay`, written through the `nftables` crate (the
//! `nft` program's JSON API). It holds the NAT that `reconcile::nat` computes. Each
//! change replaces the table's contents in one transaction: a connection through NAT
//! never meets a moment without rules, and the kernel's conntrack entries (the NAT
//! bindings of open connections) are left alone, also across a daemon restart.
use std::borrow::Cow;

use anyhow::{bail, Result};
use nftables::{
    batch::Batch,
    expr::{Expression, NamedExpression, Payload, PayloadField, Prefix, SetItem},
    helper::{self, NftablesError},
    schema::{
        Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetFlag, SetType,
        SetTypeValue, Table,
    },
    stmt::{Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

use crate::{net::Ipv4Net, reconcile::Nat};

/// The table's name (family `ip`): `nft list table ip oxlay` shows it.
pub const TABLE: &str = "oxlay";
const OVERLAY: &str = "overlay";
const POSTROUTING: &str = "postrouting";
/// nftables' `srcnat` priority.
const SRCNAT: i32 = 100;

/// Makes the table hold `nat`, in one transaction.
pub fn apply(nat: &Nat) -> Result<()> {
    helper::apply_ruleset(&ruleset(nat)).map_err(explain)
}

/// Removes the table and everything in it (nothing if it is not there).
pub fn remove() -> Result<()> {
    let mut batch = Batch::new();
    // Adding first makes the delete succeed also when there is no table.
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    helper::apply_ruleset(&batch.to_nftables()).map_err(explain)
}

fn explain(e: NftablesError) -> anyhow::Error {
    match e {
        NftablesError::NftExecution { inner, .. }
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::anyhow!(
                "oxlay needs the `nft` program to masquerade containers' traffic to the outside: install nftables (Debian, Ubuntu: apt install nftables)"
            )
        }
        // The crate lets nft's own message through to the daemon's log.
        NftablesError::NftFailed { stderr, .. } if stderr.trim().is_empty() => {
            anyhow::anyhow!("nft refused oxlay's table (nft's message is just above in this log)")
        }
        NftablesError::NftFailed { stderr, .. } => {
            anyhow::anyhow!("nft refused oxlay's table: {}", stderr.trim())
        }
        e => anyhow::anyhow!("nft: {e}"),
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    }
}

fn overlay_set() -> Set<'static> {
    Set {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: OVERLAY.into(),
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        flags: Some([SetFlag::Interval].into_iter().collect()),
        ..Default::default()
    }
}

fn postrouting() -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: POSTROUTING.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }
}

fn prefix(net: &Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.addr().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn ip(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: "ip".into(),
            field: field.into(),
        },
    )))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

/// `ip saddr SOURCE ip daddr != @overlay [ip daddr != { EXCEPT }] masquerade`
fn masquerade_rule(
    source: &Ipv4Net,
    except: &std::collections::BTreeSet<Ipv4Net>,
) -> Rule<'static> {
    let mut expr = vec![
        matches(ip("saddr"), Operator::EQ, prefix(source)),
        matches(
            ip("daddr"),
            Operator::NEQ,
            Expression::String(format!("@{OVERLAY}").into()),
        ),
    ];
    if !except.is_empty() {
        let items = except.iter().map(|n| SetItem::Element(prefix(n))).collect();
        expr.push(matches(
            ip("daddr"),
            Operator::NEQ,
            Expression::Named(NamedExpression::Set(items)),
        ));
    }
    expr.push(Statement::Masquerade(None));
    Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: POSTROUTING.into(),
        expr: Cow::Owned(expr),
        ..Default::default()
    }
}

/// The transaction that makes the table hold `nat`: create what is missing, empty it,
/// fill it.
fn ruleset(nat: &Nat) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Set(Box::new(overlay_set())));
    batch.add(NfListObject::Chain(postrouting()));
    batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(overlay_set()))));
    batch.add_cmd(NfCmd::Flush(FlushObject::Chain(postrouting())));
    if !nat.overlay.is_empty() {
        batch.add(NfListObject::Element(Element {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: OVERLAY.into(),
            elem: nat.overlay.iter().map(prefix).collect::<Vec<_>>().into(),
        }));
    }
    for (source, except) in &nat.masquerade {
        batch.add(NfListObject::Rule(masquerade_rule(source, except)));
    }
    batch.to_nftables()
}

/// Whether this host has the `nft` program (the daemon says once at start when not).
pub fn available() -> Result<()> {
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "`nft --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => Err(explain(NftablesError::NftExecution {
            program: "nft".into(),
            inner: e,
        })),
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            verbs,
            [
                "add table",
                "add set",
                "add chain",
                "flush set",
                "flush chain",
                "add element",
                "add rule"
            ]
        );
        let rule = cmds[6]["add"]["rule"]["expr"].to_string();
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
}
