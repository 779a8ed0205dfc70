//! The web console at `/ui/` on the admin listener: services, hosts,
//! repositories, databases and events, each one page that refreshes itself when the
//! directory changes; an admin marks hosts (un)available and promotes replicas
//! from it.
//!
//! Reading is open, as the API's reads are. A change needs a session, and a
//! session starts only from a signed call: `switchboard-directory console`
//! signs `POST /v1/sessions` with the admin's key (which never leaves the
//! admin's machine) and gets a one-time login code, valid 5 minutes, that it
//! prints as a link (`/ui/login#code=…`; a fragment is never sent to servers
//! or proxies' logs). The browser exchanges it for a session cookie
//! (`HttpOnly`, `SameSite=Strict`, bound to that admin and zone, an hour by
//! default). Every change form also carries the session's CSRF token, a
//! cross-origin `Origin` is refused, and the admin must still hold the same
//! key in the zone. Changes go through `Directory::apply_by` as
//! `admin NAME (console)`: the same rules, refusals and audit log as the CLI.
//! Codes and sessions live in memory (`sessions`): a restart signs everyone out.

mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use crate::admin::{self, Admin};
use crate::model::Op;
use crate::sessions::{RedeemError, Session};
use crate::state::ApplyError;

const COOKIE: &str = "sb_session";
/// The largest console form.
const MAX_FORM: usize = 16 << 10;

/// A console answer.
type Page = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Page {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it browsers send `Origin: null` on the console's
    // own forms, which are then refused as cross-origin.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn html(status: StatusCode, body: String) -> Page {
    respond(status, "text/html; charset=utf-8", body)
}

