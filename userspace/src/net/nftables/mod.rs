//! oxlay's own nftables table, `ip oxlay`, written through the `nftables` crate (the
//! `nft` program's JSON API). It holds the NAT that `reconcile::nat` computes. Each
//! change replaces the table's contents in one transaction: a connection through NAT
//! never meets a moment without rules, and the kernel's conntrack entries (the NAT
//! bindings of open connections) are left alone, also across a daemon restart.
use std::{borrow::Cow, collections::BTreeSet, net::Ipv4Addr};

use anyhow::{bail, Result};
use nftables::{
    batch::Batch,
    expr::{
        Expression, Fib, FibFlag, FibResult, NamedExpression, Payload, PayloadField, Prefix,
        SetItem, CT,
    },
    helper::{self, NftablesError},
    schema::{
        Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetFlag, SetType,
        SetTypeValue, Table,
    },
    stmt::{Match, Operator, Statement, NAT},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

use crate::{model::PublishedPort, net::Ipv4Net, reconcile::Nat};

/// The table's name (family `ip`): `nft list table ip oxlay` shows it.
pub const TABLE: &str = "oxlay";
const OVERLAY: &str = "overlay";
const POSTROUTING: &str = "postrouting";
const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
/// nftables' `srcnat` and `dstnat` priorities.
const SRCNAT: i32 = 100;
const DSTNAT: i32 = -100;

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

/// A NAT base chain of the table.
fn nat_chain(name: &'static str, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }
}

/// Masquerade (to the outside; hairpin and overlay clients of published ports).
fn postrouting() -> Chain<'static> {
    nat_chain(POSTROUTING, NfHook::Postrouting, SRCNAT)
}

/// Published ports, for packets from elsewhere (`prerouting`) and from this host
/// itself (`output`).
fn port_chains() -> [Chain<'static>; 2] {
    [
        nat_chain(PREROUTING, NfHook::Prerouting, DSTNAT),
        nat_chain(OUTPUT, NfHook::Output, DSTNAT),
    ]
}

fn prefix(net: &Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.addr().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn ip_field(field: &'static str) -> Expression<'static> {
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

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        ..Default::default()
    }
}

/// `(ip daddr HOST_IP | fib daddr type local) PROTO dport HOST_PORT dnat to ADDR:PORT`
fn forward_rule(chain: &'static str, port: &PublishedPort, to: Ipv4Addr) -> Rule<'static> {
    let to_host = match port.host_ip {
        Some(ip) => matches(
            ip_field("daddr"),
            Operator::EQ,
            Expression::String(ip.to_string().into()),
        ),
        None => matches(
            Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: [FibFlag::Daddr].into_iter().collect(),
            })),
            Operator::EQ,
            Expression::String("local".into()),
        ),
    };
    let dport = Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: port.proto.name().into(),
            field: "dport".into(),
        },
    )));
    let dnat = Statement::DNAT(Some(NAT {
        addr: Some(Expression::String(to.to_string().into())),
        family: None,
        port: Some(Expression::Number(u32::from(port.container_port))),
        flags: None,
    }));
    let mut expr = vec![to_host];
    if chain == OUTPUT {
        // The kernel drops a packet from 127.0.0.1 that DNAT sends elsewhere
        // (route_localnet): a loopback client would wait in vain; let it be refused.
        let loopback: Ipv4Net = "127.0.0.0/8".parse().expect("a valid CIDR");
        expr.push(matches(ip_field("daddr"), Operator::NEQ, prefix(&loopback)));
    }
    expr.push(matches(
        dport,
        Operator::EQ,
        Expression::Number(u32::from(port.host_port)),
    ));
    expr.push(dnat);
    rule(chain, expr)
}

/// `ct status dnat ip saddr @overlay ip daddr @overlay masquerade`: a container that
/// reaches a published port (its own, hairpin, or another's) is answered through this
/// host, whose conntrack undoes the DNAT.
fn hairpin_rule() -> Rule<'static> {
    let status = Expression::Named(NamedExpression::CT(CT {
        key: "status".into(),
        family: None,
        dir: None,
    }));
    rule(
        POSTROUTING,
        vec![
            matches(status, Operator::IN, Expression::String("dnat".into())),
            matches(
                ip_field("saddr"),
                Operator::EQ,
                Expression::String(format!("@{OVERLAY}").into()),
            ),
            matches(
                ip_field("daddr"),
                Operator::EQ,
                Expression::String(format!("@{OVERLAY}").into()),
            ),
            Statement::Masquerade(None),
        ],
    )
}

/// `ip saddr SOURCE ip daddr != @overlay [ip daddr != { EXCEPT }] masquerade`
fn masquerade_rule(
    source: &Ipv4Net,
    except: &std::collections::BTreeSet<Ipv4Net>,
) -> Rule<'static> {
    let mut expr = vec![
        matches(ip_field("saddr"), Operator::EQ, prefix(source)),
        matches(
            ip_field("daddr"),
            Operator::NEQ,
            Expression::String(format!("@{OVERLAY}").into()),
        ),
    ];
    if !except.is_empty() {
        let items = except.iter().map(|n| SetItem::Element(prefix(n))).collect();
        expr.push(matches(
            ip_field("daddr"),
            Operator::NEQ,
            Expression::Named(NamedExpression::Set(items)),
        ));
    }
    expr.push(Statement::Masquerade(None));
    rule(POSTROUTING, expr)
}

/// One rule per source network, most specific first, so that a network inside another
/// follows its own settings: `return` for one that keeps its address, masquerade else.
fn egress_rules(nat: &Nat) -> Vec<Rule<'static>> {
    let mut sources: Vec<(&Ipv4Net, Option<&BTreeSet<Ipv4Net>>)> = nat
        .masquerade
        .iter()
        .map(|(s, except)| (s, Some(except)))
        .chain(nat.keep.iter().map(|s| (s, None)))
        .collect();
    sources.sort_by_key(|(s, _)| (std::cmp::Reverse(s.prefix_len()), **s));
    sources
        .into_iter()
        .map(|(source, except)| match except {
            Some(except) => masquerade_rule(source, except),
            None => rule(
                POSTROUTING,
                vec![
                    matches(ip_field("saddr"), Operator::EQ, prefix(source)),
                    Statement::Return(None),
                ],
            ),
        })
        .collect()
}

/// The transaction that makes the table hold `nat`: create what is missing, empty it,
/// fill it.
fn ruleset(nat: &Nat) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Set(Box::new(overlay_set())));
    let chains = [postrouting()].into_iter().chain(port_chains());
    for chain in chains.clone() {
        batch.add(NfListObject::Chain(chain));
    }
    batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(overlay_set()))));
    for chain in chains {
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain)));
    }
    if !nat.overlay.is_empty() {
        batch.add(NfListObject::Element(Element {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: OVERLAY.into(),
            elem: nat.overlay.iter().map(prefix).collect::<Vec<_>>().into(),
        }));
    }
    if !nat.forwards.is_empty() {
        batch.add(NfListObject::Rule(hairpin_rule()));
    }
    for rule in egress_rules(nat) {
        batch.add(NfListObject::Rule(rule));
    }
    for (port, to) in &nat.forwards {
        for chain in [PREROUTING, OUTPUT] {
            batch.add(NfListObject::Rule(forward_rule(chain, port, *to)));
        }
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
mod tests;
