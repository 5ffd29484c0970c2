//! How listings print: one table builder (comfy-table, no borders, columns as wide as
//! their content, like `docker ps`) and one function per listing.
use comfy_table::{presets::NOTHING, CellAlignment, Table};

use crate::{
    api::{EndpointView, RouteView, StatsView},
    model::{EndpointRecord, HostRecord, NetworkRecord},
};

/// A borderless table: a header row, then one row per item; columns are separated by
/// two spaces and sized to their widest cell. `right` lists the columns of numbers.
fn table(header: &[&str], right: &[usize], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    t.trim_fmt()
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    let all: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    all.join(",")
}

pub fn routes(routes: &[RouteView]) -> String {
    let rows = routes.iter().map(|r| {
        vec![
            r.vni.to_string(),
            r.destination.clone(),
            r.kind.clone(),
            r.via.clone(),
            r.mac.clone(),
        ]
    });
    table(&["VNI", "DESTINATION", "KIND", "VIA", "MAC"], &[0], rows)
}

pub fn local_endpoints(endpoints: &[EndpointView]) -> String {
    let rows = endpoints.iter().map(|e| {
        vec![
            e.netns.clone(),
            e.network.clone(),
            e.address.to_string(),
            e.mac.clone(),
            e.host_interface.clone(),
            e.mtu.to_string(),
            e.published.join(","),
        ]
    });
    let header = [
        "NETNS", "NETWORK", "ADDRESS", "MAC", "HOST-IF", "MTU", "PORTS",
    ];
    table(&header, &[5], rows)
}

pub fn hosts(hosts: &[HostRecord]) -> String {
    let rows = hosts.iter().map(|h| {
        vec![
            h.name.clone(),
            h.underlay_address.to_string(),
            h.vtep_mac.to_string(),
        ]
    });
    table(&["HOST", "UNDERLAY", "VTEP-MAC"], &[], rows)
}

/// The counters, then (when any network has carried traffic) each network's.
pub fn stats(stats: &StatsView) -> String {
    let rows = stats.counters.iter().map(|c| {
        vec![
            c.name.clone(),
            c.packets.to_string(),
            c.bytes.to_string(),
            c.help.clone(),
        ]
    });
    let mut text = table(&["COUNTER", "PACKETS", "BYTES", "MEANING"], &[1, 2], rows);
    if !stats.networks.is_empty() {
        let rows = stats.networks.iter().map(|n| {
            vec![
                n.network.clone(),
                n.vni.to_string(),
                n.encapsulated_packets.to_string(),
                n.encapsulated_bytes.to_string(),
                n.decapsulated_packets.to_string(),
                n.decapsulated_bytes.to_string(),
            ]
        });
        let header = [
            "NETWORK",
            "VNI",
            "ENCAP-PACKETS",
            "ENCAP-BYTES",
            "DECAP-PACKETS",
            "DECAP-BYTES",
        ];
        text.push_str("\n\n");
        text.push_str(&table(&header, &[1, 2, 3, 4, 5], rows));
    }
    text
}

pub fn networks(networks: &[NetworkRecord]) -> String {
    let rows = networks.iter().map(|n| {
        vec![
            n.name.clone(),
            n.vni.to_string(),
            n.subnet.to_string(),
            format!("/{}", n.block_prefix),
            match n.direct {
                // Direct to peers on the underlay subnet, encapsulated to the others.
                true => format!("direct+{}", n.encap.name()),
                false => n.encap.name().to_owned(),
            },
            labels(&n.labels),
        ]
    });
    let header = ["NAME", "VNI", "SUBNET", "BLOCK", "MODE", "LABELS"];
    table(&header, &[1], rows)
}

pub fn store_endpoints(endpoints: &[EndpointRecord]) -> String {
    let rows = endpoints.iter().map(|e| {
        vec![
            e.network.clone(),
            e.address.to_string(),
            e.host.clone(),
            e.sandbox.clone(),
            e.names.join(","),
            labels(&e.labels),
        ]
    });
    let header = ["NETWORK", "ADDRESS", "HOST", "SANDBOX", "NAMES", "LABELS"];
    table(&header, &[], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_longest_cell() {
        let long = "a-cni-sandbox-name-much-longer-than-any-fixed-width-column";
        let out = store_endpoints(&[
            EndpointRecord {
                network: "blue".into(),
                address: "10.1.0.2".parse().unwrap(),
                host: "h1".into(),
                sandbox: long.into(),
                labels: [("tier".to_owned(), "web".to_owned())].into(),
                interface: None,
                mac: None,
                published: Vec::new(),
                names: vec!["web-1".into()],
            },
            EndpointRecord {
                network: "blue".into(),
                address: "10.1.0.3".parse().unwrap(),
                host: "h2".into(),
                sandbox: "short".into(),
                labels: Default::default(),
                interface: None,
                mac: None,
                published: Vec::new(),
                names: Vec::new(),
            },
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        // The LABELS column starts at the same place on every line, after the long name.
        let at = lines[1].find("tier=web").unwrap();
        assert_eq!(&lines[0][at..], "LABELS", "{out}");
        assert!(lines[1].contains(long), "{out}");
        assert!(
            lines.iter().all(|l| l == &l.trim_end()),
            "no trailing spaces: {out}"
        );
    }
}
