//! `oxlay monitor`: the datapath's drops (and, when asked, a sample of what it
//! forwards) as they happen. The programs report counted packets through a ring buffer
//! when a switch map says someone listens (`oxlay_common::monitor`); the daemon reads
//! it (`hub`), decodes each record (`decode`) and streams what each listener's filter
//! (`filter`) shows over the local API.
mod decode;
mod filter;
mod hub;

pub use decode::{decode, flows, Context, EventView, Flow};
pub use filter::Filter;
pub use hub::{Hub, Item, Subscription};

/// One line of text for an event, as `oxlay monitor` prints it.
pub fn line(e: &EventView) -> String {
    let flow = |f: &Flow| {
        let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}{} -> {}{} {}",
            f.src,
            port(f.sport),
            f.dst,
            port(f.dport),
            f.protocol
        )
    };
    let mut text = format!("{} {} {} on {}", e.time, e.kind, e.reason, e.interface);
    if let Some(n) = &e.network {
        text.push_str(&format!(" network {n}"));
    }
    if let Some(v) = e.vni {
        text.push_str(&format!(" vni {v}"));
    }
    if let Some(p) = &e.packet {
        text.push_str(&format!(": {}", flow(p)));
    }
    if let Some(o) = &e.outer {
        text.push_str(&format!(" (outer {})", flow(o)));
    }
    text.push_str(&format!(", {} bytes", e.length));
    text
}
