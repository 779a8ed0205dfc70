//! The user-facing listener (`--http`): Conduit (`POST /api/METHOD`), git smart
//! HTTP (`/source/REPO.git/...`), and anything else to the local web backend.
//! Only hosts with the `web` role take user traffic; the rest say so with a 403.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{self, BoxBody};
use crate::outbound::forward;
use crate::outbound::spool::Spooled;
use crate::reply::{check_declared, error, limit_body, plain, spool_refusal, REASON};
use crate::repo::local;
use crate::route::{self, Target};
use crate::sidecar::{Sidecar, MAX_CONDUIT_BODY};

/// Handles one user request from `client`.
pub async fn handle(
    sc: Arc<Sidecar>,
    mut req: Request<Incoming>,
    client: std::net::SocketAddr,
) -> Response<BoxBody> {
    // Headers the client meant for this hop only go no further, whatever the
    // route; then who asked, for the web backend (appended after that, so no
    // client can take it off, as every proxy on the way does).
    forward::drop_connection_listed(req.headers_mut());
    if let Ok(v) = http::HeaderValue::from_str(&client.ip().to_string()) {
        req.headers_mut().append(forward::X_FORWARDED_FOR, v);
    }
    if !sc.me.has_role("web") {
        sc.metrics.request("user", "refused");
        return error(
            StatusCode::FORBIDDEN,
            "not-a-web-host",
            format!(
                "{} (roles: {}) serves cluster traffic only: send user requests to a web host",
                sc.me.host,
                sc.me.roles.join(",")
            ),
        );
    }
    // A body declared too large is refused before any of it is read, whatever
    // the route (Conduit calls have their own, lower, limit as well).
    if let Err(refused) = check_declared(req.headers(), sc.limits.max_body) {
        sc.metrics.request("user", "refused");
        return *refused;
    }
    match route::git_path(req.uri().path(), req.uri().query()) {
        Err(e) => {
            sc.metrics.request("git", "refused");
            return error(e.status(), e.reason(), e.to_string());
        }
        Ok(Some(gp)) => {
            if let Err(refused) = authorize_git(&sc, req.headers(), &gp.repo, gp.access).await {
                sc.metrics.request("git", "refused");
                return refused;
            }
            return git(sc, req, &gp).await;
        }
        Ok(None) => {}
    }
    // The web application's questions about users (`/switchboard/auth/...`) are
    // the sidecar's to ask: a client could otherwise name any user (`ssh::users`).
    if crate::ssh::users::is_auth_path(req.uri().path()) {
        sc.metrics.request("web", "refused");
        return error(
            StatusCode::NOT_FOUND,
            "not-found",
            "/switchboard/auth/ is asked by the sidecar only",
        );
    }
    if req.method() == Method::POST {
        if let Some(method) = req.uri().path().strip_prefix("/api/") {
            let method = method.to_string();
            return conduit(sc, req, &method).await;
        }
    }
    sc.metrics.request("web", "local");
    let (parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body = match limit_body(&parts.headers, body, sc.limits.max_body) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    sc.web_local(
        parts.method,
        pq,
        forward::user_headers(&parts.headers),
        body,
    )
    .await
}

/// Asks the web application whether the user may read or write `repo` over HTTP:
/// `GET {web-backend}/switchboard/auth/git?repository=R&access=read|write` with the
/// user's `Authorization` and `Cookie`. A 2xx admits; anything else goes back to
/// the git client as it is (a 401 with `WWW-Authenticate` makes git ask for
/// credentials). Users are the web application's to know, not the sidecar's.
async fn authorize_git(
    sc: &Sidecar,
    headers: &http::HeaderMap,
    repo: &str,
    access: route::Access,
) -> Result<(), Response<BoxBody>> {
    let Some(base) = &sc.web_backend else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "no-authenticator",
            format!(
                "{} has no --web-backend to authenticate git users over HTTP",
                sc.me.host
            ),
        ));
    };
    let access = match access {
        route::Access::Read => "read",
        route::Access::Write => "write",
    };
    let mut pass = http::HeaderMap::new();
    for name in [http::header::AUTHORIZATION, http::header::COOKIE] {
        for v in headers.get_all(&name) {
            pass.append(name.clone(), v.clone());
        }
    }
    let empty = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|e| match e {})
        .boxed();
    let path = format!("/switchboard/auth/git?repository={repo}&access={access}");
    match sc
        .forwarder
        .local_with(base, Method::GET, &path, pass, empty)
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            tracing::info!(repo, access, status = %r.status(), "git request not authorized by the web application");
            Err(body::stream_back(r))
        }
        Err(e) => Err(error(
            StatusCode::BAD_GATEWAY,
            "web-backend-unreachable",
            e.to_string(),
        )),
    }
}

