//! Following the directory's change feed (`GET /v1/feed`, a long poll): when the
//! zone's serial moves, every cached answer is marked to be asked for again, so a
//! promotion or a host marked unavailable reaches routing within a second instead
//! of a TTL. A marked answer stays until a new one replaces it, so a directory
//! that dies right after a change leaves nothing unanswered (serve-stale). When
//! the feed is down, answers simply expire by TTL.
//!
//! With several directory servers (`apis`), the feed of one is followed until
//! it cannot be reached; then at once another's. Its first answer (`since=0`)
//! marks every cached answer to be asked again, since changes may have been
//! missed meanwhile and serials of servers with their own stores differ; the
//! answers stay until replaced, so the move leaves no routing gap. With
//! several, each long poll is held 10 s instead of 25 s, so a server cut off
//! without closing its connections is left within 20 s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http_body_util::BodyExt;

use crate::directory::answers::DirectoryClient;
use crate::directory::apis::Apis;
use crate::outbound::forward::{ForwardError, Forwarder};

/// Follows the feed forever.
pub async fn follow(dir: Arc<DirectoryClient>, fwd: Arc<Forwarder>, apis: Arc<Apis>, zone: String) {
    let mut since: u64 = 0;
    let mut down_logged = false;
    let mut current: Option<String> = None;
    loop {
        let Some(ep) = apis.feed(current.as_deref()) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if current.as_deref() != Some(ep.url.as_str()) {
            if let Some(old) = &current {
                tracing::info!(from = %old, to = %ep.url, "following another directory server's change feed");
            }
            dir.metrics.set_feed_source(&ep.url);
            current = Some(ep.url.clone());
            since = 0;
        }
        let hold = if apis.several() { 10 } else { 25 };
        let uri = format!(
            "{}/v1/feed?zone={zone}&since={since}&timeout={hold}",
            ep.url.trim_end_matches('/')
        );
        let result = poll(&fwd, &uri, Duration::from_secs(hold + 10)).await;
        match result {
            Ok(serial) => {
                apis.mark_up(&ep);
                dir.metrics.feed_up.store(true, Ordering::Relaxed);
                if down_logged {
                    tracing::info!(api = %ep.url, "directory change feed is back");
                    down_logged = false;
                }
                if serial != since {
                    dir.invalidate();
                    tracing::debug!(
                        serial,
                        "directory changed; cached answers to be asked again"
                    );
                    since = serial;
                }
            }
            Err(e) => {
                let reached = matches!(
                    e,
                    FeedError::Status(_) | FeedError::Json(_) | FeedError::NoSerial
                );
                if !reached {
                    apis.mark_down(&ep, &e.to_string());
                }
                // Another server up: its feed at once, with no gap.
                if !reached
                    && apis
                        .feed(None)
                        .is_some_and(|next| next.url != ep.url && apis.is_up(&next))
                {
                    continue;
                }
                dir.metrics.feed_up.store(false, Ordering::Relaxed);
                if !down_logged {
                    tracing::warn!(api = %ep.url, error = %e, "directory change feed unavailable; falling back to TTL expiry");
                    down_logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Why the feed could not be read (it is tried again every second).
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("bad --directory-api: {0}")]
    BadUrl(#[from] http::uri::InvalidUri),
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Unreachable(#[from] ForwardError),
    #[error("HTTP {0}")]
    Status(http::StatusCode),
    #[error("{0}")]
    Body(#[from] hyper::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("no serial in the feed")]
    NoSerial,
}

/// One long poll of the feed: the zone's serial when it answers (within `limit`).
async fn poll(fwd: &Forwarder, uri: &str, limit: Duration) -> Result<u64, FeedError> {
    let uri: Uri = uri.parse()?;
    let resp = tokio::time::timeout(limit, fwd.get(uri))
        .await
        .map_err(|_| FeedError::Timeout)??;
    if !resp.status().is_success() {
        return Err(FeedError::Status(resp.status()));
    }
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .map_err(|_| FeedError::Timeout)??
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v.get("serial")
        .and_then(|s| s.as_u64())
        .ok_or(FeedError::NoSerial)
}
