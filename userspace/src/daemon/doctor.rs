//! `oxlay doctor` in the daemon: the findings about this host (kernel, store, lease,
//! clock, route map, forwarding, the VXLAN port) and each peer (probed through its
//! program at three sizes).
use std::{net::Ipv4Addr, time::Duration};

use oxlay_common::limits::MAX_ROUTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Daemon;
use crate::{
    config::DecapMode,
    doctor::{echo, host, wireguard as wg_doctor, Finding},
    net::netlink,
};

pub(super) async fn findings(d: &Daemon) -> Vec<Finding> {
    let mut found = vec![kernel(d), store(d), lease(d), clock(d).await];
    {
        let s = d.state.lock().await;
        let routes = s.shadow.as_ref().map_or(0, |m| m.routes.len());
        let fill = routes as f64 / f64::from(MAX_ROUTES);
        let detail = format!("{routes} of {MAX_ROUTES} entries ({:.1}%)", fill * 100.0);
        let fix = "use larger blocks (fewer routes per host) or fewer networks per host";
        found.push(match fill {
            f if f > 0.9 => Finding::fail("route map", detail, fix),
            f if f > 0.75 => Finding::warn("route map", detail, fix),
            _ => Finding::ok("route map", detail),
        });
    }
    found.push(host::forwarding());
    found.push(host::rp_filter(&d.config.underlay_interface));
    found.push(port(d).await);
    found.push(offloads(d).await);
    found.extend(wireguard(d).await);
    found.extend(peers(d).await);
    found
}

/// With `[wireguard]`: the device (still the interface the programs send to), and
/// each other host's encryption and handshake (`doctor/wireguard.rs`).
async fn wireguard(d: &Daemon) -> Vec<Finding> {
    let (device, ifindex, handle, hosts) = {
        let s = d.state.lock().await;
        let Some(e) = &s.encryption else {
            return Vec::new();
        };
        let hosts: Vec<(String, Option<String>)> = s
            .snapshot
            .hosts
            .values()
            .filter(|h| h.name != d.host.name)
            .map(|h| {
                let key = h.wireguard.as_ref().map(|w| w.public_key.clone());
                (h.name.clone(), key)
            })
            .collect();
        (e.device.clone(), e.ifindex, s.handle.clone(), hosts)
    };
    let now = netlink::link_by_name(&handle, &device)
        .await
        .map(|link| link.map(|l| l.index));
    if let Some(f) = wg_doctor::device_moved(&device, ifindex, now) {
        return vec![f];
    }
    match crate::net::wireguard::device_state(&device).await {
        Ok(state) => wg_doctor::findings(&device, &state, &hosts, std::time::SystemTime::now()),
        Err(e) => vec![Finding::fail(
            "wireguard",
            format!("cannot read {device}: {e:#}; traffic to hosts that encrypt is lost"),
            "restart the daemon (it makes the device again); `ip -d link show` lists it",
        )],
    }
}

fn kernel(d: &Daemon) -> Finding {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let attach = if crate::datapath::has_tcx() {
        "TC programs on TCX links"
    } else {
        "TC programs as cls_bpf filters on clsact (no TCX before Linux 6.6)"
    };
    let decap = match d.config.decap {
        DecapMode::Tc => "decapsulation at TC ingress",
        DecapMode::Xdp => "decapsulation in XDP, delivery at TC",
    };
    Finding::ok(
        "kernel",
        format!("Linux {}: {attach}; {decap}", release.trim()),
    )
}

fn store(d: &Daemon) -> Finding {
    let h = d.health.lock().unwrap_or_else(|p| p.into_inner());
    match h.down_since {
        Some(since) => Finding::fail(
            "store",
            format!(
                "{} has not answered for {:.0} s ({}); forwarding goes on with the routes in the maps, but no change reaches this host",
                d.config.store.describe(),
                since.elapsed().unwrap_or_default().as_secs_f64(),
                h.last_error.as_deref().unwrap_or("no error recorded")
            ),
            "check that etcd runs and that [store] etcd_endpoints reach it from this host",
        ),
        None => Finding::ok("store", format!("{} answers", d.config.store.describe())),
    }
}

fn lease(d: &Daemon) -> Finding {
    let age = {
        let h = d.health.lock().unwrap_or_else(|p| p.into_inner());
        h.lease_renewed.map(|t| t.elapsed())
    };
    let ttl = d.lease.ttl();
    match age {
        Some(age) if age < ttl.mul_f64(0.7) => Finding::ok(
            "lease",
            format!("renewed {:.0} s ago (TTL {} s)", age.as_secs_f64(), ttl.as_secs()),
        ),
        _ => Finding::fail(
            "lease",
            format!("not renewed for {} (TTL {} s): when it expires, other hosts drop their routes to this host's containers", age.map_or("ever".into(), |a| format!("{:.0} s", a.as_secs_f64())), ttl.as_secs()),
            "make the store reachable (see the store finding); the daemon registers again by itself",
        ),
    }
}

