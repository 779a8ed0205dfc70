//! `/v1/bindings`: list (optionally `?service=`), add, remove.

use http::Method;

use super::{change, json, method_not_allowed, Admin, Call, Reply};
use crate::model::Op;

pub fn route(admin: &Admin, call: &Call, m: &Method, rest: &[&str]) -> Reply {
    match (m, rest) {
        (&Method::GET, []) => {
            let origin = call.zone(admin)?;
            let service = call.query.get("service").cloned();
            let list = admin
                .dir
                .read(&origin, |z| {
                    z.bindings
                        .values()
                        .filter(|b| service.as_ref().is_none_or(|s| &b.service == s))
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            json(&list)
        }
        (&Method::POST, []) => change(admin, call, Op::AddBinding(call.json()?)),
        (&Method::DELETE, [host, service]) => change(
            admin,
            call,
            Op::RemoveBinding {
                host: host.to_string(),
                service: service.to_string(),
            },
        ),
        _ => Err(method_not_allowed(call)),
    }
}
