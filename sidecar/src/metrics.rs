//! Counters and gauges, rendered in Prometheus text format at `/metrics` on the
//! cluster listener: requests by kind and outcome, signature refusals by reason,
//! signatures verified, directory reachability and cache age, and the
//! stale-answer episodes the heartbeat reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use switchboard_proto::time::unix_ms;

/// Everything the sidecar counts.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// 1 while the last directory query got an answer.
    pub directory_up: AtomicBool,
    /// 1 while routing uses answers past their TTL.
    pub serving_stale: AtomicBool,
    /// 1 while the change feed is connected.
    pub feed_up: AtomicBool,
    /// Seconds since start of the last answer from the directory (0: never).
    last_answer_ms: AtomicU64,
    pub stale_answers: AtomicU64,
    /// Ed25519 batches run and cluster-call signatures verified in them.
    verify_batches: AtomicU64,
    verified_signatures: AtomicU64,
    /// Repositories with writes journaled on this host, their versions not yet
    /// recorded in the directory (`repo::journal`).
    pub journals_pending: AtomicU64,
    /// Session keys between hosts (`session`).
    pub sessions: SessionCounters,
    /// Stale-answer episodes, for the heartbeat to report.
    stale: Mutex<Episodes>,
    /// The admin API whose change feed is followed.
    feed_source: Mutex<String>,
}

/// Handshakes, and calls between hosts by how they were signed or checked.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Handshakes this host started (as the caller) and completed.
    pub handshakes_made: AtomicU64,
    /// Handshakes this host answered.
    pub handshakes_answered: AtomicU64,
    /// Calls sent signed with a session key / with ed25519.
    pub signed_session: AtomicU64,
    pub signed_ed25519: AtomicU64,
    /// Calls received and accepted with a session key / with ed25519.
    pub verified_session: AtomicU64,
    pub verified_ed25519: AtomicU64,
    /// Sessions dropped before their hour (a directory change, a refusal).
    pub dropped: AtomicU64,
    /// Calls sent again after the peer did not know the session.
    pub resent: AtomicU64,
}

