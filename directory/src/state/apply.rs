//! Applying a change: validate it (`rules`), commit it to the store in one
//! batch with its audit event, update the model, patch the zone's view and
//! swap it in (`publish`), and tell the change feed. When `apply_by` returns,
//! the change is durable and visible in DNS.
//!
//! On a shared store (etcd) another server may have changed the zone since
//! this one's model last saw it: the store then refuses the commit
//! (`StoreError::Conflict`), and `apply_by` catches up with the store and
//! plans the change once more on what it finds, or answers 409. The other
//! servers' commits come in through `follow` and take the same path as this
//! server's own: the zone's view is patched and the change feed told.

use std::sync::Arc;

use super::audit::of_change;
use super::rules::{describe, next_serial, plan, scope_of};
use super::{ApplyError, ChangeEvent, Directory, EVENT_LOG};
use crate::model::{Op, Zone};
use crate::store::{Committed, Followed, StoreError};
use crate::view;

impl Directory {
    /// Applies one change made by the directory itself.
    pub fn apply(&self, origin: &str, op: Op) -> Result<u32, ApplyError> {
        self.apply_by(origin, op, "directory")
    }

    /// Applies one change to one zone: validate, commit durably with its audit
    /// event, publish. `by` says who asked (`admin NAME`, `host NAME`, `check`).
    /// Returns the new serial.
    pub fn apply_by(&self, origin: &str, op: Op, by: &str) -> Result<u32, ApplyError> {
        let mut zones = self.lock();
        match self.apply_locked(&mut zones, origin, op.clone(), by) {
            Err(ApplyError::Store(StoreError::Conflict(_))) => {
                tracing::info!(zone = origin, "another directory server changed the zone meanwhile; catching up and planning the change again");
                self.catch_up(&mut zones, origin)?;
                self.apply_locked(&mut zones, origin, op, by)
                    .map_err(|e| match e {
                        ApplyError::Store(StoreError::Conflict(z)) => ApplyError::Conflict(format!(
                            "zone {z} was changed by another directory server while this one applied the change, twice; nothing was written: try again"
                        )),
                        e => e,
                    })
            }
            r => r,
        }
    }