fn see_other(location: &str) -> Page {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The session cookie's value, if the request carries one.
fn cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// What a page needs to know about the request.
pub struct Ctx {
    pub zone: String,
    pub zones: Vec<String>,
    pub session: Option<Session>,
    pub query: HashMap<String, String>,
}

impl Ctx {
    fn new(admin: &Admin, headers: &http::HeaderMap, query: HashMap<String, String>) -> Self {
        let session = cookie(headers).and_then(|t| admin.sessions.get(&t));
        let zones = admin.dir.origins();
        let wanted = query
            .get("zone")
            .map(|z| {
                let z = z.to_ascii_lowercase();
                if z.ends_with('.') {
                    z
                } else {
                    format!("{z}.")
                }
            })
            .or_else(|| session.as_ref().map(|s| s.zone.clone()));
        let zone = wanted
            .filter(|z| zones.contains(z))
            .or_else(|| zones.first().cloned())
            .unwrap_or_default();
        Ctx {
            zone,
            zones,
            session,
            query,
        }
    }

    /// The session, if it may change this page's zone.
    fn editor(&self) -> Option<&Session> {
        self.session.as_ref().filter(|s| s.zone == self.zone)
    }
}

/// Serves everything under `/ui`.
pub async fn route(admin: Arc<Admin>, req: http::Request<hyper::body::Incoming>) -> Page {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = admin::parse_query(parts.uri.query());
    match (&parts.method, path.as_str()) {
        (&Method::GET, "/ui" | "/ui/") => see_other("/ui/services"),
        (&Method::GET, "/ui/style.css") => {
            respond(StatusCode::OK, "text/css; charset=utf-8", pages::STYLE)
        }
        (&Method::GET, "/ui/app.js") => respond(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            pages::SCRIPT,
        ),
        (&Method::GET, _) => {
            // Pages read the model under its lock: never on a reactor thread.
            let a = admin.clone();
            let rendered = tokio::task::spawn_blocking(move || {
                let ctx = Ctx::new(&a, &parts.headers, query);
                pages::page(&a.dir, &ctx, &path, None)
            })
            .await
            .unwrap_or_else(|e| Some(pages::error_page(&e.to_string())));
            match rendered {
                Some(body) => html(StatusCode::OK, body),
                None => html(
                    StatusCode::NOT_FOUND,
                    pages::error_page("No such console page."),
                ),
            }
        }
        (&Method::POST, _) => {
            let read = Limited::new(body, MAX_FORM).collect();
            let form = match tokio::time::timeout(admin.body_timeout(), read).await {
                Ok(Ok(b)) => admin::parse_query(std::str::from_utf8(&b.to_bytes()).ok()),
                Ok(Err(_)) => {
                    return html(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        pages::error_page("That form is too large."),
                    )
                }
                Err(_) => {
                    return html(
                        StatusCode::REQUEST_TIMEOUT,
                        pages::error_page("The form did not arrive in time; send it again."),
                    )
                }
            };
            post(admin, &parts, &path, query, form).await
        }
        _ => html(
            StatusCode::METHOD_NOT_ALLOWED,
            pages::error_page("The console answers GET and POST only."),
        ),
    }
}

/// Whether a browser says the form came from another site.
fn cross_origin(headers: &http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    authority != host
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn post(
    admin: Arc<Admin>,
    parts: &http::request::Parts,
    path: &str,
    query: HashMap<String, String>,
    form: HashMap<String, String>,
) -> Page {
    let refuse = |status: StatusCode, reason: &'static str, msg: &str| {
        tracing::warn!(reason, path, "console change refused");
        html(status, pages::error_page(msg))
    };
    if cross_origin(&parts.headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "cross-origin",
            "This form was sent from another site; nothing was changed.",
        );
    }
    if path == "/ui/login" {
        let code = form.get("code").map(String::as_str).unwrap_or("").trim();
        return match admin.sessions.redeem(code) {
            Ok((token, s)) => {
                tracing::info!(zone = %s.zone, admin = %s.admin, "console session started");
                let mut r = see_other(&format!("/ui/hosts?zone={}", pages::url_encode(&s.zone)));
                let max_age = s.ttl.as_secs();
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}"
                )) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(RedeemError::Full) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-sessions",
                "Too many console sessions are open; try again in a few minutes (the link works until it expires).",
            ),
            Err(RedeemError::Unknown) => refuse(
                StatusCode::UNAUTHORIZED,
                "bad-login-code",
                "That login code is unknown, used or expired. Run `switchboard-directory --key ADMIN.pem console` for a new link.",
            ),
        };
    }
    let token = cookie(&parts.headers);
    if path == "/ui/logout" {
        if let Some(t) = token {
            admin.sessions.end(&t);
        }
        let mut r = see_other("/ui/services");
        r.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static("sb_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
        );
        return r;
    }
    let Some(session) = token.and_then(|t| admin.sessions.get(&t)) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no-session",
            "Sign in first: changes need a console session (run `switchboard-directory --key ADMIN.pem console`).",
        );
    };
    let csrf = form.get("csrf").map(String::as_str).unwrap_or("");
    if !constant_time_eq(csrf, &session.csrf) {
        return refuse(
            StatusCode::FORBIDDEN,
            "bad-csrf",
            "This form is not from your console session; reload the page and try again.",
        );
    }
    let (d, s) = (admin.dir.clone(), session.clone());
    let still_admin = tokio::task::spawn_blocking(move || {
        d.read(&s.zone, |z| {
            z.admins
                .get(&s.admin)
                .is_some_and(|a| a.key.fingerprint() == s.fingerprint)
        })
        .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    if !still_admin {
        return refuse(
            StatusCode::FORBIDDEN,
            "admin-removed",
            "Your admin key is no longer an admin of this zone; nothing was changed.",
        );
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Where to go back to, and what the page says once it is done (named by
    // a fixed id and names the page checks, never free text from the URL).
    let (op, back, done) = match segs.as_slice() {
        ["ui", "hosts", host, action @ ("disable" | "enable")] => (
            Op::SetAvailable {
                host: host.to_string(),
                available: *action == "enable",
            },
            "hosts",
            format!("done={action}&host={}", pages::url_encode(host)),
        ),
        ["ui", "repos", repo, "promote"] => {
            let host = form.get("host").cloned().unwrap_or_default();
            let done = format!(
                "done=promote&repo={}&host={}",
                pages::url_encode(repo),
                pages::url_encode(&host)
            );
            (
                Op::Promote {
                    repo: repo.to_string(),
                    host,
                    force: form.get("force").is_some_and(|v| v == "yes"),
                },
                "repos",
                done,
            )
        }
        ["ui", "repos", repo, action @ ("freeze" | "thaw")] => (
            Op::FreezeRepo {
                repo: repo.to_string(),
                message: (*action == "freeze")
                    .then(|| form.get("message").map(|m| m.trim().to_string()))
                    .map(Option::unwrap_or_default),
            },
            "repos",
            format!("done={action}&repo={}", pages::url_encode(repo)),
        ),
        ["ui", "dbs", db, "promote"] => {
            let host = form.get("host").cloned().unwrap_or_default();
            let done = format!(
                "done=promote&db={}&host={}",
                pages::url_encode(db),
                pages::url_encode(&host)
            );
            (
                Op::PromoteDb {
                    db: db.to_string(),
                    host,
                    force: form.get("force").is_some_and(|v| v == "yes"),
                },
                "dbs",
                done,
            )
        }
        _ => {
            return html(
                StatusCode::NOT_FOUND,
                pages::error_page("No such console action."),
            )
        }
    };
    let by = format!("admin {} (console)", session.admin);
    let zone = session.zone.clone();
    let dir = admin.dir.clone();
    let applied = tokio::task::spawn_blocking(move || dir.apply_by(&zone, op, &by)).await;
    match applied {
        Ok(Ok(serial)) => {
            tracing::info!(zone = %session.zone, admin = %session.admin, serial, path, "console change applied");
            see_other(&format!(
                "/ui/{back}?zone={}&{done}",
                pages::url_encode(&session.zone)
            ))
        }
        Ok(Err(e)) => {
            let status = match &e {
                ApplyError::NotFound(_) => StatusCode::NOT_FOUND,
                ApplyError::Conflict(_) => StatusCode::CONFLICT,
                ApplyError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ApplyError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
                ApplyError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut q = query;
            q.insert("zone".into(), session.zone.clone());
            let ctx = Ctx {
                zone: session.zone.clone(),
                zones: admin.dir.origins(),
                session: Some(session),
                query: q,
            };
            let msg = e.to_string();
            let dir = admin.dir.clone();
            let page = format!("/ui/{back}");
            let body = tokio::task::spawn_blocking(move || {
                pages::page(&dir, &ctx, &page, Some(&msg))
                    .unwrap_or_else(|| pages::error_page(&msg))
            })
            .await
            .unwrap_or_else(|e| pages::error_page(&e.to_string()));
            html(status, body)
        }
        Err(e) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::error_page(&e.to_string()),
        ),
    }
}
