//! Containers find each other by name, on any host, through oxlay's resolver at
//! 169.254.1.1 (endpoints named with `oxlay endpoint create --name`; Docker's names are
//! in docker.rs). Names never cross networks, go within 2 s of their container, survive
//! a daemon restart, and other names go to the host's resolver (a dnsmasq on an outside
//! host that is not an oxlay host).
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use oxlay_testbed::{
    dns::{ensure_unknown, lookup, skip_without_dnsmasq, time_until_unknown, Dnsmasq},
    eventually, skip_without_root, Netns, StoreCluster,
};

const RESOLVER: &str = "169.254.1.1";
const OUTSIDE: &str = "192.168.50.100";

/// `endpoint create` on host `h` with names; the namespace and its address.
fn named(
    c: &StoreCluster,
    h: usize,
    network: &str,
    role: &str,
    names: &[&str],
) -> Result<(Netns, String)> {
    let ns = Netns::new(role)?;
    let (_, address) = c.daemons[h].create_named_endpoint(network, &ns, None, names)?;
    Ok((ns, address.to_string()))
}

fn diagnosis(c: &StoreCluster) -> String {
    format!(
        "status 0: {:?}\nendpoints: {:?}\nlog 0:\n{}",
        c.daemons[0].cli(&["status"]),
        c.daemons[0].cli(&["endpoint", "ls"]),
        c.daemons[0].log()
    )
}

#[test]
fn containers_find_each_other_by_name_across_hosts() -> Result<()> {
    if skip_without_root() || skip_without_dnsmasq() {
        return Ok(());
    }
    let upstream = format!("[names]\nupstream = [\"{OUTSIDE}\"]\n");
    let addrs = ["192.168.50.11".to_owned(), "192.168.50.12".to_owned()];
    let mut c = StoreCluster::with_config(&addrs, false, 30, vec![upstream.clone(), upstream])?;
    let outside = c.underlay.add_host_at("outside", OUTSIDE)?;
    let _dns = Dnsmasq::start_in(&outside.ns, OUTSIDE, &[("mirror.outside.test", OUTSIDE)])?;
    for (name, subnet) in [("web", "10.71.0.0/16"), ("blue", "10.72.0.0/16")] {
        c.daemons[0].cli(&["network", "create", name, "--subnet", subnet])?;
    }
    let (_srv, srv) = named(&c, 1, "web", "names-srv", &["srv", "www"])?;
    let (client, _) = named(&c, 0, "web", "names-client", &["client"])?;
    let (stranger, _) = named(&c, 0, "blue", "names-blue", &[])?;

    // By name and by alias, bare and with the network's name, from the other host.
    for name in ["srv", "www", "srv.web", "SRV.web."] {
        let found = eventually(Duration::from_secs(5), || lookup(&client, name, RESOLVER))
            .with_context(|| diagnosis(&c))?;
        ensure!(found == [srv.clone()], "{name} is {found:?}, not {srv}");
    }
    // Names that are not containers' come from the host's resolvers.
    let mirror = lookup(&client, "mirror.outside.test", RESOLVER)?;
    ensure!(mirror == [OUTSIDE], "the outside name is {mirror:?}");
    // Another network's container asks the same resolver (which answers it: the
    // outside name resolves), but srv is not a name of its network.
    ensure!(lookup(&stranger, "mirror.outside.test", RESOLVER)? == [OUTSIDE]);
    ensure_unknown("srv (from blue)", lookup(&stranger, "srv", RESOLVER))?;

    // Another machine of the underlay that routes the resolver's address to host 0
    // is refused (the resolver relays for containers, not for the LAN).
    outside.ns.ip(&[
        "route",
        "add",
        &format!("{RESOLVER}/32"),
        "via",
        "192.168.50.11",
    ])?;
    let asked = lookup(&outside.ns, "mirror.outside.test", RESOLVER);
    let why = format!(
        "{:#}",
        asked
            .as_ref()
            .err()
            .context("the LAN used host 0's resolver")?
    );
    ensure!(why.contains("REFUSED"), "not refused but: {why}");

    // A restarted daemon answers the same.
    c.restart_daemon(0)?;
    let found = eventually(Duration::from_secs(5), || lookup(&client, "srv", RESOLVER))?;
    ensure!(found == [srv.clone()], "after a restart srv is {found:?}");

    // Removed on its host, the name is gone everywhere within 2 s.
    c.daemons[1].cli(&["endpoint", "rm", "--network", "web", "--netns", &_srv.name])?;
    let took = time_until_unknown("srv", Instant::now(), Duration::from_secs(2), || {
        lookup(&client, "srv", RESOLVER)
    })?;
    ensure!(
        took < Duration::from_secs(2),
        "srv resolved for {took:?} after it went"
    );

    // Uninstalled, the host no longer holds the resolver's address.
    let lo = c.hosts[0].ns.ip(&["-4", "addr", "show", "dev", "lo"])?;
    ensure!(
        lo.contains(RESOLVER),
        "the resolver's address is not on lo: {lo}"
    );
    c.daemons[0].uninstall()?;
    let lo = c.hosts[0].ns.ip(&["-4", "addr", "show", "dev", "lo"])?;
    ensure!(
        !lo.contains(RESOLVER),
        "uninstall left {RESOLVER} on lo: {lo}"
    );
    Ok(())
}
