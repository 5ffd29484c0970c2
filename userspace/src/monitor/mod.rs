//! `oxlay monitor`: the datapath's drops (and, when asked, a sample of what it
//! forwards) as they happen. The programs report counted packets through a ring buffer
//! when a switch map says someone listens (`oxlay_common::monitor`); the daemon reads
//! it (`hub`), decodes each record (`decode`) and streams what each listener's filter
//! (`filter`) shows over the local API.
mod decode;
mod filter;
mod hub;

pub use decode::{decode, flows, line, Context, EventView, Flow};
pub use filter::Filter;
pub use hub::{Hub, Item, Subscription};
