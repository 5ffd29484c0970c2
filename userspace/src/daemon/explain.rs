//! `oxlay explain` in the daemon: builds the probe from what the daemon knows (the
//! container's MACs and veth, the peer's VTEP), runs the loaded program on it against
//! the live maps, and says which route matched and what the program did.
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use oxlay_common::{program_names, Route, RouteKind};

use super::{Daemon, State};
use crate::{
    api::Request,
    explain::{self, ExplainView, RouteMatch, Spec, Tunnel, L4},
    model::Encap,
    monitor::{flows, Flow},
    net::Ipv4Net,
};

/// What to probe.
struct Ask {
    network: String,
    spec: Spec,
    /// From a peer (this peer, or the host whose block holds the source).
    receive: bool,
    peer: Option<Ipv4Addr>,
}

/// Answers `Request::Explain`.
pub(super) async fn answer(d: &Daemon, request: Request) -> Result<ExplainView> {
    let Request::Explain {
        network,
        from,
        to,
        protocol,
        sport,
        dport,
        size,
        receive,
        peer,
    } = request
    else {
        bail!("not an explain request");
    };
    let protocol = match (protocol, dport) {
        (Some(p), _) => p.parse()?,
        (None, Some(_)) => L4::Tcp,
        (None, None) => L4::Icmp,
    };
    let min = Spec::min_size(protocol);
    let size = size.unwrap_or(100);
    // A test run takes a packet of at most about a page.
    if !(min..=3000).contains(&size) {
        bail!("--size {size}: give {min} to 3000 bytes (the IPv4 packet's length)");
    }
    let spec = Spec {
        from,
        to,
        protocol,
        sport: sport.unwrap_or(40000),
        dport: dport.unwrap_or(80),
        size,
    };
    let ask = Ask {
        network,
        spec,
        receive,
        peer,
    };
    explain(d, ask).await
}

async fn explain(d: &Daemon, ask: Ask) -> Result<ExplainView> {
    let mut s = d.state.lock().await;
    let (vni, encap) = network(&s, &ask.network)?;
    let spec = ask.spec;
    let view = |entered: String, route: Option<(Option<Ipv4Net>, Route)>| ExplainView {
        direction: if ask.receive { "receive" } else { "send" }.into(),
        network: ask.network.clone(),
        vni,
        probe: flows(&explain::container_frame(&spec, [0; 6], [0; 6]), 0)
            .1
            .unwrap_or(Flow {
                src: spec.from,
                dst: spec.to,
                protocol: String::new(),
                sport: None,
                dport: None,
            }),
        entered,
        route: route.map(|(prefix, r)| route_match(&s, prefix, &r)),
        verdict: String::new(),
        action: String::new(),
        counter: None,
        meaning: None,
        outer: None,
        outer_vni: None,
        delivered_to: None,
        encrypted_by: None,
    };
    let (mut v, program, frame, ifindex) = if ask.receive {
        let underlay = &s.config.underlay_interface;
        let ifindex = crate::net::ifindex(underlay)
            .with_context(|| format!("the underlay interface {underlay} is gone"))?;
        let tunnel = tunnel(d, &s, vni, encap, &ask)?;
        let frame = explain::tunnelled_frame(&spec, &tunnel);
        let mut v = view(underlay.clone(), lookup(&s, vni, spec.to));
        v.encrypted_by = encrypted_by(&s, tunnel.peer);
        v.entered = v.encrypted_by.clone().unwrap_or(v.entered);
        (v, program_names::DECAP_TC, frame, ifindex)
    } else {
        let ep = s
            .endpoints
            .values()
            .find(|e| e.vni == vni && e.address == spec.from)
            .with_context(|| format!(
                "{} is no container of network {} on this host ({}): explain a packet on the host it leaves from, or with --receive on the host it goes to",
                spec.from, ask.network, s.config.node_name
            ))?;
        let frame = explain::container_frame(&spec, ep.container_mac.0, ep.host_mac.0);
        let net_id = ep.map_entry().net_id;
        let v = view(ep.host_ifname.clone(), lookup(&s, net_id, spec.to));
        (v, program_names::FROM_CONTAINER, frame, ep.host_ifindex)
    };
    // Received through the device: classified as what it hands over.
    let via_wireguard = ask.receive && v.encrypted_by.is_some();
    let (out, counter) = s.datapath.probe(program, &frame, ifindex, via_wireguard)?;
    outcome(&s, &mut v, &out, counter);
    Ok(v)
}

/// What the program did with the probe, into the answer.
fn outcome(
    s: &State,
    v: &mut ExplainView,
    out: &crate::datapath::TestRunOutcome,
    counter: Option<&oxlay_common::CounterInfo>,
) {
    v.verdict = explain::verdict(counter).into();
    v.action = match out.verdict {
        0 => "pass (TC_ACT_OK)".into(),
        2 => "drop (TC_ACT_SHOT)".into(),
        7 => "redirect (TC_ACT_REDIRECT)".into(),
        n => n.to_string(),
    };
    v.counter = counter.map(|c| c.name.into());
    v.meaning = counter.map(|c| c.help.into());
    if v.verdict == "encapsulated" {
        let (outer, _, outer_vni) = flows(&out.packet, s.config.vxlan_port);
        (v.outer, v.outer_vni) = (outer, outer_vni);
    }
    if v.direction == "send" && matches!(v.verdict.as_str(), "encapsulated" | "routed") {
        let peer = v
            .route
            .as_ref()
            .and_then(|r| r.via.parse::<Ipv4Addr>().ok());
        v.encrypted_by = peer.and_then(|p| encrypted_by(s, p));
    }
    if v.verdict == "delivered" {
        v.delivered_to = v
            .route
            .as_ref()
            .filter(|r| r.kind == "local")
            .map(|r| r.via.clone());
    }
}

