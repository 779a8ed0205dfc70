//! The directory's state: the model in memory, the store behind it, the view in front.
//!
//! `Directory::apply` is the one place a change happens: validate against the
//! current model, write one batch to the store and flush it, update the model,
//! rebuild that zone's answers and swap them in. When it returns, the change is
//! durable and visible in DNS.
//!
//! One file per job: `rules` (what a change may do and what it writes),
//! `apply` (commit and publish), `seed` (a zone from its file, or imported
//! whole), `audit` (the event a change makes, and the audit log),
//! `heartbeats` (sidecars' heartbeats and their stale-answer episodes),
//! `leases` (the write lease of a repository).

mod apply;
mod audit;
mod heartbeats;
mod leases;
mod rules;
mod seed;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};

use crate::model::{self, Zone};
use crate::store::{Store, StoreError, Unreadable};
use crate::view::{self, View, ViewConfig};

pub use heartbeats::{
    HeartbeatReply, HeartbeatReport, EVENT_BURST, EVENT_EVERY, HEARTBEAT_SLACK_MS,
    MAX_EPISODE_AGE_MS,
};
pub use leases::{Lease, MAX_LEASE};
pub use seed::UnsavedSeed;
pub use switchboard_proto::time::clock;

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

impl From<view::ViewError> for ApplyError {
    fn from(e: view::ViewError) -> Self {
        ApplyError::Invalid(e.to_string())
    }
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
    heartbeats: Mutex<std::collections::HashMap<(String, String), heartbeats::Heartbeat>>,
    started: std::time::Instant,
    /// Stored records left out at start because they could not be read.
    unreadable: Vec<Unreadable>,
    /// TSIG keys and journals, for zone transfers (`dns::xfr`).
    transfers: Arc<crate::transfer::Transfers>,
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
            transfers: Default::default(),
        };
        for z in dir.lock().values() {
            dir.set_transfer_keys(z);
            dir.recall_journal(z);
        }
        dir.recall_episodes();
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

    /// TSIG keys and journals, shared with the DNS listeners.
    pub fn transfers(&self) -> Arc<crate::transfer::Transfers> {
        self.transfers.clone()
    }

    /// Publishes a zone's TSIG keys to the DNS listeners.
    fn set_transfer_keys(&self, zone: &Zone) {
        let keys = zone
            .tsig
            .values()
            .filter_map(|k| crate::tsig::Key::new(&k.name, k.secret_bytes()))
            .collect();
        self.transfers.set_keys(zone.origin(), keys);
    }

    /// Reads a zone's journal back from the store: kept only if it runs,
    /// unbroken, up to the zone's serial.
    fn recall_journal(&self, zone: &Zone) {
        let diffs: Vec<crate::transfer::Diff> = self
            .store
            .load_diffs(zone.origin())
            .iter()
            .filter_map(|b| crate::transfer::Diff::decode(b))
            .collect();
        if diffs.last().is_some_and(|d| d.to() == zone.serial) {
            for d in diffs {
                self.transfers.record(zone.origin(), d);
            }
        }
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

    /// What other servers sharing the store do, to hand to [`Directory::follow`];
    /// `None` when the store is this server's alone.
    pub fn follow_store(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::store::Followed>> {
        self.store.follow()
    }

    /// Whether this server runs `duty` now (see `Store::lead`). Blocking: call
    /// it off the reactor.
    pub fn lead(&self, duty: &str) -> bool {
        self.store.lead(duty)
    }

    /// The store, for what keeps its own records there (console sessions).
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Origins of every zone, sorted.
    pub fn origins(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Runs `f` on a zone's model.
    pub fn read<T>(&self, origin: &str, f: impl FnOnce(&Zone) -> T) -> Option<T> {
        self.lock().get(origin).map(f)
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
