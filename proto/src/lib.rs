//! What Switchboard's directory and sidecar share, and nothing heavy (no sled,
//! no DNS server): the sidecar depends on this crate and on a DNS resolver,
//! never on the directory (docs/architecture.md).
//!
//! - `schema`: the DNS names and TXT keys of the schema in docs/dns-schema.md.
//! - `model`: hosts, bindings, repositories, admin keys, public keys, and their validation.
//! - `txt`: TXT attributes out (a host's, a binding's, a repository's strings).
//! - `keys`: key files (PKCS#8 per RFC 8410, OpenSSH).
//! - `sign`: RFC 9421 HTTP Message Signatures with RFC 9530 digests, and the replay guard.
//! - `session`: the handshake that gives two hosts a session key (X25519, HKDF-SHA256).
//! - `api`: the admin API's request and answer types, and the client that sends them.
//! - `time`: unix seconds and milliseconds, and RFC 3339 for people.
//! - `process`: logging and stop signals, the same in both binaries.

#![forbid(unsafe_code)]

pub mod api;
pub mod keys;
pub mod model;
pub mod process;
pub mod schema;
pub mod session;
pub mod sign;
pub mod time;
pub mod txt;