async fn git(sc: Arc<Sidecar>, req: Request<Incoming>, gp: &route::GitPath) -> Response<BoxBody> {
    let (repo, access) = (gp.repo.as_str(), gp.access);
    let target = match sc.target(repo, access).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(repo, reason = e.reason(), "git request not routed");
            sc.metrics.request("git", "refused");
            return match e {
                route::RouteError::Refused(_) => plain(e.status(), e.reason(), e.to_string()),
                _ => error(e.status(), e.reason(), e.to_string()),
            };
        }
    };
    let (parts, body) = req.into_parts();
    match target {
        Target::Local => {
            sc.metrics.request("git", "local");
            let body = match limit_body(&parts.headers, body, sc.limits.max_body) {
                Ok(b) => b,
                Err(refused) => return *refused,
            };
            local::http(&sc, gp, &parts.method, &parts.headers, body).await
        }
        Target::Peer(peer) => {
            let spooled = match Spooled::read(body, sc.limits.max_body, &sc.spool_dir).await {
                Ok(s) => s,
                Err(e) => return spool_refusal(e),
            };
            let again = spooled.bytes().cloned();
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string();
            tracing::debug!(repo, host = %peer.host, ?access, "forwarding git request");
            let mut result = sc
                .forwarder
                .send(&peer, parts.method.clone(), &pq, &parts.headers, spooled)
                .await;
            // A replica that finds itself behind says so: read from the master instead.
            if let (Ok(r), Some(body)) = (&result, again) {
                if r.headers()
                    .get(REASON)
                    .is_some_and(|v| v == "stale-replica")
                {
                    if let Ok(Target::Peer(master)) =
                        sc.router.repo(repo, route::Access::Write).await
                    {
                        result = sc
                            .forwarder
                            .send(
                                &master,
                                parts.method,
                                &pq,
                                &parts.headers,
                                Spooled::from_bytes(body),
                            )
                            .await;
                    }
                }
            }
            match result {
                Ok(r) => {
                    sc.metrics.request("git", "forwarded");
                    body::stream_back(r)
                }
                Err(e) => {
                    sc.metrics.request("git", "error");
                    error(StatusCode::BAD_GATEWAY, "peer-unreachable", e.to_string())
                }
            }
        }
    }
}

/// Routes a Conduit call: by repository when it names one, else to the web backend.
pub async fn conduit(sc: Arc<Sidecar>, req: Request<Incoming>, method: &str) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let limit = MAX_CONDUIT_BODY.min(sc.limits.max_body);
    if let Err(refused) = check_declared(&parts.headers, limit) {
        return *refused;
    }
    let spooled = match Spooled::read(body, limit, &sc.spool_dir).await {
        Ok(s) => s,
        Err(e) => return spool_refusal(e),
    };
    route_conduit(&sc, method, &parts.headers, spooled).await
}

/// Routes a Conduit call whose body is read (from HTTP, or from stdin over SSH).
pub async fn route_conduit(
    sc: &Sidecar,
    method: &str,
    headers: &http::HeaderMap,
    body: Spooled,
) -> Response<BoxBody> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let repo = body
        .bytes()
        .and_then(|b| route::conduit_repository(method, content_type, b));
    let pq = format!("/api/{method}");
    let target = match &repo {
        Some(r) => {
            let name = match route::repo_name(r) {
                Ok(n) => n,
                Err(e) => return error(e.status(), e.reason(), e.to_string()),
            };
            match sc.target(&name, route::conduit_access(method)).await {
                Ok(t) => t,
                Err(e) => {
                    sc.metrics.request("conduit", "refused");
                    return error(e.status(), e.reason(), e.to_string());
                }
            }
        }
        None if sc.web_backend.is_some() && sc.me.has_role("web") => Target::Local,
        None => match sc.router.conduit().await {
            Ok(p) => Target::Peer(p),
            Err(e) => return error(e.status(), e.reason(), e.to_string()),
        },
    };
    send_conduit(sc, target, Method::POST, &pq, headers, body).await
}

/// Delivers a Conduit call to its target: the local web backend, or a peer, signed.
pub async fn send_conduit(
    sc: &Sidecar,
    target: Target,
    method: Method,
    pq: &str,
    headers: &http::HeaderMap,
    body: Spooled,
) -> Response<BoxBody> {
    match target {
        Target::Local => {
            sc.metrics.request("conduit", "local");
            let headers = forward::user_headers(headers);
            sc.web_local(method, pq, headers, body.into_body()).await
        }
        Target::Peer(peer) => match sc.forwarder.send(&peer, method, pq, headers, body).await {
            Ok(r) => {
                sc.metrics.request("conduit", "forwarded");
                body::stream_back(r)
            }
            Err(e) => {
                sc.metrics.request("conduit", "error");
                error(StatusCode::BAD_GATEWAY, "peer-unreachable", e.to_string())
            }
        },
    }
}
