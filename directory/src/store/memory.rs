//! A store in memory, for tests and the fuzzer: the same contract as the
//! durable stores (the battery in `store::battery` runs against it), nothing
//! on disk. Clones are handles to one store, so a test can "restart" a
//! directory by opening another `Directory` on a clone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Change, Loaded, Store, StoreError};
use crate::events::Event;
use crate::model::Zone;

/// A `Store` that keeps everything in memory while any handle to it lives.
#[derive(Clone, Default)]
pub struct MemoryStore(Arc<Mutex<Held>>);

#[derive(Default)]
struct Held {
    zones: BTreeMap<String, Zone>,
    /// Compiled views by origin, until the zone's next change.
    views: HashMap<String, Vec<u8>>,
    /// The audit log, oldest first (ids grow).
    events: Vec<Event>,
    cursors: HashMap<String, u64>,
}

impl MemoryStore {
    fn held(&self) -> MutexGuard<'_, Held> {
        // Every write below is whole before the lock is let go.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(Loaded {
            zones: self.held().zones.values().cloned().collect(),
            unreadable: vec![],
        })
    }

    fn commit(
        &self,
        origin: &str,
        serial: u32,
        changes: &[Change],
        events: &[Event],
    ) -> Result<(), StoreError> {
        let mut held = self.held();
        let held = &mut *held;
        let zone = held
            .zones
            .get_mut(origin)
            .ok_or_else(|| StoreError::NoZone(origin.to_string()))?;
        for c in changes {
            c.clone().apply(zone);
        }
        zone.serial = serial;
        held.views.remove(origin);
        held.events.extend_from_slice(events);
        Ok(())
    }

    fn replace_zone(&self, zone: &Zone, events: &[Event]) -> Result<(), StoreError> {
        let mut held = self.held();
        held.zones.insert(zone.origin().to_string(), zone.clone());
        held.views.remove(zone.origin());
        held.events.extend_from_slice(events);
        Ok(())
    }

    fn save_view(&self, origin: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.held().views.insert(origin.to_string(), bytes.to_vec());
        Ok(())
    }

    fn load_view(&self, origin: &str) -> Option<Vec<u8>> {
        self.held().views.get(origin).cloned()
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        self.held().events.extend_from_slice(events);
        Ok(())
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let held = self.held();
        Ok(held
            .events
            .iter()
            .filter(|e| e.id > after)
            .take(limit)
            .cloned()
            .collect())
    }

    fn last_event_id(&self) -> Result<u64, StoreError> {
        Ok(self.held().events.last().map_or(0, |e| e.id))
    }

    fn cursor(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.held().cursors.get(name).copied())
    }

    fn set_cursor(&self, name: &str, id: u64) -> Result<(), StoreError> {
        self.held().cursors.insert(name.to_string(), id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;
    use crate::store::battery::Backend;

    /// A fresh memory store each time; a "reopen" is another handle to it.
    struct Memory;

    impl Backend for Memory {
        type Store = MemoryStore;

        fn fresh(&mut self) -> MemoryStore {
            MemoryStore::default()
        }

        fn reopen(&mut self, store: MemoryStore) -> Option<MemoryStore> {
            Some(store.clone())
        }
    }

    crate::battery_tests!(Memory);
}
