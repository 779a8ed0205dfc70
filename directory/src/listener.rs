//! The admin listener: one HTTP/1.1 port that serves the JSON API (`admin`)
//! and the web console under `/ui` (`console`). It accepts within the
//! connection limits (`admin::limits`), reads each request head within its
//! timeout, and hands the request to the one that serves its path. Above
//! both, so that neither imports the other's routes.

use std::convert::Infallible;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::admin::{self, limits, Admin};

/// Serves the admin API and the console on `listener` until `shutdown`
/// fires, then hands the listener back (the caller decides when the port is
/// let go). A connection beyond `Limits` is answered 503 and closed; one whose
/// request head is not in within `limits::HEAD_TIMEOUT` is closed.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> TcpListener {
    let slots = limits::Slots::default();
    let refusals = limits::Refusals::default();
    let mut refused_logged: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "admin accept failed; pausing");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let slot = match slots.take(peer.ip(), admin.limits()) {
            Ok(slot) => slot,
            Err(why) => {
                if refused_logged.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                    tracing::warn!(client = %peer.ip(), reason = "too-many-connections", "{why}; refusing new admin connections");
                    refused_logged = Some(std::time::Instant::now());
                }
                refusals.refuse(stream, why);
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move {
                    let p = req.uri().path();
                    if p == "/ui" || p.starts_with("/ui/") {
                        return Ok::<_, Infallible>(crate::console::route(admin, req).await);
                    }
                    Ok::<_, Infallible>(admin::handle(admin, req, local).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits::HEAD_TIMEOUT)
                .max_buf_size(limits::MAX_BUFFER)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
    listener
}
