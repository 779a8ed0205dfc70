//! The short way, for the requests each listener sees most: plain web traffic
//! and Conduit calls on the user listener (`--http`), and peers' signed Conduit
//! calls on the cluster listener (`--cluster`).
//!
//! Most requests a web host sees are pages and assets for its own web backend,
//! or Conduit calls with a small body; most calls a host gets from another are
//! those Conduit calls, relayed. For those, this module reads the request head
//! with `httparse`, writes the upstream's request to a kept-alive connection
//! and copies the answer back as it comes, framing and all (`outbound::raw`),
//! without hyper's per-request machinery (a body channel, a connection task).
//!
//! - A page goes to the web backend with the same headers
//!   `outbound::forward::user_headers` passes.
//! - A Conduit call is routed by its body as `inbound::user::route_conduit`
//!   routes it; one for a repository on another host is signed under the
//!   session with that host (`Forwarder::sign`) and sent there, resent once
//!   under a new session if the peer no longer knows the old one.
//! - A peer's call passes the cluster listener's checks
//!   (`inbound::cluster::admit`, then the body's digest) before it goes on to
//!   the web backend with what `forward::relayed_headers` passes.
//!
//! Anything else (git, an upgrade, a chunked or large request body, `Expect`,
//! HTTP/1.0, a head `httparse` refuses or one that is merely unusual, a route
//! that ends in a refusal) hands the connection, with what was read of it, to
//! hyper and the listener's handler for good, so every other rule and refusal
//! lives in one place. A signed call is never handed over once checked: its
//! nonce is spent.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode, Uri};
use switchboard_proto::sign::{BodyHash, Covered};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::directory::answers::Peer;
use crate::http1::{self, push_header, MAX_HEADERS};
use crate::inbound::cluster;
use crate::outbound::client::warn_if_tls_required;
use crate::outbound::forward;
use crate::outbound::pool::{self, Pool, Reusable};
use crate::outbound::raw::{self, Backend, Failed, PeerStream};
use crate::route::{self, Target};
use crate::session::OutSession;
use crate::shutdown::Watch;
use crate::sidecar::Sidecar;

/// The longest a client may take to send a request head, or stay idle between
/// requests (as hyper's `header_read_timeout` on the other listeners).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body taken this way; larger ones go through hyper.
const MAX_BODY: usize = 64 * 1024;
/// The largest request head read this way.
const MAX_HEAD: usize = 64 * 1024;

/// The short way on one listener, to this host's web backend and, from the
/// user listener, to peers.
pub struct Passthrough {
    sc: Arc<Sidecar>,
    side: Side,
    /// This host's web backend, when it has an `http://` one.
    web: Option<WebBackend>,
    /// `X-Switchboard-Host: ...\r\n`.
    tag_line: Vec<u8>,
    /// Idle connections to peers' cluster listeners, by `HOST ADDR`.
    peers: Pool<PeerStream>,
}

/// The local web backend, spoken to as bytes.
struct WebBackend {
    /// `host:port`, to connect to.
    addr: Arc<str>,
    /// Its authority, for messages.
    authority: String,
    /// `Host: ...\r\n` for it.
    host_line: Vec<u8>,
    /// Idle connections, for the next client connection.
    pool: Pool<TcpStream>,
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    User,
    Cluster,
}

/// What the caller does with the connection once the short way is done with it.
pub enum Done<S> {
    /// It is closed, or finished.
    Closed,
    /// hyper takes it from here: the stream and what was read of it.
    Handoff(S, BytesMut),
}

/// One request head, read and checked.
struct Plan {
    /// Head and body length in the client's buffer.
    head_len: usize,
    body_len: usize,
    /// The client said `Connection: close`.
    close: bool,
    /// HEAD: the answer has no body.
    head_method: bool,
    /// Safe to send again on a fresh connection (RFC 9110 §9.2.2).
    idempotent: bool,
    kind: Kind,
}

enum Kind {
    /// A page for the web backend, its request head written.
    Web,
    /// A Conduit call on the user listener (the web backend's request head
    /// written, for when it is served here).
    Conduit(Head),
    /// A peer's call on the cluster listener.
    Cluster(Head),
}

