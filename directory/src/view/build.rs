//! A zone's answers from its model: every derived name (hosts, services,
//! repositories, databases, admin keys) and the apex, static records and glue, encoded
//! into the shards. A full build encodes host names as it goes (`Eager`);
//! `patch` rebuilds the names of a `Scope` with the same `Builder`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustc_hash::FxHashMap;

use super::alias::{chase, cname_owners, wire_parent};
use super::scope::Scope;
use super::{
    finish, key_of, shard_of, Key, KeyEntry, KeyOwner, Node, ViewConfig, ViewError, ZoneView,
    SHARDS,
};
use crate::model::{Binding, Database, Repo, Role, Zone};
use crate::schema;
use crate::wire;

/// One record set at a name, with what goes in the additional section (while building).
#[derive(Debug, Default, Clone)]
pub(super) struct RrSet {
    rtype: Option<RecordType>,
    records: Vec<Record>,
    additionals: Vec<Record>,
}

/// A name's record sets while a view is built; `Node` keeps only their encoding.
#[derive(Debug, Default, Clone)]
pub(super) struct BuildNode {
    sets: Vec<RrSet>,
    key: Option<KeyEntry>,
}

impl BuildNode {
    pub(super) fn set_mut(&mut self, t: RecordType) -> &mut RrSet {
        match self.sets.iter().position(|s| s.rtype == Some(t)) {
            Some(i) => &mut self.sets[i],
            None => {
                self.sets.push(RrSet {
                    rtype: Some(t),
                    ..Default::default()
                });
                let last = self.sets.len() - 1;
                &mut self.sets[last]
            }
        }
    }

    pub(super) fn encode(self, name: &Name) -> Node {
        let mut sets = Vec::new();
        for s in &self.sets {
            if let Some(t) = s.rtype {
                wire::encode_set(name, t, &s.records, &s.additionals, &mut sets);
            }
        }
        Node {
            sets: sets.into_boxed_slice(),
            key: self.key.map(Box::new),
        }
    }
}

/// A predicate choosing bindings for a role-filtered answer.
type BindingFilter = dyn Fn(&Binding) -> bool;

struct Builder<'z> {
    origin: Name,
    names: FxHashMap<Name, BuildNode>,
    /// What the answers need of each host they name, looked up once a build: a
    /// service's names name each of its hosts up to a dozen times.
    hosts: FxHashMap<&'z str, Option<HostInfo<'z>>>,
    zone: &'z Zone,
    cfg: ViewConfig,
    scope: &'z Scope,
    /// In a full build, host names are encoded as soon as they are built,
    /// straight into the shards: most of a zone's names are hosts, and holding
    /// every host's hickory records until the end cost hundreds of megabytes
    /// of short-lived memory (and the time to fault it in).
    eager: Option<Eager>,
}

/// Names encoded early, and the parents they need as (empty) nodes.
#[derive(Default)]
struct Eager {
    shards: Vec<FxHashMap<Key, Node>>,
    parents: rustc_hash::FxHashSet<Name>,
    /// The parents' keys, so that each parent's `Name` is made once.
    parent_keys: rustc_hash::FxHashSet<Key>,
}

impl Eager {
    fn new() -> Self {
        Eager {
            shards: (0..SHARDS).map(|_| FxHashMap::default()).collect(),
            parents: Default::default(),
            parent_keys: Default::default(),
        }
    }

    fn get(&self, name: &Name) -> Option<&Node> {
        let k = key_of(name)?;
        self.shards[shard_of(&k)].get(&k)
    }
}

/// A host as the answers that name it see it.
struct HostInfo<'z> {
    /// `HOST.node.Z`.
    node: Name,
    /// Its A/AAAA records at `node`, for additional sections.
    addr_records: Vec<Record>,
    addrs: &'z [IpAddr],
    in_service: bool,
}

fn txt(strings: Vec<String>) -> RData {
    RData::TXT(TXT::new(strings))
}

