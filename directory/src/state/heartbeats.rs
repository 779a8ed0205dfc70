//! Sidecars' heartbeats: when each host was last heard from (the `heartbeat`
//! check reads it), the stale-answer episodes they report, logged once each,
//! and each host's allowance of events.

use super::{clock, ApplyError, Directory};
use crate::events::{self, Draft};
use crate::model;

pub use switchboard_proto::api::{HeartbeatReply, HeartbeatReport};

/// What the directory remembers of a host's heartbeats: in memory, except
/// that the episode it last logged is read back from the audit log at start.
#[derive(Debug, Clone, Default)]
pub(super) struct Heartbeat {
    /// The last heartbeat since the directory started.
    last: Option<std::time::Instant>,
    /// When (unix ms) the directory last took in this host's report: its last
    /// heartbeat whose episodes are logged, or the time of its last logged one.
    seen: Option<u64>,
    /// The stale episode announced and not yet over, by its start (unix ms).
    open: Option<u64>,
    /// The last episode logged as over: (from, to), unix ms.
    closed: Option<(u64, u64)>,
    /// This host's events are being written.
    writing: bool,
    /// When this host's event allowance is whole again (see [`EVENT_BURST`]).
    allowance: Option<std::time::Instant>,
    /// Events over the allowance since the directory started.
    dropped: u64,
    /// Events over the allowance since this host's last written ones.
    held: u64,
}

/// How many events one host's heartbeats may write at once; after that, one
/// per [`EVENT_EVERY`]. A heartbeat whose events are over the allowance is
/// answered without them (and without acknowledging its episode, which the
/// sidecar reports again, merged with any later one).
pub const EVENT_BURST: u32 = 10;
/// How fast a host's event allowance comes back: one event per 10 s.
pub const EVENT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How far ahead of the directory's clock a heartbeat may date an episode, and
/// how long before the host's previous heartbeat a new one may begin: clock
/// skew (signatures allow 30 s) and the time a heartbeat is in transit.
pub const HEARTBEAT_SLACK_MS: u64 = 120_000;
/// How long ago a stale episode may have begun when the directory has not
/// heard from the host since it started (7 days).
pub const MAX_EPISODE_AGE_MS: u64 = 7 * 86_400_000;

impl Heartbeat {
    /// Why `report` cannot be true, if it cannot: an episode that ends before
    /// it begins, a time ahead of the directory's clock, or an episode the
    /// directory has not logged that began before this host's previous report
    /// (which would have said so) or, if it has none, over
    /// [`MAX_EPISODE_AGE_MS`] ago.
    fn implausible(&self, report: &HeartbeatReport, now: u64) -> Option<String> {
        let ahead = now.saturating_add(HEARTBEAT_SLACK_MS);
        let (floor, bound) = match self.seen {
            Some(seen) => (
                seen.saturating_sub(HEARTBEAT_SLACK_MS),
                format!(
                    "more than {} s before the host's previous heartbeat ({})",
                    HEARTBEAT_SLACK_MS / 1000,
                    clock(seen)
                ),
            ),
            None => (
                now.saturating_sub(MAX_EPISODE_AGE_MS),
                format!("more than {} days ago", MAX_EPISODE_AGE_MS / 86_400_000),
            ),
        };
        let known = |t: u64| self.open == Some(t) || self.closed.is_some_and(|(f, _)| f == t);
        let too_old = |what: &str, t: u64| {
            (!known(t) && t < floor).then(|| {
                format!(
                    "{what} ({t}, {}) is {bound}: a sidecar reports an episode in its next heartbeat",
                    clock(t)
                )
            })
        };
        let ahead_of = |what: &str, t: u64| {
            (t > ahead).then(|| {
                format!(
                    "{what} ({t}) is more than {} s ahead of the directory's clock ({now})",
                    HEARTBEAT_SLACK_MS / 1000
                )
            })
        };
        if let Some((from, to)) = report.last_stale {
            if from > to {
                return Some(format!("last_stale ends ({to}) before it begins ({from})"));
            }
            if let Some(why) = ahead_of("the end of last_stale", to)
                .or_else(|| too_old("the start of last_stale", from))
            {
                return Some(why);
            }
        }
        let since = report.stale_since?;
        ahead_of("stale_since", since).or_else(|| too_old("stale_since", since))
    }

    /// Takes `n` events from the allowance, if it has them (a GCRA token
    /// bucket: `allowance` is when it is whole again).
    fn allow(&mut self, n: usize, now: std::time::Instant) -> bool {
        let whole = self.allowance.filter(|t| *t > now).unwrap_or(now);
        let cost = EVENT_EVERY.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        match whole.checked_add(cost) {
            Some(next) if next.duration_since(now) <= EVENT_EVERY * EVENT_BURST => {
                self.allowance = Some(next);
                true
            }
            _ => false,
        }
    }
}

