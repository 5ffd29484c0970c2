//! Test hosts in network namespaces: an underlay L2 segment (a bridge in a namespace of
//! its own), hosts on it, containers in hosts, and an oxlay daemon per host.
//!
//! Used by the integration tests, `cargo xtask demo` and `cargo xtask bench`. Every
//! object cleans up on drop, also when a test panics; names carry the process id, so
//! parallel runs do not collide and leftovers of dead runs are recognised and removed.
//!
//! One module per concern, from the bottom up; everything public is re-exported here,
//! so callers write `oxlay_testbed::Cluster`, not the module path:
//!
//! - `cmd`: running programs (`run`, `sh`, `private_mounts_command`).
//! - `prereq`: prerequisites (root, etcd) and skipping without them (`skip`).
//! - `tempdir`: names unique to this run, and temporary directories (`TempDir`).
//! - `netns`: network namespaces (`Netns`) and removing leftovers of dead runs.
//! - `topology`: the underlay segment, hosts on it and containers in them
//!   (`Underlay`, `Host`).
//! - `daemon`: the `oxlay` daemon under test and its CLI (`Daemon`, `NodeConfig`).
//! - `etcd`: a real etcd server (`Etcd`).
//! - `lan`: a second segment for layer-2 networks, and machines on it (`Lan`).
//! - `ovs`: Open vSwitch on a host (`ovs::Ovs`), for the interoperability tests.
//! - `dns`: a real DNS server (`dns::Dnsmasq`) and lookups from a namespace.
//! - `traffic`: checked traffic (`tcp_transfer`, `PacedUdp`).
//! - `cluster`: ready clusters (`StoreCluster`, `Cluster`) and `eventually`.
//! - `docker`, `containerd`: a real dockerd or containerd per host.
mod cluster;
mod cmd;
pub mod containerd;
mod daemon;
pub mod dns;
pub mod docker;
mod etcd;
mod lan;
mod netns;
pub mod ovs;
mod prereq;
pub mod prometheus;
mod tempdir;
mod topology;
mod traffic;

pub use cluster::{eventually, Cluster, StoreCluster};
pub use cmd::{private_mounts_command, run, sh};
pub use daemon::{oxlay_bin, CliStream, Daemon, NodeConfig};
pub use etcd::{free_port, Etcd};
pub use lan::Lan;
pub use netns::{remove_stale, Netns, PREFIX};
pub use prereq::{
    has_etcd, is_root, skip, skip_without_etcd, skip_without_root, skip_without_root_or_etcd,
    REQUIRE_ALL_ENV, SKIP_LOG_ENV,
};
pub use tempdir::TempDir;
pub use topology::{Host, Underlay, UNDERLAY_PREFIX, UNDERLAY_SERVICE};
pub use traffic::{both_ways, tcp_transfer, PacedUdp, PatternStream};
