//! `/v1/repos`: list, show, add, remove, promote, freeze and thaw, and a
//! host's own version reports and write leases.

use http::Method;
use serde::Deserialize;

use std::time::Duration;

use super::{authorize, change, json, method_not_allowed, Admin, Call, Need, Refusal, Reply};
use crate::api::{RepoInfo, VersionReport};
use crate::model::Op;
use crate::model::{Repo, Zone};
use crate::view;

#[derive(Deserialize)]
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

#[derive(Deserialize)]
struct AutoFailoverBody {
    on: bool,
}

#[derive(Deserialize)]
struct LeaseBody {
    host: String,
    /// Seconds, at most 60.
    #[serde(default = "default_ttl")]
    ttl: u64,
}

fn default_ttl() -> u64 {
    30
}

/// A repository as the API shows it: the model plus the master's version,
/// the readers and whether it takes writes now.
fn describe(zone: &Zone, r: &Repo) -> RepoInfo {
    RepoInfo::new(
        r,
        view::readers(zone, r).map(str::to_string).collect(),
        view::repo_readonly(zone, r),
    )
}

pub fn route(admin: &Admin, call: &Call, m: &Method, rest: &[&str]) -> Reply {
    match (m, rest) {
        (&Method::GET, []) => {
            let origin = call.zone(admin)?;
            let list = admin
                .dir
                .read(&origin, |z| {
                    z.repos.values().map(|r| describe(z, r)).collect::<Vec<_>>()
                })
                .unwrap_or_default();
            json(&list)
        }
        (&Method::POST, []) => change(admin, call, Op::AddRepo(call.json()?)),
        (&Method::GET, [name]) => {
            let origin = call.zone(admin)?;
            let repo = admin
                .dir
                .read(&origin, |z| z.repos.get(*name).map(|r| describe(z, r)))
                .flatten()
                .ok_or_else(|| Refusal::not_found(format!("no repository {name} in {origin}")))?;
            json(&repo)
        }
        (&Method::DELETE, [name]) => change(admin, call, Op::RemoveRepo(name.to_string())),
        (&Method::POST, [name, "promote"]) => {
            let body: PromoteBody = call.json()?;
            change(
                admin,
                call,
                Op::Promote {
                    repo: name.to_string(),
                    host: body.host,
                    force: body.force,
                },
            )
        }
        (&Method::POST, [name, "auto-failover"]) => {
            let body: AutoFailoverBody = call.json()?;
            change(
                admin,
                call,
                Op::SetAutoFailover {
                    repo: name.to_string(),
                    on: body.on,
                },
            )
        }
        (&Method::POST, [name, "freeze"]) => {
            let body: FreezeBody = call.json()?;
            change(
                admin,
                call,
                Op::FreezeRepo {
                    repo: name.to_string(),
                    message: Some(body.message),
                },
            )
        }
        (&Method::POST, [name, "thaw"]) => change(
            admin,
            call,
            Op::FreezeRepo {
                repo: name.to_string(),
                message: None,
            },
        ),
        (&Method::PUT, [name, "versions", host]) => {
            let body: VersionReport = call.json()?;
            change(
                admin,
                call,
                Op::SetVersion {
                    repo: name.to_string(),
                    host: host.to_string(),
                    version: body.version,
                    lease: body.lease,
                },
            )
        }
        (&Method::POST, [name, "lease"]) => {
            let body: LeaseBody = call.json()?;
            let origin = call.zone(admin)?;
            authorize(admin, call, &origin, Need::AdminOrHost(&body.host))?;
            let token = admin.dir.acquire_lease(
                &origin,
                name,
                &body.host,
                Duration::from_secs(body.ttl),
            )?;
            json(&serde_json::json!({"repo": name, "holder": body.host, "token": token}))
        }
        (&Method::DELETE, [name, "lease", token]) => {
            let origin = call.zone(admin)?;
            let holder = admin.dir.lease_holder(&origin, name).unwrap_or_default();
            authorize(admin, call, &origin, Need::AdminOrHost(&holder))?;
            admin.dir.release_lease(&origin, name, token);
            json(&serde_json::json!({"repo": name, "released": true}))
        }
        _ => Err(method_not_allowed(call)),
    }
}
