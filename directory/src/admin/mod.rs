//! The admin API: JSON over HTTP/1.1 on `--http`.
//!
//! Reads are open. A change must carry an RFC 9421 signature (see `sign`) by an
//! admin key of the zone it changes, or by a host's own key for that host's
//! health and repository versions, made for one of the names this directory
//! answers to and after it started. Refusals are 401 (who are you?) or 403 (not
//! you), with a JSON body `{"error": ..., "reason": ...}`. A change is answered
//! only after `Directory::apply` has made it durable and visible in DNS.
//!
//! A change is checked in two steps: `authenticate`, from its headers alone
//! before a byte of its body is read (the signature covers `content-digest`, not
//! the body), then `authorize`, once the body has been read within its route's
//! limits (`limits`): the body against its digest, the nonce recorded, the key's
//! right to that change.
//!
//! One file per resource: `hosts`, `bindings`, `repos`, `dbs`, `zones`, `admins`,
//! `sessions` (console logins). The listener that serves them is `listener`.

mod admins;
mod bindings;
mod dbs;
mod hosts;
pub mod limits;
mod repos;
mod sessions;
mod transfers;
mod zones;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use crate::model::Op;
use crate::sign::{self, BodyHash, ParsedSignature, Policy, ReplayGuard};
use crate::state::{ApplyError, Directory};
use crate::view::KeyOwner;
pub use limits::Limits;

/// Shared by every connection.
pub struct Admin {
    pub dir: Arc<Directory>,
    replay: ReplayGuard,
    policy: Policy,
    /// Console logins and sessions.
    pub sessions: crate::sessions::Sessions,
    limits: Limits,
    /// The authorities a change must be signed for (`serve --public-name`),
    /// normalized; empty: the address the connection came in on.
    public_names: Vec<String>,
    /// Signatures created before this second are refused: they may have been
    /// used before a restart, whose replay guard is gone.
    not_before: u64,
    /// Set at shutdown: no signature is taken after it.
    closed: AtomicBool,
}

/// How `serve` sets up the admin API.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// `--public-name`s, as [`public_name`] returns them.
    pub public_names: Vec<String>,
    pub limits: Limits,
    /// The unix second the admin listener opened: signatures created before it are refused.
    pub not_before: u64,
}

impl Admin {
    pub fn new(dir: Arc<Directory>, cfg: AdminConfig) -> Self {
        let sessions = if dir.store().shares_sessions() {
            crate::sessions::Sessions::in_store(dir.clone())
        } else {
            Default::default()
        };
        Admin {
            dir,
            // A change's pair is remembered (`authorize`) only once its body
            // has arrived: its second is kept as long as a body may take, and
            // a minute for the wait after it.
            replay: ReplayGuard::with_grace(
                limits::longest_body(&cfg.limits)
                    .as_secs()
                    .saturating_add(sign::KEEP_AFTER_SECS + 60),
            ),
            policy: Policy {
                max_skew_secs: 30,
                max_lifetime_secs: 60,
            },
            sessions,
            limits: cfg.limits,
            public_names: cfg.public_names,
            not_before: cfg.not_before,
            closed: AtomicBool::new(false),
        }
    }

    /// Takes no signature from now on (the directory is stopping; see `server`).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// What one client may hold of the admin listener.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How long a request body may take to arrive (the console's forms too).
    pub fn body_timeout(&self) -> std::time::Duration {
        self.limits.body_timeout
    }

    /// The authorities a change that came in on `local` may be signed for.
    fn accepted_authorities(&self, local: SocketAddr) -> Vec<String> {
        if !self.public_names.is_empty() {
            return self.public_names.clone();
        }
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        let mut names = vec![normal_authority(&local.to_string())];
        if local.ip().is_loopback() {
            names.push(normal_authority(&format!("localhost:{}", local.port())));
        }
        names
    }
}

/// An authority as compared: lowercase, and without `:80`, the default port of
/// `http` (RFC 9110 §4.2.3), which clients leave out.
fn normal_authority(a: &str) -> String {
    let a = a.to_ascii_lowercase();
    match a.strip_suffix(":80") {
        Some(bare) => bare.to_string(),
        None => a,
    }
}

/// A `--public-name` that is not `NAME[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--public-name {given:?}: {why}; give the NAME[:PORT] clients put in their URLs")]
pub struct PublicNameError {
    pub given: String,
    /// `not a host name` or `not a port`.
    pub why: &'static str,
}

/// Checks a `--public-name NAME[:PORT]` and returns it as changes are compared with it.
pub fn public_name(s: &str) -> Result<String, PublicNameError> {
    let bad = |why: &'static str| PublicNameError {
        given: s.to_string(),
        why,
    };
    let authority: http::uri::Authority = s.parse().map_err(|_| bad("not a host name"))?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(bad("not a host name"));
    }
    let port = authority
        .as_str()
        .get(authority.host().len()..)
        .unwrap_or(":");
    if !port.is_empty() && !port[1..].parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(bad("not a port"));
    }
    Ok(normal_authority(authority.as_str()))
}

