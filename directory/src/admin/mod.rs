//! The admin API: JSON over HTTP/1.1 on `--http`.
//!
//! Reads are open. A change must carry an RFC 9421 signature (see `sign`) by an
//! admin key of the zone it changes, or by a host's own key for that host's
//! health and repository versions. Refusals are 401 (who are you?) or 403 (not
//! you), with a JSON body `{"error": ..., "reason": ...}`. A change is answered
//! only after `Directory::apply` has made it durable and visible in DNS.
//!
//! One file per resource: `hosts`, `bindings`, `repos`, `zones`, `admins`.

mod admins;
mod bindings;
mod hosts;
mod repos;
mod zones;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::sign::{self, Policy, ReplayGuard};
use crate::state::{ApplyError, Directory, Op};
use crate::view::KeyOwner;

/// The largest body a change may carry (a zone import of ~100k hosts fits).
pub const MAX_BODY: usize = 64 << 20;

/// Shared by every connection.
pub struct Admin {
    pub dir: Arc<Directory>,
    replay: ReplayGuard,
    policy: Policy,
    /// Console logins and sessions.
    pub sessions: crate::console::Sessions,
}

impl Admin {
    pub fn new(dir: Arc<Directory>) -> Self {
        Admin {
            dir,
            replay: ReplayGuard::new(),
            policy: Policy {
                max_skew_secs: 30,
                max_lifetime_secs: 60,
            },
            sessions: Default::default(),
        }
    }
}

/// An HTTP answer that is not a success: status, a message, a stable reason code.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }
}

impl From<ApplyError> for Refusal {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::NotFound(m) => Refusal::new(StatusCode::NOT_FOUND, "not-found", m),
            ApplyError::Conflict(m) => Refusal::new(StatusCode::CONFLICT, "conflict", m),
            ApplyError::Invalid(m) => Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
            ApplyError::Store(e) => {
                tracing::error!(error = %e, "store write failed");
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store-failed",
                    e.to_string(),
                )
            }
        }
    }
}

type Reply = Result<Response<Full<Bytes>>, Refusal>;

/// A 200 with a JSON body.
pub fn json<T: Serialize>(v: &T) -> Reply {
    let body = serde_json::to_vec_pretty(v)
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn refusal_response(r: Refusal) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": r.message, "reason": r.reason});
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = r.status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A request with its body read and its query split.
pub struct Call {
    pub method: Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub query: HashMap<String, String>,
}

impl Call {
    /// Parses the body as JSON of `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Refusal> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Refusal::bad_request(format!("the body is not the JSON this call takes: {e}"))
        })
    }

    /// The zone a call is about: `?zone=`, or the only zone there is.
    pub fn zone(&self, admin: &Admin) -> Result<String, Refusal> {
        let origins = admin.dir.origins();
        match self.query.get("zone") {
            Some(z) => {
                let want = if z.ends_with('.') {
                    z.to_ascii_lowercase()
                } else {
                    format!("{}.", z.to_ascii_lowercase())
                };
                if origins.contains(&want) {
                    Ok(want)
                } else {
                    Err(Refusal::not_found(format!("no zone {want}")))
                }
            }
            None => match origins.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(Refusal::not_found(
                    "the directory has no zone yet; import one",
                )),
                _ => Err(Refusal::bad_request(format!(
                    "the directory has several zones ({}); say which with ?zone= (CLI: --zone)",
                    origins.join(", ")
                ))),
            },
        }
    }
}

pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the signature of a change to `origin` and that its key may make `op`.
/// `op` is `None` for a zone import, which needs an admin key.
/// Which keys may make a change.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// An admin key of the zone.
    Admin,
    /// An admin key, or the named host's own key.
    AdminOrHost(&'a str),
    /// Importing a zone: an admin of it, or for a new zone, an admin of the zone that encloses it.
    Import,
    /// The named host's own key only (its heartbeat).
    Host(&'a str),
}

impl<'a> Need<'a> {
    /// What an operation needs: a host's own key may set its health and its versions.
    pub fn of(op: &'a Op) -> Self {
        match op {
            Op::SetHealth { host, .. } | Op::SetVersion { host, .. } => Need::AdminOrHost(host),
            _ => Need::Admin,
        }
    }
}

pub fn authorize(
    admin: &Admin,
    call: &Call,
    origin: &str,
    need: Need<'_>,
) -> Result<String, Refusal> {
    let unauthorized = |e: sign::SignError| {
        tracing::warn!(reason = e.reason(), error = %e, path = %call.uri.path(), "change refused");
        Refusal::new(StatusCode::UNAUTHORIZED, e.reason(), e.to_string())
    };
    let parsed = sign::parse(&call.headers).map_err(unauthorized)?;
    let keyid = parsed.keyid().to_string();
    let view = admin.dir.view().load_full();
    let entry = view
        .zones
        .iter()
        .find(|z| z.origin.to_string() == origin)
        .and_then(|z| z.key(&keyid).cloned())
        .or_else(|| {
            // A zone that does not exist yet: inside an existing zone it would take
            // over part of that zone's names, so only that zone's admins may create
            // it; elsewhere any admin may.
            if !matches!(need, Need::Import)
                || view.zones.iter().any(|z| z.origin.to_string() == origin)
            {
                return None;
            }
            let name = hickory_proto::rr::Name::from_ascii(origin).ok()?;
            let enclosing = view.zone_for(&hickory_proto::rr::LowerName::new(&name));
            let admin_key = |e: &&crate::view::KeyEntry| matches!(e.owner, KeyOwner::Admin(_));
            match enclosing {
                Some(z) => z.key(&keyid).filter(admin_key).cloned(),
                None => view
                    .zones
                    .iter()
                    .filter_map(|z| z.key(&keyid))
                    .find(admin_key)
                    .cloned(),
            }
        })
        .ok_or_else(|| {
            tracing::warn!(reason = "unknown-key", keyid = %keyid, "change refused");
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unknown-key",
                format!("key {keyid} is not an admin or host key of {origin}"),
            )
        })?;
    let key = entry
        .key
        .verifying_key()
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, "unknown-key", e.0))?;
    let now = unix_now();
    parsed
        .verify(
            &call.method,
            &call.uri,
            &call.headers,
            &call.body,
            &key,
            now,
            &admin.policy,
        )
        .map_err(unauthorized)?;
    admin
        .replay
        .check_and_remember(&keyid, parsed.nonce(), parsed.expires(), now)
        .map_err(unauthorized)?;
    match (&entry.owner, need) {
        (KeyOwner::Admin(name), Need::Host(host)) => {
            tracing::warn!(reason = "key-not-allowed", admin = %name, path = %call.uri.path(), "call refused");
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "key-not-allowed",
                format!("only {host}'s own key may send its heartbeat"),
            ))
        }
        (KeyOwner::Admin(name), _) => Ok(format!("admin {name}")),
        (KeyOwner::Host(h), Need::AdminOrHost(host) | Need::Host(host)) if h == host => {
            Ok(format!("host {h}"))
        }
        (KeyOwner::Host(h), _) => {
            tracing::warn!(reason = "key-not-allowed", host = %h, path = %call.uri.path(), "change refused");
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "key-not-allowed",
                format!("the key of host {h} may change only {h}'s own health, repository versions and write leases; sign with an admin key"),
            ))
        }
    }
}

