//! A zone whole: seeded from its zone file at start (answering at once, then
//! saved: `seed_unsaved`, `save_seed`), or replaced by an import.

use super::rules::next_serial;
use super::{ApplyError, Directory};
use crate::events::Draft;
use crate::model::Zone;
use crate::view;

/// A zone answering from its zone file, not yet written to the store
/// ([`Directory::seed_unsaved`], then [`Directory::save_seed`]).
#[derive(Debug)]
#[must_use = "save the seed before taking changes"]
pub struct UnsavedSeed {
    origin: String,
}

impl Directory {
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
        let zv = view::build(&zone, self.cfg).map_err(ApplyError::from)?;
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
        let written = self.with_events(&seed.origin, vec![draft], "directory", |ev| {
            self.store.replace_zone_on(zone, None, ev)
        });
        let audit = match written {
            Ok(((), audit)) => {
                drop(zones);
                audit
            }
            // Another server sharing the store seeded it first: serve its.
            Err(crate::store::StoreError::Conflict(_)) => {
                let mut zones = zones;
                self.catch_up(&mut zones, &seed.origin)?;
                vec![]
            }
            Err(e) => return Err(e.into()),
        };
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
        let prev = zones.get(zone.origin()).map(|old| old.serial);
        if let Some(old) = zones.get(zone.origin()) {
            zone.serial = zone.serial.max(next_serial(old.serial));
            // TSIG keys and secondaries are not in zone files: an import keeps them.
            zone.tsig = old.tsig.clone();
            zone.secondaries = old.secondaries.clone();
            // Nor are databases' reported positions (reports, not configuration):
            // a database the import keeps keeps those of its hosts, so its
            // replicas stay in `read.` until their next heartbeat.
            for d in zone.dbs.values_mut() {
                if let Some(was) = old.dbs.get(&d.name) {
                    d.positions = was
                        .positions
                        .iter()
                        .filter(|(h, _)| d.has_host(h))
                        .map(|(h, p)| (h.clone(), p.clone()))
                        .collect();
                }
            }
        }
        let zv = view::build(&zone, self.cfg).map_err(ApplyError::from)?;
        let serial = zone.serial;
        let origin = zone.origin().to_string();
        let draft = Draft::new("zone", &origin, "import").message(format!(
            "zone {origin} replaced whole by an import ({} hosts, {} bindings, {} repositories, {} databases; serial {serial})",
            zone.hosts.len(),
            zone.bindings.len(),
            zone.repos.len(),
            zone.dbs.len()
        ));
        let ((), audit) = self.with_events(&origin, vec![draft], by, |ev| {
            self.store.replace_zone_on(&zone, prev, ev)
        })
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(z) => super::ApplyError::Conflict(format!(
                "zone {z} was changed by another directory server while this one imported it; nothing was written: import again"
            )),
            e => e.into(),
        })?;
        self.publish_built(&zone, zv, ("zone", origin.clone(), "import"));
        zones.insert(origin, zone);
        drop(zones);
        self.announce(&audit);
        Ok(serial)
    }
}
