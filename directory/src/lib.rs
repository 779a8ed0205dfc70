//! Switchboard's directory: a service directory that answers plain DNS.
//!
//! - `model`: hosts, bindings, repositories, admin keys, and their validation.
//! - `store`: durable state behind a trait (`store::sled` today).
//! - `zonefile`: RFC 1035 master files in and out.
//! - `view`: the pre-built answers, swapped whole on change.
//! - `dns`: the hickory-server request handler that reads the view; `wire`: the UDP fast path.
//! - `state`: the one place a change is applied.
//! - `sign`: RFC 9421 HTTP Message Signatures, shared with the sidecar.
//! - `admin`: the JSON admin API; `cli`: the commands that talk to it; `console`: the web console.
//! - `checks`: health checks; `events`: the audit log; `webhooks`: its delivery.

pub mod admin;
pub mod checks;
pub mod cli;
pub mod console;
pub mod dns;
pub mod events;
pub mod keys;
pub mod mmsg;
pub mod model;
pub mod process;
pub mod rrl;
pub mod schema;
pub mod server;
pub mod sign;
pub mod state;
pub mod store;
pub mod view;
pub mod webhooks;
pub mod wire;
pub mod zonefile;
