//! `run`: learn who this host is, open both listeners, follow the directory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::Uri;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::directory::DirectoryClient;
use crate::forward::Forwarder;
use crate::git::Repos;
use crate::identity::{self, Identity};
use crate::metrics::Metrics;
use crate::route::Router;
use crate::sidecar::Sidecar;
use crate::{cluster, feed, user};

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub key: PathBuf,
    pub directory: SocketAddr,
    pub directory_api: Option<String>,
    pub zone: String,
    pub http: SocketAddr,
    pub cluster: SocketAddr,
    pub repos: PathBuf,
    pub web_backend: Option<Uri>,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// Loads the key and asks the directory who it belongs to.
pub async fn who_am_i(
    key: &std::path::Path,
    directory: SocketAddr,
    zone: &str,
    metrics: Arc<Metrics>,
) -> Result<(Identity, identity::KeyInfo, Arc<DirectoryClient>), RunError> {
    let id = Identity::load(key).map_err(|e| RunError(e.to_string()))?;
    let dir = Arc::new(
        DirectoryClient::new(directory, zone, metrics).map_err(|e| RunError(e.to_string()))?,
    );
    let me = identity::lookup(&dir, &id.fingerprint)
        .await
        .map_err(|e| RunError(format!("cannot ask the directory who this key is: {e}")))?
        .ok_or_else(|| {
            RunError(format!(
                "key {} (public key {}) is not known to the directory at {directory} for zone {zone}: register it with `switchboard-directory host add HOST --addr IP --pubkey {} --roles ...`; routing nothing",
                id.fingerprint,
                id.public.to_base64(),
                id.public.to_base64()
            ))
        })?;
    Ok((id, me, dir))
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(cfg: RunConfig) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let (id, me, dir) = who_am_i(&cfg.key, cfg.directory, &cfg.zone, metrics.clone()).await?;
    std::fs::create_dir_all(&cfg.repos).map_err(|e| {
        RunError(format!(
            "cannot create --repos {}: {e}",
            cfg.repos.display()
        ))
    })?;
    let spool_dir = cfg.repos.join(".switchboard-spool");
    std::fs::create_dir_all(&spool_dir)
        .map_err(|e| RunError(format!("cannot create {}: {e}", spool_dir.display())))?;
    let http = TcpListener::bind(cfg.http)
        .await
        .map_err(|e| RunError(format!("cannot bind --http {}: {e}", cfg.http)))?;
    let cluster_l = TcpListener::bind(cfg.cluster)
        .await
        .map_err(|e| RunError(format!("cannot bind --cluster {}: {e}", cfg.cluster)))?;
    let http_addr = http.local_addr().map_err(|e| RunError(e.to_string()))?;
    let cluster_addr = cluster_l
        .local_addr()
        .map_err(|e| RunError(e.to_string()))?;

    let identity = Arc::new(id);
    let sc = Arc::new(Sidecar {
        identity: identity.clone(),
        router: Router::new(dir.clone(), me.host.clone()),
        forwarder: Forwarder::new(identity.clone()),
        repos: Repos::new(cfg.repos.clone()),
        web_backend: cfg.web_backend.clone(),
        metrics: metrics.clone(),
        replay: Default::default(),
        spool_dir,
        dir: dir.clone(),
        me: me.clone(),
    });
    let api = cfg
        .directory_api
        .clone()
        .unwrap_or_else(|| format!("http://{}:8053", cfg.directory.ip()));
    tokio::spawn(feed::follow(
        dir.clone(),
        Arc::new(Forwarder::new(identity.clone())),
        api,
        cfg.zone.clone(),
    ));

    let sc_user = sc.clone();
    tokio::spawn(serve(http, move |req, _peer| {
        user::handle(sc_user.clone(), req)
    }));
    let sc_cluster = sc.clone();
    tokio::spawn(serve(cluster_l, move |req, peer| {
        cluster::handle(sc_cluster.clone(), req, peer)
    }));

    tracing::info!(host = %me.host, roles = %me.roles.join(","), fingerprint = %identity.fingerprint, "sidecar started");
    println!(
        "switchboard-sidecar: host={} listening http={http_addr} cluster={cluster_addr}",
        me.host
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    Ok(())
}

/// Accepts HTTP/1.1 connections on `listener` and hands each request to `handler`.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(http::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::forward::BoxBody>> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req, peer).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