/// A request head as `http` types, for the checks hyper's path shares.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// The upstream connections one client connection keeps between its requests.
#[derive(Default)]
struct Kept {
    web: Option<Backend<TcpStream>>,
    /// With its pool key.
    peer: Option<(Arc<str>, Backend<PeerStream>)>,
}

// A plan is returned once per request and moved once: boxing it would cost an
// allocation per request to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// The head is not all here yet.
    Need,
    /// hyper's, from here on.
    Hand,
    Go(Plan),
}

impl Passthrough {
    /// The short way for `sc`'s user listener, when it has one: a web host
    /// (pages only when it has an `http://` web backend).
    pub fn new(sc: Arc<Sidecar>) -> Option<Arc<Self>> {
        if !sc.me.has_role("web") {
            return None;
        }
        Self::on(sc, Side::User)
    }

    /// The short way for `sc`'s cluster listener, when it has one: a host with
    /// an `http://` web backend to serve peers' Conduit calls.
    pub fn for_cluster(sc: Arc<Sidecar>) -> Option<Arc<Self>> {
        let me = Self::on(sc, Side::Cluster)?;
        me.web.is_some().then_some(me)
    }

    fn on(sc: Arc<Sidecar>, side: Side) -> Option<Arc<Self>> {
        let mut tag_line = b"x-switchboard-host: ".to_vec();
        tag_line.extend_from_slice(HeaderValue::from_str(&sc.me.host).ok()?.as_bytes());
        tag_line.extend_from_slice(b"\r\n");
        Some(Arc::new(Passthrough {
            side,
            web: sc.web_backend.as_ref().and_then(WebBackend::new),
            tag_line,
            peers: Pool::default(),
            sc,
        }))
    }

