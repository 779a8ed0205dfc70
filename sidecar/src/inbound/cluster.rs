//! The cluster listener (`--cluster`): only signed calls from other hosts.
//!
//! Each call is checked before anything acts on it: RFC 9421 signature by the
//! key the directory publishes for its `keyid` (`FPR.key.Z`), the body against
//! its `Content-Digest`, freshness, a fresh nonce, and the calling host marked
//! available. A refusal is a 401 with the reason, logged and counted. An
//! accepted call is served here: the sender already routed it.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use switchboard_proto::session;
use switchboard_proto::sign::{self, Alg, Policy};
use switchboard_proto::time::unix_secs;

use crate::body::BoxBody;
use crate::identity::KeyInfo;
use crate::metrics::SessionCounters;
use crate::outbound::spool::Spooled;
use crate::reply::{check_declared, error, spool_refusal};
use crate::repo::local;
use crate::repo::sync::SyncRequest;
use crate::route;
use crate::session::SessionRefusal;
use crate::sidecar::Sidecar;

/// How long a caller may take to send a signed body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A call the cluster listener will not serve, logged and counted already:
/// what it answers (a 401 with the reason, or a 503 while draining).
pub struct Refused {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl Refused {
    /// The JSON refusal hyper sends, and the connection's end: a caller
    /// refused gets no more calls checked on it (as on the short way).
    pub fn response(self) -> Response<BoxBody> {
        let mut r = error(self.status, self.reason, self.message);
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        r
    }
}

fn refuse(
    sc: &Sidecar,
    reason: &'static str,
    message: String,
    peer: &std::net::SocketAddr,
    keyid: &str,
) -> Refused {
    static LOG: crate::quiet::Budget = crate::quiet::Budget::new();
    if let Some(skipped) = LOG.admit() {
        tracing::warn!(reason, %peer, keyid, error = %message, skipped, "cluster call refused");
    }
    sc.metrics.refusal(reason);
    sc.metrics.request("cluster", "refused");
    Refused {
        status: StatusCode::UNAUTHORIZED,
        reason,
        message,
    }
}

/// A call whose signed headers passed every check but the body's.
pub struct Admitted {
    parsed: sign::ParsedSignature,
    keyid: String,
    pub caller: Arc<KeyInfo>,
    /// Signed under a session key (else with the caller's host key).
    pub session: bool,
}

/// The checks on a call's head, in order, before anything of its body is
/// read: the signature parses; a session call's session is known and its
/// caller still may call, and its tag is good; an ed25519 call's caller may
/// call and its signature is good; the call was signed for this host; its
/// nonce is fresh (and now remembered). Both the hyper path ([`handle`]) and
/// the short way (`inbound::passthrough`) admit calls here.
pub async fn admit(
    sc: &Sidecar,
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    peer: &std::net::SocketAddr,
) -> Result<Admitted, Refused> {
    let parsed = match sign::parse(headers) {
        Ok(p) => p,
        Err(e) => return Err(refuse(sc, e.reason(), e.to_string(), peer, "")),
    };
    let keyid = parsed.keyid().to_string();
    let now = unix_secs();
    let expects_body = headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v != "0")
        || headers.contains_key(http::header::TRANSFER_ENCODING);
    let session = parsed.alg() == Alg::HmacSha256;
    let caller = if session {
        // A session call: the session it names, its caller still allowed to
        // call (checked per call, cached per directory generation), the tag.
        let s = match sc.sessions.incoming(&keyid, now) {
            Ok(s) => s,
            Err(e) => return Err(refuse(sc, e.reason(), e.to_string(), peer, &keyid)),
        };
        let caller = match sc.caller(&s.caller_fpr).await {
            Ok((caller, _)) if caller.host == s.caller_host => caller,
            Ok(_) => {
                sc.sessions.drop_incoming(&keyid);
                let e = SessionRefusal::Unknown(keyid.clone());
                return Err(refuse(sc, e.reason(), e.to_string(), peer, &keyid));
            }
            Err(e) => return Err(refuse(sc, e.reason(), e.to_string(), peer, &keyid)),
        };
        if let Err(e) = parsed.verify_hmac_headers(
            method,
            uri,
            headers,
            expects_body,
            &s.key.0,
            now,
            &Policy::default(),
        ) {
            return Err(refuse(sc, e.reason(), e.to_string(), peer, &keyid));
        }
        caller
    } else {
        // What can be checked without the directory first (the covered
        // components, the times): a stale or incomplete call costs no lookup.
        let base =
            match parsed.signed_base(method, uri, headers, expects_body, now, &Policy::default()) {
                Ok(base) => base,
                Err(e) => return Err(refuse(sc, e.reason(), e.to_string(), peer, &keyid)),
            };
        let (caller, key) = match sc.caller(&keyid).await {
            Ok(c) => c,
            Err(e) => return Err(refuse(sc, e.reason(), e.to_string(), peer, &keyid)),
        };
        match sc.verifier.verify(base, *parsed.signature(), key).await {
            Some(true) => {}
            Some(false) => {
                let e = parsed.bad_signature();
                return Err(refuse(sc, e.reason(), e.to_string(), peer, &keyid));
            }
            None => {
                return Err(Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "shutting-down",
                    message: "the sidecar is shutting down".into(),
                })
            }
        }
        caller
    };
    let authority = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !sc.is_my_authority(authority).await {
        return Err(refuse(
            sc,
            "wrong-host",
            format!(
                "the call was signed for {authority:?}, which is not this host's cluster listener"
            ),
            peer,
            &keyid,
        ));
    }
    if let Err(e) = sc
        .replay
        .check_and_remember(&keyid, parsed.nonce(), parsed.expires(), now)
    {
        return Err(refuse(sc, e.reason(), e.to_string(), peer, &keyid));
    }
    Ok(Admitted {
        parsed,
        keyid,
        caller,
        session,
    })
}

