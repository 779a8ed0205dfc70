//! The UDP listener: worker threads that receive a batch of queries at a time
//! (`mmsg`), ask the rate limiter (`rrl`), answer from the view on the fast
//! path (`fast`) and send the batch back; a query the fast path declines goes
//! to the full path (`handler`) on the runtime, within a bound.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::handler::{formerr, full_path, DnsHandler, Sink};
use super::rrl::{Rrl, Verdict};
use super::{fast, mmsg};
use crate::view::View;

/// The full path for a UDP query the fast path declined: hickory decodes it, the
/// handler answers (truncating when needed); an undecodable query with a readable
/// header gets FORMERR, anything shorter is dropped.
async fn slow_udp(
    handler: Arc<DnsHandler>,
    raw: Vec<u8>,
    src: std::net::SocketAddr,
    socket: Arc<std::net::UdpSocket>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let header = formerr(&raw);
    let sink = Sink::Udp {
        socket: socket.clone(),
        dst: src,
    };
    let answered = full_path(
        &handler,
        raw,
        src,
        hickory_server::net::xfer::Protocol::Udp,
        sink,
    )
    .await;
    if let (false, Some(h)) = (answered, header) {
        let _ = socket.send_to(&h, src);
    }
}

/// How many UDP queries may be on the full path at once; past it, more are
/// dropped (a flood of unusual queries must not grow memory without bound).
const SLOW_UDP_INFLIGHT: usize = 1024;

/// Serves UDP on `socket` with `workers` threads, each a loop of receive, fast
/// answer, send, a batch of packets at a time (`mmsg`); declined queries go to
/// `slow_udp` on the runtime. With `rrl`,
/// every answer first asks the rate limiter.
pub fn spawn_udp(
    socket: std::net::UdpSocket,
    view: Arc<ArcSwap<View>>,
    handler: Arc<DnsHandler>,
    runtime: tokio::runtime::Handle,
    workers: usize,
    rrl: Option<Arc<Rrl>>,
) {
    let socket = Arc::new(socket);
    let slow = Arc::new(tokio::sync::Semaphore::new(SLOW_UDP_INFLIGHT));
    for i in 0..workers.max(1) {
        let (socket, view, handler, runtime, rrl, slow) = (
            socket.clone(),
            view.clone(),
            handler.clone(),
            runtime.clone(),
            rrl.clone(),
            slow.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || {
                let mut batch = mmsg::Batch::default();
                let mut outs: Vec<Vec<u8>> =
                    (0..mmsg::BATCH).map(|_| Vec::with_capacity(4096)).collect();
                let mut replies = Vec::with_capacity(mmsg::BATCH);
                // (checked: `Instant` may be younger than a minute right after boot)
                let mut shed_logged = std::time::Instant::now()
                    .checked_sub(Duration::from_secs(60))
                    .unwrap_or_else(std::time::Instant::now);
                loop {
                    let n = match batch.recv(&socket) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "UDP receive failed");
                            continue;
                        }
                    };
                    replies.clear();
                    for (i, out) in outs.iter_mut().enumerate().take(n) {
                        let (query, src) = batch.packet(i);
                        let Some(src) = src else { continue };
                        if let Some(rrl) = &rrl {
                            match rrl.check(src.ip(), std::time::Instant::now()) {
                                Verdict::Send => {}
                                Verdict::Slip => {
                                    if fast::truncated(query, out).is_some() {
                                        replies.push(i);
                                    }
                                    continue;
                                }
                                Verdict::Drop => continue,
                            }
                        }
                        let answered = {
                            let v = view.load();
                            fast::answer(&v, query, out).is_some()
                        };
                        if answered {
                            replies.push(i);
                        } else if let Ok(permit) = slow.clone().try_acquire_owned() {
                            let raw = query.to_vec();
                            runtime.spawn(slow_udp(
                                handler.clone(),
                                raw,
                                src,
                                socket.clone(),
                                permit,
                            ));
                        } else if shed_logged.elapsed() >= Duration::from_secs(10) {
                            tracing::warn!(
                                inflight = SLOW_UDP_INFLIGHT,
                                "too many queries on the full path; dropping until some finish"
                            );
                            shed_logged = std::time::Instant::now();
                        }
                    }
                    batch.send(&socket, &replies, &outs);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a UDP worker");
        }
    }
}
