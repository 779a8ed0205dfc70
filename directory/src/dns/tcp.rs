//! The TCP listener (RFC 7766): length-prefixed queries, answered in order on
//! the full path (`handler`), within connection limits per client and in all.

use std::sync::Arc;
use std::time::Duration;

use super::handler::{respond, DnsHandler};
use super::rrl;

/// Idle time after which a TCP client that sends nothing is dropped.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the TCP listener.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_client: usize,
    /// A client must send each length prefix, and then each message, within this.
    pub idle: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1024,
            max_per_client: 64,
            idle: TCP_TIMEOUT,
        }
    }
}

/// Who holds the TCP connection slots.
#[derive(Default)]
struct Slots {
    total: usize,
    per_client: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// Frees a connection's slot when the connection ends.
struct Slot {
    slots: Arc<std::sync::Mutex<Slots>>,
    client: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.per_client.remove(&self.client);
            }
        }
    }
}

fn take_slot(
    slots: &Arc<std::sync::Mutex<Slots>>,
    client: std::net::IpAddr,
    limits: &TcpLimits,
) -> Option<Slot> {
    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
    let mine = s.per_client.get(&client).copied().unwrap_or(0);
    if s.total >= limits.max_connections || mine >= limits.max_per_client {
        return None;
    }
    s.total += 1;
    s.per_client.insert(client, mine + 1);
    Some(Slot {
        slots: slots.clone(),
        client,
    })
}

/// Serves DNS over TCP (RFC 7766) until `stop` turns true: length-prefixed
/// queries, answered in order on the full path. A connection beyond the limits
/// is closed at once; one that sends nothing, or too slowly, is closed after
/// `limits.idle`; running out of file descriptors pauses accepting instead of
/// spinning.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    handler: Arc<DnsHandler>,
    limits: TcpLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(std::sync::Mutex::new(Slots::default()));
    let mut refused_logged = std::time::Instant::now()
        .checked_sub(Duration::from_secs(60))
        .unwrap_or_else(std::time::Instant::now);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, src) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&slots, rrl::client(src.ip()), &limits) else {
            if refused_logged.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(client = %src.ip(), "TCP connection limit reached; closing new connections");
                refused_logged = std::time::Instant::now();
            }
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tcp_connection(stream, src, &handler, limits.idle, stop).await;
        });
    }
}

async fn tcp_connection(
    stream: tokio::net::TcpStream,
    src: std::net::SocketAddr,
    handler: &DnsHandler,
    idle: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;
    let (mut rd, mut wr) = stream.into_split();
    loop {
        let mut len = [0u8; 2];
        tokio::select! {
            r = timeout(idle, rd.read_exact(&mut len)) => match r {
                Ok(Ok(_)) => {}
                _ => return,
            },
            _ = stop.changed() => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        let mut msg = vec![0u8; n];
        match timeout(idle, rd.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        if super::xfr::is_transfer(&msg) {
            if super::xfr::serve(handler, msg, &mut wr).await {
                continue;
            }
            return;
        }
        let Some(answer) =
            respond(handler, msg, src, hickory_server::net::xfer::Protocol::Tcp).await
        else {
            return;
        };
        let Ok(alen) = u16::try_from(answer.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(2 + answer.len());
        frame.extend_from_slice(&alen.to_be_bytes());
        frame.extend_from_slice(&answer);
        match timeout(idle, wr.write_all(&frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