    /// Serves `client` until it closes, or until a request needs hyper. Once
    /// the drain begins (`open` hears it), the request being read is answered
    /// with `Connection: close`, and an idle connection is closed.
    pub async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut client: S,
        peer: SocketAddr,
        open: &Watch,
    ) -> Done<S> {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut out = Vec::with_capacity(1024);
        let mut kept = Kept::default();
        let forwarded_for = format!("x-forwarded-for: {}\r\n", peer.ip()).into_bytes();
        let timer = tokio::time::sleep(HEAD_TIMEOUT);
        tokio::pin!(timer);
        let mut active = Instant::now();
        let done = loop {
            // A whole head, then its body, in `buf`.
            let plan = loop {
                out.clear();
                match self.plan(&buf, &forwarded_for, &mut out) {
                    Step::Go(p) => break Some(p),
                    Step::Hand => break None,
                    Step::Need if buf.len() >= MAX_HEAD => break None,
                    Step::Need => {}
                }
                // Between requests, the drain closes the connection.
                let stop = buf.is_empty().then_some(open);
                match read_by(&mut client, &mut buf, timer.as_mut(), active, stop).await {
                    Ok(0) | Err(_) => return self.finish(kept, Done::Closed),
                    Ok(_) => {}
                }
            };
            let Some(mut plan) = plan else {
                break Done::Handoff(client, buf);
            };
            // Draining: this request is the connection's last.
            plan.close |= open.is_shutdown();
            // A peer's call: its head is checked before its body is read, as on
            // hyper's path (an unsigned caller gets no work out of its body); a
            // refused one ends the connection.
            let admitted = match (&plan.kind, &self.web) {
                (Kind::Cluster(_), None) => break Done::Handoff(client, buf),
                (Kind::Cluster(head), Some(_)) => {
                    match cluster::admit(&self.sc, &head.method, &head.uri, &head.headers, &peer)
                        .await
                    {
                        Ok(a) => Some(a),
                        Err(r) => {
                            plan.close = true;
                            page(&mut client, r.status, r.reason, &r.message, &plan).await;
                            // What it declared is read and dropped before the close, so the
                            // close does not reset the connection under the answer (a peer
                            // told `unknown-session` must read it to make a new session).
                            while buf.len() < plan.head_len + plan.body_len {
                                match read_by(&mut client, &mut buf, timer.as_mut(), active, None)
                                    .await
                                {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {}
                                }
                            }
                            let _ = client.shutdown().await;
                            break Done::Closed;
                        }
                    }
                }
                _ => None,
            };
            let end = plan.head_len + plan.body_len;
            while buf.len() < end {
                match read_by(&mut client, &mut buf, timer.as_mut(), active, None).await {
                    Ok(0) | Err(_) => return self.finish(kept, Done::Closed),
                    Ok(_) => {}
                }
            }
            let body = &buf[plan.head_len..end];
            let keep = match (&plan.kind, &self.web) {
                (Kind::Web, Some(web)) => {
                    self.sc.metrics.request("web", "local");
                    out.extend_from_slice(body);
                    Self::web(web, &mut kept.web, &out, &plan, &mut client).await
                }
                (Kind::Web, None) => break Done::Handoff(client, buf),
                (Kind::Conduit(head), web) => match (self.route(head, body).await, web) {
                    (None, _) | (Some(Target::Local), None) => break Done::Handoff(client, buf),
                    (Some(Target::Local), Some(web)) => {
                        self.sc.metrics.request("conduit", "local");
                        out.extend_from_slice(body);
                        Self::web(web, &mut kept.web, &out, &plan, &mut client).await
                    }
                    (Some(Target::Peer(to)), _) => {
                        self.signed(&mut kept.peer, &to, head, body, &plan, &mut client)
                            .await
                    }
                },
                (Kind::Cluster(head), web) => {
                    let checked = match (&admitted, web) {
                        (Some(a), Some(web)) => a
                            .check_body(
                                &self.sc,
                                &head.headers,
                                &BodyHash::of(body),
                                &peer,
                                head.uri.path(),
                            )
                            .map(|()| web),
                        // (admitted above whenever there is a web backend)
                        _ => break Done::Closed,
                    };
                    match checked {
                        Ok(web) => {
                            self.relay(web, head, body, &mut out);
                            Self::web(web, &mut kept.web, &out, &plan, &mut client).await
                        }
                        Err(r) => page(&mut client, r.status, r.reason, &r.message, &plan).await,
                    }
                }
            };
            buf.advance(end);
            if !keep {
                let _ = client.shutdown().await;
                break Done::Closed;
            }
            active = Instant::now();
            // One large request does not keep its buffers for the connection's life.
            if buf.is_empty() && buf.capacity() > 16 * 1024 {
                buf = BytesMut::with_capacity(8 * 1024);
            }
            out.shrink_to(16 * 1024);
        };
        self.finish(kept, done)
    }

    /// Puts upstream connections left in a clean state back in the pools.
    fn finish<S>(&self, kept: Kept, done: Done<S>) -> Done<S> {
        if let (Some(w), Some(b)) = (&self.web, kept.web.filter(|b| b.buf.is_empty())) {
            w.pool.put(w.addr.clone(), b.stream, b.since);
        }
        if let Some((key, b)) = kept.peer.filter(|(_, b)| b.buf.is_empty()) {
            self.peers.put(key, b.stream, b.since);
        }
        done
    }

    /// Reads the head at the start of `buf` and, when the short way can take it,
    /// writes the web backend's request head into `out` (a page, or a Conduit
    /// call it may serve).
    fn plan(&self, buf: &[u8], forwarded_for: &[u8], out: &mut Vec<u8>) -> Step {
        // (not zeroed: httparse fills what it returns)
        let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Step::Need,
            Err(_) => return Step::Hand,
        };
        let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
            return Step::Hand;
        };
        if method == "CONNECT" || !path.starts_with('/') {
            return Step::Hand;
        }
        // The same checks, and the same routes, as hyper and the handlers.
        // The head, copied once: the path and header values are views of it.
        let raw = Raw {
            bytes: Bytes::copy_from_slice(&buf[..head_len]),
            base: buf.as_ptr() as usize,
        };
        let Some(pq) = raw
            .part(path.as_bytes())
            .and_then(|p| PathAndQuery::from_maybe_shared(p).ok())
        else {
            return Step::Hand;
        };
        let conduit = method == "POST" && pq.path().starts_with("/api/");
        let taken = match self.side {
            Side::Cluster => conduit,
            Side::User => {
                (conduit || self.web.is_some())
                    && matches!(route::git_path(pq.path(), pq.query()), Ok(None))
                    && !crate::ssh::users::is_auth_path(pq.path())
            }
        };
        if !taken {
            return Step::Hand;
        }
        let mut body_len = None;
        let mut host = None;
        let mut close = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = match (body_len, http1::parse_length(h.value)) {
                    (None, Some(n)) if n <= MAX_BODY as u64 && n <= self.sc.limits.max_body => n,
                    _ => return Step::Hand,
                };
                body_len = Some(n as usize);
            } else if name.eq_ignore_ascii_case(b"host") {
                if host.replace(h.value).is_some() {
                    return Step::Hand;
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for t in http1::connection_tokens(std::iter::once(h.value)) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        return Step::Hand;
                    }
                }
            } else if ["transfer-encoding", "upgrade", "expect"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
            {
                return Step::Hand;
            }
        }
        let plan = |kind| {
            Step::Go(Plan {
                head_len,
                body_len: body_len.unwrap_or(0),
                close,
                head_method: method == "HEAD",
                idempotent: matches!(
                    method,
                    "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
                ),
                kind,
            })
        };
        // A peer's call: checked as it came (hyper would see every header).
        if self.side == Side::Cluster {
            return match head_of(&raw, method, pq, req.headers, &[]) {
                Some(head) => plan(Kind::Cluster(head)),
                None => Step::Hand,
            };
        }
        let listed = http1::connection_tokens(
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .map(|h| h.value),
        );
        if let Some(web) = &self.web {
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            // A Conduit call goes on as `/api/METHOD`, as `user::route_conduit` sends it.
            out.extend_from_slice(if conduit { pq.path() } else { pq.as_str() }.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            out.extend_from_slice(&web.host_line);
            for h in req.headers.iter() {
                if forward::to_web_backend(h.name.as_bytes(), &listed) {
                    push_header(out, h.name.as_bytes(), h.value);
                }
            }
            if let Some(n) = body_len {
                push_header(out, b"content-length", n.to_string().as_bytes());
            }
            if let Some(h) = host {
                push_header(out, b"x-forwarded-host", h);
            }
            out.extend_from_slice(forwarded_for);
            out.extend_from_slice(&self.tag_line);
            out.extend_from_slice(b"\r\n");
        }
        if !conduit {
            return plan(Kind::Web);
        }
        // Headers the client meant for this hop only go no further (`user::handle`).
        match head_of(&raw, method, pq, req.headers, &listed) {
            Some(head) => plan(Kind::Conduit(head)),
            None => Step::Hand,
        }
    }

    /// Where a Conduit call goes (`user::route_conduit`): by the repository it
    /// names, else to this host's web backend. None: hyper says why not.
    async fn route(&self, head: &Head, body: &[u8]) -> Option<Target> {
        let method = head.uri.path().strip_prefix("/api/")?;
        let content_type = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        match route::conduit_repository(method, content_type, body) {
            None if self.web.is_some() => Some(Target::Local),
            // An https:// web backend: hyper's to serve.
            None if self.sc.web_backend.is_some() => None,
            None => self.sc.router.conduit().await.ok().map(Target::Peer),
            Some(repo) => {
                let name = route::repo_name(&repo).ok()?;
                let access = route::conduit_access(method);
                self.sc.target(&name, access).await.ok()
            }
        }
    }

    /// The web backend's request for a peer's call: what `forward::relayed_headers` passes.
    fn relay(&self, web: &WebBackend, head: &Head, body: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        let pq = head.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(pq.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        out.extend_from_slice(&web.host_line);
        for name in forward::PASS.iter() {
            for v in head.headers.get_all(name) {
                push_header(out, name.as_str().as_bytes(), v.as_bytes());
            }
        }
        push_header(out, b"content-length", body.len().to_string().as_bytes());
        out.extend_from_slice(&self.tag_line);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }

    /// Sends `request` to the web backend and copies the answer to `client`; a
    /// 502 if it gives none. Says whether the client's connection goes on.
    async fn web<S: AsyncWrite + Unpin>(
        web: &WebBackend,
        kept: &mut Option<Backend<TcpStream>>,
        request: &[u8],
        plan: &Plan,
        client: &mut S,
    ) -> bool {
        match web.exchange(kept, request, plan, client).await {
            Ok(keep) => keep,
            Err(Failed::Late) => false,
            Err(Failed::Early(reason)) => {
                tracing::debug!(backend = %web.addr, %reason, "web backend did not answer");
                let msg = format!(
                    "{} ({}) did not answer: {reason}",
                    web.authority, web.authority
                );
                page(
                    client,
                    StatusCode::BAD_GATEWAY,
                    "web-backend-unreachable",
                    &msg,
                    plan,
                )
                .await
            }
        }
    }
}