impl Admitted {
    /// The last check, on the body read: its digest is the one signed. Then
    /// the call is accepted (logged and counted).
    pub fn check_body(
        &self,
        sc: &Sidecar,
        headers: &http::HeaderMap,
        body: &sign::BodyHash,
        peer: &std::net::SocketAddr,
        path: &str,
    ) -> Result<(), Refused> {
        if let Err(e) = self.parsed.check_body(headers, body) {
            return Err(refuse(sc, e.reason(), e.to_string(), peer, &self.keyid));
        }
        tracing::debug!(from = %self.caller.host, path, "cluster call accepted");
        sc.metrics.request("cluster", "accepted");
        let verified = match self.session {
            true => &sc.metrics.sessions.verified_session,
            false => &sc.metrics.sessions.verified_ed25519,
        };
        SessionCounters::add(verified);
        Ok(())
    }
}

/// Handles one call on the cluster listener.
pub async fn handle(
    sc: Arc<Sidecar>,
    mut req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<BoxBody> {
    if req.method() == Method::GET && req.uri().path() == "/metrics" {
        let mut r = Response::new(
            http_body_util::Full::new(bytes::Bytes::from(sc.metrics.render()))
                .map_err(|e| match e {})
                .boxed(),
        );
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    // An SSH tunnel answers 101 after the checks; take the upgrade handle first.
    let on_upgrade = req
        .uri()
        .path()
        .starts_with("/ssh/")
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    // Headers first: nothing of the body is read until the signature, freshness,
    // nonce and addressed authority are good.
    let admitted = match admit(&sc, &parts.method, &parts.uri, &parts.headers, &peer).await {
        Ok(a) => a,
        Err(r) => return r.response(),
    };
    // The signed headers are good; a body declared too large is still refused
    // before any of it is read.
    if let Err(refused) = check_declared(&parts.headers, sc.limits.max_body) {
        sc.metrics.request("cluster", "refused");
        return *refused;
    }
    let read = Spooled::read(body, sc.limits.max_body, &sc.spool_dir);
    let spooled = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return spool_refusal(e),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "the body did not arrive in time",
            )
        }
    };
    if let Err(r) =
        admitted.check_body(&sc, &parts.headers, spooled.hash(), &peer, parts.uri.path())
    {
        return r.response();
    }
    let Admitted {
        caller, session, ..
    } = admitted;

    let path = parts.uri.path().to_string();
    if let (Some(on_upgrade), Some(rest)) = (on_upgrade, path.strip_prefix("/ssh/")) {
        let Some((verb, repo)) = rest.split_once('/') else {
            return error(StatusCode::NOT_FOUND, "not-found", "use /ssh/VERB/REPO");
        };
        tracing::info!(from = %caller.host, verb, repo, "SSH session tunnelled here");
        let slot = match sc.take_tunnel(&caller.host) {
            Ok(slot) => slot,
            Err(refused) => {
                tracing::warn!(from = %caller.host, "SSH tunnel refused: too many open");
                sc.metrics.request("cluster", "too-many-tunnels");
                return *refused;
            }
        };
        return crate::outbound::tunnel::accept(sc.clone(), verb, repo, on_upgrade, slot).await;
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    match route::git_path(&path, parts.uri.query()) {
        Err(e) => return error(e.status(), e.reason(), e.to_string()),
        Ok(Some(gp)) => {
            return local::http(&sc, &gp, &parts.method, &parts.headers, spooled.into_body()).await;
        }
        Ok(None) => {}
    }
    if path == session::PATH {
        return handshake(&sc, &caller, session, &parts.method, spooled, &peer);
    }
    if let Some(repo) = path.strip_prefix("/switchboard/sync/") {
        return sync(&sc, &caller.host, repo, &parts.method, spooled).await;
    }
    // Conduit, and the web application's answers about users (`ssh::users`) for
    // a host without a web backend of its own.
    let auth = parts.method == Method::GET && path.starts_with("/switchboard/auth/");
    if path.starts_with("/api/") || auth {
        return sc
            .web_local(
                parts.method,
                &pq,
                crate::outbound::forward::relayed_headers(&parts.headers),
                spooled.into_body(),
            )
            .await;
    }
    error(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no cluster route {path}"),
    )
}

