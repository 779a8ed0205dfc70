//! The pre-built answers the DNS path reads.
//!
//! A `ZoneView` is built from a zone's model when the zone changes, never when a
//! query arrives: a hash map from lowercased owner name to its record sets, with
//! the additional-section records of each set already chosen. Every answer,
//! NXDOMAIN and NODATA included, is one zone match and one map lookup. The whole
//! `View` is swapped atomically (`arc_swap`), so readers never wait for a writer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::model::{Binding, Repo, Role, Zone};
use crate::schema;
use crate::zonefile;

/// TTLs of the derived names (SPEC: 5 s service/repo, 60 s node/key by default).
#[derive(Debug, Clone, Copy)]
pub struct ViewConfig {
    pub node_ttl: u32,
    pub service_ttl: u32,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            node_ttl: schema::DEFAULT_NODE_TTL,
            service_ttl: schema::DEFAULT_SERVICE_TTL,
        }
    }
}

/// Who a key fingerprint belongs to in a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOwner {
    Admin(String),
    Host(String),
}

/// A published key: its owner and the key itself, found by fingerprint.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub owner: KeyOwner,
    pub key: crate::model::PublicKey,
}

/// One record set at a name, with what goes in the additional section.
#[derive(Debug, Default)]
pub struct RrSet {
    pub rtype: Option<RecordType>,
    pub records: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// Everything at one owner name. Empty for an empty non-terminal (NODATA, not NXDOMAIN).
#[derive(Debug, Default)]
pub struct Node {
    pub sets: Vec<RrSet>,
}

impl Node {
    fn set(&self, t: RecordType) -> Option<&RrSet> {
        self.sets.iter().find(|s| s.rtype == Some(t))
    }

    fn set_mut(&mut self, t: RecordType) -> &mut RrSet {
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
}

/// The answers of one zone.
#[derive(Debug)]
pub struct ZoneView {
    pub origin: LowerName,
    pub serial: u32,
    /// The SOA for the authority section of negative answers (TTL per RFC 2308 §5).
    pub negative_soa: Record,
    names: HashMap<LowerName, Node>,
    keys: HashMap<String, KeyEntry>,
    /// The same answers, pre-encoded for the UDP fast path.
    pub wire: crate::wire::WireZone,
}

/// The result of looking a question up.
pub enum Lookup<'a> {
    /// The name is in no zone of ours.
    Refused,
    NxDomain(&'a ZoneView),
    NoData(&'a ZoneView),
    Answer {
        records: &'a [Record],
        additionals: &'a [Record],
    },
    /// `ANY`: every set at the name.
    Any(&'a Node),
}

impl ZoneView {
    /// The answer to (name, type) within this zone.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        let Some(node) = self.names.get(name) else {
            return Lookup::NxDomain(self);
        };
        if qtype == RecordType::ANY && !node.sets.is_empty() {
            return Lookup::Any(node);
        }
        let set = node.set(qtype).or_else(|| node.set(RecordType::CNAME));
        match set {
            Some(s) if !s.records.is_empty() => Lookup::Answer {
                records: &s.records,
                additionals: &s.additionals,
            },
            _ => Lookup::NoData(self),
        }
    }

    /// Who holds the key with this fingerprint, if anyone in this zone.
    pub fn key(&self, fingerprint: &str) -> Option<&KeyEntry> {
        self.keys.get(fingerprint)
    }

    /// Every record of the zone, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.names
            .values()
            .flat_map(|n| n.sets.iter().flat_map(|s| s.records.iter()))
    }

    /// How many owner names the view holds (for status and tests).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }
}

/// All zones' answers. Swapped whole on change.
#[derive(Debug, Default)]
pub struct View {
    /// Longest origin first, so the most specific zone wins.
    pub zones: Vec<Arc<ZoneView>>,
}

impl View {
    /// The zone that is authoritative for `name`, if any.
    pub fn zone_for(&self, name: &LowerName) -> Option<&ZoneView> {
        self.zones
            .iter()
            .find(|z| z.origin.zone_of(name))
            .map(Arc::as_ref)
    }

    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        match self.zone_for(name) {
            Some(z) => z.lookup(name, qtype),
            None => Lookup::Refused,
        }
    }

