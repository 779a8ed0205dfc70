//! `run`: the sidecar as a server. Building it ([`Server::bind`]: the shared
//! state from `Sidecar::build`, the admin API client, every listener bound) is
//! apart from running it ([`Server::run`]: serving the listeners, following the
//! directory, keeping replicas current, until SIGINT or SIGTERM). Nothing below
//! imports this module: handlers get the state, never the server.

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_proto::api::{ApiError, Client};
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
use crate::sidecar::{Common, Limits, Sidecar, StartError};

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub common: Common,
    pub http: SocketAddr,
    pub cluster: SocketAddr,
    pub limits: Limits,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Api(#[from] ApiError),
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
    api: Arc<Client>,
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
        let sc = Sidecar::build(&cfg.common, cfg.limits).await?;
        let api = Arc::new(cfg.common.api_client()?);
        let (http, http_addr) = bind("--http", cfg.http).await?;
        let (cluster, cluster_addr) = bind("--cluster", cfg.cluster).await?;
        let (loopback, loopback_listener) = Loopback::bind().await.map_err(RunError::Loopback)?;
        let _ = sc.cluster_addr.set(cluster_addr);
        Ok(Server {
            sc,
            api,
            common: cfg.common,
            http,
            http_addr,
            cluster,
            cluster_addr,
            loopback: Arc::new(loopback),
            loopback_listener,
        })
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run(self) -> Result<(), RunError> {
        let Server {
            sc,
            api,
            common,
            http,
            http_addr,
            cluster,
            cluster_addr,
            loopback: lb,
            loopback_listener,
        } = self;

        tokio::spawn(feed::follow(
            sc.dir.clone(),
            Arc::new(Forwarder::new(sc.identity.clone())),
            common.api(),
            common.zone.clone(),
        ));
        let s = sc.clone();
        tokio::spawn(serve(
            http,
            sc.forwarder.client().clone(),
            Passthrough::new(sc.clone()),
            move |req, peer| user::handle(s.clone(), req, peer),
        ));
        let s = sc.clone();
        tokio::spawn(serve(
            cluster,
            sc.forwarder.client().clone(),
            None,
            move |req, peer| cluster::handle(s.clone(), req, peer),
        ));
        let (s, l) = (sc.clone(), lb.clone());
        tokio::spawn(serve(
            loopback_listener,
            sc.forwarder.client().clone(),
            None,
            move |req, _peer| loopback::handle(s.clone(), l.clone(), req),
        ));
        tokio::spawn(heartbeat::run(
            api.clone(),
            sc.me.host.clone(),
            sc.metrics.clone(),
        ));
        tokio::spawn(replicate::run(sc.clone(), api, lb));

        tracing::info!(host = %sc.me.host, roles = %sc.me.roles.join(","), fingerprint = %sc.identity.fingerprint, "sidecar started");
        println!(
            "switchboard-sidecar: host={} listening http={http_addr} cluster={cluster_addr}",
            sc.me.host
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        switchboard_proto::process::wait_for_signal().await;
        Ok(())
    }
}

/// `run`: binds, then serves until SIGINT or SIGTERM.
pub async fn run(cfg: RunConfig) -> Result<(), RunError> {
    Server::bind(cfg).await?.run().await
}
