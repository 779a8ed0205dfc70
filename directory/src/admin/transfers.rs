//! `/v1/tsig` and `/v1/secondaries`: a zone's TSIG keys (RFC 8945) and the
//! standard secondaries told of each change (docs/high-availability.md).
//! A key's secret is shown once, in the answer that made it; reads list names.

use http::Method;
use rand::RngCore;

use super::{apply, change, json, method_not_allowed, Admin, Call, Refusal, Reply};
use crate::model::{Op, Secondary, TsigKey, TSIG_ALGORITHM};

/// `POST /v1/tsig` body: a name, and a secret to adopt (else one is made).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    secret: Option<String>,
}

pub fn tsig(admin: &Admin, call: &Call, m: &Method, rest: &[&str]) -> Reply {
    match (m, rest) {
        (&Method::GET, []) => {
            let origin = call.zone(admin)?;
            let list = admin
                .dir
                .read(&origin, |z| {
                    z.tsig
                        .values()
                        .map(|k| serde_json::json!({"name": k.name, "algorithm": k.algorithm}))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            json(&list)
        }
        (&Method::POST, []) => {
            let body: NewKey = call.json()?;
            let secret = body.secret.unwrap_or_else(|| {
                let mut b = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut b);
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)
            });
            let key = TsigKey {
                name: body.name.trim_end_matches('.').to_ascii_lowercase(),
                algorithm: body.algorithm.unwrap_or_else(|| TSIG_ALGORITHM.into()),
                secret,
            };
            let changed = apply(admin, call, Op::AddTsig(key.clone()))?;
            json(&serde_json::json!({
                "zone": changed.zone,
                "serial": changed.serial,
                "name": key.name,
                "algorithm": key.algorithm,
                "secret": key.secret,
            }))
        }
        (&Method::DELETE, [name]) => change(admin, call, Op::RemoveTsig(name.to_string())),
        _ => Err(method_not_allowed(call)),
    }
}

pub fn secondaries(admin: &Admin, call: &Call, m: &Method, rest: &[&str]) -> Reply {
    match (m, rest) {
        (&Method::GET, []) => {
            let origin = call.zone(admin)?;
            let list = admin
                .dir
                .read(&origin, |z| {
                    z.secondaries.values().cloned().collect::<Vec<_>>()
                })
                .unwrap_or_default();
            json(&list)
        }
        (&Method::POST, []) => change(admin, call, Op::AddSecondary(call.json::<Secondary>()?)),
        (&Method::DELETE, [addr]) => {
            let addr = addr.parse().map_err(|_| {
                Refusal::bad_request(format!(
                    "{addr:?} is not a secondary's ADDR:PORT (e.g. 192.0.2.53:53, [2001:db8::53]:53)"
                ))
            })?;
            change(admin, call, Op::RemoveSecondary(addr))
        }
        _ => Err(method_not_allowed(call)),
    }
}
