//! oxlay's userspace, one folder a stage of the data flow: `cli` (the command line),
//! `config`, `api` (CLI <-> daemon), `net` (netlink, namespaces, veths), `store` (etcd
//! or the embedded store), `model` (what the store holds: hosts, networks, IPAM),
//! `reconcile` (store + config + endpoints -> the maps; the only map writer),
//! `datapath` (loading, attaching, typed maps), `daemon` (start-up, state, watch, API,
//! endpoints), `names` (the resolver) and `plugins` (Docker, CNI). The `oxlay` binary (main.rs) is a thin
//! wrapper over this library.
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod doctor;
pub mod explain;
pub mod fault;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod names;
pub mod net;
pub mod plugins;
pub mod reconcile;
pub mod store;
