//! The short way for plain web traffic on the user listener (`--http`).
//!
//! Most requests a web host sees are pages and assets for its own web backend:
//! no routing, no signature, a small body or none. For those, this module reads
//! the request head with `httparse`, writes it to a kept-alive backend connection
//! with the same headers `forward::user_headers` passes, and copies the answer
//! back as it comes, framing and all, without building a `Request`, a `HeaderMap`
//! or a body channel. Anything else (git, Conduit, an upgrade, a chunked or large
//! request body, `Expect`, HTTP/1.0, a head `httparse` refuses or one that is
//! merely unusual) hands the connection, with what was read of it, to hyper and
//! `user::handle` for good, so every rule and refusal lives in one place.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::uri::PathAndQuery;
use http::{StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::outbound::forward::{self, HOP_BY_HOP};
use crate::route;
use crate::sidecar::Sidecar;

/// The longest a client may take to send a request head, or stay idle between
/// requests (as hyper's `header_read_timeout` on the other listeners).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a backend connection may sit idle before it is dropped (`conns::IDLE`).
const IDLE: Duration = Duration::from_secs(20);
/// The largest request body taken this way; larger ones go through hyper.
const MAX_BODY: usize = 64 * 1024;
/// The largest head read this way, either direction.
const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed this way; a request with more goes through hyper.
const MAX_HEADERS: usize = 64;
/// Idle backend connections kept for the next client connection.
const MAX_IDLE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The short way to one host's web backend.
pub struct Passthrough {
    sc: Arc<Sidecar>,
    /// `host:port` to connect to.
    addr: String,
    /// The backend's authority, for messages.
    authority: String,
    /// `Host: ...\r\n` for the backend.
    host_line: Vec<u8>,
    /// `X-Switchboard-Host: ...\r\n`.
    tag_line: Vec<u8>,
    idle: Mutex<Vec<(Instant, TcpStream)>>,
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

/// How a response body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A kept-alive backend connection and what was read from it.
struct Backend {
    stream: TcpStream,
    buf: BytesMut,
    since: Instant,
}

/// Why an exchange with the backend failed.
enum Failed {
    /// Before anything reached the client: it gets a 502 and the connection goes on.
    Early(String),
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
            addr: forward::connect_addr(base).into_owned(),
            authority: base.authority().map(|a| a.to_string()).unwrap_or_default(),
            host_line,
            tag_line,
            idle: Mutex::new(Vec::new()),
            sc,
        }))
    }

    /// Serves `client` until it closes, or until a request needs hyper.
    pub async fn connection(&self, mut client: TcpStream, peer: std::net::SocketAddr) -> Done {
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
                match read_by(&mut client, &mut buf, timer.as_mut(), active).await {
                    Ok(0) | Err(_) => return self.finish(backend, Done::Closed),
                    Ok(_) => {}
                }
            };
            let Some(plan) = plan else {
                break Done::Handoff(client, buf);
            };
            while buf.len() < plan.head_len + plan.body_len {
                match read_by(&mut client, &mut buf, timer.as_mut(), active).await {
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
            if b.buf.is_empty() && b.since.elapsed() < IDLE {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.retain(|(since, _)| since.elapsed() < IDLE);
                if idle.len() < MAX_IDLE {
                    idle.push((b.since, b.stream));
                }
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
        {
            return Step::Hand;
        }
        let mut body_len = None;
        let mut host = None;
        let mut close = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = match (body_len, parse_length(h.value)) {
                    (None, Some(n)) if n <= MAX_BODY as u64 && n <= self.sc.limits.max_body => n,
                    _ => return Step::Hand,
                };
                body_len = Some(n as usize);
            } else if name.eq_ignore_ascii_case(b"host") {
                if host.replace(h.value).is_some() {
                    return Step::Hand;
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for t in forward::connection_tokens(std::iter::once(h.value)) {
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
        let listed = forward::connection_tokens(
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
                Err(e) => Err(e.to_string()),
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
                let parsed = self.response_head(&b.buf[..head], plan);
                b.buf.advance(head);
                match parsed {
                    Ok(Some(r)) => break r,
                    Ok(None) => head = read_head(&mut b).await.map_err(Failed::Early)?,
                    Err(why) => return Err(Failed::Early(why.into())),
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
                b.since = Instant::now();
                *kept = Some(b);
            }
            return Ok(keep_client && ended);
        }
    }

    /// This client connection's backend connection, else an idle one, else none.
    fn take(&self, kept: &mut Option<Backend>) -> Option<Backend> {
        if let Some(b) = kept.take() {
            if b.since.elapsed() < IDLE && alive(&b.stream) {
                return Some(b);
            }
        }
        loop {
            let (since, stream) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if since.elapsed() < IDLE && alive(&stream) {
                return Some(Backend {
                    stream,
                    buf: BytesMut::with_capacity(8 * 1024),
                    since,
                });
            }
        }
    }

    async fn connect(&self) -> Result<Backend, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(Backend {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            since: Instant::now(),
        })
    }

    /// The client's copy of a backend's response head, and how its body ends;
    /// none for an interim (1xx) answer.
    fn response_head(&self, head: &[u8], plan: &Plan) -> Result<Option<Response>, &'static str> {
        const BAD: &str = "an answer that is not HTTP/1.1";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS * 2];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(head).map_err(|_| BAD)?;
        let code = resp.code.ok_or(BAD)?;
        if code == 101 {
            return Err("a protocol switch nobody asked for");
        }
        if (100..200).contains(&code) {
            return Ok(None);
        }
        let listed = forward::connection_tokens(
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .map(|h| h.value),
        );
        let backend_close =
            resp.version != Some(1) || listed.iter().any(|t| t.eq_ignore_ascii_case(b"close"));
        // Repeated lengths, in one field or several, must agree (RFC 9112 §6.3).
        let mut lengths = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(|v| parse_length(v.trim_ascii()));
        let length = match lengths.next() {
            None => None,
            Some(first) => {
                let n = first.ok_or(BAD)?;
                if lengths.any(|l| l != Some(n)) {
                    return Err(BAD);
                }
                Some(n)
            }
        };
        let coding = resp
            .headers
            .iter()
            .rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value);
        let framing = if plan.head_method || code == 204 || code == 304 {
            Framing::Empty
        } else if let Some(te) = coding {
            let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let mut out = Vec::with_capacity(head.len() + 32);
        out.extend_from_slice(format!("HTTP/1.1 {code} ").as_bytes());
        out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            // The framing goes through as it is, whatever `Connection` lists; a
            // length beside a coding does not (RFC 9112 §6.1).
            let framing_header = name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"content-length");
            let hop = if framing_header {
                coding.is_some() && name.eq_ignore_ascii_case(b"content-length")
            } else {
                HOP_BY_HOP
                    .iter()
                    .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
                    || listed.iter().any(|t| t.eq_ignore_ascii_case(name))
            };
            if !hop {
                push_header(&mut out, name, h.value);
            }
        }
        Ok(Some(Response {
            head: out,
            framing,
            // A backend that sends both a coding and a length is not trusted to
            // frame the next answer either.
            reuse: !backend_close
                && framing != Framing::UntilClose
                && !(coding.is_some() && length.is_some()),
        }))
    }
}

