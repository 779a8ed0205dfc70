//! The rules of a change: what an [`Op`] may do to a zone and what it writes
//! (validated against the zone before it, nothing written), which of the
//! view's names it touches, and how the change feed names it. Pure functions
//! of the zone: `apply` does the writing.

use super::ApplyError;
use crate::model::{self, Database, DbLoss, Host, Loss, Op, Repo, Zone};
use crate::store::Change;
use crate::view;

pub(super) fn next_serial(s: u32) -> u32 {
    match s.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// What an operation changes, for the feed: (kind, name, action).
pub(super) fn describe(op: &Op) -> (&'static str, String, &'static str) {
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
        Op::FreezeRepo {
            repo,
            message: Some(_),
        } => ("repo", repo.clone(), "freeze"),
        Op::FreezeRepo {
            repo,
            message: None,
        } => ("repo", repo.clone(), "thaw"),
        Op::SetVersion { repo, .. } => ("repo", repo.clone(), "version"),
        Op::AddDb(d) => ("db", d.name.clone(), "add"),
        Op::RemoveDb(d) => ("db", d.clone(), "remove"),
        Op::PromoteDb { db, .. } => ("db", db.clone(), "promote"),
        Op::FreezeDb {
            db,
            message: Some(_),
        } => ("db", db.clone(), "freeze"),
        Op::FreezeDb { db, message: None } => ("db", db.clone(), "thaw"),
        Op::SetDbPosition { db, .. } => ("db", db.clone(), "position"),
        Op::AddAdmin(a) => ("admin", a.name.clone(), "add"),
        Op::RemoveAdmin(a) => ("admin", a.clone(), "remove"),
        Op::AddTsig(k) => ("tsig", k.name.clone(), "add"),
        Op::RemoveTsig(k) => ("tsig", k.clone(), "remove"),
        Op::AddSecondary(s) => ("secondary", s.addr.to_string(), "add"),
        Op::RemoveSecondary(a) => ("secondary", a.to_string(), "remove"),
    }
}