/// The clock against etcd's (the Date header of its HTTP answer; second resolution),
/// from the first endpoint that answers.
async fn clock(d: &Daemon) -> Finding {
    let endpoints = &d.config.store.etcd_endpoints;
    if endpoints.is_empty() {
        return Finding::ok("clock", "embedded store on this machine: one clock");
    }
    let mut errors = Vec::new();
    let mut answer = None;
    for endpoint in endpoints {
        match etcd_date(endpoint).await {
            Ok(offset) => {
                answer = Some((endpoint, offset));
                break;
            }
            Err(e) => errors.push(format!("{endpoint}: {e:#}")),
        }
    }
    let Some((endpoint, offset)) = answer else {
        return Finding::warn(
            "clock",
            format!("cannot read the store's clock ({})", errors.join("; ")),
            "see the store finding; if the store answers, check that its endpoints serve HTTP (not HTTPS) from this host",
        );
    };
    if offset.abs() <= 2.0 {
        Finding::ok(
            "clock",
            format!(
                "within {:.0} s of {endpoint}'s clock (its Date header has whole seconds)",
                offset.abs().max(1.0)
            ),
        )
    } else {
        Finding::warn(
            "clock",
            format!("{offset:+.0} s from {endpoint}'s clock: logs and lease timings of the hosts disagree"),
            "run NTP (chrony, systemd-timesyncd) on every host and on the store",
        )
    }
}

/// Seconds the store's clock is ahead of ours.
async fn etcd_date(endpoint: &str) -> anyhow::Result<f64> {
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let request = format!("GET /version HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        let mut s = tokio::net::TcpStream::connect(&authority).await?;
        s.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    })
    .await??;
    let now = std::time::SystemTime::now();
    let date = answer
        .lines()
        .find_map(|l| {
            l.strip_prefix("Date: ")
                .or_else(|| l.strip_prefix("date: "))
        })
        .ok_or_else(|| anyhow::anyhow!("its answer has no Date header"))?;
    let theirs = httpdate::parse_http_date(date.trim())?;
    Ok(match theirs.duration_since(now) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    })
}

/// Something else on the VXLAN port: a kernel vxlan device, or any socket.
async fn port(d: &Daemon) -> Finding {
    let port = d.config.vxlan_port;
    let handle = d.state.lock().await.handle.clone();
    let (devices, sockets) = match (
        netlink::vxlan_devices(&handle).await,
        host::udp_sockets_on(port),
    ) {
        (Ok(devices), Ok(sockets)) => (devices, sockets),
        (Err(e), _) | (_, Err(e)) => {
            return Finding::warn(
                "vxlan port",
                format!("cannot tell whether something else uses UDP {port}: {e:#}"),
                format!(
                    "`ip -d link show type vxlan` and `ss -ulpn sport = :{port}` show it by hand"
                ),
            )
        }
    };
    let devices: Vec<String> = devices
        .into_iter()
        .filter(|(_, p)| *p == port)
        .map(|(name, _)| name)
        .collect();
    let why = "oxlay's program takes the VXLAN packets of its peers before any socket and drops the others, so that socket receives nothing";
    if !devices.is_empty() {
        return Finding::fail(
            "vxlan port",
            format!("the kernel vxlan device {} uses UDP {port} too: {why}", devices.join(", ")),
            "give it another port (ip link add ... dstport N) or remove it; or give oxlay another vxlan_port on every host",
        );
    }
    if sockets > 0 {
        return Finding::fail(
            "vxlan port",
            format!("{sockets} socket(s) bound to UDP {port} on this host: {why}"),
            format!("`ss -ulpn sport = :{port}` names the program; move it to another port"),
        );
    }
    Finding::ok("vxlan port", format!("UDP {port} is oxlay's alone"))
}

