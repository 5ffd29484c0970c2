//! oxlay's resolver: every container finds, by name, the containers of the networks it
//! shares with them, on any host. Names live in the endpoint records of the store
//! (Docker's container name and aliases, CNI's container ID and pod name); each daemon
//! keeps a directory of them from the store's watch and answers its own containers at
//! [`RESOLVER`]:53, which is their gateway's address and the host's own. Other names
//! go to the host's resolvers.
//!
//! `directory` (names by network, from the store), `answer` (one query, one reply),
//! `upstream` (the host's resolvers) and `server` (the sockets).
use std::net::Ipv4Addr;

pub mod answer;
pub mod directory;
pub mod server;
pub mod upstream;

pub use self::{directory::Directory, server::Resolver, upstream::Upstream};

/// Where containers ask: their gateway's address, which the host also takes as its own
/// (on lo) so that every container reaches it through its own interface.
pub const RESOLVER: Ipv4Addr = crate::model::local::GATEWAY;
