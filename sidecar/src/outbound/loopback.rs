//! The signing proxy that git processes started by this sidecar use to reach
//! other hosts (a replica fetching from its master). It listens on loopback
//! only, wants a random token in a header that only those processes are given
//! (through their environment, never a command line or FETCH_HEAD), forwards
//! only fetches (`info/refs` for upload-pack and `git-upload-pack`) of
//! `/HOST/source/REPO.git/...` to HOST's cluster listener, signed with this
//! host's key like every other call between hosts.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::body::{self, BoxBody};
use crate::outbound::spool::Spooled;
use crate::reply::{error, spool_refusal};
use crate::route::{self, Access};
use crate::sidecar::Sidecar;

/// The header that carries the proxy's token.
pub const TOKEN_HEADER: &str = "x-switchboard-token";

/// The proxy's address and secret.
#[derive(Debug, Clone)]
pub struct Loopback {
    pub addr: SocketAddr,
    pub token: String,
}

impl Loopback {
    /// Binds a loopback port with a fresh secret.
    pub async fn bind() -> std::io::Result<(Self, TcpListener)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            rand::random::<[u8; 18]>(),
        );
        Ok((Loopback { addr, token }, listener))
    }

    /// The URL under which a local git reaches `repo` on `host`.
    pub fn url(&self, host: &str, repo: &str) -> String {
        format!("http://{}/{host}/source/{repo}.git", self.addr)
    }

    /// The header line (`NAME: TOKEN`) a local git process sends to be let in.
    pub fn header(&self) -> String {
        format!("{TOKEN_HEADER}: {}", self.token)
    }

    /// Whether `presented` is the token, compared in constant time.
    fn admits(&self, presented: &[u8]) -> bool {
        let want = self.token.as_bytes();
        presented.len() == want.len()
            && presented
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Handles one request from a local git process.
pub async fn handle(
    sc: Arc<Sidecar>,
    lb: Arc<Loopback>,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    let presented = req
        .headers()
        .get(TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !lb.admits(presented) {
        return error(StatusCode::FORBIDDEN, "forbidden", "not for you");
    }
    let path = req.uri().path().to_string();
    let Some((host, tail)) = path.strip_prefix('/').and_then(|r| r.split_once('/')) else {
        return error(
            StatusCode::NOT_FOUND,
            "not-found",
            "use /HOST/source/REPO.git/...",
        );
    };
    if switchboard_proto::model::validate_label("host", host).is_err() {
        return error(StatusCode::BAD_REQUEST, "bad-host", "not a host name");
    }
    let mut pq = format!("/{tail}");
    let fetch_only = match route::git_path(&pq, req.uri().query()) {
        Ok(Some(gp)) => gp.access == Access::Read && gp.rest != "git-upload-archive",
        _ => false,
    };
    if !fetch_only {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the loopback proxy only fetches",
        );
    }
    let peer = match sc.dir.cluster_endpoint(host).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "no-cluster-port",
                format!("{host} has no switchboard binding"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "directory-unreachable",
                e.to_string(),
            )
        }
    };
    if let Some(q) = req.uri().query() {
        pq.push('?');
        pq.push_str(q);
    }
    let (parts, body) = req.into_parts();
    let spooled = match Spooled::read(body, sc.limits.max_body, &sc.spool_dir).await {
        Ok(s) => s,
        Err(e) => return spool_refusal(e),
    };
    // Only fetches come through here, so a call that failed on the way (a pooled
    // connection the master had just closed, say) is sent once more, re-signed.
    let again = spooled.bytes().cloned();
    let first = sc
        .forwarder
        .send(&peer, parts.method.clone(), &pq, &parts.headers, spooled)
        .await;
    let result = match (first, again) {
        (Err(e), Some(body)) => {
            tracing::debug!(error = %e, "fetch from the master failed on the way; once more");
            sc.forwarder
                .send(
                    &peer,
                    parts.method,
                    &pq,
                    &parts.headers,
                    Spooled::from_bytes(body),
                )
                .await
        }
        (first, _) => first,
    };
    match result {
        Ok(r) => body::stream_back(r),
        Err(e) => error(StatusCode::BAD_GATEWAY, "peer-unreachable", e.to_string()),
    }
}