    /// A copy of this view with one zone replaced (or added, or removed with `None`).
    pub fn with_zone(&self, origin: &LowerName, zone: Option<Arc<ZoneView>>) -> View {
        let mut zones: Vec<Arc<ZoneView>> = self
            .zones
            .iter()
            .filter(|z| &z.origin != origin)
            .cloned()
            .collect();
        zones.extend(zone);
        zones.sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));
        View { zones }
    }
}

/// A predicate choosing bindings for a role-filtered answer.
type BindingFilter = dyn Fn(&Binding) -> bool;

struct Builder<'z> {
    origin: Name,
    names: HashMap<LowerName, Node>,
    zone: &'z Zone,
    cfg: ViewConfig,
    /// Each host's A/AAAA records at its node name, for additional sections.
    addrs: HashMap<&'z str, Vec<Record>>,
    keys: HashMap<String, KeyEntry>,
}

fn txt(strings: Vec<String>) -> RData {
    RData::TXT(TXT::new(strings))
}

impl<'z> Builder<'z> {
    fn name(&self, rel: &[&str]) -> Option<Name> {
        let mut n = Name::from_labels(rel.iter().map(|s| s.as_bytes())).ok()?;
        n = n.append_domain(&self.origin).ok()?;
        Some(n)
    }

    fn node(&mut self, name: &Name) -> &mut Node {
        self.names.entry(LowerName::new(name)).or_default()
    }

    fn add(&mut self, name: &Name, ttl: u32, data: RData) {
        let t = data.record_type();
        let rec = Record::from_rdata(name.clone(), ttl, data);
        self.node(name).set_mut(t).records.push(rec);
    }

    fn add_additionals(&mut self, name: &Name, t: RecordType, extra: Vec<Record>) {
        let set = self.node(name).set_mut(t);
        for r in extra {
            if !set.additionals.contains(&r) {
                set.additionals.push(r);
            }
        }
    }

    fn host_addr_records(&self, host: &str) -> Vec<Record> {
        self.addrs.get(host).cloned().unwrap_or_default()
    }

