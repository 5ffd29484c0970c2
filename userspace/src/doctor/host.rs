//! This host's settings that break an overlay, read from /proc: forwarding, reverse
//! path filtering, and sockets on the VXLAN port.
use super::Finding;

fn sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// IPv4 forwarding: containers reach the outside, and are reached from it, through it.
pub fn forwarding() -> Finding {
    match sysctl("net/ipv4/ip_forward") {
        Some(0) => Finding::fail(
            "forwarding",
            "net.ipv4.ip_forward is 0: containers cannot reach the outside or be reached by their published ports",
            "sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.d to keep it), then restart the daemon",
        ),
        Some(_) => Finding::ok("forwarding", "net.ipv4.ip_forward is 1"),
        None => Finding::warn(
            "forwarding",
            "cannot read net.ipv4.ip_forward",
            "check /proc/sys/net/ipv4/ip_forward",
        ),
    }
}

/// Strict reverse path filtering (1) on the underlay, or on all interfaces.
pub fn rp_filter(underlay: &str) -> Finding {
    let dev_path = format!("net/ipv4/conf/{underlay}/rp_filter");
    let (Some(all), Some(dev)) = (sysctl("net/ipv4/conf/all/rp_filter"), sysctl(&dev_path)) else {
        return Finding::warn(
            "rp_filter",
            format!(
                "cannot read net.ipv4.conf.all.rp_filter or net.ipv4.conf.{underlay}.rp_filter"
            ),
            format!("check /proc/sys/net/ipv4/conf/all/rp_filter and /proc/sys/{dev_path}"),
        );
    };
    // The kernel applies the larger of the two.
    if all.max(dev) == 1 {
        let which = if all == 1 { "all" } else { underlay };
        Finding::warn(
            "rp_filter",
            format!("strict reverse path filtering (net.ipv4.conf.{which}.rp_filter = 1): packets the host routes for containers (egress replies, published ports, direct networks' peers) are dropped when the way back leaves by another interface"),
            format!("sysctl -w net.ipv4.conf.{which}.rp_filter=2 (loose)"),
        )
    } else {
        Finding::ok(
            "rp_filter",
            format!("not strict (all {all}, {underlay} {dev})"),
        )
    }
}

/// UDP sockets of this namespace bound to `port`, IPv4 and IPv6 (a dual-stack socket
/// receives IPv4 too; a kernel vxlan device's included).
pub fn udp_sockets_on(port: u16) -> anyhow::Result<usize> {
    let mut n = 0;
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        match std::fs::read_to_string(path) {
            Ok(table) => n += udp_sockets_in(&table, port),
            // No IPv6 in this kernel: no IPv6 sockets.
            Err(e) if path.ends_with('6') && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("cannot read {path}: {e}")),
        }
    }
    Ok(n)
}

fn udp_sockets_in(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|local| u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok())
        .filter(|p| *p == port)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_on_the_port_are_counted() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 00000000:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0\n\
          2: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123 2 0000000000000000 0\n";
        assert_eq!(udp_sockets_in(table, 4789), 1);
        assert_eq!(udp_sockets_in(table, 53), 1);
        assert_eq!(udp_sockets_in(table, 8472), 0);
        let table6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          5: 00000000000000000000000000000000:12B5 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0\n";
        assert_eq!(udp_sockets_in(table6, 4789), 1);
    }
}