impl WebBackend {
    fn new(base: &Uri) -> Option<Self> {
        if base.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let host = forward::backend_host(base).ok()?;
        let mut host_line = b"host: ".to_vec();
        host_line.extend_from_slice(host.as_bytes());
        host_line.extend_from_slice(b"\r\n");
        Some(WebBackend {
            addr: Arc::from(forward::connect_addr(base)),
            authority: base.authority().map(|a| a.to_string()).unwrap_or_default(),
            host_line,
            pool: Pool::default(),
        })
    }

    async fn exchange<S: AsyncWrite + Unpin>(
        &self,
        kept: &mut Option<Backend<TcpStream>>,
        request: &[u8],
        plan: &Plan,
        client: &mut S,
    ) -> Result<bool, Failed> {
        let mut fresh = false;
        loop {
            let reused = if fresh { None } else { self.take(kept) };
            let mut b = match reused {
                Some(b) => b,
                None => {
                    fresh = true;
                    let stream = pool::connect(&self.addr)
                        .await
                        .map_err(|e| Failed::Early(e.into()))?;
                    Backend::new(stream, std::time::Instant::now())
                }
            };
            // A kept connection the backend closed under us: once more on a fresh
            // one, when nothing came back and the request may be repeated.
            let resp = match raw::send(&mut b, request, plan.head_method).await {
                Ok(r) => r,
                Err(_) if !fresh && !b.answered && plan.idempotent => {
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(Failed::Early(e)),
            };
            let (keep, back) = raw::deliver(b, resp, plan.close, client).await?;
            *kept = back;
            return Ok(keep);
        }
    }

    /// This client connection's backend connection, else an idle one, else none.
    fn take(&self, kept: &mut Option<Backend<TcpStream>>) -> Option<Backend<TcpStream>> {
        if let Some(b) = kept.take() {
            if pool::fresh(b.since, std::time::Instant::now()) && b.stream.usable() {
                return Some(b);
            }
        }
        let idle = self.pool.take(&self.addr)?;
        Some(Backend::new(idle.conn, idle.since))
    }
}

impl Passthrough {
    /// A Conduit call for a repository on `to`: signed (`Forwarder::sign`, a
    /// session key unless the call must be ed25519-signed), sent to its
    /// cluster listener, the answer copied back. As `Forwarder::send`: a call
    /// the peer refuses for an unknown or expired session goes once more,
    /// signed under a new one. A call a kept connection took but got no answer
    /// on (the peer closed it as the call went) goes once more on a fresh
    /// connection as it was, nonce and all: a peer that never read it takes it,
    /// one that did refuses it as replayed rather than acting on it twice.
    async fn signed<S: AsyncWrite + Unpin>(
        &self,
        kept: &mut Option<(Arc<str>, Backend<PeerStream>)>,
        to: &Peer,
        head: &Head,
        body: &[u8],
        plan: &Plan,
        client: &mut S,
    ) -> bool {
        let f = &self.sc.forwarder;
        let hash = BodyHash::of(body);
        // The pool's key, "HOST ADDR", and the address it ends with.
        let key: Arc<str> = Arc::from(format!("{} {}", to.host, to.addr));
        let addr = &key[to.host.len() + 1..];
        let mut session = f.session_for(to).await;
        let mut resent = false;
        let mut fresh = false;
        let mut request = None;
        let failed = loop {
            let bytes = match request.take() {
                Some(r) => r,
                None => match self.signed_request(session.as_deref(), head, addr, body, &hash) {
                    Ok(r) => r,
                    Err(e) => break format!("cannot sign the call to {}: {e}", to.host),
                },
            };
            let reused = if fresh {
                None
            } else {
                self.take_peer(kept, &key)
            };
            let mut b = match reused {
                Some(b) => b,
                None => {
                    fresh = true;
                    match self.connect_peer(to, addr).await {
                        Ok(b) => b,
                        Err(e) => break format!("{} ({addr}) did not answer: {e}", to.host),
                    }
                }
            };
            let resp = match raw::send(&mut b, &bytes, false).await {
                Ok(r) => r,
                // A kept connection the peer closed as the call went out (an
                // idle close): the same bytes once more on a fresh one.
                Err(_) if !fresh && !b.answered => {
                    request = Some(bytes);
                    fresh = true;
                    continue;
                }
                Err(e) => break format!("{} ({addr}) did not answer: {e}", to.host),
            };
            if let (false, Some(s), 401) = (resent, &session, resp.code) {
                if f.session_refused(to, s, resp.reason.as_deref()) {
                    resent = true;
                    if resp.reuse && raw::skip_body(&mut b, resp.framing).await {
                        b.since = std::time::Instant::now();
                        self.keep_peer(kept, key.clone(), b);
                    }
                    session = f.session_for(to).await;
                    continue;
                }
            }
            warn_if_tls_required(&to.host, addr, resp.code, resp.reason.as_deref());
            self.sc.metrics.request("conduit", "forwarded");
            return match raw::deliver(b, resp, plan.close, client).await {
                Ok((keep, back)) => {
                    if let Some(b) = back {
                        self.keep_peer(kept, key, b);
                    }
                    keep
                }
                Err(_) => false,
            };
        };
        self.sc.metrics.request("conduit", "error");
        tracing::debug!(peer = %to.host, error = %failed, "peer did not answer");
        page(
            client,
            StatusCode::BAD_GATEWAY,
            "peer-unreachable",
            &failed,
            plan,
        )
        .await
    }

