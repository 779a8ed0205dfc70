//! TXT attributes out: the strings of a host's node record, a binding's DNS-SD
//! instance record, a repository's and a database's record (RFC 6763 §6: one `key=value` per
//! string, keys lowercase). The names are in [`crate::schema::txt`]; the
//! directory writes these into its answers and its zone files.

use crate::model::{Binding, Database, Health, Host, Repo};
use crate::schema::txt;

/// The TXT strings of a host's node record.
pub fn host_txt(h: &Host) -> Vec<String> {
    let mut v = vec![
        format!("{}={}", txt::ROLES, h.roles.join(",")),
        format!("{}={}", txt::AVAILABLE, u8::from(h.available)),
    ];
    if let Some(k) = &h.key {
        v.push(format!("{}={k}", txt::KEY));
    }
    if h.health != Health::Unknown {
        v.push(format!("{}={}", txt::HEALTH, h.health.as_str()));
    }
    v.extend(h.props.iter().map(|(k, val)| format!("{k}={val}")));
    v
}

/// The TXT strings of a binding's DNS-SD instance record.
pub fn binding_txt(b: &Binding) -> Vec<String> {
    let mut v = Vec::with_capacity(4 + b.props.len());
    if let Some(r) = b.role {
        v.push(format!("{}={}", txt::ROLE, r.as_str()));
    }
    v.push(format!("{}={}", txt::READONLY, u8::from(b.readonly)));
    v.push(format!("{}={}", txt::AVAILABLE, u8::from(b.available)));
    if b.health != Health::Unknown {
        v.push(format!("{}={}", txt::HEALTH, b.health.as_str()));
    }
    if let Some(c) = &b.check {
        v.extend(c.txt());
    }
    v.extend(b.props.iter().map(|(k, val)| format!("{k}={val}")));
    v
}

/// The TXT strings of a repository record. `readonly` given: an answer's
/// form, with `version=` (the master's) and `readonly=` derived from the zone
/// (stored read-only, frozen, or no master in service); not given: a zone
/// file's, with the stored `readonly=`.
pub fn repo_txt(r: &Repo, readonly: Option<bool>) -> Vec<String> {
    let mut v = vec![
        format!("{}={}", txt::MASTER, r.master),
        format!("{}={}", txt::REPLICAS, r.replicas.join(",")),
    ];
    if readonly.is_some() {
        v.push(format!("{}={}", txt::VERSION, r.master_version()));
    }
    v.push(format!("{}={}", txt::MAX_LAG, r.max_lag));
    v.push(format!(
        "{}={}",
        txt::READONLY,
        u8::from(readonly.unwrap_or(r.readonly))
    ));
    if let Some(m) = &r.frozen {
        v.push(format!("{}=1", txt::FROZEN));
        v.push(format!("{}={m}", txt::FROZEN_MESSAGE));
    }
    if r.auto_failover {
        v.push(format!("{}=1", txt::AUTO_FAILOVER));
    }
    v.extend(
        r.hosts()
            .map(|h| format!("{}{h}={}", txt::VERSION_OF, r.version_of(h))),
    );
    v.extend(
        r.lost
            .iter()
            .map(|l| format!("{}={}", txt::LOST, l.to_txt())),
    );
    v
}

/// The TXT strings of a database record (docs/dns-schema.md); `readonly` is
/// derived from the zone (no available master, or frozen) and given only in
/// answers, never in a zone file.
pub fn db_txt(d: &Database, readonly: Option<bool>) -> Vec<String> {
    let mut v = vec![
        format!("{}=mariadb", txt::ENGINE),
        format!("{}={}", txt::MASTER, d.master),
        format!("{}={}", txt::REPLICAS, d.replicas.join(",")),
        format!("{}={}", txt::PORT, d.port),
        format!("{}={}", txt::MAX_LAG_S, d.max_lag_s),
    ];
    if let Some(r) = readonly {
        v.push(format!("{}={}", txt::READONLY, u8::from(r)));
    }
    if let Some(m) = &d.frozen {
        v.push(format!("{}=1", txt::FROZEN));
        v.push(format!("{}={m}", txt::FROZEN_MESSAGE));
    }
    v.extend(
        d.lost
            .iter()
            .map(|l| format!("{}={}", txt::LOST, l.to_txt())),
    );
    v
}
