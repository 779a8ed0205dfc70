//! Switchboard's directory: a service directory that answers plain DNS.
//!
//! One line per module, lowest first: a module imports only modules above it
//! here (`scripts/check-imports.sh` fails on any circle). The host-level types
//! come from `switchboard_proto`, re-exported with `api`, `keys`, `process`,
//! `schema`, `sign`, `time` and `txt`, as hickory's server re-exports its
//! proto crate.
//!
//! - `model`: the zone (hosts, bindings, repositories, admin keys) and `Op`, a change.
//! - `events`: the audit log's entry, below the store that keeps it.
//! - `zonefile`: RFC 1035 master files, text in and out.
//! - `store`: durable state behind a trait: `sled`, `memory`, and the `battery` every store passes.
//! - `wire`: the answer encoder: each record set encoded once, when the view is built.
//! - `view`: the pre-built answers, built, patched on change and swapped whole.
//! - `dns`: where a query is answered: fast path, hickory handler, UDP and TCP listeners, RRL.
//! - `state`: `Directory`, the one place a change is applied; audit log, heartbeats, leases.
//! - `checks`: health checks of bindings, each transition an ordinary change.
//! - `advertise`: this server's own `directory` binding (`serve --advertise`).
//! - `webhooks`: every audit event POSTed to each `--webhook`.
//! - `sessions`: console logins: one-time codes and the sessions they become.
//! - `admin`: the JSON admin API, one file per resource.
//! - `console`: the web console at `/ui/`.
//! - `listener`: the admin port, serving the API and the console.
//! - `cli`: the commands that talk to the admin API.
//! - `server`: `serve`, putting the listeners together.

pub use switchboard_proto::{api, keys, process, schema, sign, time, txt};

pub mod admin;
pub mod advertise;
pub mod checks;
pub mod cli;
pub mod console;
pub mod dns;
pub mod events;
pub mod listener;
pub mod model;
pub mod notify;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod transfer;
pub mod tsig;
pub mod view;
pub mod webhooks;
pub mod wire;
pub mod zonefile;
