//! Databases (SPEC "Databases", docs/databases.md): the write and read ports
//! an application connects to, and the duties of a database host's sidecar.
//!
//! - `config`: the `--db` flags.
//! - `topology`: who is master and who replicates, from the directory's DNS.
//! - `monitor`: kept-open connections with the monitoring account.
//! - `wire`: the one MySQL packet the sidecar writes itself (a refusal).
//! - `ports`: the listeners: writes to the master as bytes; reads to a replica
//!   that has applied the master's position at connection open.
//! - `host`: on a database host, positions for the heartbeat, and promotion
//!   and fencing carried out on the local server.

pub mod config;
pub mod host;
pub mod monitor;
pub mod ports;
pub mod topology;
pub mod wire;