impl Directory {
    /// Reads back each sidecar's last logged episode, so a report of it is
    /// not logged again after a restart.
    pub(super) fn recall_episodes(&self) {
        let last = self.last_events("sidecar", &["stale", "fresh"]);
        let mut beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        for e in last {
            let hb = beats.entry((e.zone.clone(), e.name.clone())).or_default();
            hb.seen = Some(e.time);
            match (e.action.as_str(), e.span) {
                ("stale", span) => hb.open = Some(span.map_or(0, |s| s.from)),
                (_, Some(events::Span { from, to: Some(to) })) => hb.closed = Some((from, to)),
                _ => {}
            }
        }
    }

    /// Takes one event from `host`'s allowance for a change signed with its
    /// own key: `TooMany` when it has none left.
    pub(super) fn charge_host_event(&self, origin: &str, host: &str) -> Result<(), ApplyError> {
        let mut beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        let hb = beats
            .entry((origin.to_string(), host.to_string()))
            .or_default();
        if !hb.allow(1, std::time::Instant::now()) {
            hb.dropped += 1;
            tracing::warn!(zone = %origin, host = %host, reason = "event-rate", "change by the host's own key refused: over its event allowance");
            return Err(ApplyError::TooMany(format!(
                "{host} has made more changes than its allowance ({EVENT_BURST} events, then one per {} s); try again later",
                EVENT_EVERY.as_secs()
            )));
        }
        Ok(())
    }

    /// Notes a heartbeat from `host`'s sidecar and writes the stale-answer
    /// episodes it reports to the audit log (each once: `stale` when it starts
    /// or is first heard of, `fresh` when it ends). A report whose times
    /// cannot be true is refused (`ApplyError::Invalid`, saying why); events
    /// over the host's allowance ([`EVENT_BURST`]) are not written.
    ///
    /// The database positions it reports are recorded (see
    /// [`Directory::record_positions`]) once the rest of it is taken in.
    pub fn heartbeat(
        &self,
        origin: &str,
        host: &str,
        report: &HeartbeatReport,
    ) -> Result<HeartbeatReply, ApplyError> {
        for p in &report.databases {
            model::parse_gtid(&p.gtid)
                .map_err(|e| ApplyError::Invalid(format!("database {}: {}", p.db, e.0)))?;
        }
        let reply = self.heartbeat_episodes(origin, host, report)?;
        self.record_positions(origin, host, &report.databases)?;
        Ok(reply)
    }