/// `POST /switchboard/session`: a caller's handshake, signed with its host key
/// (a session cannot make another), answered with this host's share, the
/// session id and expiry, signed with this host's key (`session`).
fn handshake(
    sc: &Sidecar,
    caller: &KeyInfo,
    by_session: bool,
    method: &Method,
    body: Spooled,
    peer: &std::net::SocketAddr,
) -> Response<BoxBody> {
    if method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "use POST",
        );
    }
    if by_session {
        return refuse(
            sc,
            "unsupported-algorithm",
            "a session handshake is signed with the host key (alg=\"ed25519\"), not under a session".into(),
            peer,
            &caller.host,
        )
        .response();
    }
    let answer = body
        .bytes()
        .ok_or_else(|| session::HandshakeError::Malformed("the handshake body is too large".into()))
        .and_then(|b| sc.sessions.answer(b, caller));
    match answer {
        Ok(accept) => {
            tracing::debug!(from = %caller.host, session = %accept.session, "session answered");
            let body = serde_json::to_vec(&accept).unwrap_or_default();
            let mut r = Response::new(
                http_body_util::Full::new(bytes::Bytes::from(body))
                    .map_err(|e| match e {})
                    .boxed(),
            );
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            tracing::warn!(from = %caller.host, error = %e, "session handshake refused");
            error(StatusCode::BAD_REQUEST, e.reason(), e.to_string())
        }
    }
}

/// `POST /switchboard/sync/REPO` (`{"master": HOST, "version": N}`): this host's
/// own `ssh-exec` sessions asking for a sync-before-read (`repo::sync`); no
/// other host may ask.
async fn sync(
    sc: &Sidecar,
    caller: &str,
    repo: &str,
    method: &Method,
    body: Spooled,
) -> Response<BoxBody> {
    if caller != sc.me.host {
        return error(
            StatusCode::FORBIDDEN,
            "not-this-host",
            format!("only {} itself may ask it to sync a repository", sc.me.host),
        );
    }
    if method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "use POST",
        );
    }
    let repo = match route::repo_name(repo) {
        Ok(r) => r,
        Err(e) => return error(e.status(), e.reason(), e.to_string()),
    };
    let Some(req) = body
        .bytes()
        .and_then(|b| serde_json::from_slice::<SyncRequest>(b).ok())
        .filter(|r| switchboard_proto::model::validate_label("host", &r.master).is_ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad-body",
            r#"the body is {"master": HOST, "version": N}"#,
        );
    };
    match sc.syncer.for_session(sc, &repo, &req).await {
        Ok(done) => {
            let body = serde_json::to_vec(&done).unwrap_or_default();
            let mut r = Response::new(
                http_body_util::Full::new(bytes::Bytes::from(body))
                    .map_err(|e| match e {})
                    .boxed(),
            );
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, "sync-failed", e.to_string()),
    }
}
