//! Switchboard's directory: a service directory that answers plain DNS.
//!
//! - `model`: the zone; the host-level types and their validation come from
//!   `switchboard_proto` (re-exported here with `schema`, `txt`, `keys`, `sign`,
//!   `time` and `process`, as hickory's server re-exports its proto crate).
//! - `store`: durable state behind a trait (`store::sled` today).
//! - `zonefile`: RFC 1035 master files in and out.
//! - `view`: the pre-built answers, swapped whole on change.
//! - `dns`: the hickory-server request handler that reads the view; `wire`: the UDP fast path;
//!   `mmsg`: UDP a batch at a time; `rrl`: response-rate limiting.
//! - `state`: the one place a change is applied.
//! - `admin`: the JSON admin API; `cli`: the commands that talk to it; `console`: the web console.
//! - `checks`: health checks; `events`: the audit log; `webhooks`: its delivery.
//! - `server`: `serve`, putting the listeners together.

pub use switchboard_proto::{api, keys, process, schema, sign, time, txt};

pub mod admin;
pub mod checks;
pub mod cli;
pub mod console;
pub mod dns;
pub mod events;
pub mod listener;
pub mod model;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod view;
pub mod webhooks;
pub mod wire;
pub mod zonefile;
