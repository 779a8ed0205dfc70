//! `run`: the sidecar as a server. Building it ([`Server::bind`]: the shared
//! state from `Sidecar::build`, the admin API client, every listener bound) is
//! apart from running it ([`Server::run`]: serving the listeners, following the
//! directory, keeping replicas current, until SIGINT or SIGTERM, then draining).
//! Nothing below imports this module: handlers get the state, never the server.
//!
//! Draining (docs/sidecar.md, `--drain-timeout`): on the signal every listener
//! (user, cluster, loopback) stops accepting and closes, requests and SSH
//! sessions in flight finish, and the process exits 0 once they have, or once
//! the timeout cuts those still open. A second signal stops it at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::db::config::DbConfig;
use crate::db::host::DbReports;
use crate::db::{host as dbhost, ports as dbports, topology};
use crate::directory::feed;
use crate::directory::heartbeat;
use crate::inbound::cluster;
use crate::inbound::listener::{serve, serve_on, Transport};
use crate::inbound::passthrough::Passthrough;
use crate::inbound::user;
use crate::outbound::forward::Forwarder;
use crate::outbound::loopback::{self, Loopback};
use crate::repo::replicate;
use crate::shutdown::Drain;
use crate::sidecar::{Common, Limits, Sidecar, StartError};

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub common: Common,
    pub http: SocketAddr,
    pub cluster: SocketAddr,
    pub limits: Limits,
    /// How long requests and SSH sessions in flight may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// The database ports and the databases this host runs (`--db`, `--db-local`).
    pub db: DbConfig,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the loopback proxy: {0}")]
    Loopback(std::io::Error),
}

/// A sidecar with its listeners bound, not yet serving.
pub struct Server {
    sc: Arc<Sidecar>,
    drain: Drain,
    drain_timeout: Duration,
    common: Common,
    http: TcpListener,
    http_addr: SocketAddr,
    cluster: TcpListener,
    cluster_addr: SocketAddr,
    loopback: Arc<Loopback>,
    loopback_listener: TcpListener,
    db: DbConfig,
    db_listeners: Vec<(crate::db::config::DbPort, TcpListener)>,
}

/// Binds `addr`, or says which listener could not be; with the address bound
/// (the port chosen, for port 0).
async fn bind(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), RunError> {
    let fail = |source| RunError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    Ok((listener, bound))
}

impl Server {
    /// Learns who this host is, builds the shared state, and binds the user,
    /// cluster and loopback listeners.
    pub async fn bind(cfg: RunConfig) -> Result<Self, RunError> {
        let drain = Drain::default();
        let sc = Sidecar::build(&cfg.common, cfg.limits, drain.shutdown()).await?;
        let (http, http_addr) = bind("--http", cfg.http).await?;
        let (cluster, cluster_addr) = bind("--cluster", cfg.cluster).await?;
        let (loopback, loopback_listener) = Loopback::bind().await.map_err(RunError::Loopback)?;
        let _ = sc.cluster_addr.set(cluster_addr);
        let mut db_listeners = Vec::new();
        for p in &cfg.db.ports {
            let (l, _) = bind("--db", p.addr).await?;
            db_listeners.push((p.clone(), l));
        }
        Ok(Server {
            db: cfg.db,
            db_listeners,
            sc,
            drain,
            drain_timeout: cfg.drain_timeout,
            common: cfg.common,
            http,
            http_addr,
            cluster,
            cluster_addr,
            loopback: Arc::new(loopback),
            loopback_listener,
        })
    }

