//! The directory's state: the model in memory, the store behind it, the view in front.
//!
//! `Directory::apply` is the one place a change happens: validate against the
//! current model, write one batch to the store and flush it, update the model,
//! rebuild that zone's answers and swap them in. When it returns, the change is
//! durable and visible in DNS.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};

use crate::events::{self, Draft, Event};
use crate::model::{self, AdminKey, Binding, Health, Host, Loss, Repo, Zone};
use crate::store::{Change, Store, StoreError, Unreadable};
use crate::view::{self, View, ViewConfig};

/// A change the admin API can ask for.
#[derive(Debug, Clone)]
pub enum Op {
    AddHost(Host),
    RemoveHost(String),
    SetAvailable {
        host: String,
        available: bool,
    },
    SetHealth {
        host: String,
        health: Health,
    },
    AddBinding(Binding),
    RemoveBinding {
        host: String,
        service: String,
    },
    /// A binding's health, as its check (or an operator) found it.
    SetBindingHealth {
        host: String,
        service: String,
        health: Health,
    },
    AddRepo(Repo),
    RemoveRepo(String),
    Promote {
        repo: String,
        host: String,
        force: bool,
    },
    /// Turns the directory's automatic failover of a repository on or off.
    SetAutoFailover {
        repo: String,
        on: bool,
    },
    /// A host's version of a repository. The master's needs the write lease.
    SetVersion {
        repo: String,
        host: String,
        version: u64,
        lease: Option<String>,
    },
    AddAdmin(AdminKey),
    RemoveAdmin(String),
}

/// Why a change was not applied. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// Over a host's event allowance (see [`EVENT_BURST`]).
    #[error("{0}")]
    TooMany(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<model::Invalid> for ApplyError {
    fn from(e: model::Invalid) -> Self {
        ApplyError::Invalid(e.0)
    }
}

/// One applied change, as the change feed reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangeEvent {
    pub zone: String,
    /// The zone's serial after the change.
    pub serial: u32,
    /// `host`, `binding`, `repo`, `admin` or `zone`.
    pub kind: &'static str,
    /// The host, `host/service`, repository, admin or zone changed.
    pub name: String,
    /// What happened: `add`, `remove`, `disable`, `enable`, `health`, `promote`, `version`, `import`, `seed`.
    pub action: &'static str,
}

/// How many change events the feed remembers; a follower further behind re-reads everything.
const EVENT_LOG: usize = 4096;

/// A zone answering from its zone file, not yet written to the store
/// ([`Directory::seed_unsaved`], then [`Directory::save_seed`]).
#[derive(Debug)]
#[must_use = "save the seed before taking changes"]
pub struct UnsavedSeed {
    origin: String,
}

/// The running directory.
pub struct Directory {
    store: Box<dyn Store>,
    zones: Mutex<BTreeMap<String, Zone>>,
    view: Arc<ArcSwap<View>>,
    cfg: ViewConfig,
    changes: tokio::sync::watch::Sender<u64>,
    events: Mutex<std::collections::VecDeque<ChangeEvent>>,
    /// Write leases by (zone, repository): one write at a time, cluster-wide.
    leases: Mutex<std::collections::HashMap<(String, String), Lease>>,
    /// Zones whose view the store holds, at that serial (loaded or saved).
    saved_views: Mutex<std::collections::HashMap<String, u32>>,
    /// The next audit event's id; held while an event is written so ids reach
    /// the store in order.
    next_event: Mutex<u64>,
    /// The id of the last audit event written.
    last_event: tokio::sync::watch::Sender<u64>,
    /// Sidecar heartbeats by (zone, host).
    heartbeats: Mutex<std::collections::HashMap<(String, String), Heartbeat>>,
    started: std::time::Instant,
    /// Stored records left out at start because they could not be read.
    unreadable: Vec<Unreadable>,
}

/// What the directory remembers of a host's heartbeats: in memory, except
/// that the episode it last logged is read back from the audit log at start.
#[derive(Debug, Clone, Default)]
struct Heartbeat {
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

pub use switchboard_proto::api::{HeartbeatReply, HeartbeatReport};

/// The right to write one repository for a short while, held by its master.
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: String,
    pub token: String,
    pub expires: std::time::Instant,
}

/// The longest a write lease may be asked for.
pub const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

pub use switchboard_proto::time::clock;

