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

use crate::directory::feed;
use crate::directory::heartbeat;
use crate::inbound::cluster;
use crate::inbound::listener::serve;
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
        Ok(Server {
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
        } = self;

        tokio::spawn(sc.apis.clone().keep_fresh());
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
        let cluster_listener = tokio::spawn(serve(
            cluster,
            sc.forwarder.client().clone(),
            None,
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
        tokio::spawn(heartbeat::run(
            sc.apis.clone(),
            sc.me.host.clone(),
            sc.metrics.clone(),
        ));
        tokio::spawn(replicate::run(sc.clone(), sc.apis.clone(), lb));

        tracing::info!(host = %sc.me.host, roles = %sc.me.roles.join(","), fingerprint = %sc.identity.fingerprint, "sidecar started");
        println!(
            "switchboard-sidecar: host={} listening http={http_addr} cluster={cluster_addr}",
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

/// `run`: binds, then serves until SIGINT or SIGTERM.
pub async fn run(cfg: RunConfig) -> Result<(), RunError> {
    Server::bind(cfg).await?.run().await
}