/// Offloads known to corrupt encapsulated checksums: TX checksum offload on a kernel
/// vxlan device (flannel's `flannel.1`, Calico's `vxlan.calico`) sends VXLAN with bad
/// UDP checksums when NAT lies between the hosts (flannel#1279, calico#3145). oxlay's
/// own packets are not affected: their outer UDP checksum is 0, and the inner one is
/// the kernel's or the NIC's as for any TCP/UDP packet.
async fn offloads(d: &Daemon) -> Finding {
    let handle = d.state.lock().await.handle.clone();
    let unknown = |e: anyhow::Error| {
        Finding::warn(
            "offloads",
            format!("cannot read the vxlan devices' offloads: {e:#}"),
            "`ethtool -k DEVICE | grep tx-checksum` for each kernel vxlan device",
        )
    };
    let devices = match netlink::vxlan_devices(&handle).await {
        Ok(devices) => devices,
        Err(e) => return unknown(e),
    };
    let mut risky = Vec::new();
    for (name, _) in devices {
        match crate::net::ethtool::tx_checksum(&name) {
            Ok(true) => risky.push(name),
            Ok(false) => {}
            Err(e) => return unknown(e),
        }
    }
    if risky.is_empty() {
        return Finding::ok(
            "offloads",
            "no vxlan device with TX checksum offload (oxlay's outer UDP checksum is 0)",
        );
    }
    Finding::warn(
        "offloads",
        format!("the kernel vxlan device {} has TX checksum offload on: behind NAT its packets leave with bad UDP checksums and are dropped by the receiver (the \"63-second delay\")", risky.join(", ")),
        format!("ethtool -K {} tx-checksum-ip-generic off", risky[0]),
    )
}

/// Each peer probed through its program: small (answers at all), MTU - 50 (a
/// container's full packet on a path 50 bytes short) and the underlay MTU (a
/// container's full packet once encapsulated).
async fn peers(d: &Daemon) -> Vec<Finding> {
    let mut found = Vec::new();
    let mtu = {
        let handle = d.state.lock().await.handle.clone();
        match netlink::link_by_name(&handle, &d.config.underlay_interface).await {
            Ok(Some(link)) => link.mtu as usize,
            other => {
                let why = other
                    .err()
                    .map_or("no such interface".into(), |e| format!("{e:#}"));
                found.push(Finding::warn(
                    "underlay mtu",
                    format!(
                        "cannot read the MTU of {}: {why}; peers are probed as if it were 1500",
                        d.config.underlay_interface
                    ),
                    "check underlay_interface in the config against `ip link`",
                ));
                1500
            }
        }
    };
    let mut peers: Vec<(String, Ipv4Addr, bool)> = {
        let s = d.state.lock().await;
        let hosts = s.snapshot.hosts.values().filter(|h| h.name != d.host.name);
        hosts
            .map(|h| (h.name.clone(), h.underlay_address, true))
            .collect()
    };
    for p in &d.config.peers {
        if !peers.iter().any(|(_, a, _)| *a == p.underlay_address) {
            peers.push((p.name.clone(), p.underlay_address, false));
        }
    }
    let probes = peers.into_iter().map(|(name, addr, oxlay)| async move {
        let sizes = [100, mtu - 50, mtu];
        let mut passed = Vec::new();
        for size in sizes {
            match echo::answers(d.host.underlay_address, addr, d.config.vxlan_port, size).await {
                Ok(true) => passed.push(size),
                Ok(false) => break,
                Err(e) => {
                    return Finding::warn(
                        &format!("peer {name}"),
                        format!("cannot probe {addr}: {e:#}"),
                        "see the error; `oxlay doctor` probes from the underlay address with a UDP socket",
                    )
                }
            }
        }
        peer_finding(&name, addr, oxlay, d.config.vxlan_port, &sizes, &passed)
    });
    found.extend(futures::future::join_all(probes).await);
    found
}

fn peer_finding(
    name: &str,
    addr: Ipv4Addr,
    oxlay: bool,
    port: u16,
    sizes: &[usize; 3],
    passed: &[usize],
) -> Finding {
    let check = format!("peer {name}");
    match passed.len() {
        3 => Finding::ok(&check, format!("{addr} answers on UDP {port} at {} bytes", sizes.map(|s| s.to_string()).join(", "))),
        // Nothing wrong in itself: only oxlay's programs answer the probe.
        0 if !oxlay => Finding::ok(
            &check,
            format!("{addr} is a static peer that does not answer oxlay's probe on UDP {port}: as expected of a peer that is no oxlay host (kernel vxlan, Open vSwitch); if it is one, its port is blocked"),
        ),
        0 => Finding::fail(
            &check,
            format!("{addr} does not answer on UDP {port}: a firewall between the hosts drops it (or this host's own OUTPUT chain, which the probe passes and oxlay's packets do not), oxlay's programs are not attached there, or {name} does not know this host yet (it counts the probe as drop_unknown_peer)"),
            format!("open UDP {port} between the hosts (both ways); on {name}, `oxlay status`, `oxlay stats` and `oxlay doctor`"),
        ),
        n => Finding::fail(
            &check,
            format!(
                "{addr} answers {}-byte packets but not {}-byte ones (DF set): the path's MTU is below the underlay's {}, so containers' full-size packets (their MTU + 50 bytes of VXLAN) are lost",
                passed[n - 1], sizes[n], sizes[2]
            ),
            "give every link between the hosts the same MTU (on each host, `ip link` shows it), or lower the underlay MTU on all hosts (containers' MTU follows)",
        ),
    }
}