fn next_serial(s: u32) -> u32 {
    match s.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

impl Directory {
    /// Loads every stored zone and builds its answers.
    pub fn open(store: Box<dyn Store>, cfg: ViewConfig) -> Result<Self, ApplyError> {
        let mut zones = BTreeMap::new();
        let mut view = View::default();
        let mut stamp = None;
        let mut saved_views = std::collections::HashMap::new();
        let loaded = store.load()?;
        let mut unreadable = loaded.unreadable;
        for z in loaded.zones {
            let cached = store.load_view(z.origin()).and_then(|bytes| {
                let stamp = stamp.get_or_insert_with(view::cache::stamp).as_ref()?;
                let zv = view::cache::decode(&z, cfg, stamp, &bytes);
                if zv.is_none() {
                    tracing::info!(zone = %z.origin(), "saved view is from another binary or state; rebuilding");
                }
                zv
            });
            let zv = match cached {
                Some(zv) => {
                    saved_views.insert(z.origin().to_string(), z.serial);
                    zv
                }
                None => match view::build(&z, cfg) {
                    Ok(zv) => zv,
                    Err(reason) => {
                        unreadable.push(Unreadable {
                            key: format!("{}/", z.origin()),
                            reason: format!("the zone is not served: {reason}"),
                        });
                        continue;
                    }
                },
            };
            view = view.with_zone(&zv.origin.clone(), Some(Arc::new(zv)));
            zones.insert(z.origin().to_string(), z);
        }
        for u in &unreadable {
            tracing::error!(key = %u.key, reason = %u.reason, "stored record is unreadable; left out, serving the rest (see `status`)");
        }
        let last_event = store.last_event_id()?;
        let dir = Directory {
            unreadable,
            next_event: Mutex::new(last_event + 1),
            heartbeats: Mutex::new(Default::default()),
            started: std::time::Instant::now(),
            last_event: tokio::sync::watch::channel(last_event).0,
            store,
            zones: Mutex::new(zones),
            view: Arc::new(ArcSwap::from_pointee(view)),
            cfg,
            changes: tokio::sync::watch::channel(0).0,
            events: Mutex::new(Default::default()),
            leases: Mutex::new(Default::default()),
            saved_views: Mutex::new(saved_views),
        };
        {
            // Each sidecar's last logged episode, so a report of it is not
            // logged again after a restart.
            let last = dir.last_events("sidecar", &["stale", "fresh"]);
            let mut beats = dir.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
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
        Ok(dir)
    }

    /// Saves each zone's compiled view in the store (see `view::cache`), for a
    /// fast restart. Call when no more changes will come (at shutdown).
    pub fn save_views(&self) -> Result<(), StoreError> {
        let Some(stamp) = view::cache::stamp() else {
            return Ok(());
        };
        let zones = self.lock();
        let current = self.view.load();
        let mut saved = self.saved_views.lock().unwrap_or_else(|p| p.into_inner());
        for zv in &current.zones {
            let origin = zv.origin.to_string();
            let current = zones.get(&origin).is_some_and(|z| z.serial == zv.serial);
            if current && saved.get(&origin) != Some(&zv.serial) {
                self.store
                    .save_view(&origin, &view::cache::encode(zv, self.cfg, &stamp))?;
                saved.insert(origin, zv.serial);
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Zone>> {
        // A panic while holding the lock cannot leave a half-applied change: the
        // model is only touched after the store commit, by infallible code.
        self.zones.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The view the DNS path reads.
    pub fn view(&self) -> Arc<ArcSwap<View>> {
        self.view.clone()
    }

    pub fn config(&self) -> ViewConfig {
        self.cfg
    }

    /// A receiver that sees a new value after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Stored records that could not be read at start (left out of the model).
    pub fn unreadable(&self) -> &[Unreadable] {
        &self.unreadable
    }

    /// Origins of every zone, sorted.
    pub fn origins(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Runs `f` on a zone's model.
    pub fn read<T>(&self, origin: &str, f: impl FnOnce(&Zone) -> T) -> Option<T> {
        self.lock().get(origin).map(f)
    }

    fn publish(
        &self,
        zone: &Zone,
        event: (&'static str, String, &'static str),
    ) -> Result<(), ApplyError> {
        let zv = view::build(zone, self.cfg).map_err(ApplyError::Invalid)?;
        self.publish_built(zone, zv, event);
        Ok(())
    }

    /// Publishes a view already built for `zone`.
    fn publish_built(
        &self,
        zone: &Zone,
        zv: view::ZoneView,
        event: (&'static str, String, &'static str),
    ) {
        let origin = zv.origin.clone();
        let next = self.view.load().with_zone(&origin, Some(Arc::new(zv)));
        self.view.store(Arc::new(next));
        self.log_event(zone, event);
    }

    /// Publishes a change that touched only `scope`: the zone's view is patched,
    /// not rebuilt, so a change costs the same in a small zone and a large one.
    fn publish_patch(
        &self,
        zone: &Zone,
        scope: &view::Scope,
        gone: Vec<hickory_proto::rr::Name>,
        event: (&'static str, String, &'static str),
    ) -> Result<(), ApplyError> {
        let current = self.view.load();
        let Some(old) = current
            .zones
            .iter()
            .find(|z| z.origin.to_string() == zone.origin())
            .cloned()
        else {
            return self.publish(zone, event);
        };
        let zv = view::patch(&old, gone, zone, scope, self.cfg).map_err(ApplyError::Invalid)?;
        let origin = zv.origin.clone();
        let next = current.with_zone(&origin, Some(Arc::new(zv)));
        self.view.store(Arc::new(next));
        self.log_event(zone, event);
        Ok(())
    }

    fn log_event(&self, zone: &Zone, event: (&'static str, String, &'static str)) {
        {
            let mut log = self.events.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() == EVENT_LOG {
                log.pop_front();
            }
            let (kind, name, action) = event;
            log.push_back(ChangeEvent {
                zone: zone.origin().to_string(),
                serial: zone.serial,
                kind,
                name,
                action,
            });
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// The zone's serial and the changes after `since` that the log still holds;
    /// `complete` is false when older changes were dropped from the log.
    pub fn changes_since(&self, origin: &str, since: u64) -> Option<(u32, Vec<ChangeEvent>, bool)> {
        // The view, not the model: no wait behind a writer that holds the zones lock.
        let serial = self
            .view
            .load()
            .zones
            .iter()
            .find(|z| z.origin.to_string() == origin)
            .map(|z| z.serial)?;
        let log = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let events: Vec<ChangeEvent> = log
            .iter()
            .filter(|e| e.zone == origin && u64::from(e.serial) > since)
            .cloned()
            .collect();
        let oldest = log
            .iter()
            .find(|e| e.zone == origin)
            .map(|e| u64::from(e.serial));
        let complete = since == 0
            || oldest.is_some_and(|o| o.saturating_sub(1) <= since)
            || u64::from(serial) <= since;
        Some((serial, events, complete))
    }

    /// Stores `zone` unless the store already has its origin. Returns whether it did.
    /// If the store write fails the zone still answers, unsaved: a caller that goes on
    /// must not take changes for it (`serve` stops instead).
    pub fn seed(&self, zone: Zone) -> Result<bool, ApplyError> {
        match self.seed_unsaved(zone)? {
            Some(seed) => self.save_seed(seed).map(|()| true),
            None => Ok(false),
        }
    }

    /// The first half of [`Self::seed`]: builds the zone's view and answers from it,
    /// before the store has it. Nothing is lost if the process dies before
    /// [`Self::save_seed`]: the next start seeds again from the same file. Save it
    /// before taking any change.
    pub fn seed_unsaved(&self, zone: Zone) -> Result<Option<UnsavedSeed>, ApplyError> {
        let mut zones = self.lock();
        if zones.contains_key(zone.origin()) {
            return Ok(None);
        }
        let t = std::time::Instant::now();
        let zv = view::build(&zone, self.cfg).map_err(ApplyError::Invalid)?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "view built");
        let origin = zone.origin().to_string();
        self.publish_built(&zone, zv, ("zone", origin.clone(), "seed"));
        zones.insert(origin.clone(), zone);
        Ok(Some(UnsavedSeed { origin }))
    }

    /// The second half of [`Self::seed`]: writes the seeded zone to the store, with
    /// its event.
    pub fn save_seed(&self, seed: UnsavedSeed) -> Result<(), ApplyError> {
        let t = std::time::Instant::now();
        let zones = self.lock();
        let Some(zone) = zones.get(&seed.origin) else {
            return Err(ApplyError::Invalid(format!(
                "zone {} was seeded but is gone",
                seed.origin
            )));
        };
        let draft = Draft::new("zone", &seed.origin, "seed").message(format!(
            "zone {} seeded from its zone file ({} hosts, {} bindings, {} repositories)",
            seed.origin,
            zone.hosts.len(),
            zone.bindings.len(),
            zone.repos.len()
        ));
        let ((), audit) = self.with_events(&seed.origin, vec![draft], "directory", |ev| {
            self.store.replace_zone(zone, ev)
        })?;
        drop(zones);
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "store written");
        self.announce(&audit);
        Ok(())
    }

    /// Replaces a zone whole (`zone import`). The serial moves past both the old
    /// zone's and the file's, so secondaries see the change.
    pub fn import(&self, mut zone: Zone, by: &str) -> Result<u32, ApplyError> {
        if zone.admins.is_empty() {
            return Err(ApplyError::Invalid(
                "the zone has no admin key (NAME._admin TXT key=ed25519:...): importing it would lock every admin out".into(),
            ));
        }
        let mut zones = self.lock();
        if let Some(old) = zones.get(zone.origin()) {
            zone.serial = zone.serial.max(next_serial(old.serial));
        }
        let zv = view::build(&zone, self.cfg).map_err(ApplyError::Invalid)?;
        let serial = zone.serial;
        let origin = zone.origin().to_string();
        let draft = Draft::new("zone", &origin, "import").message(format!(
            "zone {origin} replaced whole by an import ({} hosts, {} bindings, {} repositories; serial {serial})",
            zone.hosts.len(),
            zone.bindings.len(),
            zone.repos.len()
        ));
        let ((), audit) = self.with_events(&origin, vec![draft], by, |ev| {
            self.store.replace_zone(&zone, ev)
        })?;
        self.publish_built(&zone, zv, ("zone", origin.clone(), "import"));
        zones.insert(origin, zone);
        drop(zones);
        self.announce(&audit);
        Ok(serial)
    }

    /// Applies one change made by the directory itself.
    pub fn apply(&self, origin: &str, op: Op) -> Result<u32, ApplyError> {
        self.apply_by(origin, op, "directory")
    }

    /// Applies one change to one zone: validate, commit durably with its audit
    /// event, publish. `by` says who asked (`admin NAME`, `host NAME`, `check`).
    /// Returns the new serial.
    pub fn apply_by(&self, origin: &str, op: Op, by: &str) -> Result<u32, ApplyError> {
        let mut zones = self.lock();
        let zone = zones
            .get_mut(origin)
            .ok_or_else(|| ApplyError::NotFound(format!("no zone {origin}")))?;
        if let Op::Promote { repo, .. } = &op {
            if let Some(holder) = self.lease_holder(origin, repo) {
                return Err(ApplyError::Conflict(format!(
                    "a write to {repo} is in progress on {holder}; promote again in a moment"
                )));
            }
        }
        if let Op::SetVersion {
            repo, host, lease, ..
        } = &op
        {
            let is_master = zone.repos.get(repo).is_some_and(|r| &r.master == host);
            if is_master && !self.lease_valid(origin, repo, host, lease.as_deref()) {
                return Err(ApplyError::Conflict(format!(
                    "{host} is recording a write to {repo} without holding its write lease: take the lease first (POST /v1/repos/{repo}/lease)"
                )));
            }
        }
        let event = describe(&op);
        let scope = scope_of(zone, &op);
        let gone = view::names_of(zone, self.cfg, &scope).map_err(ApplyError::Invalid)?;
        let changes = plan(zone, op.clone())?;
        let draft = of_change(zone, &op, &changes);
        if let (Some(host), Some(_)) = (by.strip_prefix("host "), &draft) {
            // A host's own changes (its health) are events like its heartbeats'
            // reports, from the same allowance. Lock order: zones, then heartbeats.
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
        }
        let serial = next_serial(zone.serial);
        let t = std::time::Instant::now();
        let ((), audit) = self.with_events(origin, draft.into_iter().collect(), by, |ev| {
            self.store.commit(origin, serial, &changes, ev)
        })?;
        let committed = t.elapsed();
        for c in changes {
            apply_change(zone, c);
        }
        zone.serial = serial;
        // Building the view fails only on a bad origin or SOA name, which seed and
        // import have already checked for this zone: the change is never half-seen.
        self.publish_patch(zone, &scope, gone, event)?;
        self.announce(&audit);
        tracing::info!(
            zone = origin,
            serial,
            commit_us = committed.as_micros() as u64,
            total_us = t.elapsed().as_micros() as u64,
            "change applied"
        );
        Ok(serial)
    }

    /// Writes an event that is not a change of the model (a lagging replica, a
    /// sidecar serving stale answers) to the audit log, durably.
    pub fn record(&self, origin: &str, draft: Draft, by: &str) -> Result<Event, StoreError> {
        let ((), mut written) =
            self.with_events(origin, vec![draft], by, |ev| self.store.append_events(ev))?;
        self.announce(&written);
        written
            .pop()
            .ok_or_else(|| StoreError::Io("no event was numbered".into()))
    }

    /// Numbers `drafts` and runs `write`, the store write that carries them.
    /// The ids are used up whatever happens: a write that failed after its
    /// events reached the store (a failed flush) never lends their ids to
    /// other events, so a reader's place in the log stays exact.
    fn with_events<T>(
        &self,
        origin: &str,
        drafts: Vec<Draft>,
        by: &str,
        write: impl FnOnce(&[Event]) -> Result<T, StoreError>,
    ) -> Result<(T, Vec<Event>), StoreError> {
        let mut next = self.next_event.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::time::unix_ms();
        let numbered: Vec<Event> = drafts
            .into_iter()
            .zip(*next..)
            .map(|(d, id)| d.finish(id, now, origin, by))
            .collect();
        let result = write(&numbered);
        *next += numbered.len() as u64;
        drop(next);
        result.map(|t| (t, numbered))
    }

    /// The last of the recent events of `kind` with one of `actions`, per
    /// (zone, name): what a restarted directory needs to know of episodes it
    /// had announced (a replica lagging, a sidecar stale) so as not to
    /// announce them twice.
    pub fn last_events(&self, kind: &str, actions: &[&str]) -> Vec<Event> {
        let last = self.last_event_id();
        let recent = match self.store.events_after(last.saturating_sub(10_000), 10_000) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the audit log; open episodes are forgotten");
                return vec![];
            }
        };
        let mut latest: std::collections::BTreeMap<(String, String), Event> = Default::default();
        for e in recent {
            if e.kind == kind && actions.contains(&e.action.as_str()) {
                latest.insert((e.zone.clone(), e.name.clone()), e);
            }
        }
        latest.into_values().collect()
    }

    /// Logs written events and wakes their readers.
    fn announce(&self, written: &[Event]) {
        for e in written {
            tracing::info!(id = e.id, zone = %e.zone, kind = %e.kind, name = %e.name, action = %e.action, by = %e.by, "event: {}", e.message);
        }
        if let Some(last) = written.last() {
            self.last_event.send_modify(|n| *n = (*n).max(last.id));
        }
    }

    /// Notes a heartbeat from `host`'s sidecar and writes the stale-answer
    /// episodes it reports to the audit log (each once: `stale` when it starts
    /// or is first heard of, `fresh` when it ends). A report whose times
    /// cannot be true is refused (`ApplyError::Invalid`, saying why); events
    /// over the host's allowance ([`EVENT_BURST`]) are not written.
    pub fn heartbeat(
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

    /// Up to `limit` audit events after `after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.store.events_after(after, limit)
    }

    /// A receiver whose value is the id of the last audit event written.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.last_event.subscribe()
    }

    /// The id of the last audit event written.
    pub fn last_event_id(&self) -> u64 {
        *self.last_event.borrow()
    }

    /// A named reader's place in the audit log (see `Store::cursor`).
    pub fn cursor(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.store.cursor(name)
    }

    pub fn set_cursor(&self, name: &str, id: u64) -> Result<(), StoreError> {
        self.store.set_cursor(name, id)
    }

    /// Grants `host` the write lease of `repo` for `ttl`, if `host` is the master,
    /// in service, and nobody holds an unexpired lease. Returns the lease token.
    pub fn acquire_lease(
        &self,
        origin: &str,
        repo: &str,
        host: &str,
        ttl: std::time::Duration,
    ) -> Result<String, ApplyError> {
        let master_ok = self
            .read(origin, |z| {
                let r = z.repos.get(repo).ok_or_else(|| {
                    ApplyError::NotFound(format!("no repository {repo} in {origin}"))
                })?;
                if r.master != host {
                    return Err(ApplyError::Conflict(format!(
                        "{host} is not the master of {repo} ({} is): only the master writes",
                        r.master
                    )));
                }
                if r.readonly {
                    return Err(ApplyError::Conflict(format!("{repo} is read-only")));
                }
                match z.hosts.get(host) {
                    Some(h) if h.in_service() => Ok(()),
                    _ => Err(ApplyError::Conflict(format!(
                        "{host} is not in service: writes to {repo} wait for it or for a promotion"
                    ))),
                }
            })
            .ok_or_else(|| ApplyError::NotFound(format!("no zone {origin}")))?;
        master_ok?;
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let key = (origin.to_string(), repo.to_string());
        if let Some(l) = leases.get(&key).filter(|l| l.expires > now) {
            return Err(ApplyError::Conflict(format!(
                "the write lease of {repo} is held by {} for {} ms more",
                l.holder,
                (l.expires - now).as_millis()
            )));
        }
        let token = data_encoding::HEXLOWER.encode(&rand::random::<[u8; 16]>());
        leases.insert(
            key,
            Lease {
                holder: host.to_string(),
                token: token.clone(),
                expires: now + ttl.min(MAX_LEASE),
            },
        );
        Ok(token)
    }

    /// Gives a lease back (a no-op if it already expired or was taken over).
    pub fn release_lease(&self, origin: &str, repo: &str, token: &str) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let key = (origin.to_string(), repo.to_string());
        if leases.get(&key).is_some_and(|l| l.token == token) {
            leases.remove(&key);
        }
    }

    /// Who holds the lease of `repo` now, if anyone.
    pub fn lease_holder(&self, origin: &str, repo: &str) -> Option<String> {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(&(origin.to_string(), repo.to_string()))
            .filter(|l| l.expires > std::time::Instant::now())
            .map(|l| l.holder.clone())
    }

    fn lease_valid(&self, origin: &str, repo: &str, host: &str, token: Option<&str>) -> bool {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(&(origin.to_string(), repo.to_string()))
            .is_some_and(|l| {
                Some(l.token.as_str()) == token
                    && l.holder == host
                    && l.expires > std::time::Instant::now()
            })
    }

    /// The origin of the zone whose name is `name` or which holds it.
    pub fn zone_of(&self, name: &str) -> Option<String> {
        let n = Name::from_ascii(name).ok()?;
        let lower = LowerName::new(&n);
        self.view
            .load()
            .zone_for(&lower)
            .map(|z| z.origin.to_string())
    }
}

/// What an operation changes, for the feed: (kind, name, action).
fn describe(op: &Op) -> (&'static str, String, &'static str) {
    match op {
        Op::AddHost(h) => ("host", h.name.clone(), "add"),
        Op::RemoveHost(h) => ("host", h.clone(), "remove"),
        Op::SetAvailable { host, available } => (
            "host",
            host.clone(),
            if *available { "enable" } else { "disable" },
        ),
        Op::SetHealth { host, .. } => ("host", host.clone(), "health"),
        Op::AddBinding(b) => ("binding", format!("{}/{}", b.host, b.service), "add"),
        Op::RemoveBinding { host, service } => ("binding", format!("{host}/{service}"), "remove"),
        Op::SetBindingHealth { host, service, .. } => {
            ("binding", format!("{host}/{service}"), "health")
        }
        Op::AddRepo(r) => ("repo", r.name.clone(), "add"),
        Op::RemoveRepo(r) => ("repo", r.clone(), "remove"),
        Op::Promote { repo, .. } => ("repo", repo.clone(), "promote"),
        Op::SetAutoFailover { repo, .. } => ("repo", repo.clone(), "auto-failover"),
        Op::SetVersion { repo, .. } => ("repo", repo.clone(), "version"),
        Op::AddAdmin(a) => ("admin", a.name.clone(), "add"),
        Op::RemoveAdmin(a) => ("admin", a.clone(), "remove"),
    }
}

/// The names an operation touches, judged on the zone before it.
fn scope_of(zone: &Zone, op: &Op) -> view::Scope {
    let mut s = match op {
        Op::AddHost(h) => view::Scope::host(zone, &h.name),
        Op::RemoveHost(h) => view::Scope::host(zone, h),
        Op::SetAvailable { host, .. } | Op::SetHealth { host, .. } => view::Scope::host(zone, host),
        Op::AddBinding(b) => view::Scope::binding(zone, &b.host, &b.service),
        Op::RemoveBinding { host, service } | Op::SetBindingHealth { host, service, .. } => {
            view::Scope::binding(zone, host, service)
        }
        Op::AddRepo(_)
        | Op::RemoveRepo(_)
        | Op::Promote { .. }
        | Op::SetAutoFailover { .. }
        | Op::SetVersion { .. } => view::Scope::default(),
        Op::AddAdmin(_) | Op::RemoveAdmin(_) => view::Scope::default(),
    };
    match op {
        Op::AddRepo(r) => {
            s.repos.insert(r.name.clone());
        }
        Op::RemoveRepo(r)
        | Op::Promote { repo: r, .. }
        | Op::SetAutoFailover { repo: r, .. }
        | Op::SetVersion { repo: r, .. } => {
            s.repos.insert(r.clone());
        }
        Op::AddAdmin(a) => {
            s.admins.insert(a.name.clone());
        }
        Op::RemoveAdmin(a) => {
            s.admins.insert(a.clone());
        }
        _ => {}
    }
    s
}

fn apply_change(zone: &mut Zone, c: Change) {
    match c {
        Change::PutHost(h) => {
            zone.hosts.insert(h.name.clone(), h);
        }
        Change::DelHost(n) => {
            zone.hosts.remove(&n);
        }
        Change::PutBinding(b) => {
            zone.bindings.insert((b.host.clone(), b.service.clone()), b);
        }
        Change::DelBinding { host, service } => {
            zone.bindings.remove(&(host, service));
        }
        Change::PutRepo(r) => {
            zone.repos.insert(r.name.clone(), r);
        }
        Change::DelRepo(n) => {
            zone.repos.remove(&n);
        }
        Change::PutAdmin(a) => {
            zone.admins.insert(a.name.clone(), a);
        }
        Change::DelAdmin(n) => {
            zone.admins.remove(&n);
        }
    }
}

fn host<'z>(zone: &'z Zone, name: &str) -> Result<&'z Host, ApplyError> {
    zone.hosts
        .get(name)
        .ok_or_else(|| ApplyError::NotFound(format!("no host {name} in {}", zone.origin())))
}

fn repo<'z>(zone: &'z Zone, name: &str) -> Result<&'z Repo, ApplyError> {
    zone.repos
        .get(name)
        .ok_or_else(|| ApplyError::NotFound(format!("no repository {name} in {}", zone.origin())))
}