    /// Serves until SIGINT or SIGTERM, then drains.
    pub async fn run(self) -> Result<(), RunError> {
        let Server {
            sc,
            drain,
            drain_timeout,
            common,
            http,
            http_addr,
            cluster,
            cluster_addr,
            loopback: lb,
            loopback_listener,
            db,
            db_listeners,
        } = self;

        // Fetches from masters go through the loopback proxy, from this process.
        sc.syncer.fetch_through(lb.addr, lb.token.clone());
        tokio::spawn(sc.apis.clone().keep_fresh());
        tokio::spawn(sc.sessions.clone().watch());
        tokio::spawn(feed::follow(
            sc.dir.clone(),
            Arc::new(Forwarder::new(sc.identity.clone())),
            sc.apis.clone(),
            common.zone.clone(),
        ));
        let s = sc.clone();
        let user_listener = tokio::spawn(serve(
            http,
            sc.forwarder.client().clone(),
            Passthrough::new(sc.clone()),
            sc.shutdown.clone(),
            move |req, peer| user::handle(s.clone(), req, peer),
        ));
        let s = sc.clone();
        let transport = match sc.forwarder.client().tls() {
            Some(tls) => Transport::Tls(tls.clone()),
            None => Transport::PlainCluster,
        };
        let cluster_listener = tokio::spawn(serve_on(
            cluster,
            sc.forwarder.client().clone(),
            Passthrough::for_cluster(sc.clone()),
            transport,
            sc.shutdown.clone(),
            move |req, peer| cluster::handle(s.clone(), req, peer),
        ));
        let (s, l) = (sc.clone(), lb.clone());
        let loopback_listener = tokio::spawn(serve(
            loopback_listener,
            sc.forwarder.client().clone(),
            None,
            sc.shutdown.clone(),
            move |req, _peer| loopback::handle(s.clone(), l.clone(), req),
        ));
        let db_reports = Arc::new(DbReports::default());
        let db_addrs = start_databases(&sc, &db, db_listeners, db_reports.clone());
        tokio::spawn(heartbeat::run(
            sc.apis.clone(),
            sc.me.host.clone(),
            sc.metrics.clone(),
            db_reports,
        ));
        tokio::spawn(replicate::run(sc.clone(), sc.apis.clone(), lb));
        tokio::spawn(crate::repo::journal::run(
            sc.repos.root().to_path_buf(),
            sc.apis.clone(),
            sc.me.host.clone(),
            sc.metrics.clone(),
            sc.shutdown.watch(),
        ));

        tracing::info!(host = %sc.me.host, roles = %sc.me.roles.join(","), fingerprint = %sc.identity.fingerprint, "sidecar started");
        println!(
            "switchboard-sidecar: host={} listening http={http_addr} cluster={cluster_addr}{db_addrs}",
            sc.me.host
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        switchboard_proto::process::wait_for_signal().await;

        drain.begin();
        // Every listener closed before this is said: a connection made after
        // the line is refused.
        for listener in [user_listener, cluster_listener, loopback_listener] {
            let _ = listener.await;
        }
        tracing::info!(
            open = drain.open(),
            timeout_secs = drain_timeout.as_secs_f64(),
            "draining: no longer accepting; waiting for the requests and SSH sessions in flight"
        );
        tokio::select! {
            left = drain.wait(drain_timeout) => {
                if left == 0 {
                    tracing::info!("drained: every request and SSH session finished; exiting");
                } else {
                    tracing::warn!(still_open = left, "drain timed out: closing the connections and SSH sessions still open; exiting");
                }
            }
            () = switchboard_proto::process::wait_for_signal() => {
                tracing::warn!(still_open = drain.open(), "second signal: stopping now");
            }
        }
        Ok(())
    }
}

/// Starts following each database this sidecar serves: its topology, its
/// ports, and on a database host the local server's duties. Returns the
/// ports as ` db=DB:KIND@ADDR …` for the listening line.
fn start_databases(
    sc: &Arc<Sidecar>,
    cfg: &DbConfig,
    listeners: Vec<(crate::db::config::DbPort, TcpListener)>,
    reports: Arc<DbReports>,
) -> String {
    let account = cfg.account.clone().map(Arc::new);
    let mut line = String::new();
    let mut watches = std::collections::HashMap::new();
    for db in cfg.databases() {
        let local = cfg.local.iter().find(|l| l.db == db);
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(topology::follow(
            sc.dir.clone(),
            db.clone(),
            sc.me.host.clone(),
            local.and_then(|l| l.addr),
            tx,
        ));
        if let (Some(_), Some(account)) = (local, &account) {
            tokio::spawn(dbhost::run(
                db.clone(),
                sc.me.host.clone(),
                account.clone(),
                rx.clone(),
                reports.clone(),
            ));
        }
        watches.insert(db, rx);
    }
    let mut ports = std::collections::HashMap::new();
    for (p, l) in listeners {
        let Some(rx) = watches.get(&p.db) else {
            continue;
        };
        let shared = ports
            .entry(p.db.clone())
            .or_insert_with(|| {
                let s = dbports::DbPorts::new(
                    p.db.clone(),
                    rx.clone(),
                    account.clone(),
                    cfg.causal,
                    cfg.causal_wait,
                );
                if account.is_some() {
                    tokio::spawn(s.clone().poll());
                }
                s
            })
            .clone();
        if let Ok(a) = l.local_addr() {
            line.push_str(&format!(" db={}:{}@{a}", p.db, p.kind.as_str()));
        }
        tokio::spawn(dbports::serve(shared, p.kind, l, sc.shutdown.clone()));
    }
    line
}

/// `run`: binds, then serves until SIGINT or SIGTERM.
pub async fn run(cfg: RunConfig) -> Result<(), RunError> {
    Server::bind(cfg).await?.run().await
}
