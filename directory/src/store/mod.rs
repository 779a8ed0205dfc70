//! Durable state behind one small trait.
//!
//! The directory keeps its model in memory and answers from a view built from it;
//! the store is only read at start and written on change. A change is one atomic
//! batch that is on disk when `commit` returns. Nothing above this trait knows
//! which backend holds the data: `sled` on disk, `memory` for tests and the
//! fuzzer; a distributed store later. `battery` is the set of tests every
//! backend passes.

use crate::events::Event;
use crate::model::{AdminKey, Binding, Host, Repo, Secondary, TsigKey, Zone};

pub mod battery;
pub mod memory;
pub mod sled;

/// A failure of the backend: the change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("stored record {key:?} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// A change to a zone the store does not hold.
    #[error("the store has no zone {0}: write it whole (a seed or an import) before changing it")]
    NoZone(String),
}

/// What [`Store::load`] read: every zone it could, and each record it could not.
#[derive(Debug, Default)]
pub struct Loaded {
    pub zones: Vec<Zone>,
    pub unreadable: Vec<Unreadable>,
}

/// A stored record that could not be read. One bad record never stops the
/// directory: it is left out of the model (an entity whose latest record is
/// unreadable is absent; a zone whose apex, serial or snapshot is unreadable is
/// not served), logged at start and listed by `status` until the next start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unreadable {
    /// The store's key, e.g. `cluster.example./h/web1` or a snapshot's `…/hosts[3]`.
    pub key: String,
    pub reason: String,
}

/// One entity-level change inside a batch.
#[derive(Debug, Clone)]
pub enum Change {
    PutHost(Host),
    DelHost(String),
    PutBinding(Binding),
    DelBinding { host: String, service: String },
    PutRepo(Repo),
    DelRepo(String),
    PutAdmin(AdminKey),
    DelAdmin(String),
    PutTsig(TsigKey),
    DelTsig(String),
    PutSecondary(Secondary),
    DelSecondary(std::net::SocketAddr),
}

impl Change {
    /// Makes this change to the model in memory, as the store makes it to
    /// what it holds.
    pub fn apply(self, zone: &mut Zone) {
        match self {
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
            Change::PutTsig(k) => {
                zone.tsig.insert(k.name.clone(), k);
            }
            Change::DelTsig(n) => {
                zone.tsig.remove(&n);
            }
            Change::PutSecondary(s) => {
                zone.secondaries.insert(s.addr, s);
            }
            Change::DelSecondary(a) => {
                zone.secondaries.remove(&a);
            }
        }
    }
}

/// A durable home for zones.
pub trait Store: Send + Sync {
    /// Every stored zone, whole, and the records that could not be read. An
    /// error means the store itself could not be read (I/O), not one record.
    fn load(&self) -> Result<Loaded, StoreError>;

    /// Applies `changes`, sets the zone's serial and appends `events` to the
    /// audit log, atomically and durably.
    fn commit(
        &self,
        origin: &str,
        serial: u32,
        changes: &[Change],
        events: &[Event],
    ) -> Result<(), StoreError>;

    /// Replaces a zone (or creates it) whole and appends `events` to the audit
    /// log, atomically and durably.
    fn replace_zone(&self, zone: &Zone, events: &[Event]) -> Result<(), StoreError>;

    /// Keeps a compiled view of a zone (`view::cache`) until the zone's next
    /// change: `commit` and `replace_zone` drop it in the same batch.
    fn save_view(&self, _origin: &str, _bytes: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The compiled view kept by `save_view`, if no change came after it.
    fn load_view(&self, _origin: &str) -> Option<Vec<u8>> {
        None
    }

    /// Appends events to the audit log, durably. Their ids come after every stored one.
    fn append_events(&self, _events: &[Event]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Keeps a zone's change (`transfer::Diff`, encoded) in its IXFR journal,
    /// the oldest past `transfer::JOURNAL_DIFFS` dropped. Need not be flushed:
    /// a diff lost in a crash costs a secondary a full transfer, not an answer.
    fn append_diff(&self, _origin: &str, _serial: u32, _diff: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    /// A zone's journal, oldest first; `commit` and `replace_zone` keep it
    /// unless the zone is replaced.
    fn load_diffs(&self, _origin: &str) -> Vec<Vec<u8>> {
        vec![]
    }

    /// Up to `limit` events with ids after `after`, oldest first.
    fn events_after(&self, _after: u64, _limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(vec![])
    }

    /// The id of the last stored event (0 if none).
    fn last_event_id(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// A named reader's place in the audit log (a webhook's last delivered id).
    fn cursor(&self, _name: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Records a reader's place, durably.
    fn set_cursor(&self, _name: &str, _id: u64) -> Result<(), StoreError> {
        Ok(())
    }
}
