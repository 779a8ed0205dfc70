//! Draining on SIGTERM, as tokio's mini-redis does it: one signal
//! that every listener and every open connection listens to. When it comes,
//! each listener stops accepting and closes its socket, each open connection
//! finishes the request it is serving and closes, each SSH session runs to its
//! end, and the server waits for all of them, up to `--drain-timeout`
//! (docs/sidecar.md).
//!
//! The signal is cheap to listen to, because the short way for plain web
//! traffic listens between every two requests: asking whether it has come is
//! one atomic load, and waiting for it registers a waker without a lock.
//! Registering a listener, and dropping one, takes a lock: once per connection.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

struct Inner {
    draining: AtomicBool,
    next_id: AtomicU64,
    /// Everyone listening, with the waker to wake them by.
    listeners: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    /// Connections and sessions open now.
    open: AtomicUsize,
    /// Woken when the last open one closes while draining.
    idle: Notify,
}

/// The sending side: the server begins the drain and waits for it.
pub struct Drain {
    inner: Arc<Inner>,
}

/// The receiving side, for the state and the listeners: cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

/// One listener of the signal: a listener's accept loop, or (counted) one open
/// connection or session, which the drain waits for until it is dropped.
pub struct Watch {
    inner: Arc<Inner>,
    id: u64,
    waker: Arc<AtomicWaker>,
    counted: bool,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(Inner {
                draining: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                listeners: Mutex::default(),
                open: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }
}

impl Drain {
    /// The handle listeners and connections listen through.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            inner: self.inner.clone(),
        }
    }

    /// Sends the signal: every listener stops accepting, every open connection
    /// finishes what it is serving.
    pub fn begin(&self) {
        if self.inner.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        for waker in self.inner.lock().values() {
            waker.wake();
        }
    }

    /// Connections and sessions open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Waits until nothing is open, or `timeout` has passed; how many were
    /// still open then.
    pub async fn wait(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.open() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.open();
            }
        }
    }
}

impl Default for Shutdown {
    /// A signal nobody sends: for a process that serves one session and exits
    /// (`ssh-exec`).
    fn default() -> Self {
        Drain::default().shutdown()
    }
}

impl Shutdown {
    /// Whether the drain has begun.
    pub fn is_shutdown(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Listens without being waited for (a listener's accept loop).
    pub fn watch(&self) -> Watch {
        self.listen(false)
    }

    /// One open connection or session: the drain waits until it is dropped.
    pub fn open(&self) -> Watch {
        self.inner.open.fetch_add(1, Ordering::SeqCst);
        self.listen(true)
    }

    fn listen(&self, counted: bool) -> Watch {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.inner.lock().insert(id, waker.clone());
        Watch {
            inner: self.inner.clone(),
            id,
            waker,
            counted,
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicWaker>>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Watch {
    /// Whether the drain has begun: one atomic load.
    pub fn is_shutdown(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Resolves once the drain has begun (at once if it has). Polling it takes
    /// no lock.
    pub fn recv(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.is_shutdown() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // `begin` sets the flag before it wakes: checked again after the
            // waker is in place, a signal sent in between is not missed.
            if self.is_shutdown() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.lock().remove(&self.id);
        if self.counted
            && self.inner.open.fetch_sub(1, Ordering::SeqCst) == 1
            && self.inner.draining.load(Ordering::SeqCst)
        {
            self.inner.idle.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_drain_wakes_every_listener_and_waits_for_what_is_open() {
        let drain = Drain::default();
        let shutdown = drain.shutdown();
        let listener = shutdown.watch();
        let conn = shutdown.open();
        assert_eq!(drain.open(), 1);
        assert!(!conn.is_shutdown());
        let woken = tokio::spawn(async move {
            listener.recv().await;
            conn.recv().await;
            // The connection finishes its work after the signal, then closes.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(conn);
        });
        tokio::task::yield_now().await;
        drain.begin();
        assert_eq!(drain.wait(Duration::from_secs(5)).await, 0);
        woken.await.expect("listener task");
        // One that opens after the signal hears it at once.
        let late = shutdown.open();
        late.recv().await;
        // And the drain reports what the timeout cut.
        assert_eq!(drain.wait(Duration::from_millis(20)).await, 1);
        drop(late);
        assert_eq!(drain.open(), 0);
    }
}
