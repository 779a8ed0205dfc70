//! The listeners' accept loop: every listener (user, cluster, loopback) takes
//! HTTP/1.1 connections here and hands each request to its handler, or first to
//! the short way (`passthrough`) on the user and cluster listeners.
//!
//! On the drain signal (`shutdown`) a listener stops accepting and closes its
//! socket, so a new connection is refused; each open connection finishes the
//! request it is serving and closes (an idle keep-alive one closes at once).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

use crate::inbound::passthrough::{Done, Passthrough};
use crate::outbound::client::{self, Client};
use crate::shutdown::Shutdown;
use crate::tls::{self, Accepted, ClusterTls};

/// Accepts HTTP/1.1 connections on `listener` and hands each request to `handler`,
/// or first to the short way (`passthrough`) when there is one.
/// Backend connections its requests open stay with the connection (`outbound::client::scope`).
/// Returns, closing the listener, when the drain begins.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    client: Client,
    fast: Option<Arc<Passthrough>>,
    shutdown: Shutdown,
    handler: F,
) where
    F: Fn(http::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::body::BoxBody>> + Send + 'static,
{
    serve_on(listener, client, fast, Transport::Plain, shutdown, handler).await
}

/// What a listener speaks.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP/1.1 (the user and loopback listeners).
    Plain,
    /// The cluster listener without `--cluster-tls`: plain HTTP/1.1; a caller
    /// that speaks something else (a TLS handshake) gets hyper's 400 and a log
    /// line that says why.
    PlainCluster,
    /// The cluster listener with `--cluster-tls`: TLS 1.3, callers pinned to
    /// the directory's keys (`tls`).
    Tls(Arc<ClusterTls>),
}

/// `serve`, speaking `transport`.
pub async fn serve_on<F, Fut>(
    listener: TcpListener,
    client: Client,
    fast: Option<Arc<Passthrough>>,
    transport: Transport,
    shutdown: Shutdown,
    handler: F,
) where
    F: Fn(http::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::body::BoxBody>> + Send + 'static,
{
    let stop = shutdown.watch();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.recv() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Counted from here: the drain waits for this connection.
        let open = shutdown.open();
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let client = client.clone();
        let fast = fast.clone();
        let transport = transport.clone();
        tokio::spawn(async move {
            let tls = match transport {
                Transport::Plain => {
                    return short_way(stream, peer, fast, client, open, handler, false).await
                }
                Transport::PlainCluster => {
                    return short_way(stream, peer, fast, client, open, handler, true).await
                }
                Transport::Tls(tls) => tls,
            };
            match tls.accept(stream, peer).await {
                Accepted::Tls(io, _caller) => {
                    short_way(io, peer, fast, client, open, handler, false).await;
                }
                Accepted::Plain(stream) => {
                    let refuser = tls.clone();
                    let only_metrics = move |req: http::Request<hyper::body::Incoming>, peer| {
                        let allowed = tls::plain_allowed(req.method(), req.uri().path());
                        let handler = handler.clone();
                        let refuser = refuser.clone();
                        async move {
                            if allowed {
                                handler(req, peer).await
                            } else {
                                refuser.refuse_plain(peer, req.uri().path())
                            }
                        }
                    };
                    let io = Prefixed::new(BytesMut::new(), stream);
                    let _ = connection(io, peer, client, open, only_metrics).await;
                }
                Accepted::Closed => {}
            }
        });
    }
}

/// Serves one connection: the short way first when the listener has one, then
/// hyper. `plain_cluster`: a plain cluster listener, which says so when a
/// caller speaks something else.
async fn short_way<S, F, Fut>(
    stream: S,
    peer: SocketAddr,
    fast: Option<Arc<Passthrough>>,
    client: Client,
    open: crate::shutdown::Watch,
    handler: F,
    plain_cluster: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(http::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::body::BoxBody>> + Send + 'static,
{
    let io = match fast {
        None => Prefixed::new(BytesMut::new(), stream),
        Some(fast) => match fast.connection(stream, peer, &open).await {
            Done::Closed => return,
            Done::Handoff(stream, read) => Prefixed::new(read, stream),
        },
    };
    if let Err(e) = connection(io, peer, client, open, handler).await {
        if plain_cluster && e.is_parse() {
            // Not HTTP: most likely a TLS handshake (hyper answered 400).
            static LOG: crate::quiet::Budget = crate::quiet::Budget::new();
            if let Some(skipped) = LOG.admit() {
                tracing::warn!(%peer, error = %e, skipped, "a caller at {peer} spoke something other than HTTP to the cluster listener, which speaks plain HTTP: a TLS handshake? is --cluster-tls on there but not here?");
            }
        }
    }
}

/// Serves one accepted connection's requests (HTTP/1.1, upgrades allowed) until
/// it ends or the drain closes it; how it ended.
async fn connection<I, F, Fut>(
    io: I,
    peer: SocketAddr,
    client: Client,
    open: crate::shutdown::Watch,
    handler: F,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(http::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::body::BoxBody>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let served = client::scope(&client, async {
        tokio::pin!(conn);
        tokio::select! {
            biased;
            r = conn.as_mut() => r,
            () = open.recv() => {
                // Draining: the request in flight (or the upgrade to an SSH
                // tunnel) finishes, then the connection closes.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    });
    let served = served.await;
    if let Err(e) = &served {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
    served
}

/// A stream with some bytes already read from it in front: what hyper gets on a
/// handoff.
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
