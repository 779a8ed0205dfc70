//! `/v1/admins`: the keys allowed to change a zone; `/v1/keys/FPR`: who holds a key.

use http::Method;

use super::{change, json, method_not_allowed, Admin, Call, Refusal, Reply};
use crate::model::Op;
use crate::view::KeyOwner;

pub fn route(admin: &Admin, call: &Call, m: &Method, rest: &[&str]) -> Reply {
    match (m, rest) {
        (&Method::GET, []) => {
            let origin = call.zone(admin)?;
            let list = admin
                .dir
                .read(&origin, |z| {
                    z.admins
                        .values()
                        .map(|a| {
                            serde_json::json!({
                                "name": a.name,
                                "key": a.key,
                                "fingerprint": a.key.fingerprint(),
                            })
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            json(&list)
        }
        (&Method::POST, []) => change(admin, call, Op::AddAdmin(call.json()?)),
        (&Method::DELETE, [name]) => change(admin, call, Op::RemoveAdmin(name.to_string())),
        _ => Err(method_not_allowed(call)),
    }
}

/// Who holds the key with fingerprint `fpr`, in every zone.
pub fn key(admin: &Admin, fpr: &str) -> Reply {
    let view = admin.dir.view().load_full();
    let found: Vec<serde_json::Value> = view
        .zones
        .iter()
        .filter_map(|z| {
            z.key(fpr).map(|e| {
                let (kind, name) = match &e.owner {
                    KeyOwner::Admin(n) => ("admin", n),
                    KeyOwner::Host(n) => ("host", n),
                };
                serde_json::json!({"zone": z.origin.to_string(), "kind": kind, "name": name, "key": e.key})
            })
        })
        .collect();
    if found.is_empty() {
        return Err(Refusal::not_found(format!(
            "no host or admin holds key {fpr}"
        )));
    }
    json(&found)
}