    /// Records the replication positions `host`'s sidecar reported, each that
    /// differs from the one recorded (a repeated report writes nothing, so a
    /// quiet database costs its heartbeats no store write), or that, repeated
    /// now, makes a replica short of the master's position lag. A position of a
    /// database the host does not serve (removed meanwhile) is left out.
    /// Eligibility for `read.DB.db` follows from the model (`Database::lag_of`).
    fn record_positions(
        &self,
        origin: &str,
        host: &str,
        reports: &[model::DbPositionReport],
    ) -> Result<(), ApplyError> {
        if reports.is_empty() {
            return Ok(());
        }
        let now = crate::time::unix_secs();
        let position = |r: &model::DbPositionReport| model::DbPosition {
            gtid: r.gtid.clone(),
            seconds_behind: r.seconds_behind,
            replicating: r.replicating,
            read_only: r.read_only,
            at: now,
        };
        let changed: Vec<&model::DbPositionReport> = self
            .read(origin, |z| {
                reports
                    .iter()
                    .filter(|r| {
                        let Some(d) = z.dbs.get(&r.db).filter(|d| d.has_host(host)) else {
                            return false;
                        };
                        let Some(p) = d.positions.get(host) else {
                            return true;
                        };
                        if p.gtid != r.gtid
                            || p.seconds_behind != r.seconds_behind
                            || p.replicating != r.replicating
                            || p.read_only != r.read_only
                        {
                            return true;
                        }
                        // The same report, later: it matters only to a replica
                        // still short of what the master reported, which lags
                        // once that is over `max_lag_s` old.
                        if host == d.master || !d.behind_master(host) {
                            return false;
                        }
                        let mut later = d.clone();
                        later.positions.insert(host.to_string(), position(r));
                        later.lag_of(host).is_some() != d.lag_of(host).is_some()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let by = format!("host {host}");
        for r in changed {
            let op = model::Op::SetDbPosition {
                db: r.db.clone(),
                host: host.to_string(),
                position: position(r),
            };
            self.apply_by(origin, op, &by)?;
        }
        Ok(())
    }

    fn heartbeat_episodes(
        &self,
        origin: &str,
        host: &str,
        report: &HeartbeatReport,
    ) -> Result<HeartbeatReply, ApplyError> {
        let next_ms = self
            .read(origin, |z| {
                z.hosts.get(host)?;
                let least = z
                    .bindings_of(host)
                    .filter_map(|b| b.check.as_ref())
                    .filter(|c| c.probe == model::Probe::Heartbeat)
                    .map(|c| u64::from(c.interval) * 1000 / 2)
                    .min();
                Some(least.unwrap_or(10_000).clamp(500, 30_000))
            })
            .ok_or_else(|| ApplyError::NotFound(format!("no zone {origin}")))?
            .ok_or_else(|| ApplyError::NotFound(format!("no host {host} in {origin}")))?;
        let key = (origin.to_string(), host.to_string());
        let by = format!("host {host}");
        // Decide under the lock; write every event of this heartbeat in one
        // batch without it; remember what was logged only once it is written
        // (a failed write is retried by the sidecar's next heartbeat). While a
        // host's events are being written, its other heartbeats only count as
        // heartbeats, so two in flight never announce the same episode twice.
        let now = crate::time::unix_ms();
        let (drafts, open, closed, ack) = {
            let mut beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
            let hb = beats.entry(key.clone()).or_default();
            // A heartbeat signed by the host is a sign of life, whatever it reports.
            hb.last = Some(std::time::Instant::now());
            if hb.writing {
                return Ok(HeartbeatReply {
                    next_ms,
                    ack_stale: None,
                });
            }
            if let Some(why) = hb.implausible(report, now) {
                tracing::warn!(zone = %origin, host = %host, reason = "bad-heartbeat", "heartbeat report refused: {why}");
                return Err(ApplyError::Invalid(why));
            }
            let (mut open, mut closed, mut ack) = (hb.open, hb.closed, None);
            let mut drafts = Vec::new();
            let stale = |since: u64| {
                Draft::new("sidecar", host, "stale")
                    .transition("fresh", "stale")
                    .message(format!(
                        "the sidecar on {host} routes on answers past their TTL since {}: it cannot reach the directory's DNS",
                        clock(since)
                    ))
                    .span(since, None)
            };
            let fresh = |from: u64, to: u64| {
                Draft::new("sidecar", host, "fresh")
                    .transition("stale", "fresh")
                    .message(format!(
                        "the sidecar on {host} has fresh answers again; it served stale ones for {} s (from {})",
                        to.saturating_sub(from) / 1000,
                        clock(from)
                    ))
                    .span(from, Some(to))
            };
            if let Some((from, to)) = report.last_stale {
                if closed != Some((from, to)) {
                    // The same start with a later end: the sidecar merged an
                    // episode into one already logged (its acknowledgement was
                    // lost); what comes after the logged end is new.
                    let resumed = closed.filter(|&(f, t)| f == from && to > t).map(|(_, t)| t);
                    let start = resumed.unwrap_or(from);
                    if open.is_none() {
                        drafts.push(stale(start));
                    }
                    drafts.push(fresh(start, to));
                    open = None;
                    closed = Some((from, to));
                }
                ack = Some((from, to));
            }
            match report.stale_since {
                Some(since) if open.is_none() => {
                    open = Some(since);
                    drafts.push(stale(since));
                }
                Some(_) => {}
                // Announced as stale, and now neither stale nor reporting how
                // it ended (the sidecar restarted): the episode is over.
                None if report.last_stale.is_none() => {
                    if let Some(from) = open.take() {
                        drafts.push(fresh(from, now));
                    }
                }
                None => {}
            }
            if drafts.is_empty() {
                hb.seen = Some(now);
                return Ok(HeartbeatReply {
                    next_ms,
                    ack_stale: ack,
                });
            }
            if !hb.allow(drafts.len(), std::time::Instant::now()) {
                // Nothing of this report is taken: the sidecar reports it again.
                if hb.held == 0 {
                    tracing::warn!(zone = %origin, host = %host, reason = "event-rate", "the host's heartbeats report more episodes than its allowance ({EVENT_BURST} events, then one per {} s); dropping them until it has room", EVENT_EVERY.as_secs());
                }
                hb.held += drafts.len() as u64;
                hb.dropped += drafts.len() as u64;
                return Ok(HeartbeatReply {
                    next_ms,
                    ack_stale: None,
                });
            }
            hb.writing = true;
            (drafts, open, closed, ack)
        };
        let written = self.with_events(origin, drafts, &by, |ev| self.store.append_events(ev));
        let mut beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        let hb = beats.entry(key).or_default();
        hb.writing = false;
        let ((), events) = written?;
        hb.open = open;
        hb.closed = closed;
        hb.seen = Some(now);
        if hb.held > 0 {
            tracing::warn!(zone = %origin, host = %host, reason = "event-rate", dropped = hb.held, "the host's heartbeats are within their event allowance again; {} events were dropped", hb.held);
            hb.held = 0;
        }
        drop(beats);
        self.announce(&events);
        Ok(HeartbeatReply {
            next_ms,
            ack_stale: ack,
        })
    }

    /// Whether `host`'s sidecar sent a heartbeat within `window`: `None` while
    /// the directory has run for less than `window` and not heard from it yet
    /// (no verdict: a restart must neither fail every host nor pass a dead one).
    pub fn heartbeat_within(
        &self,
        origin: &str,
        host: &str,
        window: std::time::Duration,
    ) -> Option<bool> {
        let beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        match beats
            .get(&(origin.to_string(), host.to_string()))
            .and_then(|h| h.last)
        {
            Some(last) => Some(last.elapsed() <= window),
            None if self.started.elapsed() < window => None,
            None => Some(false),
        }
    }

    /// How many events `host`'s heartbeats reported over its allowance (see
    /// [`EVENT_BURST`]) since the directory started.
    pub fn events_dropped(&self, origin: &str, host: &str) -> u64 {
        let beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        beats
            .get(&(origin.to_string(), host.to_string()))
            .map_or(0, |h| h.dropped)
    }

    /// How long ago each host of the zone sent its last heartbeat (hosts heard
    /// from since the directory started).
    pub fn heartbeats_seen(
        &self,
        origin: &str,
    ) -> std::collections::HashMap<String, std::time::Duration> {
        let beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        beats
            .iter()
            .filter(|((z, _), _)| z == origin)
            .filter_map(|((_, h), hb)| Some((h.clone(), hb.last?.elapsed())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::Store;
    use crate::view::ViewConfig;

    #[test]
    fn each_stale_episode_is_logged_once_whatever_the_sidecar_repeats() {
        let text = include_str!("../../../zones/cluster.example.zone");
        let zone = crate::zonefile::parse(text, "demo", Some("cluster.example.")).expect("zone");
        // Each `open` is a restart: another directory on the same store.
        let log = MemoryStore::default();
        let open = |log: &MemoryStore| {
            let d = Directory::open(Box::new(log.clone()), ViewConfig::default()).expect("open");
            d.seed(zone.clone()).expect("seed");
            d
        };
        let mut d = open(&log);
        let z = "cluster.example.";
        type Logged = Vec<(String, Option<(u64, Option<u64>)>)>;
        let seen = |log: &MemoryStore| -> Logged {
            log.events_after(0, usize::MAX)
                .expect("events")
                .iter()
                .filter(|e| e.kind == "sidecar")
                .map(|e| (e.action.clone(), e.span.map(|s| (s.from, s.to))))
                .collect()
        };
        let beat = |d: &Directory, since: Option<u64>, last: Option<(u64, u64)>| {
            d.heartbeat(
                z,
                "web1",
                &HeartbeatReport {
                    stale_since: since,
                    last_stale: last,
                    ..HeartbeatReport::default()
                },
            )
            .expect("heartbeat")
            .ack_stale
        };
        // Times a minute ago: within what a heartbeat may report.
        let t0 = crate::time::unix_ms() - 60_000;
        let t = |ms: u64| t0 + ms;
        // Stale, heard live, twice; then over, reported twice (a lost acknowledgement).
        beat(&d, Some(t(100)), None);
        beat(&d, Some(t(100)), None);
        assert_eq!(
            beat(&d, None, Some((t(100), t(200)))),
            Some((t(100), t(200)))
        );
        assert_eq!(
            beat(&d, None, Some((t(100), t(200)))),
            Some((t(100), t(200)))
        );
        let one = vec![
            ("stale".to_string(), Some((t(100), None))),
            ("fresh".to_string(), Some((t(100), Some(t(200))))),
        ];
        assert_eq!(seen(&log), one);
        // A second episode merged into the first after that lost acknowledgement:
        // only the part after what was logged is new.
        beat(&d, None, Some((t(100), t(300))));
        // An episode never heard live (the directory was unreachable): both ends at once.
        beat(&d, None, Some((t(400), t(500))));
        // The directory restarts: what it logged is read back, nothing is repeated.
        drop(d);
        d = open(&log);
        beat(&d, None, Some((t(400), t(500))));
        beat(&d, Some(t(600)), None);
        drop(d);
        d = open(&log);
        beat(&d, Some(t(600)), None);
        // The sidecar restarts while stale: it reports nothing; the episode is over.
        beat(&d, None, None);
        beat(&d, None, None);
        let all = seen(&log);
        let actions: Vec<&str> = all.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            actions,
            ["stale", "fresh", "stale", "fresh", "stale", "fresh", "stale", "fresh"],
            "{all:?}"
        );
        assert_eq!(
            all[2].1,
            Some((t(200), None)),
            "the merged part starts where the log ended"
        );
        assert_eq!(all[4].1, Some((t(400), None)));
        assert_eq!(all[6].1, Some((t(600), None)));
    }
}