    /// The call to a peer as bytes: `POST /api/METHOD`, the headers a
    /// forwarded call carries (`forward::PASS`), `Host` the peer's address,
    /// signed, and the body.
    fn signed_request(
        &self,
        session: Option<&OutSession>,
        head: &Head,
        addr: &str,
        body: &[u8],
        hash: &BodyHash,
    ) -> Result<Vec<u8>, String> {
        let path = head.uri.path();
        let covered = Covered {
            method: "POST",
            authority: addr,
            path,
            query: None,
        };
        let signed = self
            .sc
            .forwarder
            .sign_covered(session, &covered, hash)
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(1024 + body.len());
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        // What `forward::pass_headers` passes, in its order.
        for name in forward::PASS.iter() {
            for v in head.headers.get_all(name) {
                push_header(&mut out, name.as_str().as_bytes(), v.as_bytes());
            }
        }
        push_header(&mut out, b"host", addr.as_bytes());
        if hash.len > 0 {
            push_header(&mut out, b"content-length", hash.len.to_string().as_bytes());
        }
        if let Some(d) = &signed.content_digest {
            push_header(&mut out, b"content-digest", d.as_bytes());
        }
        push_header(
            &mut out,
            b"signature-input",
            signed.signature_input.as_bytes(),
        );
        push_header(&mut out, b"signature", signed.signature.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        Ok(out)
    }

    /// This client connection's connection to the peer, else an idle one, else none.
    fn take_peer(
        &self,
        kept: &mut Option<(Arc<str>, Backend<PeerStream>)>,
        key: &Arc<str>,
    ) -> Option<Backend<PeerStream>> {
        if let Some((k, b)) = kept.take() {
            if k == *key {
                if pool::fresh(b.since, std::time::Instant::now()) && b.stream.usable() {
                    return Some(b);
                }
            } else if b.buf.is_empty() {
                // Another peer's: back to the pool for whoever calls it next.
                self.peers.put(k, b.stream, b.since);
            }
        }
        let idle = self.peers.take(key)?;
        Some(Backend::new(idle.conn, idle.since))
    }

    /// Keeps `b` for this client connection's next call; one it kept for
    /// another peer goes back to the pool.
    fn keep_peer(
        &self,
        kept: &mut Option<(Arc<str>, Backend<PeerStream>)>,
        key: Arc<str>,
        b: Backend<PeerStream>,
    ) {
        if let Some((k, old)) = kept.replace((key, b)) {
            if old.buf.is_empty() {
                self.peers.put(k, old.stream, old.since);
            }
        }
    }

    /// A new connection to `to`'s cluster listener: TLS pinned to its key with
    /// `--cluster-tls` (`tls::ClusterTls::connect`).
    async fn connect_peer(
        &self,
        to: &Peer,
        addr: &str,
    ) -> Result<Backend<PeerStream>, pool::ConnectError> {
        let stream = pool::connect(addr).await?;
        let stream = match self.sc.forwarder.client().tls() {
            None => PeerStream::Plain(stream),
            Some(tls) => PeerStream::Tls(Box::new(tls.connect(&to.host, addr, stream).await?)),
        };
        Ok(Backend::new(stream, std::time::Instant::now()))
    }
}

/// A request head as read, and where it lay in the read buffer.
struct Raw {
    bytes: Bytes,
    base: usize,
}

impl Raw {
    /// `s`, a part of the head in the read buffer, as a view of the copy.
    fn part(&self, s: &[u8]) -> Option<Bytes> {
        let start = (s.as_ptr() as usize).checked_sub(self.base)?;
        let end = start.checked_add(s.len())?;
        (end <= self.bytes.len()).then(|| self.bytes.slice(start..end))
    }
}

/// A request head as `http` types, without the headers `Connection` lists
/// (none: as it came). None when `http` would not take it (hyper will say why).
fn head_of(
    raw: &Raw,
    method: &str,
    pq: PathAndQuery,
    headers: &[httparse::Header<'_>],
    listed: &[&[u8]],
) -> Option<Head> {
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = h.name.as_bytes();
        if !listed.is_empty()
            && (name.eq_ignore_ascii_case(b"connection")
                || listed.iter().any(|t| t.eq_ignore_ascii_case(name)))
        {
            continue;
        }
        let name = HeaderName::from_bytes(name).ok()?;
        let value = raw.part(h.value)?;
        map.append(name, HeaderValue::from_maybe_shared(value).ok()?);
    }
    Some(Head {
        method,
        uri: Uri::from(pq),
        headers: map,
    })
}

/// Writes a refusal page; whether the connection goes on.
async fn page<S: AsyncWrite + Unpin>(
    client: &mut S,
    status: StatusCode,
    reason: &str,
    message: &str,
    plan: &Plan,
) -> bool {
    let page = error_page(status, reason, message, plan);
    client.write_all(&page).await.is_ok() && client.flush().await.is_ok() && !plan.close
}

/// Reads more of the client's request. The time limit counts from `active` (the
/// last request's end); the timer is only moved when it fires early, so a busy
/// connection does not touch it per request. With `stop`, gives up when the
/// drain begins.
async fn read_by<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    mut timer: Pin<&mut tokio::time::Sleep>,
    active: Instant,
    stop: Option<&Watch>,
) -> io::Result<usize> {
    let stopped = async {
        match stop {
            Some(w) => w.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            r = client.read_buf(buf) => return r,
            () = timer.as_mut() => {
                let due = active + HEAD_TIMEOUT;
                if Instant::now() >= due {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                timer.as_mut().reset(due);
            }
            () = stopped.as_mut() => return Err(io::ErrorKind::ConnectionAborted.into()),
        }
    }
}

/// The same JSON refusal as `reply::error`, as bytes on the wire.
/// (Without the body for HEAD, as hyper does.)
fn error_page(status: StatusCode, reason: &str, message: &str, plan: &Plan) -> Vec<u8> {
    let body = serde_json::json!({"error": message, "reason": reason}).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{}: {reason}\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        crate::reply::REASON,
        body.len()
    )
    .into_bytes();
    if plan.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !plan.head_method {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