/// An HTTP answer that is not a success: status, a message, a stable reason code,
/// and any fields that say more.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    details: serde_json::Map<String, serde_json::Value>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            message: message.into(),
            details: Default::default(),
        }
    }

    /// Adds a field to the JSON body.
    fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
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
            ApplyError::TooMany(m) => Refusal::new(StatusCode::TOO_MANY_REQUESTS, "event-rate", m),
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
    let mut body = r.details;
    body.insert("error".into(), r.message.into());
    body.insert("reason".into(), r.reason.into());
    let body = serde_json::Value::Object(body);
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
    /// A change's signature, checked before its body was read.
    signed: Option<Signed>,
}

/// A signature that verified over a request's headers, by the key its keyid names.
struct Signed {
    parsed: ParsedSignature,
    key: VerifyingKey,
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
            Op::SetDbPosition { host, .. } => Need::Host(host),
            _ => Need::Admin,
        }
    }
}

fn no_signature() -> Refusal {
    Refusal::new(
        StatusCode::UNAUTHORIZED,
        "no-signature",
        "changes must be signed (RFC 9421 Signature and Signature-Input headers) by an admin key: use the CLI with --key",
    )
}

fn unauthorized(path: &str, e: sign::SignError) -> Refusal {
    tracing::warn!(reason = e.reason(), error = %e, path = %path, "change refused");
    Refusal::new(StatusCode::UNAUTHORIZED, e.reason(), e.to_string())
}

/// Checks a change from its headers alone, before its body is read: a signature
/// that parses, by a key some zone knows, that covers what it must, is fresh,
/// verifies, was made for one of this directory's names (`local` is the address
/// the request came in on) after this directory started, and whose nonce is not
/// used yet. The nonce is only recorded by [`authorize`], once the body matches
/// its digest, so a copy with another body cannot use up the genuine request's.
fn authenticate(
    admin: &Admin,
    parts: &http::request::Parts,
    local: SocketAddr,
) -> Result<Signed, Refusal> {
    let path = parts.uri.path();
    if admin.closed.load(Ordering::SeqCst) {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "the directory is stopping; send the change again once it is back",
        ));
    }
    if !parts.headers.contains_key("signature") && !parts.headers.contains_key("signature-input") {
        tracing::warn!(reason = "no-signature", path = %path, "change refused");
        return Err(no_signature());
    }
    let parsed = sign::parse(&parts.headers).map_err(|e| unauthorized(path, e))?;
    let keyid = parsed.keyid();
    let view = admin.dir.view().load_full();
    let Some(entry) = view.zones.iter().find_map(|z| z.key(keyid)) else {
        tracing::warn!(reason = "unknown-key", keyid = %keyid, path = %path, "change refused");
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unknown-key",
            format!("key {keyid} is no admin or host key of any zone of this directory"),
        ));
    };
    let key = entry
        .key
        .verifying_key()
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, "unknown-key", e.0))?;
    let now = crate::time::unix_secs();
    parsed
        .verify_headers(
            &parts.method,
            &parts.uri,
            &parts.headers,
            limits::expects_body(&parts.headers),
            &key,
            now,
            &admin.policy,
        )
        .map_err(|e| unauthorized(path, e))?;
    let accepted = admin.accepted_authorities(local);
    let signed_for = sign::authority(&parts.uri, &parts.headers).unwrap_or_default();
    if !accepted.contains(&normal_authority(&signed_for)) {
        tracing::warn!(reason = "wrong-authority", authority = %signed_for, path = %path, "change refused");
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "wrong-authority",
            format!(
                "this change was signed for {signed_for:?}, but this directory answers to {}: sign it for one of those (CLI: --server http://NAME:PORT; the directory: serve --public-name)",
                accepted.join(", ")
            ),
        )
        .with("signed_authority", signed_for)
        .with("accepted", accepted));
    }
    if parsed.created() < admin.not_before {
        tracing::warn!(reason = "stale-signature", created = parsed.created(), path = %path, "change refused: signed before this start");
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "stale-signature",
            format!(
                "signature created at {} (unix), before this directory started at {}: a restart forgets which nonces were used, so it takes only signatures made since; sign the request again",
                parsed.created(),
                admin.not_before
            ),
        ));
    }
    admin
        .replay
        .check_unseen(keyid, parsed.nonce(), parsed.expires(), now)
        .map_err(|e| unauthorized(path, e))?;
    Ok(Signed { parsed, key })
}

