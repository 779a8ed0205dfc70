//! Switchboard's sidecar: runs next to every web, daemon and repository process,
//! learns who its host is from its key, and routes Conduit and git traffic to the
//! right host, signing every call between hosts.
//!
//! - `identity`: the host key and who the directory says it is.
//! - `directory`: DNS answers, cached by TTL, served stale when the directory is down.
//! - `feed`: follows the directory's change feed so changes land within a second.
//! - `route`: classify a request (repository, read or write) and pick its target.
//! - `forward`: signed calls to other hosts; `conns`: the keep-alive connections they and
//!   local backend calls go out on; `spool`: bodies hashed for signing.
//! - `user`: the user-facing listener; `cluster`: the signed listener between hosts.
//! - `git`: serving a local repository with `git http-backend`; `hook`: recording writes.
//! - `replicate`: replicas catch up with their master; `loopback`: the signing proxy local git uses.
//! - `ssh`: the forced command OpenSSH runs; `tunnel`: SSH sessions carried to another host.
//! - `heartbeat`: tells the directory this sidecar is alive, and when it served stale answers.
//! - `metrics`: Prometheus counters.

pub mod body;
pub mod directory;
pub mod http1;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod reply;
pub mod repo;
pub mod route;
pub mod server;
pub mod shutdown;
pub mod sidecar;
pub mod ssh;
pub mod verify;
