//! Calls to other hosts: every one signed (RFC 9421, with the body's
//! `Content-Digest`) under a session key with the peer (`session`), or with
//! this host's key (`--cluster-auth ed25519`, or a body too large to resend), over keep-alive HTTP/1.1 connections
//! (`outbound::client`), with the response streamed back as it arrives. And plain
//! calls to this host's own backends (the web application, the directory's
//! feed), with the rules for which of a request's headers go on to them.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use switchboard_proto::sign::{BodyHash, Covered, HmacSigner, SignError, SignatureHeaders, Signer};
use switchboard_proto::time::unix_secs;

use crate::body::BoxBody;
use crate::directory::answers::Peer;
use crate::http1::{connection_tokens, HOP_BY_HOP};
use crate::identity::Identity;
use crate::metrics::SessionCounters;
use crate::outbound::client::{Client, SendError};
use crate::outbound::spool::Spooled;
use crate::session::{OutSession, Sessions};

/// Headers that travel with a forwarded request (hop-by-hop ones never do).
pub const PASS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::USER_AGENT,
    HeaderName::from_static("git-protocol"),
];

/// Takes out the `Connection` header and the headers it names.
pub fn drop_connection_listed(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = connection_tokens(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .into_iter()
    .filter_map(|t| HeaderName::from_bytes(t).ok())
    .collect();
    for name in listed {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
}

/// Whether a user's request header goes on to the local web backend. Every
/// end-to-end header does, except `Host` (the backend gets its own, and the
/// client's as `X-Forwarded-Host`), the length (set anew) and `X-Switchboard-*`
/// (only the sidecar says those) and `Proxy` (httpoxy: CGI would hand it to
/// the backend as `HTTP_PROXY`, which many HTTP clients take as their outbound
/// proxy). Hop-by-hop headers, and those `listed` in
/// `Connection`, never do. Names are compared as CGI sees them (RFC 3875 §4.1.18:
/// any case, `_` for `-`), so `X_Switchboard_Host` is dropped as `X-Switchboard-Host` is:
/// a backend behind CGI or FastCGI would read both as `HTTP_X_SWITCHBOARD_HOST`.
pub fn to_web_backend(name: &[u8], listed: &[&[u8]]) -> bool {
    const OWN: [&str; 4] = ["host", "content-length", "x-forwarded-host", "proxy"];
    const PREFIX: &[u8] = b"x-switchboard-";
    let is = |n: &&str| same_for_cgi(name, n.as_bytes());
    !(HOP_BY_HOP.iter().any(is)
        || OWN.iter().any(is)
        || name
            .get(..PREFIX.len())
            .is_some_and(|p| same_for_cgi(p, PREFIX))
        || listed.iter().any(|t| t.eq_ignore_ascii_case(name)))
}

/// Whether two header names are one CGI meta-variable: equal but for ASCII case
/// and `-` against `_`.
fn same_for_cgi(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.eq_ignore_ascii_case(y) || (matches!(x, b'-' | b'_') && matches!(y, b'-' | b'_'))
        })
}

/// The headers a user's request carries to the local web backend (`to_web_backend`),
/// with the client's `Host` as `X-Forwarded-Host`.
pub fn user_headers(from: &HeaderMap) -> HeaderMap {
    let listed = connection_tokens(
        from.get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut out = HeaderMap::with_capacity(from.len() + 3);
    for (name, v) in from {
        if to_web_backend(name.as_str().as_bytes(), &listed) {
            out.append(name.clone(), v.clone());
        }
    }
    if let Some(v) = from.get(header::CONTENT_LENGTH) {
        out.insert(header::CONTENT_LENGTH, v.clone());
    }
    if let Some(v) = from.get(header::HOST) {
        out.insert(X_FORWARDED_HOST, v.clone());
    }
    out
}

/// The headers a call relayed by another host carries to the local web backend:
/// the end-to-end ones worth passing on (`PASS`) and the length.
pub fn relayed_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(PASS.len() + 3);
    pass_headers(from, &mut out);
    if let Some(v) = from.get(header::CONTENT_LENGTH) {
        out.insert(header::CONTENT_LENGTH, v.clone());
    }
    out
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_SWITCHBOARD_HOST: HeaderName = HeaderName::from_static("x-switchboard-host");

/// Why a call to another host failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot sign the call to {host}: {reason}")]
    Sign { host: String, reason: String },
    #[error("{host} ({addr}) did not answer: {source}")]
    Unreachable {
        host: String,
        addr: String,
        source: SendError,
    },
}

/// Signs and sends calls to peers.
pub struct Forwarder {
    client: Client,
    identity: Arc<Identity>,
    /// Session keys with peers; `None`: every call signed with ed25519.
    sessions: Option<Arc<Sessions>>,
}

