//! What one client can hold of the admin listener: connections (in all and per
//! client address), the size of a request body by route, and how long a body may
//! take to arrive. A change is authenticated from its headers before a byte of
//! its body is read (see `authenticate`), so an unsigned client can hold a
//! connection only for as long as its request head takes (10 s at most); these
//! limits bound what a slow, stuck or hostile signed client holds as well.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Refusal;

/// The largest body of a zone import (a zone of ~100k hosts fits).
pub const MAX_IMPORT_BODY: usize = 64 << 20;

/// The largest body of any other change: JSON of at most a few kilobytes.
pub const MAX_CHANGE_BODY: usize = 64 << 10;

/// A zone import's body may take this many `body_timeout`s in all.
const IMPORT_TIMEOUTS: u32 = 12;

/// How long a client has to send a request head, and to start the next one on a
/// kept-alive connection.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a connection buffers of what it was sent (so the largest request
/// head): what an unsigned client can make the directory hold, for at most
/// `HEAD_TIMEOUT`. hyper's own default is ~400 KiB.
pub const MAX_BUFFER: usize = 64 << 10;

/// Limits of the admin listener (`serve --http-*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 client's /64).
    pub max_per_client: usize,
    /// A change's whole body must arrive within this; a zone import's must keep
    /// arriving (no pause this long) and be complete within 12 times this.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_per_client: 64,
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// How much body a route takes, and how long it may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyRule {
    /// The largest body, in bytes; 0 for reads, which carry none.
    pub cap: usize,
    /// The most time between two pieces of the body (and before the first).
    idle: Duration,
    /// The most time for the whole body.
    total: Duration,
}

/// The longest any change's body may take to arrive (a zone import's).
pub fn longest_body(limits: &Limits) -> Duration {
    limits.body_timeout.saturating_mul(IMPORT_TIMEOUTS)
}

impl BodyRule {
    /// The rule for a request: zone imports are large and may be slow; every
    /// other change is a small JSON body; reads have none.
    pub fn of(method: &Method, path: &str, limits: &Limits) -> Self {
        let t = limits.body_timeout;
        let (cap, total) = match *method {
            Method::PUT if path.starts_with("/v1/zones/") => {
                (MAX_IMPORT_BODY, t.saturating_mul(IMPORT_TIMEOUTS))
            }
            Method::POST | Method::PUT | Method::DELETE => (MAX_CHANGE_BODY, t),
            _ => (0, t),
        };
        BodyRule {
            cap,
            idle: t,
            total,
        }
    }

    /// Whether this is a change (which must be signed).
    pub fn is_change(&self) -> bool {
        self.cap > 0
    }

    /// Refuses a body this route does not take by its declared length alone,
    /// before any of it is read.
    pub fn check_declared(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let declared = match declared_length(headers) {
            Some(n) => n,
            None if headers.contains_key(http::header::TRANSFER_ENCODING) && self.cap == 0 => 1,
            None => 0,
        };
        if declared > self.cap as u64 {
            return Err(too_large(self.cap));
        }
        Ok(())
    }

    /// Reads the body within this rule: 413 past the cap, 408 when it stalls or
    /// takes too long (the connection is then closed, its body unread).
    pub async fn read(&self, mut body: Incoming) -> Result<Bytes, Refusal> {
        let start = tokio::time::Instant::now();
        let end = start + self.total;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let next = (tokio::time::Instant::now() + self.idle).min(end);
            let frame = match tokio::time::timeout_at(next, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => return Ok(Bytes::from(out)),
                Ok(Some(Err(e))) => {
                    return Err(Refusal::bad_request(format!("cannot read the body: {e}")))
                }
                Err(_) => {
                    tracing::warn!(
                        reason = "body-timeout",
                        received = out.len(),
                        secs = start.elapsed().as_secs(),
                        "admin call dropped"
                    );
                    return Err(Refusal::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body-timeout",
                        format!(
                            "the body did not arrive in time ({} bytes in {} s; a change's body must arrive within {} s, a zone import's must not pause for {} s): send the body with the headers",
                            out.len(),
                            start.elapsed().as_secs(),
                            self.idle.as_secs(),
                            self.idle.as_secs()
                        ),
                    ));
                }
            };
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > self.cap {
                    return Err(too_large(self.cap));
                }
                out.extend_from_slice(&data);
            }
        }
    }
}

fn too_large(cap: usize) -> Refusal {
    let what = if cap == 0 {
        "this call takes no body".to_string()
    } else {
        format!("the body is larger than the {cap} bytes this call takes")
    };
    Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", what)
}

/// The `Content-Length` a request declares.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a request says it has a body (so its signature must cover `content-digest`).
pub fn expects_body(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || declared_length(headers).is_some_and(|n| n > 0)
}

/// Who holds the admin connections.
#[derive(Default)]
struct Held {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// The connections open at once, by client address.
#[derive(Default, Clone)]
pub struct Slots(Arc<Mutex<Held>>);

/// A connection's place; given back when the connection ends.
pub struct Slot {
    slots: Slots,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.per_client.remove(&self.client);
            }
        }
    }
}

/// Why a connection gets no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoSlot {
    #[error("too many admin connections open ({0} in all); try again shortly")]
    Total(usize),
    #[error("too many admin connections open from {client} ({limit}); close some and try again")]
    PerClient { client: IpAddr, limit: usize },
}

impl Slots {
    /// A place for a connection from `ip`, or why there is none.
    pub fn take(&self, ip: IpAddr, limits: &Limits) -> Result<Slot, NoSlot> {
        let client = crate::dns::rrl::client(ip);
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mine = s.per_client.get(&client).copied().unwrap_or(0);
        if s.total >= limits.max_connections {
            return Err(NoSlot::Total(limits.max_connections));
        }
        if mine >= limits.max_per_client {
            return Err(NoSlot::PerClient {
                client,
                limit: limits.max_per_client,
            });
        }
        s.total += 1;
        s.per_client.insert(client, mine + 1);
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }
}

/// Refused connections answered at once; more are closed without an answer.
const REFUSING: usize = 64;

/// Answers connections beyond the limits, a few at a time.
#[derive(Clone)]
pub struct Refusals(Arc<tokio::sync::Semaphore>);

impl Default for Refusals {
    fn default() -> Self {
        Refusals(Arc::new(tokio::sync::Semaphore::new(REFUSING)))
    }
}

impl Refusals {
    /// Reads the request head (for a second at most) and answers it 503 with
    /// `message`, so a client learns why; when many are being answered already,
    /// closes the connection at once instead.
    pub fn refuse(&self, stream: tokio::net::TcpStream, why: NoSlot) {
        let Ok(permit) = self.0.clone().try_acquire_owned() else {
            return;
        };
        let message = why.to_string();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |_req| {
                let r = Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too-many-connections",
                    message.clone(),
                );
                async move { Ok::<_, std::convert::Infallible>(super::refusal_response(r)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(1))
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        });
    }
}
