//! The directory as a service of its own zone (SPEC "Directory high
//! availability"; docs/operating.md, "Several directory servers"): with
//! `serve --advertise HOST` (every zone) or `--advertise ZONE=HOST`, this
//! server makes sure host HOST has a `directory` binding on the port of its
//! admin listener, so `directory.service.Z SRV` and `_directory._tcp.Z` list
//! the admin API of each server, and sidecars find it there.
//!
//! The host is the operator's (`host add`): its addresses are where sidecars
//! reach this server, which only the operator knows. The binding is this
//! server's, added as a change by the directory itself (`by directory` in the
//! audit log). Servers sharing one store do not fight over it:
//! - each adds only its own host's binding, and only when it is missing; a
//!   `directory` binding already there is left as it is (with a warning when
//!   its port is not this server's);
//! - two servers adding it at once: the one refused with a conflict counts it
//!   as done;
//! - a host not in the zone yet is waited for, and the binding added when it
//!   appears; after that the binding is the operator's to change or remove
//!   until the next start.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::model::{Binding, Health, Props};
use crate::state::{ApplyError, Directory};

/// The service each directory server's admin API is a binding of.
pub const SERVICE: &str = "directory";

/// One `--advertise`: a host, in one zone or in every zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    /// `None`: every zone this server serves.
    pub zone: Option<String>,
    pub host: String,
}

/// Why an `--advertise` value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--advertise {value:?}: {why}; give HOST (every zone) or ZONE=HOST")]
pub struct BadAdvertise {
    value: String,
    why: String,
}

impl Advertise {
    /// `HOST` or `ZONE=HOST`.
    pub fn parse(value: &str) -> Result<Self, BadAdvertise> {
        let bad = |why: String| BadAdvertise {
            value: value.to_string(),
            why,
        };
        let (zone, host) = match value.split_once('=') {
            Some((z, h)) => {
                let z = z.trim().trim_end_matches('.').to_ascii_lowercase();
                if z.is_empty() {
                    return Err(bad("the zone is empty".into()));
                }
                (Some(format!("{z}.")), h.trim())
            }
            None => (None, value.trim()),
        };
        let host = host.to_ascii_lowercase();
        crate::model::validate_label("host name", &host).map_err(|e| bad(e.0))?;
        Ok(Advertise { zone, host })
    }
}

/// What became of one (zone, host).
enum Done {
    /// Added now, or there already.
    Yes,
    /// The host is not in the zone (yet).
    NoHost,
}

/// The binding this server wants `host` to have.
fn binding(host: &str, port: u16) -> Binding {
    Binding {
        host: host.to_string(),
        service: SERVICE.to_string(),
        port,
        role: None,
        readonly: false,
        weight: 0,
        priority: None,
        available: true,
        health: Health::default(),
        props: Props::default(),
        check: None,
    }
}

/// Adds `host`'s `directory` binding in `origin` if it is missing.
fn ensure(dir: &Directory, origin: &str, host: &str, port: u16) -> Result<Done, ApplyError> {
    let found = dir.read(origin, |z| {
        (
            z.hosts.contains_key(host),
            z.bindings
                .get(&(host.to_string(), SERVICE.to_string()))
                .map(|b| b.port),
        )
    });
    match found {
        None | Some((false, _)) => Ok(Done::NoHost),
        Some((true, Some(p))) => {
            if p != port {
                tracing::warn!(zone = origin, host, port = p, this_port = port, "--advertise: the host already has a directory binding on another port; left as it is (bind rm it and restart to take it over)");
            }
            Ok(Done::Yes)
        }
        Some((true, None)) => {
            match dir.apply_by(
                origin,
                crate::model::Op::AddBinding(binding(host, port)),
                "directory",
            ) {
                Ok(serial) => {
                    tracing::info!(
                        zone = origin,
                        host,
                        port,
                        serial,
                        "this server is now listed in directory.service"
                    );
                    Ok(Done::Yes)
                }
                // Another server sharing the store added it first.
                Err(ApplyError::Conflict(_)) => Ok(Done::Yes),
                Err(e) => Err(e),
            }
        }
    }
}

/// The (zone, host) pairs `adverts` asks for, for the zones this server has.
fn pairs(dir: &Directory, adverts: &[Advertise]) -> BTreeSet<(String, String)> {
    let origins = dir.origins();
    let mut out = BTreeSet::new();
    for a in adverts {
        match &a.zone {
            Some(z) if origins.contains(z) => {
                out.insert((z.clone(), a.host.clone()));
            }
            Some(z) => {
                tracing::warn!(zone = %z, host = %a.host, "--advertise names a zone this server does not serve; ignored")
            }
            None => out.extend(origins.iter().map(|o| (o.clone(), a.host.clone()))),
        }
    }
    out
}

/// The (zone, host) pairs whose host is not in its zone yet.
pub type Pending = BTreeSet<(String, String)>;

/// Ensures each binding of `pairs` whose host is there; the others, left.
fn ensure_all(dir: &Directory, pairs: Pending, port: u16) -> Pending {
    let mut left = BTreeSet::new();
    for (origin, host) in pairs {
        match ensure(dir, &origin, &host, port) {
            Ok(Done::Yes) => {}
            Ok(Done::NoHost) => {
                left.insert((origin, host));
            }
            Err(e) => {
                tracing::warn!(zone = %origin, host = %host, error = %e, "--advertise: cannot add this server's directory binding; trying again on the next change");
                left.insert((origin, host));
            }
        }
    }
    left
}

/// At start, before the admin port is announced: ensures every binding
/// `adverts` asks for whose host is in its zone. Returns those still waiting
/// for their host, for `follow`.
pub fn start(dir: &Directory, adverts: &[Advertise], port: u16) -> Pending {
    let left = ensure_all(dir, pairs(dir, adverts), port);
    for (origin, host) in &left {
        tracing::warn!(zone = %origin, host = %host, "--advertise: no such host in the zone yet; add it with its addresses (host add {host} --addr IP), and this server's directory binding follows");
    }
    left
}

/// Waits for the hosts of `pending` to appear and adds their bindings, until
/// none is left or `stop` turns true.
pub async fn follow(
    dir: Arc<Directory>,
    mut pending: Pending,
    port: u16,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut changed = dir.subscribe();
    // Once now too: a host added since `start` looked sent no change here.
    while !pending.is_empty() {
        changed.borrow_and_update();
        let d = dir.clone();
        // Changes are written and flushed: off the reactor threads.
        pending = tokio::task::spawn_blocking(move || ensure_all(&d, pending, port))
            .await
            .unwrap_or_default();
        if pending.is_empty() {
            return;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_values() {
        assert_eq!(
            Advertise::parse("dir1").unwrap(),
            Advertise {
                zone: None,
                host: "dir1".into()
            }
        );
        assert_eq!(
            Advertise::parse("Cluster.Example=Dir2").unwrap(),
            Advertise {
                zone: Some("cluster.example.".into()),
                host: "dir2".into()
            }
        );
        for bad in ["", "=dir1", "z.=", "a b", "z.=x.y"] {
            assert!(Advertise::parse(bad).is_err(), "{bad:?}");
        }
    }
}