fn key_in_use(zone: &Zone, key: &model::PublicKey) -> Option<String> {
    zone.hosts
        .values()
        .find(|h| h.key.as_ref() == Some(key))
        .map(|h| format!("host {}", h.name))
        .or_else(|| {
            zone.admins
                .values()
                .find(|a| &a.key == key)
                .map(|a| format!("admin {}", a.name))
        })
}

/// Validates `op` against the zone and says what to write.
fn plan(zone: &Zone, op: Op) -> Result<Vec<Change>, ApplyError> {
    let mut changes = plan_raw(zone, op)?;
    for c in &mut changes {
        if let Change::PutRepo(r) = c {
            r.canonicalize();
        }
    }
    Ok(changes)
}

fn plan_raw(zone: &Zone, op: Op) -> Result<Vec<Change>, ApplyError> {
    Ok(match op {
        Op::AddHost(h) => {
            model::validate_host(&h)?;
            if zone.hosts.contains_key(&h.name) {
                return Err(ApplyError::Conflict(format!(
                    "host {} already exists; remove it first or change it with enable/disable",
                    h.name
                )));
            }
            if let Some(k) = &h.key {
                if let Some(who) = key_in_use(zone, k) {
                    return Err(ApplyError::Conflict(format!(
                        "that key already belongs to {who}"
                    )));
                }
            }
            vec![Change::PutHost(h)]
        }
        Op::RemoveHost(name) => {
            host(zone, &name)?;
            let bound: Vec<&str> = zone
                .bindings_of(&name)
                .map(|b| b.service.as_str())
                .collect();
            if !bound.is_empty() {
                return Err(ApplyError::Conflict(format!(
                    "host {name} still has bindings ({}); remove them first with `bind rm`",
                    bound.join(", ")
                )));
            }
            let repos: Vec<&str> = zone
                .repos
                .values()
                .filter(|r| r.has_host(&name))
                .map(|r| r.name.as_str())
                .collect();
            if !repos.is_empty() {
                return Err(ApplyError::Conflict(format!(
                    "host {name} still serves repositories ({}); move them first",
                    repos.join(", ")
                )));
            }
            vec![Change::DelHost(name)]
        }
        Op::SetAvailable {
            host: name,
            available,
        } => {
            let mut h = host(zone, &name)?.clone();
            h.available = available;
            vec![Change::PutHost(h)]
        }
        Op::SetHealth { host: name, health } => {
            let mut h = host(zone, &name)?.clone();
            h.health = health;
            vec![Change::PutHost(h)]
        }
        Op::SetBindingHealth {
            host,
            service,
            health,
        } => {
            let Some(b) = zone.bindings.get(&(host.clone(), service.clone())) else {
                return Err(ApplyError::NotFound(format!(
                    "{host} does not provide {service}"
                )));
            };
            let mut b = b.clone();
            b.health = health;
            vec![Change::PutBinding(b)]
        }
        Op::AddBinding(b) => {
            model::validate_binding(&b)?;
            host(zone, &b.host)?;
            if zone
                .bindings
                .contains_key(&(b.host.clone(), b.service.clone()))
            {
                return Err(ApplyError::Conflict(format!(
                    "{} already provides {}; remove the binding first",
                    b.host, b.service
                )));
            }
            vec![Change::PutBinding(b)]
        }
        Op::RemoveBinding { host, service } => {
            if !zone.bindings.contains_key(&(host.clone(), service.clone())) {
                return Err(ApplyError::NotFound(format!(
                    "{host} has no binding for {service}"
                )));
            }
            vec![Change::DelBinding { host, service }]
        }
        Op::AddRepo(mut r) => {
            model::validate_repo(&r)?;
            if zone.repos.contains_key(&r.name) {
                return Err(ApplyError::Conflict(format!(
                    "repository {} already exists",
                    r.name
                )));
            }
            for h in r.hosts() {
                host(zone, h)?;
            }
            let hosts: Vec<String> = r.hosts().map(str::to_string).collect();
            for h in hosts {
                r.versions.entry(h).or_insert(0);
            }
            vec![Change::PutRepo(r)]
        }
        Op::RemoveRepo(name) => {
            repo(zone, &name)?;
            vec![Change::DelRepo(name)]
        }
        Op::Promote {
            repo: name,
            host: new,
            force,
        } => {
            let r = repo(zone, &name)?;
            host(zone, &new)?;
            if r.master == new {
                return Err(ApplyError::Conflict(format!(
                    "{new} is already the master of {name}"
                )));
            }
            if !r.replicas.contains(&new) {
                return Err(ApplyError::Conflict(format!(
                    "{new} is not a replica of {name} (replicas: {})",
                    r.replicas.join(", ")
                )));
            }
            let (have, master) = (r.version_of(&new), r.master_version());
            let mut next = r.clone();
            if have < master {
                if !force {
                    return Err(ApplyError::Conflict(format!(
                        "{new} is at version {have} of {name}, behind the master {} at {master}: promoting it would lose versions {}..={master}; wait for it to catch up, or pass --force to accept the loss",
                        r.master,
                        have + 1
                    )));
                }
                next.lost.push(Loss {
                    old_master: r.master.clone(),
                    new_master: new.clone(),
                    from: have + 1,
                    to: master,
                    at: crate::time::unix_secs(),
                });
            }
            // Hosts ahead of the new master hold history it lacks: they count as
            // empty until they have resynchronised from it.
            for (h, v) in next.versions.iter_mut() {
                if *h != new && *v > have {
                    *v = 0;
                }
            }
            next.replicas.retain(|h| h != &new);
            next.replicas.insert(0, r.master.clone());
            next.master = new;
            vec![Change::PutRepo(next)]
        }
        Op::SetAutoFailover { repo: name, on } => {
            let mut r = repo(zone, &name)?.clone();
            r.auto_failover = on;
            vec![Change::PutRepo(r)]
        }
        Op::SetVersion {
            repo: name,
            host,
            version,
            ..
        } => {
            let r = repo(zone, &name)?;
            if !r.has_host(&host) {
                return Err(ApplyError::NotFound(format!(
                    "{host} is not a host of {name}"
                )));
            }
            let (have, master) = (r.version_of(&host), r.master_version());
            if host == r.master {
                if version <= have {
                    return Err(ApplyError::Conflict(format!(
                        "the master {host} is at version {have} of {name}; a write moves it forward"
                    )));
                }
            } else if version > master {
                return Err(ApplyError::Conflict(format!(
                    "{host} cannot be at version {version} of {name}: the master is at {master}"
                )));
            } else if version < have && version != master {
                return Err(ApplyError::Conflict(format!(
                    "{host} is recorded at version {have} of {name}; versions only grow, except to resynchronise with the master ({master})"
                )));
            }
            let mut next = r.clone();
            next.versions.insert(host, version);
            vec![Change::PutRepo(next)]
        }
        Op::AddAdmin(a) => {
            model::validate_admin(&a)?;
            if zone.admins.contains_key(&a.name) {
                return Err(ApplyError::Conflict(format!(
                    "admin {} already exists",
                    a.name
                )));
            }
            if let Some(who) = key_in_use(zone, &a.key) {
                return Err(ApplyError::Conflict(format!(
                    "that key already belongs to {who}"
                )));
            }
            vec![Change::PutAdmin(a)]
        }
        Op::RemoveAdmin(name) => {
            if !zone.admins.contains_key(&name) {
                return Err(ApplyError::NotFound(format!("no admin {name}")));
            }
            if zone.admins.len() == 1 {
                return Err(ApplyError::Conflict(format!(
                    "{name} is the last admin of {}: removing it would lock every admin out",
                    zone.origin()
                )));
            }
            vec![Change::DelAdmin(name)]
        }
    })
}

