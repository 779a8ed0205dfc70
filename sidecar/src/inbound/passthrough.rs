//! The short way for plain web traffic on the user listener (`--http`).
//!
//! Most requests a web host sees are pages and assets for its own web backend:
//! no routing, no signature, a small body or none. For those, this module reads
//! the request head with `httparse`, writes it to a kept-alive backend connection
//! with the same headers `outbound::forward::user_headers` passes, and copies the answer
//! back as it comes, framing and all, without building a `Request`, a `HeaderMap`
//! or a body channel. Anything else (git, Conduit, an upgrade, a chunked or large
//! request body, `Expect`, HTTP/1.0, a head `httparse` refuses or one that is
//! merely unusual) hands the connection, with what was read of it, to hyper and
//! `inbound::user::handle` for good, so every rule and refusal lives in one place.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::uri::PathAndQuery;
use http::{StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::{self, push_header, Chunked, Framing, MAX_HEADERS};
use crate::outbound::forward;
use crate::outbound::pool::{self, Pool, Reusable};
use crate::route;
use crate::shutdown::Watch;
use crate::sidecar::Sidecar;

/// The longest a client may take to send a request head, or stay idle between
/// requests (as hyper's `header_read_timeout` on the other listeners).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body taken this way; larger ones go through hyper.
const MAX_BODY: usize = 64 * 1024;
/// The largest head read this way, either direction.
const MAX_HEAD: usize = 64 * 1024;

/// The short way to one host's web backend.
pub struct Passthrough {
    sc: Arc<Sidecar>,
    /// `host:port` to connect to.
    addr: Arc<str>,
    /// The backend's authority, for messages.
    authority: String,
    /// `Host: ...\r\n` for the backend.
    host_line: Vec<u8>,
    /// `X-Switchboard-Host: ...\r\n`.
    tag_line: Vec<u8>,
    /// Idle backend connections, for the next client connection.
    pool: Pool<TcpStream>,
}

/// What the caller does with the connection once the short way is done with it.
pub enum Done {
    /// It is closed, or finished.
    Closed,
    /// hyper takes it from here: the stream and what was read of it.
    Handoff(TcpStream, BytesMut),
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
}

/// A kept-alive backend connection, what was read from it, and when it last
/// went idle.
struct Backend {
    stream: TcpStream,
    buf: BytesMut,
    since: std::time::Instant,
}

/// Why the web backend gave no usable answer.
#[derive(Debug, thiserror::Error)]
enum BackendError {
    #[error(transparent)]
    Connect(#[from] pool::ConnectError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the connection closed before an answer")]
    Closed,
    #[error("a response head over 64 KiB")]
    HeadTooLarge,
    #[error("a response that is not HTTP: {0}")]
    NotHttp(httparse::Error),
    #[error("{0}")]
    BadHead(&'static str),
}

/// Why an exchange with the backend failed.
enum Failed {
    /// Before anything reached the client: it gets a 502 and the connection goes on.
    Early(BackendError),
    /// Midway: the client's connection is closed, as the backend's was.
    Late,
}

impl Passthrough {
    /// The short way for `sc`'s user listener, when it has one: a web host with an
    /// `http://` web backend.
    pub fn new(sc: Arc<Sidecar>) -> Option<Arc<Self>> {
        let base: &Uri = sc.web_backend.as_ref()?;
        if !sc.me.has_role("web") || base.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let host = forward::backend_host(base).ok()?;
        let mut host_line = b"host: ".to_vec();
        host_line.extend_from_slice(host.as_bytes());
        host_line.extend_from_slice(b"\r\n");
        let mut tag_line = b"x-switchboard-host: ".to_vec();
        tag_line.extend_from_slice(http::HeaderValue::from_str(&sc.me.host).ok()?.as_bytes());
        tag_line.extend_from_slice(b"\r\n");
        Some(Arc::new(Passthrough {
            addr: Arc::from(forward::connect_addr(base)),
            authority: base.authority().map(|a| a.to_string()).unwrap_or_default(),
            host_line,
            tag_line,
            pool: Pool::default(),
            sc,
        }))
    }

    /// Serves `client` until it closes, or until a request needs hyper. Once
    /// the drain begins (`open` hears it), the request being read is answered
    /// with `Connection: close`, and an idle connection is closed.
    pub async fn connection(
        &self,
        mut client: TcpStream,
        peer: std::net::SocketAddr,
        open: &Watch,
    ) -> Done {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut out = Vec::with_capacity(1024);
        let mut backend: Option<Backend> = None;
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
                    Ok(0) | Err(_) => return self.finish(backend, Done::Closed),
                    Ok(_) => {}
                }
            };
            let Some(mut plan) = plan else {
                break Done::Handoff(client, buf);
            };
            // Draining: this request is the connection's last.
            plan.close |= open.is_shutdown();
            while buf.len() < plan.head_len + plan.body_len {
                match read_by(&mut client, &mut buf, timer.as_mut(), active, None).await {
                    Ok(0) | Err(_) => return self.finish(backend, Done::Closed),
                    Ok(_) => {}
                }
            }
            out.extend_from_slice(&buf[plan.head_len..plan.head_len + plan.body_len]);
            buf.advance(plan.head_len + plan.body_len);
            self.sc.metrics.request("web", "local");

            match self.exchange(&mut backend, &out, &plan, &mut client).await {
                Ok(true) => {}
                Ok(false) | Err(Failed::Late) => {
                    let _ = client.shutdown().await;
                    break Done::Closed;
                }
                Err(Failed::Early(reason)) => {
                    tracing::debug!(backend = %self.addr, %reason, "web backend did not answer");
                    let msg = format!(
                        "{} ({}) did not answer: {reason}",
                        self.authority, self.authority
                    );
                    let page = error_page(
                        StatusCode::BAD_GATEWAY,
                        "web-backend-unreachable",
                        &msg,
                        &plan,
                    );
                    if client.write_all(&page).await.is_err() || plan.close {
                        break Done::Closed;
                    }
                }
            }
            active = Instant::now();
            // One large request does not keep its buffers for the connection's life.
            if buf.is_empty() && buf.capacity() > 16 * 1024 {
                buf = BytesMut::with_capacity(8 * 1024);
            }
            out.shrink_to(16 * 1024);
        };
        self.finish(backend, done)
    }

    /// Puts a backend connection left in a clean state back in the pool.
    fn finish(&self, backend: Option<Backend>, done: Done) -> Done {
        if let Some(b) = backend {
            if b.buf.is_empty() {
                self.pool.put(self.addr.clone(), b.stream, b.since);
            }
        }
        done
    }

    /// Reads the head at the start of `buf` and, when the short way can take it,
    /// writes the backend's request head into `out`.
    fn plan(&self, buf: &[u8], forwarded_for: &[u8], out: &mut Vec<u8>) -> Step {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
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
        // The same checks, and the same routes, as hyper and `user::handle`.
        let Ok(pq) = PathAndQuery::try_from(path) else {
            return Step::Hand;
        };
        if !matches!(route::git_path(pq.path(), pq.query()), Ok(None))
            || (method == "POST" && pq.path().starts_with("/api/"))
            || crate::ssh::users::is_auth_path(pq.path())
        {
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
        let listed = http1::connection_tokens(
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .map(|h| h.value),
        );
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(pq.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        out.extend_from_slice(&self.host_line);
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
        Step::Go(Plan {
            head_len,
            body_len: body_len.unwrap_or(0),
            close,
            head_method: method == "HEAD",
            idempotent: matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
        })
    }

    /// Sends `request` to the backend and copies the answer to `client`. Says
    /// whether the client's connection goes on.
    async fn exchange(
        &self,
        kept: &mut Option<Backend>,
        request: &[u8],
        plan: &Plan,
        client: &mut TcpStream,
    ) -> Result<bool, Failed> {
        let mut fresh = false;
        loop {
            let reused = if fresh { None } else { self.take(kept) };
            let mut b = match reused {
                Some(b) => b,
                None => {
                    fresh = true;
                    self.connect().await.map_err(Failed::Early)?
                }
            };
            // A kept connection the backend closed under us: once more on a fresh
            // one, when nothing came back and the request may be repeated.
            let sent = match b.stream.write_all(request).await {
                Ok(()) => read_head(&mut b).await,
                Err(e) => Err(e.into()),
            };
            let mut head = match sent {
                Ok(h) => h,
                Err(_) if !fresh && b.buf.is_empty() && plan.idempotent => {
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(Failed::Early(e)),
            };
            // Interim answers (1xx) are dropped, as hyper's client does: the short
            // way never asks for one.
            let resp = loop {
                let parsed = http1::response_head(&b.buf[..head], plan.head_method);
                b.buf.advance(head);
                match parsed {
                    Ok(Some(r)) => break r,
                    Ok(None) => head = read_head(&mut b).await.map_err(Failed::Early)?,
                    Err(why) => return Err(Failed::Early(BackendError::BadHead(why))),
                }
            };
            let keep_client = !plan.close && resp.framing != Framing::UntilClose;
            let mut out = resp.head;
            if !keep_client {
                out.extend_from_slice(b"connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            let ended = copy_body(&mut b, resp.framing, out, client).await?;
            if ended && resp.reuse && b.buf.is_empty() {
                b.since = std::time::Instant::now();
                *kept = Some(b);
            }
            return Ok(keep_client && ended);
        }
    }

    /// This client connection's backend connection, else an idle one, else none.
    fn take(&self, kept: &mut Option<Backend>) -> Option<Backend> {
        if let Some(b) = kept.take() {
            if pool::fresh(b.since, std::time::Instant::now()) && b.stream.usable() {
                return Some(b);
            }
        }
        let idle = self.pool.take(&self.addr)?;
        Some(Backend {
            stream: idle.conn,
            buf: BytesMut::with_capacity(8 * 1024),
            since: idle.since,
        })
    }

    async fn connect(&self) -> Result<Backend, BackendError> {
        let stream = pool::connect(&self.addr).await?;
        Ok(Backend {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            since: std::time::Instant::now(),
        })
    }
}

enum Step {
    /// The head is not all here yet.
    Need,
    /// hyper's, from here on.
    Hand,
    Go(Plan),
}

/// Reads more of the client's request. The time limit counts from `active` (the
/// last request's end); the timer is only moved when it fires early, so a busy
/// connection does not touch it per request. With `stop`, gives up when the
/// drain begins.
async fn read_by(
    client: &mut TcpStream,
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

/// Reads until `b.buf` holds a whole response head; its length.
async fn read_head(b: &mut Backend) -> Result<usize, BackendError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS * 2];
        match httparse::Response::new(&mut headers).parse(&b.buf) {
            Ok(httparse::Status::Complete(n)) => return Ok(n),
            Ok(httparse::Status::Partial) if b.buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(BackendError::HeadTooLarge),
            Err(e) => return Err(BackendError::NotHttp(e)),
        }
        match b.stream.read_buf(&mut b.buf).await {
            Ok(0) => return Err(BackendError::Closed),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `head` and the body after it in `b.buf` to the client, reading more
/// from the backend until the body ends. Says whether it ended where its
/// framing said (false: it ended with the backend's connection).
async fn copy_body(
    b: &mut Backend,
    framing: Framing,
    mut out: Vec<u8>,
    client: &mut TcpStream,
) -> Result<bool, Failed> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunked = Chunked::default();
    let mut first = true;
    loop {
        // How much of what is buffered belongs to this body, and whether it ends there.
        let (take, ended) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let n = left.min(b.buf.len() as u64);
                left -= n;
                (n as usize, left == 0)
            }
            Framing::Chunked => chunked.feed(&b.buf).map_err(|_| Failed::Late)?,
            Framing::UntilClose => (b.buf.len(), false),
        };
        let wrote = if first {
            out.extend_from_slice(&b.buf[..take]);
            client.write_all(&out).await
        } else {
            client.write_all(&b.buf[..take]).await
        };
        // Nothing has reached the client only if the first write failed, and
        // then the client is gone: either way its connection ends.
        wrote.map_err(|_| Failed::Late)?;
        first = false;
        b.buf.advance(take);
        if ended {
            return Ok(true);
        }
        match b.stream.read_buf(&mut b.buf).await {
            Ok(0) if framing == Framing::UntilClose => return Ok(false),
            Ok(0) | Err(_) => return Err(Failed::Late),
            Ok(_) => {}
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