impl SessionCounters {
    /// Adds one to a counter.
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// When routing started using answers past their TTL, and the last such
/// episode that ended (unix ms), until the directory acknowledges it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Episodes {
    pub since: Option<u64>,
    pub last: Option<(u64, u64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: Mutex::default(),
            refusals: Mutex::default(),
            directory_up: AtomicBool::new(false),
            serving_stale: AtomicBool::new(false),
            feed_up: AtomicBool::new(false),
            last_answer_ms: AtomicU64::new(0),
            stale_answers: AtomicU64::new(0),
            verify_batches: AtomicU64::new(0),
            verified_signatures: AtomicU64::new(0),
            journals_pending: AtomicU64::new(0),
            sessions: SessionCounters::default(),
            stale: Mutex::default(),
            feed_source: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Notes whether routing now uses answers past their TTL. An episode that
    /// ends before the directory acknowledged the previous one is merged into
    /// it (from the first start to the last end), so none is ever dropped.
    pub fn set_stale(&self, stale: bool) {
        if self.serving_stale.load(Ordering::Relaxed) == stale {
            return;
        }
        // The flag and the episodes change together, under the lock: lookups
        // that succeed and fail at once cannot leave them disagreeing.
        let mut e = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        if self.serving_stale.swap(stale, Ordering::Relaxed) == stale {
            return;
        }
        let now = unix_ms();
        match (stale, e.since) {
            (true, None) => e.since = Some(now),
            (false, Some(from)) => {
                e.since = None;
                let from = e.last.map_or(from, |(first, _)| first);
                e.last = Some((from, now));
            }
            _ => {}
        }
    }

    /// The episodes the next heartbeat reports.
    pub fn stale_episodes(&self) -> Episodes {
        *self.stale.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the finished episode the directory has logged, if it is still
    /// the one to report (not since merged with a later one).
    pub fn stale_acknowledged(&self, episode: (u64, u64)) {
        let mut e = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        if e.last == Some(episode) {
            e.last = None;
        }
    }

    /// Drops the episodes the directory refused to log: the finished one is
    /// forgotten, and an open one counts from now.
    pub fn stale_refused(&self) {
        let mut e = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        e.last = None;
        if e.since.is_some() {
            e.since = Some(unix_ms());
        }
    }

    /// Counts one request: `kind` is conduit, git, cluster, web; `outcome` local, forwarded, refused, error.
    pub fn request(&self, kind: &'static str, outcome: &'static str) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((kind, outcome))
            .or_default() += 1;
    }

    /// Counts one refused signature.
    pub fn refusal(&self, reason: &'static str) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Counts one verification batch of `signatures` cluster-call signatures.
    pub fn verified(&self, signatures: u64) {
        self.verify_batches.fetch_add(1, Ordering::Relaxed);
        self.verified_signatures
            .fetch_add(signatures, Ordering::Relaxed);
    }

    /// (batches, signatures) verified so far.
    pub fn verifications(&self) -> (u64, u64) {
        (
            self.verify_batches.load(Ordering::Relaxed),
            self.verified_signatures.load(Ordering::Relaxed),
        )
    }

    /// Notes whose change feed is followed now.
    pub fn set_feed_source(&self, api: &str) {
        let mut f = self.feed_source.lock().unwrap_or_else(|p| p.into_inner());
        f.clear();
        f.push_str(api);
    }

    /// Notes a fresh answer from the directory.
    pub fn answered(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_answer_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Seconds since the directory last answered, if it ever did.
    pub fn cache_age_secs(&self) -> Option<f64> {
        match self.last_answer_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => {
                Some((self.started.elapsed().as_millis() as u64).saturating_sub(ms) as f64 / 1000.0)
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP switchboard_sidecar_requests_total Requests routed, by kind and outcome."
        );
        let _ = writeln!(out, "# TYPE switchboard_sidecar_requests_total counter");
        for ((kind, outcome), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "switchboard_sidecar_requests_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP switchboard_sidecar_signature_refusals_total Cluster calls refused for their signature, and TLS callers refused (unknown-key, tls-handshake), by reason.");
        let _ = writeln!(
            out,
            "# TYPE switchboard_sidecar_signature_refusals_total counter"
        );
        for (reason, n) in self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "switchboard_sidecar_signature_refusals_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let s = &self.sessions;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP switchboard_sidecar_session_handshakes_total Session-key handshakes, as the caller (made) and as the answering host (answered).");
        let _ = writeln!(
            out,
            "# TYPE switchboard_sidecar_session_handshakes_total counter"
        );
        for (side, c) in [
            ("made", &s.handshakes_made),
            ("answered", &s.handshakes_answered),
        ] {
            let _ = writeln!(
                out,
                "switchboard_sidecar_session_handshakes_total{{side=\"{side}\"}} {}",
                n(c)
            );
        }
        let _ = writeln!(out, "# HELP switchboard_sidecar_cluster_calls_total Calls between hosts signed (sent) and verified (accepted), by the kind of signature.");
        let _ = writeln!(
            out,
            "# TYPE switchboard_sidecar_cluster_calls_total counter"
        );
        for (dir, auth, c) in [
            ("signed", "session", &s.signed_session),
            ("signed", "ed25519", &s.signed_ed25519),
            ("verified", "session", &s.verified_session),
            ("verified", "ed25519", &s.verified_ed25519),
        ] {
            let _ = writeln!(
                out,
                "switchboard_sidecar_cluster_calls_total{{direction=\"{dir}\",auth=\"{auth}\"}} {}",
                n(c)
            );
        }
        for (name, help, c) in [
            ("switchboard_sidecar_sessions_dropped_total", "Sessions dropped before their hour: the directory removed, changed or disabled a host, or the peer no longer knew the session.", &s.dropped),
            ("switchboard_sidecar_session_resends_total", "Calls sent again after a fresh handshake because the peer did not know the session.", &s.resent),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", n(c));
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        let b = |a: &AtomicBool| if a.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        gauge(
            &mut out,
            "switchboard_sidecar_directory_up",
            "1 if the directory answered the last query.",
            b(&self.directory_up),
        );
        gauge(
            &mut out,
            "switchboard_sidecar_serving_stale",
            "1 while routing on answers past their TTL (RFC 8767).",
            b(&self.serving_stale),
        );
        gauge(
            &mut out,
            "switchboard_sidecar_feed_up",
            "1 while the directory change feed is followed.",
            b(&self.feed_up),
        );
        let source = self
            .feed_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !source.is_empty() {
            let name = "switchboard_sidecar_feed_source";
            let _ = writeln!(
                out,
                "# HELP {name} The directory admin API whose change feed is followed."
            );
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{api=\"{source}\"}} 1");
        }
        gauge(
            &mut out,
            "switchboard_sidecar_cache_age_seconds",
            "Seconds since the directory last answered (-1: never).",
            self.cache_age_secs().unwrap_or(-1.0),
        );
        let _ = writeln!(out, "# HELP switchboard_sidecar_stale_answers_total Lookups answered from expired cache entries.");
        let _ = writeln!(
            out,
            "# TYPE switchboard_sidecar_stale_answers_total counter"
        );
        let _ = writeln!(
            out,
            "switchboard_sidecar_stale_answers_total {}",
            self.stale_answers.load(Ordering::Relaxed)
        );
        gauge(
            &mut out,
            "switchboard_sidecar_write_journals_pending",
            "Repositories with an acknowledged write whose version the directory has not recorded yet (writes to them are refused until it is).",
            self.journals_pending.load(Ordering::Relaxed) as f64,
        );
        let (batches, signatures) = self.verifications();
        for (name, help, v) in [
            (
                "switchboard_sidecar_signature_batches_total",
                "Ed25519 verification batches run for cluster calls.",
                batches,
            ),
            (
                "switchboard_sidecar_signatures_verified_total",
                "Cluster-call signatures verified (signatures / batches is the mean batch size).",
                signatures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}
