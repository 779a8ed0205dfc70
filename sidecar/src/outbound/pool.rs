//! One pool of idle upstream connections, for every upstream, as pingora keeps
//! one: keyed by the upstream's `host:port`, at most [`MAX_IDLE`] idle
//! per upstream, and a connection is reused only while it is fresh (idle for
//! less than [`IDLE`]) and ready.
//!
//! Two kinds of connection go through it: hyper client connections, for signed
//! calls and local backend calls (`outbound::client`), and raw TCP streams to
//! the web backend, for the user listener's short way (`inbound::passthrough`).
//! Both keep the upstream connection with the inbound connection that used it,
//! so the pool is touched once per inbound connection, never per request.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// How long a connection may sit idle before it is dropped: below the 30 s a
/// listener waits for the next request (`inbound::listener`), so the pool drops
/// a connection before the peer does instead of racing the peer's close with a
/// new request.
pub const IDLE: Duration = Duration::from_secs(20);
/// Idle connections kept per upstream: as many as callers may need at once, so
/// that load does not close and reopen them.
pub const MAX_IDLE: usize = 1024;
/// How long a new connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection the pool can keep.
pub trait Reusable {
    /// Whether it can carry a request now (checked when it is taken).
    fn usable(&self) -> bool;
    /// Whether it is known to be closed (such are not kept).
    fn closed(&self) -> bool;
    /// Whether it is still finishing its last exchange (a connection given back
    /// while its answer streams): kept, but not taken, until it is usable.
    fn busy(&self) -> bool {
        false
    }
}

/// A raw stream is ready when it is still open: nothing to read, not closed
/// (an idle HTTP/1.1 connection has nothing to say until asked).
impl Reusable for TcpStream {
    fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn closed(&self) -> bool {
        false
    }
}

/// Whether a connection idle since `since` may still be used at `now`.
pub fn fresh(since: Instant, now: Instant) -> bool {
    now.duration_since(since) < IDLE
}

/// A connection taken from the pool.
pub struct Idle<C> {
    /// The upstream it goes to, as the pool keys it.
    pub addr: Arc<str>,
    pub conn: C,
    /// When it went idle.
    pub since: Instant,
}

/// One upstream's idle connections, each with when it went idle (newest last).
type IdleList<C> = Vec<(Instant, C)>;

/// Idle connections, by upstream `host:port`.
pub struct Pool<C> {
    idle: Mutex<HashMap<Arc<str>, IdleList<C>>>,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            idle: Mutex::default(),
        }
    }
}

impl<C: Reusable> Pool<C> {
    /// A ready connection to `addr` idle for less than [`IDLE`], newest first;
    /// stale, closed or broken ones met on the way are dropped, busy ones kept
    /// (dropping one would close it, and the next caller would open another).
    pub fn take(&self, addr: &str) -> Option<Idle<C>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let key = idle.get_key_value(addr)?.0.clone();
        let list = idle.get_mut(addr)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let (since, conn) = &list[i];
            if !fresh(*since, now) || conn.closed() {
                list.remove(i);
            } else if conn.usable() {
                let (since, conn) = list.remove(i);
                return Some(Idle {
                    addr: key,
                    conn,
                    since,
                });
            } else if !conn.busy() {
                list.remove(i);
            }
        }
        None
    }

    /// Keeps `conn` to `addr`, idle since `since`, unless it is closed, stale,
    /// or the upstream has [`MAX_IDLE`] already.
    pub fn put(&self, addr: Arc<str>, conn: C, since: Instant) {
        let now = Instant::now();
        if conn.closed() || !fresh(since, now) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        list.retain(|(since, c)| !c.closed() && fresh(*since, now));
        if list.len() < MAX_IDLE {
            list.push((since, conn));
        }
    }
}

/// Why a new upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS channel to a peer (`--cluster-tls`) could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConnectError),
}

/// A new TCP connection to `addr`, within [`CONNECT_TIMEOUT`], with Nagle off
/// (requests and answers are written whole).
pub async fn connect(addr: &str) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A connection whose state the test sets: ready, busy, closed or broken.
    struct Fake {
        id: u32,
        state: Cell<&'static str>,
    }

    impl Reusable for Fake {
        fn usable(&self) -> bool {
            self.state.get() == "ready"
        }
        fn closed(&self) -> bool {
            self.state.get() == "closed"
        }
        fn busy(&self) -> bool {
            self.state.get() == "busy"
        }
    }

    fn fake(id: u32, state: &'static str) -> Fake {
        Fake {
            id,
            state: Cell::new(state),
        }
    }

    #[test]
    fn a_busy_connection_is_kept_until_it_is_ready_and_broken_ones_are_dropped() {
        let pool: Pool<Fake> = Pool::default();
        let key: Arc<str> = Arc::from("b:1");
        let now = Instant::now();
        for (id, state) in [(1, "ready"), (2, "broken"), (3, "busy")] {
            pool.put(key.clone(), fake(id, state), now);
        }
        // Newest first: 3 is busy (kept), 2 broken (dropped), 1 ready.
        assert_eq!(pool.take("b:1").map(|c| c.conn.id), Some(1));
        assert!(pool.take("b:1").is_none(), "the busy one is not handed out");
        let idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let left: Vec<u32> = idle["b:1"].iter().map(|(_, c)| c.id).collect();
        assert_eq!(left, vec![3], "the busy one stays, the broken one is gone");
        idle["b:1"][0].1.state.set("ready");
        drop(idle);
        assert_eq!(pool.take("b:1").map(|c| c.conn.id), Some(3));
        // A stale one is dropped whatever its state.
        pool.put(key.clone(), fake(4, "ready"), now);
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = idle.get_mut("b:1") {
            list[0].0 = now - IDLE - Duration::from_secs(1);
        }
        drop(idle);
        assert!(pool.take("b:1").is_none());
    }
}
