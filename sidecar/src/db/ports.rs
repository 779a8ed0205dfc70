//! The write and read ports of one database (`--db DB=write@…`, `--db DB=read@…`).
//!
//! A write connection goes to the master as bytes: the application talks to
//! MariaDB itself, its password never passes through the sidecar in a form it
//! reads. When the directory names another master, connections still open to
//! the old one are closed. A database that takes no writes (frozen, or no
//! available master) answers each new write connection with an ERR packet.
//!
//! A read connection goes to a replica that has applied everything the master
//! had when the connection opened (read-after-write, `--db-causal on`): the
//! master's `@@gtid_binlog_pos` is read on a kept-open monitoring connection;
//! a replica whose last polled position already covers it is taken at once,
//! else `MASTER_GTID_WAIT` runs on two replicas at once and the first to reach
//! the position takes the connection; when none does within
//! `--db-causal-wait-ms`, the master does. Replicas that do not replicate, lag
//! by more than `max_lag_s` or do not answer are polled out of the choice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::model::gtid_behind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::config::{Account, PortKind};
use super::monitor::{first_text, quote, Monitor, SlaveStatus};
use super::topology::{Current, Member, Topology};
use super::wire::{self, err_packet};
use crate::shutdown::Shutdown;

/// How long connecting to a database server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the read side polls each replica.
const POLL: Duration = Duration::from_millis(500);
/// Monitoring connections kept per server.
const MONITORS: usize = 4;
/// How many replicas wait for a position at once.
const RACE: usize = 2;

/// A replica as the last poll saw it.
#[derive(Debug, Clone)]
struct Health {
    eligible: bool,
    gtid: String,
}

/// The shared state of one database's ports.
pub struct DbPorts {
    db: String,
    topo: watch::Receiver<Current>,
    account: Option<Arc<Account>>,
    causal: bool,
    causal_wait: Duration,
    monitors: Mutex<HashMap<SocketAddr, Arc<Monitor>>>,
    health: Mutex<HashMap<String, Health>>,
    /// Whether the master answered the last poll.
    master_up: std::sync::atomic::AtomicBool,
    turn: AtomicUsize,
}

/// Where a read connection went, and why (for the log and the tests' metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadChoice {
    /// A replica whose polled position already covered the master's.
    Current(Member),
    /// A replica that reached the master's position within the wait.
    Waited(Member),
    /// No causal check (off, or the master could not be asked).
    Spread(Member),
    /// The master: no replica could serve the read.
    Master(Member),
}

impl ReadChoice {
    pub fn member(&self) -> &Member {
        match self {
            ReadChoice::Current(m)
            | ReadChoice::Waited(m)
            | ReadChoice::Spread(m)
            | ReadChoice::Master(m) => m,
        }
    }
}

impl DbPorts {
    pub fn new(
        db: String,
        topo: watch::Receiver<Current>,
        account: Option<Arc<Account>>,
        causal: bool,
        causal_wait: Duration,
    ) -> Arc<Self> {
        Arc::new(DbPorts {
            db,
            topo,
            account,
            causal,
            causal_wait,
            monitors: Mutex::default(),
            health: Mutex::default(),
            master_up: std::sync::atomic::AtomicBool::new(true),
            turn: AtomicUsize::new(0),
        })
    }

    fn current(&self) -> Option<Arc<Topology>> {
        self.topo.borrow().clone()
    }

