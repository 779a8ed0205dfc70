//! Keep-alive HTTP/1.1 connections to backends and peers, each lent to one inbound
//! connection at a time.
//!
//! A listener's connection task keeps the backend connections its requests used
//! (`lend`), so the next request on it goes out on the same one without touching
//! the shared pool: no lock, no map lookup, no checkout per request. When the
//! inbound connection ends, its backend connections go back to the pool for the
//! next one; calls made outside a listener (the change feed) use the pool directly.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::outbound::forward::BoxBody;

/// How long a connection may sit idle in the pool: below the 30 s a listener waits
/// for the next request (server.rs), so the pool drops a connection before the
/// peer does instead of racing the peer's close with a new request.
const IDLE: Duration = Duration::from_secs(20);
/// Idle connections kept per address: as many as callers may need at once, so
/// that load does not close and reopen them.
const MAX_IDLE: usize = 1024;
/// Backend connections one inbound connection keeps between its requests.
const MAX_LENT: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

tokio::task_local! {
    static LENT: RefCell<Lent>;
}

/// The backend connections one inbound connection holds, each with when it was
/// last handed back; back to the pool on drop, keeping that time.
struct Lent {
    pool: Arc<Pool>,
    conns: Vec<(Arc<str>, SendRequest<BoxBody>, Instant)>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        for (addr, s, since) in self.conns.drain(..) {
            self.pool.put(addr, s, since);
        }
    }
}

/// A pooled connection and when it went idle.
type Idle = (Instant, SendRequest<BoxBody>);

/// The shared pool of idle connections, by `host:port`.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>>>,
}

/// Runs `serve` (one inbound connection) with its own backend connections.
pub fn scope<F: Future>(pool: Arc<Pool>, serve: F) -> impl Future<Output = F::Output> {
    LENT.scope(
        RefCell::new(Lent {
            pool,
            conns: Vec::new(),
        }),
        serve,
    )
}

impl Pool {
    /// Sends `req` (origin-form URI, `Host` set) to `addr` (`host:port`).
    pub async fn send(
        self: &Arc<Self>,
        addr: &str,
        mut req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, String> {
        // A pooled connection the peer closed under us gives the request back
        // unsent: try once more on a fresh connection.
        let mut fresh = false;
        loop {
            let kept = if fresh { None } else { self.take(addr) };
            let (key, mut sender) = match kept {
                Some(x) => x,
                None => {
                    fresh = true;
                    (Arc::from(addr), connect(addr).await?)
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.give_back(key, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if !fresh => {
                        req = r;
                        fresh = true;
                    }
                    _ => return Err(e.into_error().to_string()),
                },
            }
        }
    }

    /// A ready connection to `addr` idle for less than `IDLE`: this inbound
    /// connection's own, else the pool's.
    fn take(&self, addr: &str) -> Option<(Arc<str>, SendRequest<BoxBody>)> {
        let now = Instant::now();
        let mine = LENT
            .try_with(|l| {
                let mut l = l.borrow_mut();
                l.conns
                    .retain(|(_, s, since)| !s.is_closed() && now.duration_since(*since) < IDLE);
                let i = l
                    .conns
                    .iter()
                    .position(|(a, s, _)| &**a == addr && s.is_ready())?;
                let (a, s, _) = l.conns.swap_remove(i);
                Some((a, s))
            })
            .ok()
            .flatten();
        if mine.is_some() {
            return mine;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let key = idle.get_key_value(addr)?.0.clone();
        let list = idle.get_mut(addr)?;
        while let Some((since, s)) = list.pop() {
            if s.is_ready() && now.duration_since(since) < IDLE {
                return Some((key.clone(), s));
            }
        }
        None
    }

    /// Keeps `sender` for this inbound connection's next request, else pools it.
    /// Its idle time counts from now (its answer may still be streaming, so the
    /// connection goes idle later: the limit errs early).
    fn give_back(self: &Arc<Self>, addr: Arc<str>, sender: SendRequest<BoxBody>) {
        let now = Instant::now();
        let mut sender = Some(sender);
        let _ = LENT.try_with(|l| {
            let mut l = l.borrow_mut();
            if l.conns.len() < MAX_LENT {
                if let Some(s) = sender.take() {
                    l.conns.push((addr.clone(), s, now));
                }
            }
        });
        if let Some(s) = sender {
            self.put(addr, s, now);
        }
    }

    /// Pools `sender`, idle since `since`.
    fn put(&self, addr: Arc<str>, sender: SendRequest<BoxBody>, since: Instant) {
        let now = Instant::now();
        if sender.is_closed() || now.duration_since(since) >= IDLE {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        list.retain(|(since, s)| !s.is_closed() && now.duration_since(*since) < IDLE);
        if list.len() < MAX_IDLE {
            list.push((since, sender));
        }
    }
}

async fn connect(addr: &str) -> Result<SendRequest<BoxBody>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}