/// Copies the end-to-end headers worth passing on.
pub fn pass_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in PASS.iter() {
        for v in from.get_all(name) {
            to.append(name.clone(), v.clone());
        }
    }
}

/// The key a call is signed with.
enum CallSigner<'a> {
    Session(HmacSigner<'a>),
    Host(Signer<'a>),
}

impl Forwarder {
    pub fn new(identity: Arc<Identity>) -> Self {
        Self::with_client(identity, Client::default())
    }

    /// A forwarder sending on `client` (one with the cluster TLS channel, `--cluster-tls`).
    pub fn with_client(identity: Arc<Identity>, client: Client) -> Self {
        Forwarder {
            client,
            identity,
            sessions: None,
        }
    }

    /// A forwarder sending on `client` that signs calls to peers as `sessions`
    /// says (`--cluster-auth`).
    pub fn with_sessions(identity: Arc<Identity>, client: Client, sessions: Arc<Sessions>) -> Self {
        Forwarder {
            sessions: Some(sessions),
            ..Self::with_client(identity, client)
        }
    }

    /// The session to sign a call to `peer` with, if calls are session-signed
    /// and a handshake succeeds; `None`: sign with ed25519.
    pub async fn session_for(&self, peer: &Peer) -> Option<Arc<OutSession>> {
        match &self.sessions {
            Some(s) => s.for_peer(&self.client, peer).await,
            None => None,
        }
    }

    /// Signs a call's headers under `session`, or with this host's key.
    pub fn sign(
        &self,
        session: Option<&OutSession>,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        body: &BodyHash,
    ) -> Result<(), SignError> {
        let now = unix_secs();
        match self.signer(session) {
            CallSigner::Session(s) => s.sign_hashed(method, uri, headers, body, now),
            CallSigner::Host(s) => s.sign_hashed(method, uri, headers, body, now),
        }
    }

    /// [`Self::sign`] for a call written as bytes (the listeners' short way):
    /// the signature's header values for the request `covered` describes.
    pub fn sign_covered(
        &self,
        session: Option<&OutSession>,
        covered: &Covered<'_>,
        body: &BodyHash,
    ) -> Result<SignatureHeaders, SignError> {
        let now = unix_secs();
        match self.signer(session) {
            CallSigner::Session(s) => s.sign_covered(covered, body, now),
            CallSigner::Host(s) => s.sign_covered(covered, body, now),
        }
    }

    /// What signs a call: the session's key, or this host's (counted either way).
    fn signer<'a>(&'a self, session: Option<&'a OutSession>) -> CallSigner<'a> {
        let counters = self.sessions.as_ref().map(|s| s.metrics());
        match session {
            Some(s) => {
                if let Some(c) = counters {
                    SessionCounters::add(&c.sessions.signed_session);
                }
                CallSigner::Session(HmacSigner {
                    key: &s.key.0,
                    keyid: &s.id,
                })
            }
            None => {
                if let Some(c) = counters {
                    SessionCounters::add(&c.sessions.signed_ed25519);
                }
                CallSigner::Host(Signer {
                    key: &self.identity.key,
                    keyid: &self.identity.fingerprint,
                })
            }
        }
    }

    /// After a refused session-signed call: whether the peer did not know the
    /// session (it restarted, or dropped it), so it is dropped here too and the
    /// call goes again under a new one (counted as resent).
    pub fn session_refused(
        &self,
        peer: &Peer,
        session: &OutSession,
        reason: Option<&[u8]>,
    ) -> bool {
        let unknown = reason.is_some_and(|r| r == b"unknown-session" || r == b"session-expired");
        if let (true, Some(s)) = (unknown, &self.sessions) {
            tracing::info!(peer = %peer.host, session = %session.id, "the peer does not know the session; making a new one");
            s.forget(&peer.host, &session.id);
            SessionCounters::add(&s.metrics().sessions.resent);
            return true;
        }
        false
    }

    /// The connections this forwarder sends on (for `client::scope`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends `method path_and_query` to `peer`'s cluster listener, signed. A
    /// session-signed call the peer refuses for an unknown or expired session
    /// goes once more under a new session (its body is in memory; a body
    /// spooled to disk is signed with ed25519, which needs no resend).
    pub async fn send(
        &self,
        peer: &Peer,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Spooled,
    ) -> Result<Response<Incoming>, ForwardError> {
        let uri = Uri::try_from(path_and_query).map_err(|e| ForwardError::Sign {
            host: peer.host.clone(),
            reason: e.to_string(),
        })?;
        let hash = *body.hash();
        let again = body.bytes().cloned();
        let session = match again {
            Some(_) => self.session_for(peer).await,
            None => None,
        };
        let resp = self
            .send_once(
                peer,
                session.as_deref(),
                &method,
                &uri,
                headers,
                &hash,
                body.into_body(),
            )
            .await?;
        if let (Some(s), Some(bytes)) = (&session, again) {
            let reason = resp.headers().get(crate::reply::REASON);
            if resp.status() == http::StatusCode::UNAUTHORIZED
                && self.session_refused(peer, s, reason.map(HeaderValue::as_bytes))
            {
                drop(resp);
                let session = self.session_for(peer).await;
                let body = http_body_util::Full::new(bytes)
                    .map_err(|e| match e {})
                    .boxed();
                return self
                    .send_once(
                        peer,
                        session.as_deref(),
                        &method,
                        &uri,
                        headers,
                        &hash,
                        body,
                    )
                    .await;
            }
        }
        Ok(resp)
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_once(
        &self,
        peer: &Peer,
        session: Option<&OutSession>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        hash: &BodyHash,
        body: BoxBody,
    ) -> Result<Response<Incoming>, ForwardError> {
        let addr = peer.addr.to_string();
        let mut out = HeaderMap::with_capacity(PASS.len() + 6);
        pass_headers(headers, &mut out);
        if let Ok(v) = HeaderValue::from_str(&addr) {
            out.insert(header::HOST, v);
        }
        if hash.len > 0 {
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(hash.len));
        }
        self.sign(session, method, uri, &mut out, hash)
            .map_err(|e| ForwardError::Sign {
                host: peer.host.clone(),
                reason: e.to_string(),
            })?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .body(body)
            .map_err(|e| ForwardError::Sign {
                host: peer.host.clone(),
                reason: e.to_string(),
            })?;
        *req.headers_mut() = out;
        self.client
            .send_peer(&peer.host, &addr, req)
            .await
            .map_err(|source| ForwardError::Unreachable {
                host: peer.host.clone(),
                addr,
                source,
            })
    }

    /// Sends a request to a local backend (unsigned: it is on this host) with
    /// `headers` (`user_headers` or `relayed_headers`) and which host served it.
    /// Neither passes a client's own `X-Switchboard-*` headers, so the backend
    /// may trust this one.
    pub async fn local(
        &self,
        base: &Uri,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        host_tag: Option<HeaderValue>,
        body: BoxBody,
    ) -> Result<Response<Incoming>, ForwardError> {
        if let Some(v) = host_tag {
            headers.insert(X_SWITCHBOARD_HOST, v);
        }
        self.local_with(base, method, path_and_query, headers, body)
            .await
    }

    /// A request to a local backend carrying exactly `headers` (for the auth subrequest).
    pub async fn local_with(
        &self,
        base: &Uri,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: BoxBody,
    ) -> Result<Response<Incoming>, ForwardError> {
        let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
        let bad = |reason: String| ForwardError::Sign {
            host: authority.to_string(),
            reason,
        };
        if base.scheme().is_some_and(|s| *s != http::uri::Scheme::HTTP) {
            return Err(bad(format!(
                "{base} is not an http:// URL: the sidecar speaks plain HTTP to local backends"
            )));
        }
        let uri = Uri::try_from(path_and_query).map_err(|e| bad(e.to_string()))?;
        let mut headers = headers;
        if !headers.contains_key(header::HOST) {
            let value = backend_host(base).map_err(|e| bad(e.to_string()))?;
            headers.insert(header::HOST, value);
        }
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        self.client
            .send(&connect_addr(base), req)
            .await
            .map_err(|source| ForwardError::Unreachable {
                host: authority.to_string(),
                addr: authority.to_string(),
                source,
            })
    }

    /// Plain GET, for the directory's change feed.
    pub async fn get(&self, uri: Uri) -> Result<Response<Incoming>, ForwardError> {
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|e| match e {})
            .boxed();
        self.local_with(&uri, Method::GET, &path, HeaderMap::new(), body)
            .await
    }
}

/// The `Host` a backend at `base` is sent, as hyper's client would: the host, and
/// the port unless it is 80; never userinfo.
pub fn backend_host(base: &Uri) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let host = base.host().unwrap_or_default();
    match base.port_u16() {
        Some(p) if p != 80 => HeaderValue::from_str(&format!("{host}:{p}")),
        _ => HeaderValue::from_str(host),
    }
}

/// Where to connect for `base`: its `host:port`, port 80 when it names none.
pub fn connect_addr(base: &Uri) -> std::borrow::Cow<'_, str> {
    if let Some(a) = base.authority() {
        if a.port().is_some() && !a.as_str().contains('@') {
            return a.as_str().into();
        }
    }
    let host = base.host().unwrap_or("");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = base.port_u16().unwrap_or(80);
    if host.contains(':') {
        format!("[{host}]:{port}").into()
    } else {
        format!("{host}:{port}").into()
    }
}