/// Authorizes and applies one change, answering with the new serial.
pub fn change(admin: &Admin, call: &Call, op: Op) -> Reply {
    let origin = call.zone(admin)?;
    let who = authorize(admin, call, &origin, Need::of(&op))?;
    tracing::info!(zone = %origin, by = %who, op = ?op_name(&op), "applying change");
    let serial = admin.dir.apply_by(&origin, op, &who)?;
    json(&serde_json::json!({"zone": origin, "serial": serial}))
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::AddHost(_) => "host add",
        Op::RemoveHost(_) => "host rm",
        Op::SetAvailable { .. } => "host enable/disable",
        Op::SetHealth { .. } => "host health",
        Op::AddBinding(_) => "bind add",
        Op::RemoveBinding { .. } => "bind rm",
        Op::SetBindingHealth { .. } => "bind health",
        Op::AddRepo(_) => "repo add",
        Op::RemoveRepo(_) => "repo rm",
        Op::Promote { .. } => "repo promote",
        Op::SetAutoFailover { .. } => "repo auto-failover",
        Op::SetVersion { .. } => "repo version",
        Op::AddAdmin(_) => "admin add",
        Op::RemoveAdmin(_) => "admin rm",
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The largest body of any call but a zone import.
pub const MAX_CHANGE_BODY: usize = 1 << 20;

async fn route(admin: Arc<Admin>, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    // Reads carry no body; a change without signature headers is refused before
    // its body is read; only a zone import may be large.
    let limit = match parts.method {
        Method::PUT if parts.uri.path().starts_with("/v1/zones/") => MAX_BODY,
        Method::POST | Method::PUT | Method::DELETE => MAX_CHANGE_BODY,
        _ => 0,
    };
    if limit > 0 && !parts.headers.contains_key("signature") {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "no-signature",
            "changes must be signed (RFC 9421 Signature and Signature-Input headers) by an admin key: use the CLI with --key",
        ));
    }
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("cannot read the body (limit {limit} bytes): {e}"),
            )
        })?
        .to_bytes();
    let call = Call {
        query: parse_query(parts.uri.query()),
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    let path = call.uri.path().to_string();
    if call.method == Method::GET && path == "/v1/feed" {
        return feed(&admin, &call).await;
    }
    if call.method == Method::GET && path == "/v1/events" {
        return events(&admin, &call).await;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let m = call.method.clone();
    // Changes touch the store (fsync): keep them off the reactor threads.
    let admin2 = admin.clone();
    let segs_owned: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || dispatch(&admin2, &call, &m, &segs_owned))
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// `GET /v1/feed?since=SERIAL[&timeout=SECS]`: a long poll that answers as soon as
/// the zone's serial passes `since` (at once if it already has), or after `timeout`
/// (default 25 s, at most 60) with no changes. Sidecars follow it to see a change
/// within a second instead of waiting for TTLs.
async fn feed(admin: &Admin, call: &Call) -> Reply {
    let origin = call.zone(admin)?;
    let since: u64 = match call.query.get("since") {
        Some(s) => s
            .parse()
            .map_err(|_| Refusal::bad_request(format!("since={s:?} is not a serial")))?,
        None => 0,
    };
    let timeout: u64 = match call.query.get("timeout") {
        Some(s) => s.parse().map_err(|_| {
            Refusal::bad_request(format!("timeout={s:?} is not a number of seconds"))
        })?,
        None => 25,
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout.min(60));
    let mut rx = admin.dir.subscribe();
    loop {
        rx.borrow_and_update();
        let (serial, changes, complete) = admin
            .dir
            .changes_since(&origin, since)
            .ok_or_else(|| Refusal::not_found(format!("no zone {origin}")))?;
        if u64::from(serial) != since || tokio::time::Instant::now() >= deadline {
            return json(&serde_json::json!({
                "zone": origin, "serial": serial, "changes": changes, "complete": complete,
            }));
        }
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, rx.changed()).await {
            // The directory is shutting down: answer at the deadline.
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// `GET /v1/events?after=ID[&limit=N][&wait=SECS]` or `?last=N`: audit events,
/// oldest first, with `last` the id to ask after next time. With `wait`, a long
/// poll that answers as soon as there is an event after `after`. `zone=` keeps
/// one zone's events.
async fn events(admin: &Admin, call: &Call) -> Reply {
    let number = |k: &str, default: u64| -> Result<u64, Refusal> {
        match call.query.get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| Refusal::bad_request(format!("{k}={v:?} is not a number"))),
            None => Ok(default),
        }
    };
    let zone = match call.query.get("zone") {
        Some(_) => Some(call.zone(admin)?),
        None => None,
    };
    let limit = number("limit", 1000)?.clamp(1, 1000) as usize;
    let wait = number("wait", 0)?.min(60);
    let mut rx = admin.dir.subscribe_events();
    let after = match (call.query.contains_key("after"), call.query.get("last")) {
        (true, _) => number("after", 0)?,
        (false, Some(_)) => {
            let last = number("last", 20)?.min(limit as u64);
            rx.borrow_and_update().saturating_sub(last)
        }
        (false, None) => 0,
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        rx.borrow_and_update();
        let dir = admin.dir.clone();
        let found = tokio::task::spawn_blocking(move || dir.events_after(after, limit))
            .await
            .map_err(|e| {
                Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(ApplyError::from)?;
        let last = found.last().map(|e| e.id).unwrap_or(after);
        let found: Vec<_> = found
            .into_iter()
            .filter(|e| zone.as_ref().is_none_or(|z| &e.zone == z))
            .collect();
        if !found.is_empty() || last != after || tokio::time::Instant::now() >= deadline {
            return json(&serde_json::json!({"events": found, "last": last}));
        }
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, rx.changed()).await {
            tokio::time::sleep_until(deadline).await;
        }
    }
}

fn dispatch(admin: &Admin, call: &Call, m: &Method, segs: &[String]) -> Reply {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (m, s.as_slice()) {
        (&Method::GET, ["v1", "status"]) => zones::status(admin),
        (_, ["v1", "zones", rest @ ..]) => zones::route(admin, call, m, rest),
        (_, ["v1", "hosts", rest @ ..]) => hosts::route(admin, call, m, rest),
        (_, ["v1", "bindings", rest @ ..]) => bindings::route(admin, call, m, rest),
        (_, ["v1", "repos", rest @ ..]) => repos::route(admin, call, m, rest),
        (_, ["v1", "admins", rest @ ..]) => admins::route(admin, call, m, rest),
        (&Method::GET, ["v1", "keys", fpr]) => admins::key(admin, fpr),
        (&Method::POST, ["v1", "sessions"]) => crate::console::mint(admin, call),
        _ => Err(Refusal::not_found(format!(
            "no such API route: {} {}",
            m,
            call.uri.path()
        ))),
    }
}

fn method_not_allowed(call: &Call) -> Refusal {
    Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} is not allowed on {}", call.method, call.uri.path()),
    )
}

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move {
                    let p = req.uri().path();
                    if p == "/ui" || p.starts_with("/ui/") {
                        return Ok::<_, Infallible>(crate::console::route(admin, req).await);
                    }
                    Ok::<_, Infallible>(match route(admin, req).await {
                        Ok(r) => r,
                        Err(r) => refusal_response(r),
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}
