//! The Prometheus endpoint (`[metrics] listen = "127.0.0.1:9742"`): the datapath's
//! counters from the one table of reasons (`oxlay_common::counters`), and the control
//! plane's health, read when scraped. `render` turns a sample into the text format (a
//! pure function); `server` takes the sample from the daemon and serves it.
mod control;
mod render;
mod server;

pub use control::ControlMetrics;
pub use render::{render, Sample};
pub(crate) use server::serve;