/// A response head as the client gets it (without the blank line).
struct Response {
    head: Vec<u8>,
    framing: Framing,
    /// The backend's connection may carry the next request.
    reuse: bool,
}

enum Step {
    /// The head is not all here yet.
    Need,
    /// hyper's, from here on.
    Hand,
    Go(Plan),
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether an idle connection is still open: nothing to read, not closed.
fn alive(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Reads more of the client's request. The time limit counts from `active` (the
/// last request's end); the timer is only moved when it fires early, so a busy
/// connection does not touch it per request.
async fn read_by(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    mut timer: Pin<&mut tokio::time::Sleep>,
    active: Instant,
) -> io::Result<usize> {
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
        }
    }
}

/// Reads until `b.buf` holds a whole response head; its length.
async fn read_head(b: &mut Backend) -> Result<usize, String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS * 2];
        match httparse::Response::new(&mut headers).parse(&b.buf) {
            Ok(httparse::Status::Complete(n)) => return Ok(n),
            Ok(httparse::Status::Partial) if b.buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("a response head over 64 KiB".into()),
            Err(e) => return Err(format!("a response that is not HTTP: {e}")),
        }
        match b.stream.read_buf(&mut b.buf).await {
            Ok(0) => return Err("the connection closed before an answer".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
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

/// The same JSON refusal as `sidecar::error`, as bytes on the wire.
/// (Without the body for HEAD, as hyper does.)
fn error_page(status: StatusCode, reason: &str, message: &str, plan: &Plan) -> Vec<u8> {
    let body = serde_json::json!({"error": message, "reason": reason}).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{}: {reason}\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        crate::sidecar::REASON,
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

/// Finds where a chunked body ends (RFC 9112 §7.1), fed its bytes as they come.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    /// How many of `bytes` belong to the body, and whether the body ends there.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + d;
                        Size
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => Extension,
                    b'\r' if self.digits > 0 => SizeLf,
                    _ => return Err("bad chunk size"),
                },
                Extension => match b {
                    b'\r' => SizeLf,
                    b'\n' => return Err("bare LF in a chunk extension"),
                    _ => Extension,
                },
                SizeLf if b == b'\n' => {
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                Data => {
                    let n = self.size.min((bytes.len() - i) as u64);
                    self.size -= n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => {
                    self.digits = 0;
                    Size
                }
                TrailerStart if b == b'\r' => EndLf,
                TrailerStart | Trailer if b != b'\r' && b != b'\n' => Trailer,
                Trailer if b == b'\r' => TrailerLf,
                TrailerLf if b == b'\n' => TrailerStart,
                EndLf if b == b'\n' => {
                    self.state = Done;
                    return Ok((i + 1, true));
                }
                Done => return Ok((i, true)),
                _ => return Err("bad chunked framing"),
            };
            i += 1;
        }
        Ok((i, self.state == Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<(usize, bool), &'static str> {
        Chunked::default().feed(body)
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let end = body.len() - b"GET / HTTP/1.1".len();
        assert_eq!(whole(body), Ok((end, true)));
        // Fed a byte at a time, it ends at the same byte.
        let mut c = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            let (n, done) = c.feed(std::slice::from_ref(b)).expect("valid");
            if done {
                assert_eq!((i + 1, n), (end, 1));
                break;
            }
            assert_eq!(n, 1, "byte {i} belongs to the body");
        }
        assert_eq!(whole(b"0\r\n\r\n"), Ok((5, true)));
        assert_eq!(whole(b"A\r\n0123456789\r\n"), Ok((15, false)));
    }

    #[test]
    fn bad_chunked_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello",
            b"5\r\nhelloX",
            b"1234567890abcdef0\r\n",
            b"0\r\nX-T: 1\n",
        ] {
            assert!(whole(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1024"), Some(1024));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1 ",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}