    fn apply_locked(
        &self,
        zones: &mut std::collections::BTreeMap<String, Zone>,
        origin: &str,
        op: Op,
        by: &str,
    ) -> Result<u32, ApplyError> {
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
        let gone = view::names_of(zone, self.cfg, &scope).map_err(ApplyError::from)?;
        let changes = plan(zone, op.clone())?;
        let draft = of_change(zone, &op, &changes);
        if let (Some(host), Some(_)) = (by.strip_prefix("host "), &draft) {
            // A host's own changes (its health) are events like its heartbeats'
            // reports, from the same allowance. Lock order: zones, then heartbeats.
            self.charge_host_event(origin, host)?;
        }
        let serial = next_serial(zone.serial);
        let t = std::time::Instant::now();
        let ((), audit) = self.with_events(origin, draft.into_iter().collect(), by, |ev| {
            self.store
                .commit_on(origin, zone.serial, serial, &changes, ev, &op)
        })?;
        let committed = t.elapsed();
        for c in changes {
            c.apply(zone);
        }
        zone.serial = serial;
        if matches!(op, Op::AddTsig(_) | Op::RemoveTsig(_)) {
            self.set_transfer_keys(zone);
        }
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

    /// Reads a zone again from the store and serves what it holds, when that
    /// differs from the model (another server changed it).
    pub(super) fn catch_up(
        &self,
        zones: &mut std::collections::BTreeMap<String, Zone>,
        origin: &str,
    ) -> Result<(), ApplyError> {
        let Some(fresh) = self.store.load_zone(origin)? else {
            return Ok(());
        };
        if zones.get(origin) == Some(&fresh) {
            return Ok(());
        }
        let zv = view::build(&fresh, self.cfg).map_err(ApplyError::from)?;
        tracing::info!(
            zone = origin,
            serial = fresh.serial,
            "caught up with the shared store"
        );
        self.publish_built(&fresh, zv, ("zone", origin.to_string(), "reload"));
        self.set_transfer_keys(&fresh);
        zones.insert(origin.to_string(), fresh);
        Ok(())
    }

    /// Replays what another server sharing the store did: a commit on the
    /// serial this model is at takes the path of this server's own changes
    /// (the view patched, the feed told); one already seen is skipped; a
    /// gap, a zone written whole or a lost history reads the zone again.
    pub fn follow(&self, followed: Followed) {
        let mut zones = self.lock();
        let origins = match followed {
            Followed::Commit(c) => match self.replay(&mut zones, c) {
                Ok(None) => return,
                Ok(Some(origin)) => vec![origin],
                Err((origin, e)) => {
                    tracing::warn!(zone = %origin, error = %e, "cannot replay another server's change; reading the zone again");
                    vec![origin]
                }
            },
            Followed::Reload(origin) => vec![origin],
            Followed::ReloadAll => match self.store.load() {
                Ok(loaded) => loaded
                    .zones
                    .iter()
                    .map(|z| z.origin().to_string())
                    .chain(zones.keys().cloned())
                    .collect(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the shared store; serving what this server has");
                    return;
                }
            },
        };
        for origin in origins {
            if let Err(e) = self.catch_up(&mut zones, &origin) {
                tracing::error!(zone = %origin, error = %e, "cannot catch up with the shared store; serving what this server has");
            }
        }
    }

    /// Applies `c` if the model is at its `prev`: `Ok(None)` when done or
    /// already seen, `Ok(Some(origin))` when the zone must be read again.
    fn replay(
        &self,
        zones: &mut std::collections::BTreeMap<String, Zone>,
        c: Committed,
    ) -> Result<Option<String>, (String, ApplyError)> {
        let Some(zone) = zones.get_mut(&c.origin) else {
            return Ok(Some(c.origin));
        };
        if serial_reached(zone.serial, c.serial) {
            return Ok(None);
        }
        let (Some(op), true) = (c.op, zone.serial == c.prev) else {
            return Ok(Some(c.origin));
        };
        let origin = c.origin;
        let fail = |e: ApplyError| (origin.clone(), e);
        let event = describe(&op);
        let scope = scope_of(zone, &op);
        let gone = view::names_of(zone, self.cfg, &scope)
            .map_err(ApplyError::from)
            .map_err(fail)?;
        for change in c.changes {
            change.apply(zone);
        }
        zone.serial = c.serial;
        if matches!(op, Op::AddTsig(_) | Op::RemoveTsig(_)) {
            self.set_transfer_keys(zone);
        }
        self.publish_patch(zone, &scope, gone, event)
            .map_err(fail)?;
        tracing::info!(zone = %origin, serial = c.serial, "change from another directory server applied");
        Ok(None)
    }

    fn publish(
        &self,
        zone: &Zone,
        event: (&'static str, String, &'static str),
    ) -> Result<(), ApplyError> {
        let zv = view::build(zone, self.cfg).map_err(ApplyError::from)?;
        self.publish_built(zone, zv, event);
        Ok(())
    }

    /// Publishes a view already built for `zone`.
    pub(super) fn publish_built(
        &self,
        zone: &Zone,
        zv: view::ZoneView,
        event: (&'static str, String, &'static str),
    ) {
        let origin = zv.origin.clone();
        let next = self.view.load().with_zone(&origin, Some(Arc::new(zv)));
        self.view.store(Arc::new(next));
        // Replaced whole: a secondary behind this transfers it whole.
        self.transfers.reset(zone.origin());
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
        let journal = self.transfers.keeps_journal(zone.origin());
        let mut touched = if journal { gone.clone() } else { vec![] };
        let zv = view::patch(&old, gone, zone, scope, self.cfg).map_err(ApplyError::from)?;
        let origin = zv.origin.clone();
        let zv = Arc::new(zv);
        let next = current.with_zone(&origin, Some(zv.clone()));
        self.view.store(Arc::new(next));
        if journal {
            // Every name the patch rebuilt: those the change touched, before and after.
            touched.extend(view::names_of(zone, self.cfg, scope).unwrap_or_default());
            match crate::transfer::diff(&old, &zv, &touched) {
                Some(d) => self.journal(zone.origin(), d),
                None => self.transfers.reset(zone.origin()),
            }
        }
        self.log_event(zone, event);
        Ok(())
    }

    /// Keeps a change in the zone's journal, in memory and in the store.
    fn journal(&self, origin: &str, d: crate::transfer::Diff) {
        if let Some(bytes) = d.encode() {
            if let Err(e) = self.store.append_diff(origin, d.to(), &bytes) {
                tracing::warn!(zone = origin, error = %e, "could not keep a change in the store's journal; secondaries further behind will transfer the zone whole");
            }
        }
        self.transfers.record(origin, d);
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
}

/// Whether a model at serial `have` already holds the commit that made `serial`
/// (RFC 1982 order: serials grow, and wrap).
fn serial_reached(have: u32, serial: u32) -> bool {
    have == serial || have.wrapping_sub(serial) < (1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Binding, Database, DbPosition, Health, Host};
    use crate::store::memory::MemoryStore;
    use crate::view::ViewConfig;

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

    #[test]
    fn glue_and_empty_non_terminals_follow_changes() {
        let text = "$ORIGIN gw.example.\n$TTL 3600\n@ IN SOA ns hostmaster ( 1 3600 600 604800 30 )\n  IN NS gw.node\ngw.node 60 IN A 10.0.0.1\ngw.node 60 IN TXT \"roles=dns\" \"available=1\"\nops._admin 60 IN TXT \"key=ed25519:tBgoI/KoTuYfrd2fNDc749DrvPspqsT2CcsB29CpN04=\"\n";
        let zone = crate::zonefile::parse(text, "gw", Some("gw.example.")).expect("zone");
        let d =
            Directory::open(Box::<MemoryStore>::default(), ViewConfig::default()).expect("open");
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

    /// A database host's reported position.
    fn pos(host: &str, gtid: &str, behind: Option<u64>, replicating: bool) -> Op {
        Op::SetDbPosition {
            db: "main".into(),
            host: host.into(),
            position: DbPosition {
                gtid: gtid.into(),
                seconds_behind: behind,
                replicating,
                read_only: replicating,
                at: 1,
            },
        }
    }

    #[test]
    fn a_patched_view_equals_a_rebuilt_one() {
        // CNAMEs whose answers follow a host that comes and goes, a service,
        // the apex (its SOA moves with every change) and a chain.
        let text = format!(
            "{}soon IN CNAME new1.node\nsvc IN CNAME http.service\ntop IN CNAME cluster.example.\nvia IN CNAME soon\n",
            include_str!("../../../zones/cluster.example.zone")
        );
        let zone =
            crate::zonefile::parse(&text, "demo", Some("cluster.example.")).expect("demo zone");
        let d =
            Directory::open(Box::<MemoryStore>::default(), ViewConfig::default()).expect("open");
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
            // A database: its answers follow its positions, its master's
            // availability, promotions and freezes.
            Op::SetHealth {
                host: "db2".into(),
                health: Health::Unknown,
            },
            Op::AddDb(Database {
                name: "main".into(),
                master: "db1".into(),
                replicas: vec!["db2".into()],
                port: 3306,
                max_lag_s: 10,
                frozen: None,
                positions: Default::default(),
                lost: Vec::new(),
            }),
            pos("db1", "0-1-50", None, false),
            pos("db2", "0-1-50", Some(0), true),
            pos("db2", "0-1-50", Some(99), true),
            pos("db2", "0-1-40", Some(0), true),
            Op::SetAvailable {
                host: "db1".into(),
                available: false,
            },
            Op::SetAvailable {
                host: "db1".into(),
                available: true,
            },
            Op::FreezeDb {
                db: "main".into(),
                message: Some("maintenance".into()),
            },
            Op::FreezeDb {
                db: "main".into(),
                message: None,
            },
            Op::PromoteDb {
                db: "main".into(),
                host: "db2".into(),
                force: true,
            },
            Op::RemoveDb("main".into()),
        ];
        for op in ops {
            let what = format!("{op:?}");
            d.apply(origin, op)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            patched_equals_rebuilt(&d, origin, &what);
        }
    }
}
