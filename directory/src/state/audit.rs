//! The audit log as the directory writes it: the event a change makes
//! (`of_change`), events numbered in order and written in the same batch as
//! what they describe (`with_events`), and the log read back (`events_after`,
//! readers' cursors). The event type itself is `crate::events`.

use super::Directory;
use crate::events::{Draft, Event};
use crate::model::Op;
use crate::model::{Health, Zone};
use crate::store::{Change, StoreError};

impl Directory {
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
    /// other events, so a reader's place in the log stays exact. A shared
    /// store refuses ids another server took meanwhile
    /// (`StoreError::EventIdsTaken`): the events are numbered after them and
    /// written again.
    pub(super) fn with_events<T>(
        &self,
        origin: &str,
        drafts: Vec<Draft>,
        by: &str,
        mut write: impl FnMut(&[Event]) -> Result<T, StoreError>,
    ) -> Result<(T, Vec<Event>), StoreError> {
        let mut next = self.next_event.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::time::unix_ms();
        let mut tries = 0;
        let (result, numbered) = loop {
            let numbered: Vec<Event> = drafts
                .iter()
                .cloned()
                .zip(*next..)
                .map(|(d, id)| d.finish(id, now, origin, by))
                .collect();
            match write(&numbered) {
                Err(StoreError::EventIdsTaken(first)) if tries < 10 => {
                    tries += 1;
                    *next = first;
                }
                result => break (result, numbered),
            }
        };
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
    pub(super) fn announce(&self, written: &[Event]) {
        for e in written {
            tracing::info!(id = e.id, zone = %e.zone, kind = %e.kind, name = %e.name, action = %e.action, by = %e.by, "event: {}", e.message);
        }
        if let Some(last) = written.last() {
            self.last_event.send_modify(|n| *n = (*n).max(last.id));
        }
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
pub(super) fn of_change(before: &Zone, op: &Op, changes: &[Change]) -> Option<Draft> {
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
        Op::FreezeRepo {
            repo,
            message: Some(m),
        } => Draft::new("repo", repo, "freeze")
            .transition("writable", "frozen")
            .message(format!(
                "repository {repo} frozen: writes are refused with {m:?}, reads go on"
            )),
        Op::FreezeRepo {
            repo,
            message: None,
        } => Draft::new("repo", repo, "thaw")
            .transition("frozen", "writable")
            .message(format!(
                "repository {repo} thawed: writes go to its master again"
            )),
        Op::SetVersion { .. } | Op::SetDbPosition { .. } => return None,
        Op::AddDb(d) => Draft::new("db", &d.name, "add").message(format!(
            "database {} added, master {}{}, port {}",
            d.name,
            d.master,
            if d.replicas.is_empty() {
                String::new()
            } else {
                format!(", replicas {}", d.replicas.join(","))
            },
            d.port
        )),
        Op::RemoveDb(name) => {
            Draft::new("db", name, "remove").message(format!("database {name} removed"))
        }
        Op::PromoteDb { db, host, .. } => {
            let b = before.dbs.get(db)?;
            let old = &b.master;
            let loss = changes.iter().find_map(|c| match c {
                Change::PutDb(d) if d.name == *db => {
                    d.lost.last().filter(|l| !b.lost.contains(l)).cloned()
                }
                _ => None,
            });
            let loss = match loss {
                Some(l) => format!(
                    "; forced: transactions of {} past {:?} (it was at {:?}) may be lost",
                    l.old_master, l.new_gtid, l.old_gtid
                ),
                None => String::new(),
            };
            Draft::new("db", db, "promote")
                .transition(old.as_str(), host.as_str())
                .message(format!(
                    "{host} promoted to master of database {db} (was {old}){loss}"
                ))
        }
        Op::FreezeDb {
            db,
            message: Some(m),
        } => Draft::new("db", db, "freeze")
            .transition("writable", "frozen")
            .message(format!(
                "database {db} frozen: writes are refused with {m:?}"
            )),
        Op::FreezeDb { db, message: None } => Draft::new("db", db, "thaw")
            .transition("frozen", "writable")
            .message(format!(
                "database {db} thawed: writes go to its master again"
            )),
        Op::AddAdmin(a) => {
            Draft::new("admin", &a.name, "add").message(format!("admin key {} added", a.name))
        }
        Op::RemoveAdmin(name) => {
            Draft::new("admin", name, "remove").message(format!("admin key {name} removed"))
        }
        // The secret never reaches the audit log.
        Op::AddTsig(k) => Draft::new("tsig", &k.name, "add")
            .message(format!("TSIG key {} ({}) added", k.name, k.algorithm)),
        Op::RemoveTsig(name) => {
            Draft::new("tsig", name, "remove").message(format!("TSIG key {name} removed"))
        }
        Op::AddSecondary(s) => Draft::new("secondary", s.addr.to_string(), "add").message(format!(
            "secondary {} added, NOTIFY signed with {}",
            s.addr, s.tsig
        )),
        Op::RemoveSecondary(a) => Draft::new("secondary", a.to_string(), "remove")
            .message(format!("secondary {a} removed")),
    })
}
