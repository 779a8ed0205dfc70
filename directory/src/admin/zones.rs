//! `/v1/zones`: list, export (`GET /v1/zones/Z`), import (`PUT /v1/zones/Z`); `/v1/status`.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use super::{authorize, json, method_not_allowed, Admin, Call, Need, Refusal, Reply};
use crate::zonefile;

fn summary(admin: &Admin) -> Vec<serde_json::Value> {
    admin
        .dir
        .origins()
        .iter()
        .filter_map(|o| {
            admin.dir.read(o, |z| {
                serde_json::json!({
                    "zone": o,
                    "serial": z.serial,
                    "hosts": z.hosts.len(),
                    "available_hosts": z.hosts.values().filter(|h| h.available).count(),
                    "bindings": z.bindings.len(),
                    "services": z.bindings.values().map(|b| b.service.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
                    "repos": z.repos.len(),
                    "dbs": z.dbs.len(),
                    "admins": z.admins.len(),
                })
            })
        })
        .collect()
}

pub fn status(admin: &Admin) -> Reply {
    json(&serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "zones": summary(admin),
        "unreadable": admin.dir.unreadable(),
    }))
}

/// A zone file as an answer (`text/dns`, RFC 4027).
fn zone_file(text: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/dns"),
    );
    Ok(r)
}

fn absolute(z: &str) -> String {
    let z = z.to_ascii_lowercase();
    if z.ends_with('.') {
        z
    } else {
        format!("{z}.")
    }
}

pub fn route(admin: &Admin, call: &Call, m: &Method, rest: &[&str]) -> Reply {
    match (m, rest) {
        (&Method::GET, []) => json(&summary(admin)),
        (&Method::GET, [zone]) if call.query.contains_key("flat") => {
            let origin = absolute(zone);
            let view = admin.dir.view().load_full();
            let text = view
                .zones
                .iter()
                .find(|z| z.origin.to_string() == origin)
                .map(|z| crate::view::export_flat(z))
                .ok_or_else(|| Refusal::not_found(format!("no zone {origin}")))?;
            zone_file(text)
        }
        (&Method::GET, [zone]) => {
            let origin = absolute(zone);
            let cfg = admin.dir.config();
            let text = admin
                .dir
                .read(&origin, |z| {
                    zonefile::export(z, cfg.node_ttl, cfg.service_ttl)
                })
                .ok_or_else(|| Refusal::not_found(format!("no zone {origin}")))?;
            zone_file(text)
        }
        (&Method::PUT, [zone]) => {
            let origin = absolute(zone);
            let who = authorize(admin, call, &origin, Need::Import)?;
            let text = std::str::from_utf8(&call.body)
                .map_err(|_| Refusal::bad_request("the zone file is not UTF-8 text"))?;
            let parsed = zonefile::parse(text, "request body", Some(&origin)).map_err(|e| {
                Refusal::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad-zone-file",
                    e.to_string(),
                )
            })?;
            if parsed.origin() != origin {
                return Err(Refusal::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad-zone-file",
                    format!("the file is for zone {}, not {origin}", parsed.origin()),
                ));
            }
            let serial = admin.dir.import(parsed, &who)?;
            tracing::info!(zone = %origin, serial, "zone imported");
            json(&serde_json::json!({"zone": origin, "serial": serial}))
        }
        _ => Err(method_not_allowed(call)),
    }
}
