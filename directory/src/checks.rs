//! Health checks the directory runs against bindings that carry one (`check=`
//! on the binding): a TCP connect or an HTTP GET to the host's address and the
//! binding's port, every `interval` seconds, each within `timeout_ms`.
//!
//! A binding turns `critical` after `failures` failed probes in a row and back
//! to `passing` after `recoveries` passed probes in a row (an `unknown` one
//! turns `passing` at its first pass), so a check that flaps does not flap DNS.
//! A transition is an ordinary change (`Op::SetBindingHealth`): committed,
//! logged in the change feed, and `critical` bindings leave service answers
//! (docs/dns-schema.md, "Derived records"). Probes run on their own tasks and never hold up DNS answers or
//! other changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Draft;
use crate::model::Op;
use crate::model::{Check, Health, Probe};
use crate::state::Directory;

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
    /// The host's first address and the binding's port (none without an address).
    addr: Option<SocketAddr>,
    check: Check,
}

/// Settings of the checker.
#[derive(Debug, Clone, Copy)]
pub struct ChecksConfig {
    /// How long a replica may stay behind its `max_lag` before an event says so.
    pub lag_alert_after: Duration,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            lag_alert_after: Duration::from_secs(60),
        }
    }
}

/// Runs the checks until `stop` turns true.
pub async fn run(
    dir: Arc<Directory>,
    cfg: ChecksConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tracks: HashMap<Key, Track> = HashMap::new();
    let mut lags = Lags::reopened(&dir).await;
    let mut failover = Failover::default();
    // A probe's verdict: None is "no verdict yet" (a heartbeat check just after a restart).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Key, Check, Option<bool>)>(1024);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some((key, check, verdict)) = rx.recv() => {
                match verdict {
                    Some(passed) => record(&dir, &mut tracks, key, &check, passed).await,
                    None => {
                        if let Some(t) = tracks.get_mut(&key) {
                            t.probing = false;
                        }
                    }
                }
                continue;
            }
            _ = stop.changed() => return,
        }
        // With a shared store one server runs the checks; the others stand by.
        let d = dir.clone();
        if !tokio::task::spawn_blocking(move || d.lead("checks"))
            .await
            .unwrap_or(false)
        {
            tracks.clear();
            continue;
        }
        let now = Instant::now();
        lags.scan(&dir, cfg.lag_alert_after, now).await;
        failover.scan(&dir).await;
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
            let dir = dir.clone();
            tokio::spawn(async move {
                let passed = match (due.check.probe.clone(), due.addr) {
                    (Probe::Heartbeat, _) => {
                        let (origin, host, _) = &due.key;
                        heartbeat_fresh(&dir, origin, host, &due.check)
                    }
                    (_, Some(addr)) => Some(probe(addr, &due.check).await),
                    // No address to probe: it cannot pass.
                    (_, None) => Some(false),
                };
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
                let ip = z.hosts.get(&b.host).and_then(|h| h.addrs.first());
                out.push(Due {
                    key: (origin.clone(), b.host.clone(), b.service.clone()),
                    addr: ip.map(|ip| SocketAddr::new(*ip, b.port)),
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
            Probe::Heartbeat => false,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

/// Whether the host's sidecar sent a heartbeat within the check's interval
/// plus its timeout; no verdict until the directory has run that long (a
/// restart neither fails every host nor lets a dead one pass).
fn heartbeat_fresh(dir: &Directory, origin: &str, host: &str, check: &Check) -> Option<bool> {
    let window = Duration::from_secs(u64::from(check.interval))
        + Duration::from_millis(u64::from(check.timeout_ms));
    dir.heartbeat_within(origin, host, window)
}

/// What lags: a repository's or a database's replica, as its events name it.
type LagKey = (String, &'static str, String, String);

/// Replicas behind their repository's `max_lag` or their database's
/// `max_lag_s` (`Database::lag_of`), and since when. Events are `repo` or
/// `db` `NAME/HOST` `lagging`, then `caught-up`.
#[derive(Default)]
struct Lags {
    /// (zone, kind, repo or database, host) -> (behind since, alerted).
    behind: HashMap<LagKey, (Instant, bool)>,
}

/// Each replica of the zone and, if it lags, why.
fn lagging_replicas(z: &crate::model::Zone, origin: &str) -> Vec<(LagKey, Option<String>)> {
    let mut out = Vec::new();
    for r in z.repos.values() {
        let master = r.versions.get(&r.master).copied().unwrap_or(0);
        for h in &r.replicas {
            let key = (origin.to_string(), "repo", r.name.clone(), h.clone());
            let have = r.versions.get(h).copied().unwrap_or(0);
            let behind = master.saturating_sub(have);
            let why = (behind > r.max_lag).then(|| {
                format!(
                    "replica {h} of {} is {behind} version(s) behind its master {} (max_lag {})",
                    r.name, r.master, r.max_lag
                )
            });
            out.push((key, why));
        }
    }
    for d in z.dbs.values() {
        for h in &d.replicas {
            let key = (origin.to_string(), "db", d.name.clone(), h.clone());
            // A replica that never reported is not lagging yet: no sidecar reads it.
            let why = d.positions.get(h).and_then(|_| d.lag_of(h)).map(|why| {
                format!(
                    "replica {h} of database {} leaves read.{}.db: {why}",
                    d.name, d.name
                )
            });
            out.push((key, why));
        }
    }
    out
}

impl Lags {
    /// Replicas the audit log leaves `lagging` (no `caught-up` after) and
    /// that are still behind: a restart does not announce them again. One left
    /// `lagging` that is not behind now was removed or promoted since: its own
    /// change closed the matter, and no `caught-up` is owed.
    async fn reopened(dir: &Arc<Directory>) -> Self {
        let d = dir.clone();
        let behind = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for kind in ["repo", "db"] {
                for e in d.last_events(kind, &["lagging", "caught-up"]) {
                    if e.action != "lagging" {
                        continue;
                    }
                    let Some((name, host)) = e.name.split_once('/') else {
                        continue;
                    };
                    let key = (e.zone.clone(), kind, name.to_string(), host.to_string());
                    let still = d
                        .read(&e.zone, |z| {
                            lagging_replicas(z, &e.zone)
                                .into_iter()
                                .any(|(k, why)| k == key && why.is_some())
                        })
                        .unwrap_or(false);
                    if still {
                        out.push(key);
                    }
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        let now = Instant::now();
        Lags {
            behind: behind.into_iter().map(|k| (k, (now, true))).collect(),
        }
    }

    /// Notes which replicas are behind; writes `lagging` for one behind longer
    /// than `after`, and `caught-up` when an alerted one is back within
    /// `max_lag`. A replica that stopped being one (removed, promoted) is
    /// forgotten without a `caught-up`: its own change is the event.
    async fn scan(&mut self, dir: &Arc<Directory>, after: Duration, now: Instant) {
        let mut lagging: HashMap<LagKey, String> = HashMap::new();
        let mut replicas: std::collections::HashSet<LagKey> = Default::default();
        for origin in dir.origins() {
            dir.read(&origin, |z| {
                for (key, why) in lagging_replicas(z, &origin) {
                    if let Some(why) = why {
                        lagging.insert(key.clone(), why);
                    }
                    replicas.insert(key);
                }
            });
        }
        let mut events = Vec::new();
        for (key, message) in &lagging {
            let entry = self.behind.entry(key.clone()).or_insert((now, false));
            if !entry.1 && now.duration_since(entry.0) >= after {
                let (zone, kind, name, host) = key;
                events.push((
                    key.clone(),
                    zone.clone(),
                    Draft::new(kind, format!("{name}/{host}"), "lagging")
                        .transition("current", "lagging")
                        .message(format!("{message} for {} s", after.as_secs())),
                ));
            }
        }
        let mut gone = Vec::new();
        for (key, (_, alerted)) in &self.behind {
            if lagging.contains_key(key) {
                continue;
            }
            if *alerted && replicas.contains(key) {
                let (zone, kind, name, host) = key;
                let message = if *kind == "db" {
                    format!("replica {host} of database {name} is back within max_lag_s of its master and serves reads again")
                } else {
                    format!("replica {host} of {name} is back within max_lag of its master")
                };
                events.push((
                    key.clone(),
                    zone.clone(),
                    Draft::new(kind, format!("{name}/{host}"), "caught-up")
                        .transition("lagging", "current")
                        .message(message),
                ));
            } else {
                gone.push(key.clone());
            }
        }
        for key in gone {
            self.behind.remove(&key);
        }
        if events.is_empty() {
            return;
        }
        // The state moves only once its event is written: a failed write is
        // tried again at the next scan.
        let d = dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            events
                .into_iter()
                .filter_map(|(key, zone, draft)| {
                    let action = draft.action;
                    match d.record(&zone, draft, "directory") {
                        Ok(_) => Some((key, action)),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not record a replica's lag; trying again");
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (key, action) in written {
            if action == "lagging" {
                if let Some(entry) = self.behind.get_mut(&key) {
                    entry.1 = true;
                }
            } else {
                self.behind.remove(&key);
            }
        }
    }
}

/// Whether a host is fit to be a repository's master: in service, and its
/// sidecar's `switchboard` binding (if it has one) neither unavailable nor
/// failing its check.
fn fit(z: &crate::model::Zone, host: &str) -> bool {
    z.hosts.get(host).is_some_and(|h| h.in_service())
        && z.bindings
            .get(&(
                host.to_string(),
                crate::schema::SWITCHBOARD_SERVICE.to_string(),
            ))
            .is_none_or(|b| b.available && b.health != Health::Critical)
}

/// Automatic failover, for repositories that opted in (`auto_failover`):
/// when the master is not fit, promote the first fit replica that has every
/// version the master has. Never one that would lose a version: then an
/// event says so once (`failover-blocked`) and an admin decides. A promotion
/// is an ordinary change (refused while a write holds the lease; tried again
/// at the next tick), logged `by directory (auto-failover)`.
#[derive(Default)]
struct Failover {
    /// (zone, repo) already reported as blocked, until its master is fit again.
    blocked: std::collections::HashSet<(String, String)>,
}

impl Failover {
    async fn scan(&mut self, dir: &Arc<Directory>) {
        // (zone, repo, master, master's version, the replica to promote)
        let mut down: Vec<(String, String, String, u64, Option<String>)> = Vec::new();
        let mut fine: Vec<(String, String)> = Vec::new();
        for origin in dir.origins() {
            dir.read(&origin, |z| {
                for r in z.repos.values().filter(|r| r.auto_failover) {
                    if fit(z, &r.master) {
                        fine.push((origin.clone(), r.name.clone()));
                        continue;
                    }
                    let v = r.master_version();
                    let pick = r
                        .replicas
                        .iter()
                        .find(|h| fit(z, h) && r.version_of(h) == v)
                        .cloned();
                    down.push((origin.clone(), r.name.clone(), r.master.clone(), v, pick));
                }
            });
        }
        for key in fine {
            self.blocked.remove(&key);
        }
        for (zone, repo, master, version, pick) in down {
            let key = (zone.clone(), repo.clone());
            let d = dir.clone();
            match pick {
                Some(host) => {
                    let op = Op::Promote {
                        repo: repo.clone(),
                        host: host.clone(),
                        force: false,
                    };
                    let done = tokio::task::spawn_blocking(move || {
                        d.apply_by(&zone, op, "directory (auto-failover)")
                    })
                    .await;
                    match done {
                        Ok(Ok(_)) => {
                            tracing::warn!(repo = %repo, from = %master, to = %host, "automatic failover: promoted");
                            self.blocked.remove(&key);
                        }
                        Ok(Err(e)) => {
                            tracing::info!(repo = %repo, error = %e, "automatic failover waits")
                        }
                        Err(e) => tracing::warn!(error = %e, "automatic failover task failed"),
                    }
                }
                None if !self.blocked.contains(&key) => {
                    let draft = Draft::new("repo", &repo, "failover-blocked").message(format!(
                        "the master {master} of {repo} is out of service and no replica in service has all {version} versions: promote one by hand (repo promote --force records the loss) or bring {master} back"
                    ));
                    let written = tokio::task::spawn_blocking(move || {
                        d.record(&zone, draft, "directory (auto-failover)")
                    })
                    .await;
                    if let Ok(Ok(_)) = written {
                        self.blocked.insert(key);
                    }
                }
                None => {}
            }
        }
    }
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
    let applied = tokio::task::spawn_blocking(move || dir.apply_by(&origin, op, "check")).await;
    if let Ok(Err(e)) = applied {
        tracing::warn!(error = %e, "could not record a binding's health");
    }
}