/// The names an operation touches, judged on the zone before it.
pub(super) fn scope_of(zone: &Zone, op: &Op) -> view::Scope {
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
        | Op::FreezeRepo { .. }
        | Op::SetVersion { .. } => view::Scope::default(),
        Op::AddDb(_)
        | Op::RemoveDb(_)
        | Op::PromoteDb { .. }
        | Op::FreezeDb { .. }
        | Op::SetDbPosition { .. } => view::Scope::default(),
        Op::AddAdmin(_) | Op::RemoveAdmin(_) => view::Scope::default(),
        // Transfer settings change no answer.
        Op::AddTsig(_) | Op::RemoveTsig(_) | Op::AddSecondary(_) | Op::RemoveSecondary(_) => {
            view::Scope::default()
        }
    };
    match op {
        Op::AddRepo(r) => {
            s.repos.insert(r.name.clone());
        }
        Op::RemoveRepo(r)
        | Op::Promote { repo: r, .. }
        | Op::SetAutoFailover { repo: r, .. }
        | Op::FreezeRepo { repo: r, .. }
        | Op::SetVersion { repo: r, .. } => {
            s.repos.insert(r.clone());
        }
        Op::AddDb(d) => {
            s.dbs.insert(d.name.clone());
        }
        Op::RemoveDb(d)
        | Op::PromoteDb { db: d, .. }
        | Op::FreezeDb { db: d, .. }
        | Op::SetDbPosition { db: d, .. } => {
            s.dbs.insert(d.clone());
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

fn database<'z>(zone: &'z Zone, name: &str) -> Result<&'z Database, ApplyError> {
    zone.dbs
        .get(name)
        .ok_or_else(|| ApplyError::NotFound(format!("no database {name} in {}", zone.origin())))
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
pub(super) fn plan(zone: &Zone, op: Op) -> Result<Vec<Change>, ApplyError> {
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
            let dbs: Vec<&str> = zone
                .dbs
                .values()
                .filter(|d| d.has_host(&name))
                .map(|d| d.name.as_str())
                .collect();
            if !dbs.is_empty() {
                return Err(ApplyError::Conflict(format!(
                    "host {name} still serves databases ({}); remove it from them first",
                    dbs.join(", ")
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
        Op::FreezeRepo {
            repo: name,
            message,
        } => {
            let mut r = repo(zone, &name)?.clone();
            set_freeze(&mut r.frozen, message, &format!("repository {name}"))?;
            model::validate_repo(&r)?;
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
        Op::AddDb(mut d) => {
            d.positions.clear();
            d.lost.clear();
            model::validate_database(&d)?;
            if zone.dbs.contains_key(&d.name) {
                return Err(ApplyError::Conflict(format!(
                    "database {} already exists; remove it first with `db rm`",
                    d.name
                )));
            }
            for h in d.hosts() {
                host(zone, h)?;
            }
            vec![Change::PutDb(d)]
        }
        Op::RemoveDb(name) => {
            database(zone, &name)?;
            vec![Change::DelDb(name)]
        }
        Op::PromoteDb {
            db: name,
            host: new,
            force,
        } => {
            let d = database(zone, &name)?;
            host(zone, &new)?;
            if d.master == new {
                return Err(ApplyError::Conflict(format!(
                    "{new} is already the master of {name}"
                )));
            }
            if !d.replicas.contains(&new) {
                return Err(ApplyError::Conflict(format!(
                    "{new} is not a replica of {name} (replicas: {})",
                    d.replicas.join(", ")
                )));
            }
            let old_gtid = d.master_gtid().to_string();
            let new_gtid = d
                .positions
                .get(&new)
                .map_or(String::new(), |p| p.gtid.clone());
            let mut next = d.clone();
            // Another replica that has more than `new` would be lost too: it
            // could not follow `new` (its binary log has what `new` lacks).
            let ahead = d.replicas.iter().find_map(|h| {
                let p = d.positions.get(h)?;
                (h != &new && model::gtid_behind(&new_gtid, &p.gtid)).then_some((h, &p.gtid))
            });
            // What promoting `new` loses: the master's last report, else the
            // replica ahead of it.
            let loses = if d.behind_master(&new) { None } else { ahead };
            if d.behind_master(&new) || ahead.is_some() {
                if !force {
                    return Err(ApplyError::Conflict(match loses {
                        Some((h, g)) => format!(
                            "{new} is at GTID position {new_gtid:?} of {name}, behind replica {h} at {g:?} by their last reports: promoting it would lose what {h} has, and {h} could not follow it; promote {h}, wait for {new} to catch up, or pass --force to accept the loss"
                        ),
                        _ => format!(
                            "{new} is at GTID position {:?} of {name}, behind the master {} at {old_gtid:?} by their last reports: promoting it may lose what only the master has; wait for it to catch up, or pass --force to accept the loss",
                            new_gtid, d.master
                        ),
                    }));
                }
                next.lost.push(DbLoss {
                    old_master: d.master.clone(),
                    new_master: new.clone(),
                    old_gtid: loses.map_or(old_gtid, |(_, g)| g.clone()),
                    new_gtid,
                    at: crate::time::unix_secs(),
                });
            }
            next.replicas.retain(|h| h != &new);
            next.replicas.insert(0, d.master.clone());
            next.master = new;
            vec![Change::PutDb(next)]
        }
        Op::FreezeDb { db: name, message } => {
            let mut d = database(zone, &name)?.clone();
            set_freeze(&mut d.frozen, message, &format!("database {name}"))?;
            model::validate_database(&d)?;
            vec![Change::PutDb(d)]
        }
        Op::SetDbPosition {
            db: name,
            host,
            position,
        } => {
            let d = database(zone, &name)?;
            if !d.has_host(&host) {
                return Err(ApplyError::NotFound(format!(
                    "{host} is not a host of database {name}"
                )));
            }
            model::parse_gtid(&position.gtid)?;
            let mut next = d.clone();
            next.positions.insert(host, position);
            vec![Change::PutDb(next)]
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
        Op::AddTsig(mut k) => {
            k.name = k.name.trim_end_matches('.').to_ascii_lowercase();
            model::validate_tsig(&k)?;
            if zone.tsig.contains_key(&k.name) {
                return Err(ApplyError::Conflict(format!(
                    "TSIG key {} already exists in {}; remove it first to replace it",
                    k.name,
                    zone.origin()
                )));
            }
            vec![Change::PutTsig(k)]
        }
        Op::RemoveTsig(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !zone.tsig.contains_key(&name) {
                return Err(ApplyError::NotFound(format!(
                    "no TSIG key {name} in {}",
                    zone.origin()
                )));
            }
            let users: Vec<String> = zone
                .secondaries
                .values()
                .filter(|s| s.tsig == name)
                .map(|s| s.addr.to_string())
                .collect();
            if !users.is_empty() {
                return Err(ApplyError::Conflict(format!(
                    "secondaries {} use TSIG key {name}: remove them first with `zone secondary rm`",
                    users.join(", ")
                )));
            }
            vec![Change::DelTsig(name)]
        }
        Op::AddSecondary(mut s) => {
            s.tsig = s.tsig.trim_end_matches('.').to_ascii_lowercase();
            if !zone.tsig.contains_key(&s.tsig) {
                return Err(ApplyError::NotFound(format!(
                    "no TSIG key {} in {}: add it first with `zone tsig add`",
                    s.tsig,
                    zone.origin()
                )));
            }
            if zone.secondaries.contains_key(&s.addr) {
                return Err(ApplyError::Conflict(format!(
                    "{} is already a secondary of {}",
                    s.addr,
                    zone.origin()
                )));
            }
            vec![Change::PutSecondary(s)]
        }
        Op::RemoveSecondary(addr) => {
            if !zone.secondaries.contains_key(&addr) {
                return Err(ApplyError::NotFound(format!(
                    "{addr} is not a secondary of {}",
                    zone.origin()
                )));
            }
            vec![Change::DelSecondary(addr)]
        }
    })
}

/// Freezes (`Some(message)`) or thaws (`None`) `what` (a repository or a
/// database): refused when it changes nothing.
fn set_freeze(
    frozen: &mut Option<String>,
    message: Option<String>,
    what: &str,
) -> Result<(), ApplyError> {
    match (&message, &*frozen) {
        (Some(m), Some(old)) if m == old => Err(ApplyError::Conflict(format!(
            "{what} is already frozen with that message"
        ))),
        (None, None) => Err(ApplyError::Conflict(format!("{what} is not frozen"))),
        _ => {
            *frozen = message;
            Ok(())
        }
    }
}
