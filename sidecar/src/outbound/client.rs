//! Keep-alive HTTP/1.1 connections to backends and peers (hyper's client), over
//! the one pool (`outbound::pool`), each lent to one inbound connection at a time.
//!
//! A listener's connection task keeps the backend connections its requests used
//! (`lend`), so the next request on it goes out on the same one without touching
//! the shared pool: no lock, no map lookup, no checkout per request. When the
//! inbound connection ends, its backend connections go back to the pool for the
//! next one; calls made outside a listener (the change feed) use the pool directly.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::body::BoxBody;
use crate::outbound::pool::{self, ConnectError, Pool, Reusable};
use crate::tls::ClusterTls;

/// Why a request could not be sent, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Backend connections one inbound connection keeps between its requests.
const MAX_LENT: usize = 4;

tokio::task_local! {
    static LENT: RefCell<Lent>;
}

/// The backend connections one inbound connection holds, each with when it was
/// last handed back; back to the pool on drop, keeping that time.
struct Lent {
    pool: Arc<Pool<SendRequest<BoxBody>>>,
    conns: Vec<(Arc<str>, SendRequest<BoxBody>, Instant)>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        for (addr, s, since) in self.conns.drain(..) {
            self.pool.put(addr, s, since);
        }
    }
}

/// Sends requests over pooled keep-alive connections (a handle: clones share the pool).
/// With `--cluster-tls`, calls to peers (`send_peer`) go over TLS connections,
/// pooled apart from plain ones, per peer host and address.
#[derive(Clone, Default)]
pub struct Client {
    pool: Arc<Pool<SendRequest<BoxBody>>>,
    tls: Option<Arc<ClusterTls>>,
}

impl<B: 'static> Reusable for SendRequest<B> {
    fn usable(&self) -> bool {
        self.is_ready()
    }

    fn closed(&self) -> bool {
        self.is_closed()
    }

    fn busy(&self) -> bool {
        !self.is_ready() && !self.is_closed()
    }
}

/// Runs `serve` (one inbound connection) with its own backend connections.
pub fn scope<F: Future>(client: &Client, serve: F) -> impl Future<Output = F::Output> {
    LENT.scope(
        RefCell::new(Lent {
            pool: client.pool.clone(),
            conns: Vec::new(),
        }),
        serve,
    )
}

impl Client {
    /// A client whose calls to peers go over TLS (`--cluster-tls`) when `tls` is set.
    pub fn new(tls: Option<Arc<ClusterTls>>) -> Self {
        Client {
            pool: Arc::default(),
            tls,
        }
    }

    /// The cluster TLS channel, when `--cluster-tls` is on.
    pub fn tls(&self) -> Option<&Arc<ClusterTls>> {
        self.tls.as_ref()
    }

    /// Sends `req` to peer `host`'s cluster listener at `addr`: over TLS pinned
    /// to `host`'s key with `--cluster-tls`, else as `send`.
    pub async fn send_peer(
        &self,
        host: &str,
        addr: &str,
        req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, SendError> {
        self.send_peer_on(host, addr, req, true).await
    }

    /// [`Self::send_peer`] on a new connection (after a kept one died under a call).
    pub async fn send_peer_fresh(
        &self,
        host: &str,
        addr: &str,
        req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, SendError> {
        self.send_peer_on(host, addr, req, false).await
    }

    async fn send_peer_on(
        &self,
        host: &str,
        addr: &str,
        req: Request<BoxBody>,
        reuse: bool,
    ) -> Result<Response<Incoming>, SendError> {
        match &self.tls {
            None => {
                let resp = self.send_on(addr, None, req, reuse).await?;
                let reason = resp.headers().get(crate::reply::REASON);
                warn_if_tls_required(
                    host,
                    addr,
                    resp.status().as_u16(),
                    reason.map(|v| v.as_bytes()),
                );
                Ok(resp)
            }
            Some(tls) => {
                // Never the key of a plain connection (`host:port`).
                let key = format!("tls {host} {addr}");
                self.send_on(&key, Some((tls, host, addr)), req, reuse)
                    .await
            }
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` (`host:port`).
    pub async fn send(
        &self,
        addr: &str,
        req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, SendError> {
        self.send_on(addr, None, req, true).await
    }

    /// Sends `req` on a connection pooled under `key` (unless not `reuse`), made
    /// to `addr` (plain) or by `tls` (to `host` at `addr`).
    async fn send_on(
        &self,
        addr: &str,
        tls: Option<(&Arc<ClusterTls>, &str, &str)>,
        mut req: Request<BoxBody>,
        reuse: bool,
    ) -> Result<Response<Incoming>, SendError> {
        // A pooled connection the peer closed under us gives the request back
        // unsent: try once more on a fresh connection.
        let mut fresh = !reuse;
        loop {
            let kept = if fresh { None } else { self.take(addr) };
            let (key, mut sender) = match kept {
                Some(x) => x,
                None => {
                    fresh = true;
                    let sender = match tls {
                        None => connect(addr).await?,
                        Some((tls, host, to)) => connect_tls(tls, host, to).await?,
                    };
                    (Arc::from(addr), sender)
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
                    _ => return Err(SendError::Http(e.into_error())),
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
                    .retain(|(_, s, since)| !s.is_closed() && pool::fresh(*since, now));
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
        let idle = self.pool.take(addr)?;
        Some((idle.addr, idle.conn))
    }

    /// Keeps `sender` for this inbound connection's next request, else pools it.
    /// Its idle time counts from now (its answer may still be streaming, so the
    /// connection goes idle later: the limit errs early).
    fn give_back(&self, addr: Arc<str>, sender: SendRequest<BoxBody>) {
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
            self.pool.put(addr, s, now);
        }
    }
}

/// Says so when a peer's plain cluster listener answer is its refusal to
/// speak plain HTTP (`421`, `tls-required`): it has `--cluster-tls`, this host not.
pub fn warn_if_tls_required(host: &str, addr: &str, status: u16, reason: Option<&[u8]>) {
    if status == 421 && reason == Some(crate::tls::TLS_REQUIRED.as_bytes()) {
        tracing::warn!(peer = host, %addr, "{host} speaks TLS on its cluster listener (--cluster-tls) and this host does not: turn --cluster-tls on here too");
    }
}

async fn connect_tls(
    tls: &ClusterTls,
    host: &str,
    addr: &str,
) -> Result<SendRequest<BoxBody>, SendError> {
    let stream = pool::connect(addr).await?;
    let stream = tls
        .connect(host, addr, stream)
        .await
        .map_err(ConnectError::from)?;
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "peer connection ended");
        }
    });
    Ok(sender)
}

async fn connect(addr: &str) -> Result<SendRequest<BoxBody>, SendError> {
    let stream = pool::connect(addr).await?;
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}