fn addr_rdata(a: &IpAddr) -> RData {
    match a {
        IpAddr::V4(v4) => RData::A(A(*v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
    }
}

impl<'z> Builder<'z> {
    fn name(&self, rel: &[&str]) -> Option<Name> {
        Name::from_labels(rel.iter().map(|s| s.as_bytes()))
            .ok()?
            .append_domain(&self.origin)
            .ok()
    }

    fn node(&mut self, name: &Name) -> &mut BuildNode {
        self.names.entry(name.clone()).or_default()
    }

    fn add(&mut self, name: &Name, ttl: u32, data: RData) {
        let t = data.record_type();
        let rec = Record::from_rdata(name.clone(), ttl, data);
        self.node(name).set_mut(t).records.push(rec);
    }

    /// What the answers need of `host` (no addresses and out of service when the
    /// zone does not have it); `None` only when its name is not a valid name.
    fn host_info(&mut self, host: &'z str) -> Option<&HostInfo<'z>> {
        if !self.hosts.contains_key(host) {
            let info = self.name(&[host, schema::NODE]).map(|node| {
                let h = self.zone.hosts.get(host);
                let addrs = h.map(|h| h.addrs.as_slice()).unwrap_or_default();
                HostInfo {
                    addr_records: addrs
                        .iter()
                        .map(|a| Record::from_rdata(node.clone(), self.cfg.node_ttl, addr_rdata(a)))
                        .collect(),
                    node,
                    addrs,
                    in_service: h.is_some_and(|h| h.in_service()),
                }
            });
            self.hosts.insert(host, info);
        }
        self.hosts.get(host).and_then(Option::as_ref)
    }

    /// SRV records, the matching A/AAAA at `name`, and targets' addresses as additionals.
    fn srv_answer(&mut self, name: &Name, targets: &[(&'z str, u16, u16, u16)], ttl: u32) {
        // Each target host appears once per name (a binding is host x service), so
        // only addresses shared by several hosts need de-duplicating.
        let mut srv = Vec::with_capacity(targets.len());
        let mut extra = Vec::with_capacity(targets.len());
        let mut addrs = Vec::new();
        let mut seen = HashSet::new();
        for &(host, prio, weight, port) in targets {
            let Some(info) = self.host_info(host) else {
                continue;
            };
            srv.push(Record::from_rdata(
                name.clone(),
                ttl,
                RData::SRV(SRV::new(prio, weight, port, info.node.clone())),
            ));
            extra.extend(info.addr_records.iter().cloned());
            for a in info.addrs {
                if seen.insert(*a) {
                    addrs.push(Record::from_rdata(name.clone(), ttl, addr_rdata(a)));
                }
            }
        }
        // Make the name exist even when nothing is eligible: NODATA, not NXDOMAIN.
        let node = self.node(name);
        if !srv.is_empty() {
            let set = node.set_mut(RecordType::SRV);
            set.records = srv;
            set.additionals = extra;
        }
        for r in addrs {
            node.set_mut(r.record_type()).records.push(r);
        }
    }

    fn switchboard_port(&self, host: &str) -> u16 {
        self.zone
            .bindings
            .get(&(host.to_string(), schema::SWITCHBOARD_SERVICE.to_string()))
            .map(|b| b.port)
            .unwrap_or(0)
    }

    fn eligible(&mut self, b: &'z Binding) -> bool {
        b.available
            && b.health != crate::model::Health::Critical
            && self.host_info(&b.host).is_some_and(|h| h.in_service)
    }

    fn host(&mut self, h: &crate::model::Host) {
        let ttl = self.cfg.node_ttl;
        let Some(node) = self.name(&[&h.name, schema::NODE]) else {
            return;
        };
        for a in &h.addrs {
            self.add(&node, ttl, addr_rdata(a));
        }
        self.add(&node, ttl, txt(crate::txt::host_txt(h)));
        if let Some(key) = &h.key {
            let fpr = key.fingerprint();
            if let Some(kname) = self.name(&[&fpr, schema::KEY]) {
                self.add(&kname, ttl, RData::PTR(PTR(node.clone())));
                self.add(
                    &kname,
                    ttl,
                    txt(vec![
                        format!("{}={}", schema::txt::HOST, h.name),
                        format!("{}={}", schema::txt::ROLES, h.roles.join(",")),
                        format!("{}={key}", schema::txt::KEY),
                    ]),
                );
                self.node(&kname).key = Some(KeyEntry {
                    owner: KeyOwner::Host(h.name.clone()),
                    key: *key,
                });
            }
        }
    }

    /// Runs `f`, whose names are complete when it returns; in a full build
    /// they are encoded into the shards at once instead of joining `names`.
    fn eagerly(&mut self, f: impl FnOnce(&mut Self)) {
        if self.eager.is_none() {
            return f(self);
        }
        let rest = std::mem::take(&mut self.names);
        f(self);
        let built = std::mem::replace(&mut self.names, rest);
        if let Some(eager) = &mut self.eager {
            for (name, node) in built {
                if let Some(k) = key_of(&name) {
                    let parent = wire_parent(&k).unwrap_or_default();
                    if !eager.parent_keys.contains(parent) {
                        eager.parent_keys.insert(parent.into());
                        eager.parents.insert(name.base_name());
                    }
                    let node = node.encode(&name);
                    eager.shards[shard_of(&k)].insert(k, node);
                }
            }
        }
    }

    fn hosts(&mut self) {
        let zone = self.zone;
        if self.scope.all {
            for h in zone.hosts.values() {
                self.eagerly(|b| b.host(h));
            }
        } else {
            for name in &self.scope.hosts {
                if let Some(h) = zone.hosts.get(name) {
                    self.host(h);
                }
            }
        }
    }

    fn service(&mut self, svc: &str, bindings: Vec<&'z Binding>) {
        let ttl = self.cfg.service_ttl;
        let svc_label = format!("_{svc}");
        let (Some(type_name), Some(service_name)) = (
            self.name(&[&svc_label, schema::TCP]),
            self.name(&[svc, schema::SERVICE]),
        ) else {
            return;
        };
        for b in &bindings {
            let Some(inst) = self.name(&[&b.host, &svc_label, schema::TCP]) else {
                continue;
            };
            self.add(&type_name, ttl, RData::PTR(PTR(inst.clone())));
            if let Some(info) = self.host_info(&b.host) {
                let (target, extra) = (info.node.clone(), info.addr_records.clone());
                self.add(
                    &inst,
                    ttl,
                    RData::SRV(SRV::new(b.srv_priority(), b.weight, b.port, target)),
                );
                self.node(&inst).set_mut(RecordType::SRV).additionals = extra;
            }
            self.add(&inst, ttl, txt(crate::txt::binding_txt(b)));
        }
        let live: Vec<&Binding> = bindings.into_iter().filter(|b| self.eligible(b)).collect();
        let targets = |pred: &dyn Fn(&Binding) -> bool| -> Vec<(&'z str, u16, u16, u16)> {
            live.iter()
                .filter(|b| pred(b))
                .map(|b| (b.host.as_str(), b.srv_priority(), b.weight, b.port))
                .collect()
        };
        let all = targets(&|_| true);
        self.srv_answer(&service_name, &all, ttl);
        self.srv_answer(&type_name, &all, ttl);
        let filters: [(&str, &BindingFilter); 4] = [
            ("master", &|b| b.role == Some(Role::Master)),
            ("replica", &|b| b.role == Some(Role::Replica)),
            ("readonly", &|b| b.readonly),
            ("readwrite", &|b| !b.readonly),
        ];
        for (label, pred) in filters {
            if let Some(n) = self.name(&[label, svc, schema::SERVICE]) {
                let t = targets(pred);
                self.srv_answer(&n, &t, ttl);
            }
        }
    }

    fn services(&mut self) {
        let zone = self.zone;
        let ttl = self.cfg.service_ttl;
        let mut by_service: std::collections::BTreeMap<&str, Vec<&Binding>> = Default::default();
        for b in zone.bindings.values() {
            if Scope::has(&self.scope.services, self.scope.all, &b.service) {
                by_service.entry(b.service.as_str()).or_default().push(b);
            }
        }
        for (svc, bindings) in by_service {
            self.eagerly(|b| b.service(svc, bindings));
        }
        if self.scope.all || self.scope.service_index {
            let Some(services_name) = self.name(&schema::DNS_SD_SERVICES) else {
                return;
            };
            self.node(&services_name);
            let all: BTreeSet<&str> = zone.bindings.values().map(|b| b.service.as_str()).collect();
            for svc in all {
                if let Some(type_name) = self.name(&[&format!("_{svc}"), schema::TCP]) {
                    self.add(&services_name, ttl, RData::PTR(PTR(type_name)));
                }
            }
        }
    }

    fn repos(&mut self) {
        let zone = self.zone;
        let ttl = self.cfg.service_ttl;
        for r in zone
            .repos
            .values()
            .filter(|r| Scope::has(&self.scope.repos, self.scope.all, &r.name))
        {
            let Some(name) = self.name(&[&r.name, schema::REPO]) else {
                continue;
            };
            let readonly = repo_readonly(zone, r);
            self.add(&name, ttl, txt(crate::txt::repo_txt(r, Some(readonly))));
            let write: Vec<_> = std::iter::once(r.master.as_str())
                .filter(|_| !readonly)
                .map(|h| (h, 0, 0, self.switchboard_port(h)))
                .collect();
            if let Some(n) = self.name(&[schema::WRITE, &r.name, schema::REPO]) {
                self.srv_answer(&n, &write, ttl);
            }
            let read: Vec<_> = readers(zone, r)
                .map(|h| (h, 0, 0, self.switchboard_port(h)))
                .collect();
            if let Some(n) = self.name(&[schema::READ, &r.name, schema::REPO]) {
                self.srv_answer(&n, &read, ttl);
            }
        }
    }

    /// `DB.db` TXT, `write.DB.db` (the master, unless read-only) and
    /// `read.DB.db` (replicas within `max_lag_s`, and the master) SRV/A
    /// (docs/dns-schema.md, "Databases").
    fn dbs(&mut self) {
        let zone = self.zone;
        let ttl = self.cfg.service_ttl;
        for d in zone
            .dbs
            .values()
            .filter(|d| Scope::has(&self.scope.dbs, self.scope.all, &d.name))
        {
            let Some(name) = self.name(&[&d.name, schema::DB]) else {
                continue;
            };
            let readonly = db_readonly(zone, d);
            self.add(&name, ttl, txt(crate::txt::db_txt(d, Some(readonly))));
            let write: Vec<_> = std::iter::once(d.master.as_str())
                .filter(|_| !readonly)
                .map(|h| (h, 0, 0, d.port))
                .collect();
            if let Some(n) = self.name(&[schema::WRITE, &d.name, schema::DB]) {
                self.srv_answer(&n, &write, ttl);
            }
            let read: Vec<_> = db_readers(zone, d)
                .map(|(h, prio)| (h, prio, 0, d.port))
                .collect();
            if let Some(n) = self.name(&[schema::READ, &d.name, schema::DB]) {
                self.srv_answer(&n, &read, ttl);
            }
        }
    }

    fn admins(&mut self) {
        let zone = self.zone;
        for a in zone
            .admins
            .values()
            .filter(|a| Scope::has(&self.scope.admins, self.scope.all, &a.name))
        {
            if let Some(n) = self.name(&[&a.name, schema::ADMIN]) {
                self.add(
                    &n,
                    self.cfg.node_ttl,
                    txt(vec![format!("{}={}", schema::txt::KEY, a.key)]),
                );
            }
        }
    }
}

/// Whether a database takes no writes: its master is not in service, or it is frozen.
pub fn db_readonly(zone: &Zone, d: &Database) -> bool {
    d.frozen.is_some() || !zone.hosts.get(&d.master).is_some_and(|h| h.in_service())
}

/// The hosts `read.DB.db` gives, with their SRV priority: the replicas in
/// service that replicate within `max_lag_s` by their last report (0), and
/// the master in service (0 too: it always has every write).
pub fn db_readers<'z>(zone: &'z Zone, d: &'z Database) -> impl Iterator<Item = (&'z str, u16)> {
    let in_service = |h: &str| zone.hosts.get(h).is_some_and(|h| h.in_service());
    d.hosts()
        .filter(move |h| in_service(h))
        .filter(move |h| *h == d.master || d.lag_of(h).is_none())
        .map(|h| (h, 0))
}

/// Whether a repository takes no writes: read-only by configuration, frozen
/// (`repo freeze`), or its master is not in service (SPEC "Read-only when
/// there is no master").
pub fn repo_readonly(zone: &Zone, r: &Repo) -> bool {
    r.readonly || r.frozen.is_some() || !zone.hosts.get(&r.master).is_some_and(|h| h.in_service())
}

/// The hosts `read.REPO.repo` gives: those in service within `max_lag` of the
/// master's version or, while the master is not in service, of the highest
/// version a host in service has (reads go on from the most recent copies).
pub fn readers<'z>(zone: &'z Zone, r: &'z Repo) -> impl Iterator<Item = &'z str> {
    let in_service = move |h: &str| zone.hosts.get(h).is_some_and(|h| h.in_service());
    let base = if in_service(&r.master) {
        r.master_version()
    } else {
        r.hosts()
            .filter(|h| in_service(h))
            .map(|h| r.version_of(h))
            .max()
            .unwrap_or(0)
    };
    r.hosts().filter(move |h| {
        let v = r.version_of(h);
        in_service(h) && v <= base && v.saturating_add(r.max_lag) >= base
    })
}

pub(super) fn admin_keys(zone: &Zone) -> HashMap<String, KeyEntry> {
    zone.admins
        .values()
        .map(|a| {
            (
                a.key.fingerprint(),
                KeyEntry {
                    owner: KeyOwner::Admin(a.name.clone()),
                    key: a.key,
                },
            )
        })
        .collect()
}

/// The zone's origin, SOA and negative SOA.
pub(super) fn apex(zone: &Zone) -> Result<(Name, Record, Record), ViewError> {
    let origin =
        Name::from_ascii(&zone.meta.origin).map_err(|e| ViewError::Origin(e.to_string()))?;
    let soa = &zone.meta.soa;
    let soa_data = SOA::new(
        Name::from_ascii(&soa.mname).map_err(|e| ViewError::SoaMname(e.to_string()))?,
        Name::from_ascii(&soa.rname).map_err(|e| ViewError::SoaRname(e.to_string()))?,
        zone.serial,
        soa.refresh,
        soa.retry,
        soa.expire,
        soa.minimum,
    );
    let record = Record::from_rdata(origin.clone(), soa.ttl, RData::SOA(soa_data.clone()));
    let negative = Record::from_rdata(
        origin.clone(),
        soa.ttl.min(soa.minimum),
        RData::SOA(soa_data),
    );
    Ok((origin, record, negative))
}

/// The names of `scope` built from `zone`.
pub(super) fn build_names(
    zone: &Zone,
    cfg: ViewConfig,
    origin: &Name,
    scope: &Scope,
) -> FxHashMap<Name, BuildNode> {
    build_names_with(zone, cfg, origin, scope, None).0
}

/// The names of `scope`, with `eager` given: hosts already encoded in it.
fn build_names_with(
    zone: &Zone,
    cfg: ViewConfig,
    origin: &Name,
    scope: &Scope,
    eager: Option<Eager>,
) -> (FxHashMap<Name, BuildNode>, Option<Eager>) {
    let mut b = Builder {
        origin: origin.clone(),
        names: FxHashMap::default(),
        hosts: FxHashMap::default(),
        zone,
        cfg,
        scope,
        eager,
    };
    b.hosts();
    b.services();
    b.repos();
    b.dbs();
    b.admins();
    (b.names, b.eager)
}

/// Builds the answers of one zone from its model.
pub fn build(zone: &Zone, cfg: ViewConfig) -> Result<ZoneView, ViewError> {
    let (origin, soa, negative_soa) = apex(zone)?;
    let (mut names, eager) =
        build_names_with(zone, cfg, &origin, &Scope::all(), Some(Eager::new()));
    let mut eager = eager.unwrap_or_else(Eager::new);
    {
        let apex_node = names.entry(origin.clone()).or_default();
        apex_node.set_mut(RecordType::SOA).records.push(soa);
        for ns in &zone.meta.ns {
            if let Ok(n) = Name::from_ascii(ns) {
                apex_node
                    .set_mut(RecordType::NS)
                    .records
                    .push(Record::from_rdata(
                        origin.clone(),
                        zone.meta.ns_ttl,
                        RData::NS(NS(n)),
                    ));
            }
        }
    }
    // Static records: served verbatim, never over a derived set of the same type.
    let statics: Vec<Record> = zone.meta.static_records()
        .into_iter()
        .filter(|r| {
            let t = r.record_type();
            let lower = r.name.to_lowercase();
            let derived = names
                .get(&lower)
                .is_some_and(|n| n.sets.iter().any(|s| s.rtype == Some(t)))
                || eager
                    .get(&lower)
                    .is_some_and(|n| n.set(u16::from(t)).is_some());
            if derived {
                tracing::warn!(name = %r.name, rtype = %t, "static record shadowed by a derived one; ignored");
            }
            !derived
        })
        .collect();
    let cnames = cname_owners(&statics);
    for r in statics {
        let t = r.record_type();
        names
            .entry(r.name.to_lowercase())
            .or_default()
            .set_mut(t)
            .records
            .push(r);
    }
    // NS targets inside the zone get their addresses in the additional section.
    let glue: Vec<Record> = zone
        .meta
        .ns
        .iter()
        .filter_map(|n| Name::from_ascii(n).ok())
        .flat_map(|t| {
            let t = t.to_lowercase();
            let mut found: Vec<Record> = names
                .get(&t)
                .map(|n| {
                    n.sets
                        .iter()
                        .filter(|s| matches!(s.rtype, Some(RecordType::A | RecordType::AAAA)))
                        .flat_map(|s| s.records.iter().cloned())
                        .collect()
                })
                .unwrap_or_default();
            if let (Some(node), Some(k)) = (eager.get(&t), key_of(&t)) {
                for rt in [RecordType::A, RecordType::AAAA] {
                    if let Some((answers, _)) = node.decode(&k, u16::from(rt)) {
                        found.extend(answers);
                    }
                }
            }
            found
        })
        .collect();
    if let Some(apex_node) = names.get_mut(&origin) {
        apex_node.set_mut(RecordType::NS).additionals = glue;
    }
    // The early-encoded names' parents exist too (`node.Z`, `key.Z`), and
    // every ancestor of those.
    for p in std::mem::take(&mut eager.parents) {
        if p.num_labels() > origin.num_labels() && eager.get(&p).is_none() {
            names.entry(p).or_default();
        }
    }
    add_ancestors(&mut names, &origin, |n| eager.get(n).is_some());
    let mut shards = eager.shards;
    for (name, mut node) in names {
        let Some(k) = key_of(&name) else { continue };
        let shard = &mut shards[shard_of(&k)];
        // A name built both early and late: one node with both. (The zone
        // file refuses static records at derived names, so nothing reaches
        // this today; it keeps the view whole if that ever changes.)
        if let Some(early) = shard.remove(&k) {
            for t in early.sets().map(|s| s.rtype).collect::<Vec<_>>() {
                if let Some((answers, additionals)) = early.decode(&k, t) {
                    let set = node.set_mut(RecordType::from(t));
                    set.records.extend(answers);
                    set.additionals.extend(additionals);
                }
            }
            if node.key.is_none() {
                node.key = early.key.map(|b| *b);
            }
        }
        shard.insert(k, node.encode(&name));
    }
    let aliases = chase(&mut shards, &origin, cnames);
    Ok(finish(
        origin,
        zone.serial,
        negative_soa,
        shards.into_iter().map(Arc::new).collect(),
        Arc::new(admin_keys(zone)),
        Arc::new(aliases),
    ))
}

/// Every ancestor of a name exists (RFC 8020): empty nodes for those missing,
/// unless `exists` says the view already has them.
pub(super) fn add_ancestors(
    names: &mut FxHashMap<Name, BuildNode>,
    origin: &Name,
    exists: impl Fn(&Name) -> bool,
) {
    let mut missing: rustc_hash::FxHashSet<Name> = Default::default();
    for n in names.keys() {
        let mut cur = n.base_name();
        while cur.num_labels() > origin.num_labels()
            && !names.contains_key(&cur)
            && !missing.contains(&cur)
        {
            if exists(&cur) {
                break;
            }
            let parent = cur.base_name();
            missing.insert(cur);
            cur = parent;
        }
    }
    for n in missing {
        names.insert(n, BuildNode::default());
    }
}
