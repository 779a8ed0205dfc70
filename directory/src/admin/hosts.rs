//! `/v1/hosts`: list, show, add, remove, enable, disable, health.

use http::{Method, StatusCode};
use serde::Deserialize;

use super::{authorize, change, json, method_not_allowed, Admin, Call, Need, Refusal, Reply};
use crate::model::Op;
use crate::model::{Health, Host};
use crate::state::{ApplyError, HeartbeatReport};

#[derive(Deserialize)]
struct HealthBody {
    health: Health,
}

/// A host as the API shows it: the model plus its key fingerprint, bindings,
/// repositories and databases.
fn describe(zone: &crate::model::Zone, h: &Host) -> serde_json::Value {
    let mut v = serde_json::to_value(h).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("fingerprint".into(), h.key.map(|k| k.fingerprint()).into());
        let bindings: Vec<_> = zone.bindings_of(&h.name).collect();
        obj.insert(
            "bindings".into(),
            serde_json::to_value(bindings).unwrap_or_default(),
        );
        let repos: Vec<&str> = zone
            .repos
            .values()
            .filter(|r| r.has_host(&h.name))
            .map(|r| r.name.as_str())
            .collect();
        obj.insert("repos".into(), repos.into());
        let dbs: Vec<&str> = zone
            .dbs
            .values()
            .filter(|d| d.has_host(&h.name))
            .map(|d| d.name.as_str())
            .collect();
        obj.insert("dbs".into(), dbs.into());
    }
    v
}

pub fn route(admin: &Admin, call: &Call, m: &Method, rest: &[&str]) -> Reply {
    match (m, rest) {
        (&Method::GET, []) => {
            let origin = call.zone(admin)?;
            let hosts = admin
                .dir
                .read(&origin, |z| {
                    z.hosts.values().map(|h| describe(z, h)).collect::<Vec<_>>()
                })
                .unwrap_or_default();
            json(&hosts)
        }
        (&Method::POST, []) => change(admin, call, Op::AddHost(call.json()?)),
        (&Method::GET, [name]) => {
            let origin = call.zone(admin)?;
            let mut host = admin
                .dir
                .read(&origin, |z| z.hosts.get(*name).map(|h| describe(z, h)))
                .flatten()
                .ok_or_else(|| Refusal::not_found(format!("no host {name} in {origin}")))?;
            if let Some(obj) = host.as_object_mut() {
                obj.insert(
                    "events_dropped".into(),
                    admin.dir.events_dropped(&origin, name).into(),
                );
            }
            json(&host)
        }
        (&Method::DELETE, [name]) => change(admin, call, Op::RemoveHost(name.to_string())),
        (&Method::POST, [name, "disable"]) => change(
            admin,
            call,
            Op::SetAvailable {
                host: name.to_string(),
                available: false,
            },
        ),
        (&Method::POST, [name, "enable"]) => change(
            admin,
            call,
            Op::SetAvailable {
                host: name.to_string(),
                available: true,
            },
        ),
        (&Method::POST, [name, "heartbeat"]) => {
            let origin = call.zone(admin)?;
            authorize(admin, call, &origin, Need::Host(name))?;
            let report: HeartbeatReport = if call.body.is_empty() {
                HeartbeatReport::default()
            } else {
                call.json()?
            };
            // A report that cannot be true is the sidecar's fault: 400, saying why.
            let reply = admin
                .dir
                .heartbeat(&origin, name, &report)
                .map_err(|e| match e {
                    ApplyError::Invalid(why) => {
                        Refusal::new(StatusCode::BAD_REQUEST, "bad-heartbeat", why)
                    }
                    e => e.into(),
                })?;
            json(&reply)
        }
        (&Method::PUT, [name, "health"]) => {
            let body: HealthBody = call.json()?;
            change(
                admin,
                call,
                Op::SetHealth {
                    host: name.to_string(),
                    health: body.health,
                },
            )
        }
        _ => Err(method_not_allowed(call)),
    }
}