    fn monitor(&self, addr: SocketAddr) -> Option<Arc<Monitor>> {
        let account = self.account.clone()?;
        let mut m = self.monitors.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            m.entry(addr)
                .or_insert_with(|| Arc::new(Monitor::new(addr, account, MONITORS)))
                .clone(),
        )
    }

    /// Polls the replicas' replication forever (read ports with an account).
    pub async fn poll(self: Arc<Self>) {
        loop {
            if let Some(t) = self.current() {
                let up = match t.master.as_ref().and_then(|m| self.monitor(m.addr)) {
                    Some(mon) => mon
                        .rows("SELECT 1", POLL.max(Duration::from_secs(1)), false)
                        .await
                        .is_ok(),
                    None => false,
                };
                self.master_up.store(up, Ordering::Relaxed);
                let mut seen = HashMap::new();
                for r in &t.replicas {
                    let h = self.poll_one(r, t.max_lag_s).await;
                    seen.insert(r.host.clone(), h);
                }
                *self.health.lock().unwrap_or_else(|p| p.into_inner()) = seen;
                let live: Vec<SocketAddr> = t
                    .replicas
                    .iter()
                    .chain(t.master.iter())
                    .map(|m| m.addr)
                    .collect();
                self.monitors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|a, _| live.contains(a));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn poll_one(&self, r: &Member, max_lag_s: u64) -> Health {
        let down = Health {
            eligible: false,
            gtid: String::new(),
        };
        let Some(m) = self.monitor(r.addr) else {
            return Health {
                eligible: true,
                ..down
            };
        };
        match m
            .rows("SHOW SLAVE STATUS", POLL.max(Duration::from_secs(1)), false)
            .await
        {
            Ok(rows) => {
                let gtid = rows
                    .first()
                    .and_then(|row| super::monitor::column(row, "Gtid_Slave_Pos"))
                    .unwrap_or_default();
                // Replicating within max_lag_s; or, while the master is down,
                // still applying what it received (it has all there is).
                let master_down = !self.master_up.load(Ordering::Relaxed);
                let eligible = SlaveStatus::from_rows(&rows).is_some_and(|s| {
                    (s.running && s.seconds_behind.is_some_and(|b| b <= max_lag_s))
                        || (s.applying && s.connecting && master_down)
                });
                Health { eligible, gtid }
            }
            Err(e) => {
                tracing::debug!(db = %self.db, replica = %r.host, error = %e, "replica not polled");
                down
            }
        }
    }

    /// How long asking the master for its position may take: the causal
    /// wait, or only a moment while the last poll found it down (it is still
    /// asked: one that came back may have taken writes since).
    fn master_timeout(&self) -> Duration {
        if self.master_up.load(Ordering::Relaxed) {
            self.causal_wait.max(Duration::from_millis(100))
        } else {
            Duration::from_millis(100)
        }
    }

    /// The replicas that may take reads now, starting at the next in turn.
    fn candidates(&self, t: &Topology) -> Vec<(Member, String)> {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(Member, String)> = t
            .replicas
            .iter()
            .filter_map(|r| match health.get(&r.host) {
                Some(h) if h.eligible => Some((r.clone(), h.gtid.clone())),
                // Not polled yet (no account, or just added): given a chance.
                None if self.account.is_none() => Some((r.clone(), String::new())),
                _ => None,
            })
            .collect();
        if !v.is_empty() {
            let n = self.turn.fetch_add(1, Ordering::Relaxed) % v.len();
            v.rotate_left(n);
        }
        v
    }

    /// Chooses the server a new read connection goes to.
    pub async fn choose_read(&self) -> Result<ReadChoice, String> {
        let t = self
            .current()
            .ok_or_else(|| format!("the directory does not know database {}", self.db))?;
        let candidates = self.candidates(&t);
        let fallback = |why: &str| {
            t.master.clone().map(ReadChoice::Master).ok_or_else(|| {
                format!(
                    "database {}: {why}, and its master {} has no address",
                    self.db, t.master_host
                )
            })
        };
        if !self.causal {
            return match candidates.into_iter().next() {
                Some((m, _)) => Ok(ReadChoice::Spread(m)),
                None => fallback("no replica replicates within max_lag_s"),
            };
        }
        let pos = match (
            &t.master,
            t.master.as_ref().and_then(|m| self.monitor(m.addr)),
        ) {
            (Some(_), Some(mon)) => mon
                .value("SELECT @@gtid_binlog_pos", self.master_timeout())
                .await
                .map_err(|e| e.to_string()),
            _ => Err("no master to ask".to_string()),
        };
        let pos = match pos {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                // The master cannot say what it has: nothing newer than what
                // the replicas have can be acknowledged by it either.
                tracing::debug!(db = %self.db, error = %e, "master position not read; spreading the read");
                return match candidates.into_iter().next() {
                    Some((m, _)) => Ok(ReadChoice::Spread(m)),
                    None => fallback("no replica replicates within max_lag_s"),
                };
            }
        };
        if let Some((m, _)) = candidates.iter().find(|(_, g)| !gtid_behind(g, &pos)) {
            return Ok(ReadChoice::Current(m.clone()));
        }
        if let Some(m) = self.race(&candidates, &pos).await {
            return Ok(ReadChoice::Waited(m));
        }
        fallback("no replica reached the master's position in time")
    }

    /// `MASTER_GTID_WAIT` on up to [`RACE`] candidates at once; the first to
    /// reach `pos`. The others finish their wait in the background (their
    /// connections stay usable).
    async fn race(&self, candidates: &[(Member, String)], pos: &str) -> Option<Member> {
        let secs = self.causal_wait.as_secs_f64();
        let q = format!("SELECT MASTER_GTID_WAIT({}, {secs:.3})", quote(pos));
        let (tx, mut rx) = tokio::sync::mpsc::channel(RACE);
        let mut started = 0;
        for (m, _) in candidates.iter().take(RACE) {
            let Some(mon) = self.monitor(m.addr) else {
                continue;
            };
            let (tx, q, m) = (tx.clone(), q.clone(), m.clone());
            let limit = self.causal_wait + Duration::from_millis(500);
            tokio::spawn(async move {
                let ok = mon
                    .rows(&q, limit, false)
                    .await
                    .ok()
                    .and_then(|rows| rows.first().and_then(first_text))
                    .is_some_and(|v| v == "0");
                let _ = tx.send((m, ok)).await;
            });
            started += 1;
        }
        drop(tx);
        for _ in 0..started {
            match rx.recv().await {
                Some((m, true)) => return Some(m),
                Some((_, false)) => {}
                None => break,
            }
        }
        None
    }
}

