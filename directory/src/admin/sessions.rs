//! `POST /v1/sessions`: a console login code for the admin whose key signed
//! the call (see `sessions` and `console`).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::{authorize, json, Admin, Call, Need, Refusal};
use crate::sessions;

/// `POST /v1/sessions` (signed by an admin key), body `{"ttl_minutes": N}`
/// (optional): a one-time console login code for that admin and zone.
pub fn mint(admin: &Admin, call: &Call) -> Result<Response<Full<Bytes>>, Refusal> {
    #[derive(serde::Deserialize, Default)]
    struct Body {
        #[serde(default)]
        ttl_minutes: Option<u64>,
    }
    let origin = call.zone(admin)?;
    let who = authorize(admin, call, &origin, Need::Admin)?;
    let name = who.strip_prefix("admin ").unwrap_or(&who).to_string();
    let fingerprint = crate::sign::parse(&call.headers)
        .map(|p| p.keyid().to_string())
        .unwrap_or_default();
    let body: Body = if call.body.is_empty() {
        Body::default()
    } else {
        call.json()?
    };
    let minutes = body
        .ttl_minutes
        .unwrap_or(sessions::DEFAULT_SESSION_MINUTES)
        .clamp(1, sessions::MAX_SESSION_MINUTES);
    let code = admin
        .sessions
        .mint(
            &name,
            &fingerprint,
            &origin,
            Duration::from_secs(minutes * 60),
        )
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-sessions",
                "too many console logins pending; try again in a few minutes",
            )
        })?;
    tracing::info!(zone = %origin, admin = %name, minutes, "console login code issued");
    json(&serde_json::json!({
        "zone": origin,
        "admin": name,
        "login_path": format!("/ui/login#code={code}"),
        "code_expires": crate::time::unix_secs() + sessions::CODE_TTL.as_secs(),
        "session_minutes": minutes,
    }))
}