/// Checks that a change, already authenticated from its headers, may be made to
/// `origin` by its key, once its body is read: the body matches the signed
/// `Content-Digest`, the nonce is recorded, and the key may make `need`.
pub fn authorize(
    admin: &Admin,
    call: &Call,
    origin: &str,
    need: Need<'_>,
) -> Result<String, Refusal> {
    let unauthorized = |e: sign::SignError| unauthorized(call.uri.path(), e);
    let Some(Signed {
        parsed,
        key: checked,
    }) = &call.signed
    else {
        return Err(no_signature());
    };
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
    let now = crate::time::unix_secs();
    if key != *checked {
        // This zone holds another key under the same keyid: verify with it too.
        parsed
            .verify_headers(
                &call.method,
                &call.uri,
                &call.headers,
                !call.body.is_empty(),
                &key,
                now,
                &admin.policy,
            )
            .map_err(unauthorized)?;
    }
    parsed
        .check_body(&call.headers, &BodyHash::of(&call.body))
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
    json(&apply(admin, call, op)?)
}

/// Authorizes and applies one change to the zone the call names.
pub fn apply(admin: &Admin, call: &Call, op: Op) -> Result<crate::api::Changed, Refusal> {
    let origin = call.zone(admin)?;
    let who = authorize(admin, call, &origin, Need::of(&op))?;
    tracing::info!(zone = %origin, by = %who, op = ?op_name(&op), "applying change");
    let serial = admin.dir.apply_by(&origin, op, &who)?;
    Ok(crate::api::Changed {
        zone: origin,
        serial,
    })
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
        Op::FreezeRepo {
            message: Some(_), ..
        } => "repo freeze",
        Op::FreezeRepo { message: None, .. } => "repo thaw",
        Op::SetVersion { .. } => "repo version",
        Op::AddDb(_) => "db add",
        Op::RemoveDb(_) => "db rm",
        Op::PromoteDb { .. } => "db promote",
        Op::FreezeDb {
            message: Some(_), ..
        } => "db freeze",
        Op::FreezeDb { message: None, .. } => "db thaw",
        Op::SetDbPosition { .. } => "db position",
        Op::AddAdmin(_) => "admin add",
        Op::RemoveAdmin(_) => "admin rm",
        Op::AddTsig(_) => "zone tsig add",
        Op::RemoveTsig(_) => "zone tsig rm",
        Op::AddSecondary(_) => "zone secondary add",
        Op::RemoveSecondary(_) => "zone secondary rm",
    }
}

async fn route(admin: Arc<Admin>, req: Request<Incoming>, local: SocketAddr) -> Reply {
    let (parts, body) = req.into_parts();
    // Reads carry no body. A change is authenticated from its headers, and its
    // declared length checked, before a byte of its body is read; only a zone
    // import may be large, and every body must arrive in time.
    let rule = limits::BodyRule::of(&parts.method, parts.uri.path(), &admin.limits);
    let signed = match rule.is_change() {
        true => Some(authenticate(&admin, &parts, local)?),
        false => None,
    };
    rule.check_declared(&parts.headers)?;
    let body = rule.read(body).await?;
    let call = Call {
        query: parse_query(parts.uri.query()),
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        signed,
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
        (_, ["v1", "dbs", rest @ ..]) => dbs::route(admin, call, m, rest),
        (_, ["v1", "admins", rest @ ..]) => admins::route(admin, call, m, rest),
        (_, ["v1", "tsig", rest @ ..]) => transfers::tsig(admin, call, m, rest),
        (_, ["v1", "secondaries", rest @ ..]) => transfers::secondaries(admin, call, m, rest),
        (&Method::GET, ["v1", "keys", fpr]) => admins::key(admin, fpr),
        (&Method::POST, ["v1", "sessions"]) => sessions::mint(admin, call),
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

/// Answers one API request that came in on `local`: the response, or the
/// refusal as its JSON body.
pub async fn handle(
    admin: Arc<Admin>,
    req: Request<Incoming>,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    match route(admin, req, local).await {
        Ok(r) => r,
        Err(r) => refusal_response(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_names_are_compared_as_clients_send_them() {
        assert_eq!(public_name("Dir.Example:8053").unwrap(), "dir.example:8053");
        assert_eq!(public_name("dir.example:80").unwrap(), "dir.example");
        assert_eq!(public_name("dir.example").unwrap(), "dir.example");
        assert_eq!(public_name("[::1]:8053").unwrap(), "[::1]:8053");
        assert_eq!(public_name("10.0.0.5:8053").unwrap(), "10.0.0.5:8053");
        for bad in [
            "",
            "user@dir.example",
            "dir.example:http",
            "dir.example:0",
            "a b",
            "http://x/",
        ] {
            assert!(public_name(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(normal_authority("DIR.example:8080"), "dir.example:8080");
        assert_eq!(normal_authority("[::1]:80"), "[::1]");
    }
}