/// Connects to `addr` within [`CONNECT_TIMEOUT`].
async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!(
            "cannot connect to {addr} within {CONNECT_TIMEOUT:?}"
        )),
    }
}

/// Sends the client an ERR packet in place of a greeting, and closes.
async fn refuse(mut client: TcpStream, code: u16, message: &str) {
    use tokio::io::AsyncWriteExt;
    let _ = client
        .write_all(&err_packet(
            code,
            "HY000",
            &format!("switchboard: {message}"),
        ))
        .await;
    let _ = client.shutdown().await;
}

/// Serves one port until the drain begins.
pub async fn serve(ports: Arc<DbPorts>, kind: PortKind, listener: TcpListener, shutdown: Shutdown) {
    let watch = shutdown.watch();
    loop {
        let (client, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(db = %ports.db, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = watch.recv() => return,
        };
        let _ = client.set_nodelay(true);
        let p = ports.clone();
        tokio::spawn(async move {
            match kind {
                PortKind::Write => write_connection(p, client).await,
                PortKind::Read => read_connection(p, client, peer).await,
            }
        });
    }
}

async fn write_connection(p: Arc<DbPorts>, client: TcpStream) {
    let Some(t) = p.current() else {
        return refuse(
            client,
            wire::NO_SERVER,
            &format!("the directory does not know database {}", p.db),
        )
        .await;
    };
    if let Some(why) = &t.refusal {
        return refuse(client, wire::READ_ONLY, why).await;
    }
    let Some(master) = t.master.clone() else {
        return refuse(
            client,
            wire::READ_ONLY,
            &format!("database {} has no master address", p.db),
        )
        .await;
    };
    let server = match connect(master.addr).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("database {}: its master {}: {e}", p.db, master.host);
            tracing::warn!("{msg}");
            return refuse(client, wire::NO_SERVER, &msg).await;
        }
    };
    let mut topo = p.topo.clone();
    let deposed = async {
        loop {
            if topo.changed().await.is_err() {
                return std::future::pending::<()>().await;
            }
            let moved = topo
                .borrow()
                .as_ref()
                .is_none_or(|t| t.master.as_ref() != Some(&master));
            if moved {
                return;
            }
        }
    };
    splice(client, server, deposed).await;
    if p.topo
        .borrow()
        .as_ref()
        .is_some_and(|t| t.master.as_ref() != Some(&master))
    {
        tracing::info!(db = %p.db, old = %master.host, "closed a write connection to a master the directory no longer names");
    }
}

async fn read_connection(p: Arc<DbPorts>, client: TcpStream, peer: SocketAddr) {
    let choice = match p.choose_read().await {
        Ok(c) => c,
        Err(e) => return refuse(client, wire::NO_SERVER, &e).await,
    };
    tracing::debug!(db = %p.db, %peer, ?choice, "read connection");
    // The choice first; if it went away since the last poll, the master, then
    // any replica: reads go on while any server answers.
    let first = choice.member().clone();
    let mut order = vec![first.clone()];
    if let Some(t) = p.current() {
        order.extend(
            t.master
                .iter()
                .chain(t.replicas.iter())
                .filter(|m| **m != first)
                .cloned(),
        );
    }
    let mut errors = Vec::new();
    for m in &order {
        match connect(m.addr).await {
            Ok(server) => return splice(client, server, std::future::pending::<()>()).await,
            Err(e) => errors.push(format!("{}: {e}", m.host)),
        }
    }
    refuse(
        client,
        wire::NO_SERVER,
        &format!(
            "database {}: no server answers ({})",
            p.db,
            errors.join("; ")
        ),
    )
    .await
}

/// Copies bytes both ways until either side closes or `cut` resolves.
async fn splice(
    mut client: TcpStream,
    mut server: TcpStream,
    cut: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = cut => {}
    }
}
