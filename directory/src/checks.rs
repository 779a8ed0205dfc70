//! Health checks the directory runs against bindings that carry one (`check=`
//! on the binding): a TCP connect or an HTTP GET to the host's address and the
//! binding's port, every `interval` seconds, each within `timeout_ms`.
//!
//! A binding turns `critical` after `failures` failed probes in a row and back
//! to `passing` after `recoveries` passed probes in a row (an `unknown` one
//! turns `passing` at its first pass), so a check that flaps does not flap DNS.
//! A transition is an ordinary change (`Op::SetBindingHealth`): committed,
//! logged in the change feed, and `critical` bindings leave service answers as
//! SPEC says. Probes run on their own tasks and never hold up DNS answers or
//! other changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{Check, Health, Probe};
use crate::state::{Directory, Op};

/// A binding under check: (zone, host, service).
type Key = (String, String, String);

#[derive(Debug)]
struct Track {
    next: Instant,
    passed: u32,
    failed: u32,
    probing: bool,
}

/// One probe to run.
struct Due {
    key: Key,
    addr: SocketAddr,
    check: Check,
}

/// Runs the checks until `stop` turns true.
pub async fn run(dir: Arc<Directory>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tracks: HashMap<Key, Track> = HashMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Key, Check, bool)>(1024);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some((key, check, passed)) = rx.recv() => {
                record(&dir, &mut tracks, key, &check, passed).await;
                continue;
            }
            _ = stop.changed() => return,
        }
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for due in checked(&dir) {
            seen.insert(due.key.clone());
            let t = tracks.entry(due.key.clone()).or_insert(Track {
                next: now,
                passed: 0,
                failed: 0,
                probing: false,
            });
            if t.probing || t.next > now {
                continue;
            }
            t.probing = true;
            t.next = now + Duration::from_secs(u64::from(due.check.interval));
            let tx = tx.clone();
            tokio::spawn(async move {
                let passed = probe(due.addr, &due.check).await;
                let _ = tx.send((due.key, due.check, passed)).await;
            });
        }
        tracks.retain(|k, _| seen.contains(k));
    }
}

/// Every binding with a check, and where to probe it.
fn checked(dir: &Directory) -> Vec<Due> {
    let mut out = Vec::new();
    for origin in dir.origins() {
        dir.read(&origin, |z| {
            for b in z.bindings.values() {
                let Some(check) = &b.check else { continue };
                let Some(ip) = z.hosts.get(&b.host).and_then(|h| h.addrs.first()) else {
                    continue;
                };
                out.push(Due {
                    key: (origin.clone(), b.host.clone(), b.service.clone()),
                    addr: SocketAddr::new(*ip, b.port),
                    check: check.clone(),
                });
            }
        });
    }
    out
}

/// Whether one probe passes.
async fn probe(addr: SocketAddr, check: &Check) -> bool {
    let timeout = Duration::from_millis(u64::from(check.timeout_ms));
    let attempt = async {
        match &check.probe {
            Probe::Tcp => tokio::net::TcpStream::connect(addr).await.is_ok(),
            Probe::Http { path, status } => http_status(addr, path).await == Some(*status),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

/// The status of `GET path` on `addr`, if it answers.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let host = match addr.ip() {
        IpAddr::V6(v6) => format!("[{v6}]:{}", addr.port()),
        IpAddr::V4(v4) => format!("{v4}:{}", addr.port()),
    };
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(
            http::header::USER_AGENT,
            "switchboard-directory health check",
        )
        .body(Empty::new())
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    Some(resp.status().as_u16())
}

/// Counts one probe's result and changes the binding's health when a streak
/// is long enough.
async fn record(
    dir: &Arc<Directory>,
    tracks: &mut HashMap<Key, Track>,
    key: Key,
    check: &Check,
    passed: bool,
) {
    let Some(t) = tracks.get_mut(&key) else {
        return;
    };
    t.probing = false;
    if passed {
        t.passed = t.passed.saturating_add(1);
        t.failed = 0;
    } else {
        t.failed = t.failed.saturating_add(1);
        t.passed = 0;
    }
    let (origin, host, service) = &key;
    let current = dir
        .read(origin, |z| {
            z.bindings
                .get(&(host.clone(), service.clone()))
                .map(|b| b.health)
        })
        .flatten();
    let Some(current) = current else { return };
    let next = if passed {
        let enough = current != Health::Critical || t.passed >= check.recoveries;
        (current != Health::Passing && enough).then_some(Health::Passing)
    } else {
        (current != Health::Critical && t.failed >= check.failures).then_some(Health::Critical)
    };
    let Some(health) = next else { return };
    tracing::warn!(
        zone = %origin, host = %host, service = %service,
        from = current.as_str(), to = health.as_str(),
        "binding health changed by its check"
    );
    let (dir, origin, op) = (
        dir.clone(),
        origin.clone(),
        Op::SetBindingHealth {
            host: host.clone(),
            service: service.clone(),
            health,
        },
    );
    let applied = tokio::task::spawn_blocking(move || dir.apply(&origin, op)).await;
    if let Ok(Err(e)) = applied {
        tracing::warn!(error = %e, "could not record a binding's health");
    }
}
