//! Switchboard's sidecar: runs next to every web, daemon and repository process,
//! learns who its host is from its key, and routes Conduit and git traffic to the
//! right host, signing every call between hosts. Grouped by direction and
//! protocol; every import points down (no two modules import each other).
//!
//! - `server`: `run` — binds the listeners, serves them, drains on SIGTERM (`shutdown`).
//! - `sidecar`: the state every handler shares, built once per process.
//! - `inbound/`: traffic coming in — `user` (the user listener), `passthrough` (its
//!   short way for plain web traffic), `cluster` (signed calls from other hosts),
//!   `listener` (the accept loop they share).
//! - `outbound/`: traffic going out — `forward` (signed calls to peers, plain calls to
//!   local backends), `client` (keep-alive HTTP/1.1 over `pool`, the one pool of idle
//!   upstream connections), `spool` (bodies hashed for signing), `tunnel` (SSH sessions
//!   carried to another host), `loopback` (the signing proxy local git fetches through).
//! - `directory/`: `answers` (DNS answers, cached, served stale when the directory is
//!   down), `feed` (its change feed), `heartbeat` (alive, and when answers were stale).
//! - `repo/`: `git` (the repositories and git's commands), `local` (serving from this
//!   host's copy), `hook` (recording writes on the master), `journal` (writes the
//!   directory missed, replayed when it is back), `replicate` (replicas catch up).
//! - `ssh/`: `command` (what a session may ask for), `exec` (the forced command).
//! - `session`: session keys with other hosts (made, answered, dropped on directory changes).
//! - `identity` (this host's key and who the directory says it is), `verify` (batched
//!   ed25519 checks of cluster calls), `route` (classify a request, pick its target),
//!   `reply` (JSON refusals and body limits), `body` (the one body type), `http1`
//!   (HTTP/1.1 framing), `metrics` (Prometheus counters).

pub mod body;
pub mod db;
pub mod directory;
pub mod http1;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod quiet;
pub mod reply;
pub mod repo;
pub mod route;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sidecar;
pub mod ssh;
pub mod tls;
pub mod verify;