/// oxlay's WireGuard device, when packets to and from `peer` travel inside it (both
/// ends encrypt).
fn encrypted_by(s: &State, peer: Ipv4Addr) -> Option<String> {
    let flagged = s
        .shadow
        .as_ref()
        .and_then(|m| m.peers.get(&peer))
        .is_some_and(|p| p.flags & oxlay_common::PEER_WIREGUARD != 0);
    s.encryption
        .as_ref()
        .filter(|_| flagged)
        .map(|e| e.device.clone())
}

/// The VNI and encapsulation of network `name` ("static": the config's own).
fn network(s: &State, name: &str) -> Result<(u32, Encap)> {
    if let Some(n) = s.snapshot.networks.values().find(|n| n.name == name) {
        if n.l2.is_some() {
            bail!("{name} is a layer-2 network: its frames go on the wire as they are, nothing to explain");
        }
        return Ok((n.vni, n.encap));
    }
    match s.config.vni {
        Some(vni) if name == "static" => Ok((vni, s.config.encap)),
        _ => bail!("no network {name:?}: `oxlay network ls` lists them"),
    }
}

/// The longest-prefix route of `addr` in network `net_id`: the kernel's lookup in the
/// live map, with the prefix from what the daemon wrote (a map lookup does not say
/// which prefix matched). When the two disagree (a write that failed), the map's
/// entry is shown, its prefix unknown.
fn lookup(s: &State, net_id: u32, addr: Ipv4Addr) -> Option<(Option<Ipv4Net>, Route)> {
    let live = s.datapath.route_lookup(net_id, addr).ok().flatten()?;
    let written = s.shadow.as_ref().and_then(|shadow| {
        shadow
            .routes
            .iter()
            .filter(|((net, prefix), _)| *net == net_id && prefix.contains(addr))
            .max_by_key(|((_, prefix), _)| prefix.prefix_len())
            .map(|((_, prefix), route)| (*prefix, *route))
    });
    match written {
        Some((prefix, route)) if route == live => Some((Some(prefix), live)),
        _ => Some((None, live)),
    }
}

fn route_match(s: &State, prefix: Option<Ipv4Net>, r: &Route) -> RouteMatch {
    let underlay = Ipv4Addr::from(r.underlay_addr);
    let (kind, via, host) = match r.kind {
        k if k == RouteKind::Local as u8 => {
            let veth = s.endpoints.values().find(|e| e.host_ifindex == r.ifindex);
            let via = veth.map_or(format!("ifindex {}", r.ifindex), |e| {
                format!("{} (container {})", e.host_ifname, e.netns)
            });
            ("local", via, None)
        }
        k => {
            let host = s
                .snapshot
                .hosts
                .values()
                .find(|h| h.underlay_address == underlay)
                .map(|h| h.name.clone());
            let kind = match k {
                k if k == RouteKind::Direct as u8 => "direct",
                k if k == RouteKind::RemoteGre as u8 => "remote-gre",
                _ => "remote",
            };
            (kind, underlay.to_string(), host)
        }
    };
    RouteMatch {
        prefix: prefix.map_or_else(
            || {
                "unknown: the map's entry differs from what the daemon wrote (`oxlay status`)"
                    .into()
            },
            |p| p.to_string(),
        ),
        kind: kind.into(),
        via,
        host,
    }
}

/// How the peer wraps the probe: `--peer`, or the host whose block holds the source.
fn tunnel(d: &Daemon, s: &State, vni: u32, encap: Encap, ask: &Ask) -> Result<Tunnel> {
    let owner = lookup(s, vni, ask.spec.from).filter(|(_, r)| r.kind != RouteKind::Local as u8);
    let peer = match (ask.peer, owner) {
        (Some(peer), _) => peer,
        (None, Some((_, r))) => Ipv4Addr::from(r.underlay_addr),
        (None, None) => bail!(
            "{} is in no other host's block of network {}: say which peer sends it with --peer",
            ask.spec.from,
            ask.network
        ),
    };
    let peer_vtep = s
        .snapshot
        .hosts
        .values()
        .find(|h| h.underlay_address == peer)
        .map(|h| h.vtep_mac.0)
        .or(owner.map(|(_, r)| r.dst_mac))
        .unwrap_or([2, 0, 0, 0, 0, 0]);
    Ok(Tunnel {
        peer,
        local: d.host.underlay_address,
        vni,
        vxlan_port: (encap != Encap::Gre).then_some(s.config.vxlan_port),
        peer_vtep,
        local_vtep: s.config.vtep_mac().0,
    })
}