    /// SRV records, the matching A/AAAA at `name`, and targets' addresses as additionals.
    fn srv_answer(&mut self, name: &Name, targets: &[(&'z str, u16, u16, u16)], ttl: u32) {
        // Each target host appears once per name (a binding is host x service), so
        // only addresses shared by several hosts need de-duplicating.
        let zone = self.zone;
        let mut srv = Vec::with_capacity(targets.len());
        let mut extra = Vec::with_capacity(targets.len());
        let mut addrs = Vec::new();
        let mut seen = HashSet::new();
        for &(host, prio, weight, port) in targets {
            let Some(target) = self.name(&[host, schema::NODE]) else {
                continue;
            };
            srv.push(Record::from_rdata(
                name.clone(),
                ttl,
                RData::SRV(SRV::new(prio, weight, port, target)),
            ));
            if let Some(recs) = self.addrs.get(host) {
                extra.extend(recs.iter().cloned());
            }
            for a in zone
                .hosts
                .get(host)
                .map(|h| h.addrs.as_slice())
                .unwrap_or_default()
            {
                if seen.insert(*a) {
                    let data = match a {
                        IpAddr::V4(v4) => RData::A(A(*v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                    };
                    addrs.push(Record::from_rdata(name.clone(), ttl, data));
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

    fn eligible(&self, b: &Binding) -> bool {
        b.available
            && b.health != crate::model::Health::Critical
            && self.zone.hosts.get(&b.host).is_some_and(|h| h.in_service())
    }

    fn hosts(&mut self) {
        let zone = self.zone;
        let ttl = self.cfg.node_ttl;
        for h in zone.hosts.values() {
            let Some(node) = self.name(&[&h.name, schema::NODE]) else {
                continue;
            };
            for a in &h.addrs {
                let data = match a {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                self.addrs
                    .entry(h.name.as_str())
                    .or_default()
                    .push(Record::from_rdata(node.clone(), ttl, data.clone()));
                self.add(&node, ttl, data);
            }
            self.add(&node, ttl, txt(zonefile::host_txt(h)));
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
                }
                self.keys.insert(
                    fpr,
                    KeyEntry {
                        owner: KeyOwner::Host(h.name.clone()),
                        key: *key,
                    },
                );
            }
        }
    }

    fn services(&mut self) {
        let zone = self.zone;
        let ttl = self.cfg.service_ttl;
        let mut by_service: std::collections::BTreeMap<&str, Vec<&Binding>> = Default::default();
        for b in zone.bindings.values() {
            by_service.entry(b.service.as_str()).or_default().push(b);
        }
        let Some(services_name) = self.name(&schema::DNS_SD_SERVICES) else {
            return;
        };
        self.node(&services_name);
        for (svc, bindings) in by_service {
            let svc_label = format!("_{svc}");
            let (Some(type_name), Some(service_name)) = (
                self.name(&[&svc_label, schema::TCP]),
                self.name(&[svc, schema::SERVICE]),
            ) else {
                continue;
            };
            self.add(&services_name, ttl, RData::PTR(PTR(type_name.clone())));
            for b in &bindings {
                let Some(inst) = self.name(&[&b.host, &svc_label, schema::TCP]) else {
                    continue;
                };
                self.add(&type_name, ttl, RData::PTR(PTR(inst.clone())));
                if let Some(target) = self.name(&[&b.host, schema::NODE]) {
                    self.add(
                        &inst,
                        ttl,
                        RData::SRV(SRV::new(b.srv_priority(), b.weight, b.port, target)),
                    );
                    let extra = self.host_addr_records(&b.host);
                    self.add_additionals(&inst, RecordType::SRV, extra);
                }
                self.add(&inst, ttl, txt(zonefile::binding_txt(b)));
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
    }

    fn repos(&mut self) {
        let zone = self.zone;
        let ttl = self.cfg.service_ttl;
        for r in zone.repos.values() {
            let Some(name) = self.name(&[&r.name, schema::REPO]) else {
                continue;
            };
            self.add(&name, ttl, txt(zonefile::repo_txt(r, true)));
            let in_service = |h: &str| zone.hosts.get(h).is_some_and(|h| h.in_service());
            let write: Vec<_> = std::iter::once(r.master.as_str())
                .filter(|h| in_service(h))
                .map(|h| (h, 0, 0, self.switchboard_port(h)))
                .collect();
            if let Some(n) = self.name(&[schema::WRITE, &r.name, schema::REPO]) {
                self.srv_answer(&n, &write, ttl);
            }
            let read: Vec<_> = readers(r)
                .filter(|h| in_service(h))
                .map(|h| (h, 0, 0, self.switchboard_port(h)))
                .collect();
            if let Some(n) = self.name(&[schema::READ, &r.name, schema::REPO]) {
                self.srv_answer(&n, &read, ttl);
            }
        }
    }

    fn admins(&mut self) {
        let zone = self.zone;
        for a in zone.admins.values() {
            if let Some(n) = self.name(&[&a.name, schema::ADMIN]) {
                self.add(
                    &n,
                    self.cfg.node_ttl,
                    txt(vec![format!("{}={}", schema::txt::KEY, a.key)]),
                );
            }
            self.keys.insert(
                a.key.fingerprint(),
                KeyEntry {
                    owner: KeyOwner::Admin(a.name.clone()),
                    key: a.key,
                },
            );
        }
    }
}

/// Hosts of a repository whose version is within `max_lag` of the master's.
pub fn readers(r: &Repo) -> impl Iterator<Item = &str> {
    r.hosts().filter(|h| r.is_current(h))
}

/// Builds the answers of one zone from its model.
pub fn build(zone: &Zone, cfg: ViewConfig) -> Result<ZoneView, String> {
    let origin = Name::from_ascii(&zone.meta.origin).map_err(|e| format!("bad origin: {e}"))?;
    let soa = &zone.meta.soa;
    let soa_data = SOA::new(
        Name::from_ascii(&soa.mname).map_err(|e| format!("bad SOA mname: {e}"))?,
        Name::from_ascii(&soa.rname).map_err(|e| format!("bad SOA rname: {e}"))?,
        zone.serial,
        soa.refresh,
        soa.retry,
        soa.expire,
        soa.minimum,
    );
    let mut b = Builder {
        origin: origin.clone(),
        names: HashMap::new(),
        zone,
        cfg,
        addrs: HashMap::new(),
        keys: HashMap::new(),
    };
    b.add(&origin, soa.ttl, RData::SOA(soa_data.clone()));
    for ns in &zone.meta.ns {
        if let Ok(n) = Name::from_ascii(ns) {
            b.add(&origin, zone.meta.ns_ttl, RData::NS(NS(n)));
        }
    }
    b.hosts();
    b.services();
    b.repos();
    b.admins();
    // Static records: served verbatim, never over a derived set of the same type.
    let statics = zonefile::static_records(&zone.meta);
    let clashes: Vec<bool> = statics
        .iter()
        .map(|r| {
            b.names
                .get(&LowerName::new(&r.name))
                .is_some_and(|n| n.set(r.record_type()).is_some())
        })
        .collect();
    for (r, clash) in statics.into_iter().zip(clashes) {
        if clash {
            tracing::warn!(name = %r.name, rtype = %r.record_type(), "static record shadowed by a derived one; ignored");
            continue;
        }
        let name = r.name.clone();
        b.node(&name).set_mut(r.record_type()).records.push(r);
    }
    // NS targets inside the zone get their addresses in the additional section.
    let ns_targets: Vec<Name> = zone
        .meta
        .ns
        .iter()
        .filter_map(|n| Name::from_ascii(n).ok())
        .collect();
    for target in ns_targets {
        let extra: Vec<Record> = b
            .names
            .get(&LowerName::new(&target))
            .map(|n| {
                n.sets
                    .iter()
                    .filter(|s| matches!(s.rtype, Some(RecordType::A | RecordType::AAAA)))
                    .flat_map(|s| s.records.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        b.add_additionals(&origin, RecordType::NS, extra);
    }
    // Empty non-terminals: every ancestor of a name exists (RFC 8020).
    let owners: Vec<Name> = b.names.keys().map(|n| Name::from(n.clone())).collect();
    let mut seen = BTreeSet::new();
    for n in owners {
        let mut cur = n.base_name();
        while cur.num_labels() > origin.num_labels() && seen.insert(cur.clone()) {
            b.node(&cur);
            cur = cur.base_name();
        }
    }
    let negative_ttl = soa.ttl.min(soa.minimum);
    let negative_soa = Record::from_rdata(origin.clone(), negative_ttl, RData::SOA(soa_data));
    let mut wire = crate::wire::WireZone::new(&origin, &negative_soa);
    for (name, node) in &b.names {
        let sets: Vec<(RecordType, &[Record], &[Record])> = node
            .sets
            .iter()
            .filter_map(|s| {
                s.rtype
                    .map(|t| (t, s.records.as_slice(), s.additionals.as_slice()))
            })
            .collect();
        wire.add(&Name::from(name.clone()), &sets);
    }
    Ok(ZoneView {
        origin: LowerName::new(&origin),
        serial: zone.serial,
        negative_soa,
        names: b.names,
        keys: b.keys,
        wire,
    })
}
