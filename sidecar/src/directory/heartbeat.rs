//! The heartbeat: a signed `POST /v1/hosts/HOST/heartbeat` to the directory,
//! as often as the directory asks (half the shortest `heartbeat` check interval
//! on this host's bindings, else every 10 s). It tells the directory this
//! sidecar is alive (a binding with `check=heartbeat` turns critical when the
//! beats stop) and reports stale-answer episodes, which the directory writes
//! to its audit log; a finished episode is reported until acknowledged. With
//! several directory servers it goes to any that can be reached (`apis`).
//! On a database host it carries the local servers' replication positions,
//! sent again within a second of a change (a promotion needs them current).

use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::api::{HeartbeatReply, HeartbeatReport};

use crate::db::host::DbReports;
use crate::directory::apis::Apis;
use crate::metrics::Metrics;

/// Sends heartbeats forever.
pub async fn run(apis: Arc<Apis>, host: String, metrics: Arc<Metrics>, dbs: Arc<DbReports>) {
    let mut failing = false;
    loop {
        let episodes = metrics.stale_episodes();
        let report = HeartbeatReport {
            stale_since: episodes.since,
            last_stale: episodes.last,
            databases: dbs.snapshot(),
        };
        let next = match apis
            .call(|c| {
                let (host, report) = (&host, &report);
                async move { c.heartbeat(host, report).await }
            })
            .await
        {
            Ok(HeartbeatReply { next_ms, ack_stale }) => {
                if failing {
                    tracing::info!("heartbeats reach the directory again");
                    failing = false;
                }
                if let Some(episode) = ack_stale {
                    metrics.stale_acknowledged(episode);
                }
                Duration::from_millis(next_ms.clamp(200, 60_000))
            }
            Err(e) if e.status == Some(400) => {
                // The directory refused what this report says of the episodes
                // (a clock step, or an episode from before a long outage):
                // sending it again would be refused again, so it is dropped.
                tracing::warn!(error = %e, "the directory refused this heartbeat's stale-answer report; dropping it");
                metrics.stale_refused();
                Duration::from_secs(1)
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "heartbeat not delivered; retrying every second");
                    failing = true;
                }
                Duration::from_secs(1)
            }
        };
        // Until the next beat is due, or sooner once the positions move.
        let due = tokio::time::Instant::now() + next;
        loop {
            let now = tokio::time::Instant::now();
            if now >= due {
                break;
            }
            tokio::time::sleep((due - now).min(Duration::from_secs(1))).await;
            if dbs.snapshot() != report.databases {
                break;
            }
        }
    }
}
