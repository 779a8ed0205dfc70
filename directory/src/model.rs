//! The directory's model: the zone that holds hosts, bindings, repositories
//! and admin keys, and `Op`, a change the admin API can ask for. The host-level
//! types, and their validation, are shared with the sidecar in
//! `switchboard_proto::model` and re-exported here.

use std::collections::BTreeMap;

use base64::Engine;
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinDecodable;
use serde::{Deserialize, Serialize};

pub use switchboard_proto::model::*;

/// The zone's SOA fields other than the serial (which the directory manages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Soa {
    pub mname: String,
    pub rname: String,
    pub refresh: i32,
    pub retry: i32,
    pub expire: i32,
    pub minimum: u32,
    pub ttl: u32,
}

/// The parts of a zone that change only by import: SOA fields, apex NS, static records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneMeta {
    /// Lowercase, absolute, with the trailing dot.
    pub origin: String,
    pub soa: Soa,
    pub ns: Vec<String>,
    pub ns_ttl: u32,
    /// Records outside Switchboard's subtrees, each in wire form (base64), served verbatim.
    pub statics: Vec<String>,
}

impl ZoneMeta {
    /// The static records, decoded (a record that does not decode is left out:
    /// each was encoded by the zone file reader, from a record it had parsed).
    pub fn static_records(&self) -> Vec<Record> {
        let engine = base64::engine::general_purpose::STANDARD;
        self.statics
            .iter()
            .filter_map(|s| engine.decode(s).ok())
            .filter_map(|b| Record::from_bytes(&b).ok())
            .collect()
    }
}

/// One zone: everything the directory knows under one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub meta: ZoneMeta,
    pub serial: u32,
    pub hosts: BTreeMap<String, Host>,
    /// Keyed by (host, service).
    pub bindings: BTreeMap<(String, String), Binding>,
    pub repos: BTreeMap<String, Repo>,
    /// Database clusters (SPEC "Databases").
    pub dbs: BTreeMap<String, Database>,
    pub admins: BTreeMap<String, AdminKey>,
    /// TSIG keys that may transfer the zone, by name (never exported, never
    /// shown by a read: the secret is the credential).
    pub tsig: BTreeMap<String, TsigKey>,
    /// Standard secondaries told of every change (NOTIFY), by address.
    pub secondaries: BTreeMap<std::net::SocketAddr, Secondary>,
}

/// The one TSIG algorithm the directory signs and verifies with (RFC 8945 §6).
pub const TSIG_ALGORITHM: &str = "hmac-sha256";

/// A TSIG key (RFC 8945) of a zone: a secondary that holds it may transfer
/// the zone, and NOTIFY messages to secondaries are signed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TsigKey {
    /// A domain name, lowercase, without the trailing dot (BIND's `key "NAME"`).
    pub name: String,
    /// Always [`TSIG_ALGORITHM`].
    pub algorithm: String,
    /// The shared secret, base64 (at least 16 bytes; 32 when the directory makes it).
    pub secret: String,
}

impl TsigKey {
    /// The secret's bytes (validated when the key was added).
    pub fn secret_bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.secret)
            .unwrap_or_default()
    }
}

/// A standard secondary (BIND, NSD, Knot) of a zone: where NOTIFY goes, and
/// the TSIG key it is signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secondary {
    pub addr: std::net::SocketAddr,
    pub tsig: String,
}

/// Checks a TSIG key's name, algorithm and secret.
pub fn validate_tsig(k: &TsigKey) -> Result<(), Invalid> {
    let name = k.name.trim_end_matches('.');
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(ok_label) {
        return Err(Invalid(format!(
            "TSIG key name {:?} is not a domain name of lowercase letters, digits, '-' and '_' (e.g. xfr-cluster)",
            k.name
        )));
    }
    if k.algorithm != TSIG_ALGORITHM {
        return Err(Invalid(format!(
            "TSIG algorithm {:?} is not supported: use {TSIG_ALGORITHM}",
            k.algorithm
        )));
    }
    match base64::engine::general_purpose::STANDARD.decode(&k.secret) {
        Ok(b) if (16..=64).contains(&b.len()) => Ok(()),
        Ok(b) => Err(Invalid(format!(
            "a TSIG secret of {} bytes: use 16 to 64 (32 is what tsig-keygen makes)",
            b.len()
        ))),
        Err(_) => Err(Invalid("the TSIG secret is not base64".into())),
    }
}

impl Zone {
    /// Gives back the spare capacity that parsing left in every host's and
    /// binding's lists (a `Vec` grown one push at a time keeps room for four).
    pub fn shrink(&mut self) {
        for h in self.hosts.values_mut() {
            h.name.shrink_to_fit();
            h.addrs.shrink_to_fit();
            h.roles.shrink_to_fit();
            h.roles.iter_mut().for_each(String::shrink_to_fit);
            h.props.shrink();
        }
        for b in self.bindings.values_mut() {
            b.props.shrink();
        }
        for r in self.repos.values_mut() {
            r.canonicalize();
        }
    }

    pub fn new(meta: ZoneMeta, serial: u32) -> Self {
        Zone {
            meta,
            serial,
            hosts: BTreeMap::new(),
            bindings: BTreeMap::new(),
            repos: BTreeMap::new(),
            dbs: BTreeMap::new(),
            admins: BTreeMap::new(),
            tsig: BTreeMap::new(),
            secondaries: BTreeMap::new(),
        }
    }

    pub fn origin(&self) -> &str {
        &self.meta.origin
    }

    /// The bindings of one host.
    pub fn bindings_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Binding> + 'a {
        self.bindings
            .range((host.to_string(), String::new())..)
            .take_while(move |((h, _), _)| h == host)
            .map(|(_, b)| b)
    }
}

/// A change the admin API can ask for. Serializable: a shared store's log
/// carries it to the other servers (`store::Committed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    AddHost(Host),
    RemoveHost(String),
    SetAvailable {
        host: String,
        available: bool,
    },
    SetHealth {
        host: String,
        health: Health,
    },
    AddBinding(Binding),
    RemoveBinding {
        host: String,
        service: String,
    },
    /// A binding's health, as its check (or an operator) found it.
    SetBindingHealth {
        host: String,
        service: String,
        health: Health,
    },
    AddRepo(Repo),
    RemoveRepo(String),
    Promote {
        repo: String,
        host: String,
        force: bool,
    },
    /// A maintenance lock: refuses writes with the admin's message (`None` thaws).
    FreezeRepo {
        repo: String,
        message: Option<String>,
    },
    /// Turns the directory's automatic failover of a repository on or off.
    SetAutoFailover {
        repo: String,
        on: bool,
    },
    /// A host's version of a repository. The master's needs the write lease.
    SetVersion {
        repo: String,
        host: String,
        version: u64,
        lease: Option<String>,
    },
    AddDb(Database),
    RemoveDb(String),
    /// Makes `host` the database's master; refused when its last reported
    /// position is behind the master's unless `force` (the loss is recorded).
    PromoteDb {
        db: String,
        host: String,
        force: bool,
    },
    /// Refuses writes with the admin's message (`None` thaws).
    FreezeDb {
        db: String,
        message: Option<String>,
    },
    /// A database host's replication position, from its sidecar's heartbeat.
    SetDbPosition {
        db: String,
        host: String,
        position: DbPosition,
    },
    AddAdmin(AdminKey),
    RemoveAdmin(String),
    AddTsig(TsigKey),
    RemoveTsig(String),
    AddSecondary(Secondary),
    RemoveSecondary(std::net::SocketAddr),
}
