//! oxlay's userspace: configuration, the datapath loader, netlink plumbing, the local
//! API and the daemon. The `oxlay` binary (main.rs) is a thin CLI over this library.
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod fault;
pub mod model;
pub mod net;
pub mod plugins;
pub mod reconcile;
pub mod store;