fn available(a: bool) -> &'static str {
    if a {
        "available"
    } else {
        "unavailable"
    }
}

/// The event a change makes, if it is one an operator should hear about.
/// `before` is the zone before the change, `changes` what the change writes.
fn of_change(before: &Zone, op: &Op, changes: &[Change]) -> Option<Draft> {
    Some(match op {
        Op::AddHost(h) => Draft::new("host", &h.name, "add").message(format!(
            "host {} added ({}; roles {})",
            h.name,
            h.addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if h.roles.is_empty() {
                "none".to_string()
            } else {
                h.roles.join(",")
            }
        )),
        Op::RemoveHost(name) => {
            Draft::new("host", name, "remove").message(format!("host {name} removed"))
        }
        Op::SetAvailable { host, available: a } => {
            let was = before.hosts.get(host)?.available;
            if was == *a {
                return None;
            }
            let (action, what) = if *a {
                ("enable", "back in service")
            } else {
                ("disable", "out of service: it leaves every answer")
            };
            Draft::new("host", host, action)
                .transition(available(was), available(*a))
                .message(format!("host {host} marked {}, {what}", available(*a)))
        }
        Op::SetHealth { host, health } => {
            let was = before.hosts.get(host)?.health;
            if was == *health {
                return None;
            }
            Draft::new("host", host, "health")
                .transition(was.as_str(), health.as_str())
                .message(format!(
                    "host {host} is {} (was {})",
                    health.as_str(),
                    was.as_str()
                ))
        }
        Op::AddBinding(b) => {
            let name = format!("{}/{}", b.host, b.service);
            let check = b
                .check
                .as_ref()
                .map(|c| format!(", checked by {}", c.probe.to_txt()))
                .unwrap_or_default();
            Draft::new("binding", &name, "add").message(format!(
                "service {} bound on {} port {}{check}",
                b.service, b.host, b.port
            ))
        }
        Op::RemoveBinding { host, service } => {
            Draft::new("binding", format!("{host}/{service}"), "remove")
                .message(format!("service {service} unbound from {host}"))
        }
        Op::SetBindingHealth {
            host,
            service,
            health,
        } => {
            let was = before
                .bindings
                .get(&(host.clone(), service.clone()))?
                .health;
            if was == *health {
                return None;
            }
            let effect = match health {
                Health::Critical => ": it leaves service answers",
                _ if was == Health::Critical => ": it is back in service answers",
                _ => "",
            };
            Draft::new("binding", format!("{host}/{service}"), "health")
                .transition(was.as_str(), health.as_str())
                .message(format!(
                    "{service} on {host} is {} (was {}){effect}",
                    health.as_str(),
                    was.as_str()
                ))
        }
        Op::AddRepo(r) => Draft::new("repo", &r.name, "add").message(format!(
            "repository {} added, master {}{}",
            r.name,
            r.master,
            if r.replicas.is_empty() {
                String::new()
            } else {
                format!(", replicas {}", r.replicas.join(","))
            }
        )),
        Op::RemoveRepo(name) => {
            Draft::new("repo", name, "remove").message(format!("repository {name} removed"))
        }
        Op::Promote { repo, host, .. } => {
            let old = &before.repos.get(repo)?.master;
            if old == host {
                return None;
            }
            let loss = changes.iter().find_map(|c| match c {
                Change::PutRepo(r) if r.name == *repo => r
                    .lost
                    .last()
                    .filter(|l| before.repos.get(repo).is_some_and(|b| !b.lost.contains(l)))
                    .cloned(),
                _ => None,
            });
            let loss = match loss {
                Some(l) => format!(
                    "; forced: versions {}..={} written on {} may be lost",
                    l.from, l.to, l.old_master
                ),
                None => String::new(),
            };
            Draft::new("repo", repo, "promote")
                .transition(old.as_str(), host.as_str())
                .message(format!(
                    "{host} promoted to master of {repo} (was {old}){loss}"
                ))
        }
        Op::SetAutoFailover { repo, on } => {
            let was = before.repos.get(repo)?.auto_failover;
            if was == *on {
                return None;
            }
            let state = |b: bool| if b { "on" } else { "off" };
            Draft::new("repo", repo, "auto-failover")
                .transition(state(was), state(*on))
                .message(format!(
                    "automatic failover of {repo} turned {}",
                    state(*on)
                ))
        }
        Op::SetVersion { .. } => return None,
        Op::AddAdmin(a) => {
            Draft::new("admin", &a.name, "add").message(format!("admin key {} added", a.name))
        }
        Op::RemoveAdmin(name) => {
            Draft::new("admin", name, "remove").message(format!("admin key {name} removed"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Binding, Health, Host};

    struct NullStore;

    impl Store for NullStore {
        fn load(&self) -> Result<crate::store::Loaded, StoreError> {
            Ok(Default::default())
        }
        fn commit(
            &self,
            _: &str,
            _: u32,
            _: &[Change],
            _: &[crate::events::Event],
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn replace_zone(&self, _: &Zone, _: &[crate::events::Event]) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn dump(zv: &view::ZoneView) -> Vec<String> {
        zv.canonical()
    }

    /// A binding with no role, check or properties.
    fn plain_binding(host: &str, service: &str, port: u16) -> Binding {
        Binding {
            host: host.into(),
            service: service.into(),
            port,
            role: None,
            readonly: false,
            weight: 0,
            priority: None,
            available: true,
            health: Health::Unknown,
            props: Default::default(),
            check: None,
        }
    }

    /// The view the directory serves for `origin` is the one a full build gives.
    fn patched_equals_rebuilt(d: &Directory, origin: &str, what: &str) {
        let patched = d.view().load_full();
        let patched = patched
            .zones
            .iter()
            .find(|z| z.origin.to_string() == origin)
            .expect("zone");
        let full = d
            .read(origin, |z| view::build(z, ViewConfig::default()))
            .expect("zone")
            .expect("build");
        assert_eq!(dump(patched), dump(&full), "after {what}");
        assert_eq!(patched.serial, full.serial);
    }

    /// A store that keeps only the audit log, in memory.
    #[derive(Default)]
    struct LogStore(Arc<Mutex<Vec<Event>>>);

    impl Store for LogStore {
        fn load(&self) -> Result<crate::store::Loaded, StoreError> {
            Ok(Default::default())
        }
        fn commit(&self, _: &str, _: u32, _: &[Change], ev: &[Event]) -> Result<(), StoreError> {
            self.append_events(ev)
        }
        fn replace_zone(&self, _: &Zone, ev: &[Event]) -> Result<(), StoreError> {
            self.append_events(ev)
        }
        fn append_events(&self, ev: &[Event]) -> Result<(), StoreError> {
            self.0.lock().expect("lock").extend_from_slice(ev);
            Ok(())
        }
        fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
            let log = self.0.lock().expect("lock");
            Ok(log
                .iter()
                .filter(|e| e.id > after)
                .take(limit)
                .cloned()
                .collect())
        }
        fn last_event_id(&self) -> Result<u64, StoreError> {
            Ok(self.0.lock().expect("lock").last().map_or(0, |e| e.id))
        }
    }

    #[test]
    fn each_stale_episode_is_logged_once_whatever_the_sidecar_repeats() {
        let text = include_str!("../../zones/cluster.example.zone");
        let zone = crate::zonefile::parse(text, "demo", Some("cluster.example.")).expect("zone");
        let log = Arc::new(Mutex::new(Vec::new()));
        let open = |log: &Arc<Mutex<Vec<Event>>>| {
            let d = Directory::open(Box::new(LogStore(log.clone())), ViewConfig::default())
                .expect("open");
            d.seed(zone.clone()).expect("seed");
            d
        };
        let mut d = open(&log);
        let z = "cluster.example.";
        type Logged = Vec<(String, Option<(u64, Option<u64>)>)>;
        let seen = |log: &Arc<Mutex<Vec<Event>>>| -> Logged {
            log.lock()
                .expect("lock")
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

    #[test]
    fn a_saved_view_loads_as_built_and_only_for_its_state() {
        let text = include_str!("../../zones/cluster.example.zone");
        let mut zone =
            crate::zonefile::parse(text, "demo", Some("cluster.example.")).expect("demo zone");
        let cfg = ViewConfig::default();
        let built = view::build(&zone, cfg).expect("build");
        let stamp = [7u8; 32];
        let bytes = view::cache::encode(&built, cfg, &stamp);
        let loaded = view::cache::decode(&zone, cfg, &stamp, &bytes).expect("decodes");
        assert_eq!(dump(&loaded), dump(&built));
        assert!(loaded.key(&built_key_fingerprint(&zone)).is_some());
        // Another binary, other TTLs, another serial, damaged bytes: rebuild.
        assert!(view::cache::decode(&zone, cfg, &[8u8; 32], &bytes).is_none());
        let other = ViewConfig {
            node_ttl: cfg.node_ttl + 1,
            ..cfg
        };
        assert!(view::cache::decode(&zone, other, &stamp, &bytes).is_none());
        for cut in [0, 10, 60, bytes.len() / 2, bytes.len() - 1] {
            assert!(view::cache::decode(&zone, cfg, &stamp, &bytes[..cut]).is_none());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(view::cache::decode(&zone, cfg, &stamp, &longer).is_none());
        zone.serial += 1;
        assert!(view::cache::decode(&zone, cfg, &stamp, &bytes).is_none());
    }

    /// The fingerprint of some host key in the zone.
    fn built_key_fingerprint(zone: &Zone) -> String {
        zone.hosts
            .values()
            .find_map(|h| h.key)
            .expect("the demo zone has host keys")
            .fingerprint()
    }

    #[test]
    fn glue_and_empty_non_terminals_follow_changes() {
        let text = "$ORIGIN gw.example.\n$TTL 3600\n@ IN SOA ns hostmaster ( 1 3600 600 604800 30 )\n  IN NS gw.node\ngw.node 60 IN A 10.0.0.1\ngw.node 60 IN TXT \"roles=dns\" \"available=1\"\nops._admin 60 IN TXT \"key=ed25519:tBgoI/KoTuYfrd2fNDc749DrvPspqsT2CcsB29CpN04=\"\n";
        let zone = crate::zonefile::parse(text, "gw", Some("gw.example.")).expect("zone");
        let d = Directory::open(Box::new(NullStore), ViewConfig::default()).expect("open");
        d.seed(zone).expect("seed");
        let origin = "gw.example.";
        let same = |d: &Directory, what: &str| patched_equals_rebuilt(d, origin, what);
        same(&d, "seed");
        // The zone's only binding comes and goes: `service.Z` and `_tcp.Z`
        // exist only while it does (NXDOMAIN after, not NODATA).
        d.apply(origin, Op::AddBinding(plain_binding("gw", "dns", 53)))
            .expect("bind");
        same(&d, "bind add");
        d.apply(
            origin,
            Op::RemoveBinding {
                host: "gw".into(),
                service: "dns".into(),
            },
        )
        .expect("unbind");
        same(&d, "bind rm");
        d.apply(
            origin,
            Op::SetAvailable {
                host: "gw".into(),
                available: false,
            },
        )
        .expect("disable");
        same(&d, "disable");
        d.apply(origin, Op::RemoveHost("gw".into()))
            .expect("remove");
        same(&d, "remove");
    }

    #[test]
    fn a_patched_view_equals_a_rebuilt_one() {
        // CNAMEs whose answers follow a host that comes and goes, a service,
        // the apex (its SOA moves with every change) and a chain.
        let text = format!(
            "{}soon IN CNAME new1.node\nsvc IN CNAME http.service\ntop IN CNAME cluster.example.\nvia IN CNAME soon\n",
            include_str!("../../zones/cluster.example.zone")
        );
        let zone =
            crate::zonefile::parse(&text, "demo", Some("cluster.example.")).expect("demo zone");
        let d = Directory::open(Box::new(NullStore), ViewConfig::default()).expect("open");
        d.seed(zone).expect("seed");
        let origin = "cluster.example.";
        let host = |name: &str| Host {
            name: name.into(),
            addrs: vec!["10.9.9.9".parse().expect("ip")],
            key: None,
            roles: vec!["web".into()],
            available: true,
            health: Health::Unknown,
            props: Default::default(),
        };
        let bind = |h: &str, s: &str| plain_binding(h, s, 81);
        let ops = vec![
            Op::SetAvailable {
                host: "web1".into(),
                available: false,
            },
            Op::SetHealth {
                host: "db2".into(),
                health: Health::Critical,
            },
            Op::AddHost(host("new1")),
            Op::AddBinding(bind("new1", "http")),
            Op::AddBinding(bind("new1", "brandnew")),
            Op::AddBinding(bind("repo3", "switchboard2")),
            Op::RemoveBinding {
                host: "repo3".into(),
                service: "switchboard".into(),
            },
            Op::SetAvailable {
                host: "web1".into(),
                available: true,
            },
            Op::RemoveBinding {
                host: "new1".into(),
                service: "brandnew".into(),
            },
            Op::RemoveBinding {
                host: "new1".into(),
                service: "http".into(),
            },
            Op::RemoveHost("new1".into()),
            Op::Promote {
                repo: "arcanist".into(),
                host: "repo1".into(),
                force: false,
            },
            Op::Promote {
                repo: "phabricator".into(),
                host: "repo3".into(),
                force: true,
            },
            Op::SetVersion {
                repo: "libphutil".into(),
                host: "repo1".into(),
                version: 19,
                lease: None,
            },
            Op::SetAvailable {
                host: "repo3".into(),
                available: false,
            },
        ];
        for op in ops {
            let what = format!("{op:?}");
            d.apply(origin, op)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            patched_equals_rebuilt(&d, origin, &what);
        }
    }
}
