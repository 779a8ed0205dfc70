//! `/v1/dbs`: list, show, add, remove, promote, freeze and thaw databases
//! (SPEC "Databases"). Positions come with hosts' heartbeats
//! (`/v1/hosts/HOST/heartbeat`), not through here.

use http::Method;
use serde::Deserialize;

use super::{change, json, method_not_allowed, Admin, Call, Refusal, Reply};
use crate::api::DbInfo;
use crate::model::{Database, Op, Zone};
use crate::view;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    host: String,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeBody {
    message: String,
}

/// A database as the API shows it: the model plus what the zone derives.
pub(crate) fn describe(z: &Zone, d: &Database) -> DbInfo {
    DbInfo::new(
        d,
        view::db_readonly(z, d),
        view::db_readers(z, d).map(|(h, _)| h.to_string()).collect(),
    )
}

pub fn route(admin: &Admin, call: &Call, m: &Method, rest: &[&str]) -> Reply {
    match (m, rest) {
        (&Method::GET, []) => {
            let origin = call.zone(admin)?;
            let list = admin
                .dir
                .read(&origin, |z| {
                    z.dbs.values().map(|d| describe(z, d)).collect::<Vec<_>>()
                })
                .unwrap_or_default();
            json(&list)
        }
        (&Method::POST, []) => change(admin, call, Op::AddDb(call.json()?)),
        (&Method::GET, [name]) => {
            let origin = call.zone(admin)?;
            let db = admin
                .dir
                .read(&origin, |z| z.dbs.get(*name).map(|d| describe(z, d)))
                .flatten()
                .ok_or_else(|| Refusal::not_found(format!("no database {name} in {origin}")))?;
            json(&db)
        }
        (&Method::DELETE, [name]) => change(admin, call, Op::RemoveDb(name.to_string())),
        (&Method::POST, [name, "promote"]) => {
            let body: PromoteBody = call.json()?;
            change(
                admin,
                call,
                Op::PromoteDb {
                    db: name.to_string(),
                    host: body.host,
                    force: body.force,
                },
            )
        }
        (&Method::POST, [name, "freeze"]) => {
            let body: FreezeBody = call.json()?;
            change(
                admin,
                call,
                Op::FreezeDb {
                    db: name.to_string(),
                    message: Some(body.message),
                },
            )
        }
        (&Method::POST, [name, "thaw"]) => change(
            admin,
            call,
            Op::FreezeDb {
                db: name.to_string(),
                message: None,
            },
        ),
        _ => Err(method_not_allowed(call)),
    }
}
