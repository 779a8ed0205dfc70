//! What zone transfers read from the state, shared with the DNS listeners:
//! each zone's TSIG keys, and the journal of its recent changes.
//!
//! A change to a zone that holds a TSIG key records a `Diff`: the records
//! its patch removed and added (`diff`, over the names the change touched,
//! which are all that a patch rebuilds), between the SOA before and after.
//! IXFR (RFC 1995) answers from an unbroken run of diffs up to the serial the
//! view is at; anything older than the journal, or a zone replaced whole by an
//! import, is answered as a full transfer. The journal is bounded
//! (`JOURNAL_DIFFS`) and kept in the store, so a restart does not cost every
//! secondary a full transfer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

use crate::tsig;
use crate::view::ZoneView;
use crate::wire;

/// How many changes each zone's journal keeps.
pub const JOURNAL_DIFFS: usize = 500;

/// One change of a zone, as IXFR sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// The SOA before and after (their serials are the change's).
    pub old_soa: Record,
    pub new_soa: Record,
    pub removed: Vec<Record>,
    pub added: Vec<Record>,
}

fn serial_of(soa: &Record) -> u32 {
    match soa.data {
        hickory_proto::rr::RData::SOA(ref s) => s.serial,
        _ => 0,
    }
}

impl Diff {
    pub fn from(&self) -> u32 {
        serial_of(&self.old_soa)
    }

    pub fn to(&self) -> u32 {
        serial_of(&self.new_soa)
    }

    /// The diff in wire form, for the store: each record uncompressed, in the
    /// order old SOA, removed, new SOA, added, with the two counts first.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let mut enc = BinEncoder::new(&mut buf);
        enc.set_canonical_form(true);
        enc.emit_u32(self.removed.len() as u32).ok()?;
        enc.emit_u32(self.added.len() as u32).ok()?;
        for r in std::iter::once(&self.old_soa)
            .chain(&self.removed)
            .chain(std::iter::once(&self.new_soa))
            .chain(&self.added)
        {
            r.emit(&mut enc).ok()?;
        }
        Some(buf)
    }

    pub fn decode(bytes: &[u8]) -> Option<Diff> {
        let mut d = BinDecoder::new(bytes);
        let removed = d.read_u32().ok()?.unverified() as usize;
        let added = d.read_u32().ok()?.unverified() as usize;
        let mut read = |n: usize| -> Option<Vec<Record>> {
            (0..n).map(|_| Record::read(&mut d).ok()).collect()
        };
        let old_soa = read(1)?.pop()?;
        let removed = read(removed)?;
        let new_soa = read(1)?.pop()?;
        let added = read(added)?;
        Some(Diff {
            old_soa,
            new_soa,
            removed,
            added,
        })
    }
}

/// The zone's SOA record (with its own TTL, not the negative one).
pub fn soa(zv: &ZoneView) -> Option<Record> {
    let key = wire::wire_name(&Name::from(zv.origin.clone()))?;
    zv.node(&key)?
        .records(&key)
        .into_iter()
        .find(|r| r.record_type() == RecordType::SOA)
}

/// The records that differ between two views at `names` (every name a change
/// touched), SOA aside.
pub fn diff(old: &ZoneView, new: &ZoneView, names: &[Name]) -> Option<Diff> {
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let mut seen = HashSet::new();
    for name in names {
        let Some(key) = wire::wire_name(name) else {
            continue;
        };
        if !seen.insert(key.clone()) {
            continue;
        }
        let records = |zv: &ZoneView| -> Vec<Record> {
            zv.node(&key)
                .map(|n| n.records(&key))
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.record_type() != RecordType::SOA)
                .collect()
        };
        let (before, after) = (records(old), records(new));
        // Records compare by their wire form (hickory's `Record` has no `Hash`).
        let bytes = |r: &Record| r.to_bytes().unwrap_or_default();
        let b: HashSet<Vec<u8>> = before.iter().map(bytes).collect();
        let a: HashSet<Vec<u8>> = after.iter().map(bytes).collect();
        removed.extend(before.into_iter().filter(|r| !a.contains(&bytes(r))));
        added.extend(after.into_iter().filter(|r| !b.contains(&bytes(r))));
    }
    Some(Diff {
        old_soa: soa(old)?,
        new_soa: soa(new)?,
        removed,
        added,
    })
}

/// RFC 1982: whether serial `a` is newer than `b`.
pub fn newer(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

/// Each zone's TSIG keys and journal.
#[derive(Default)]
pub struct Transfers {
    keys: Mutex<HashMap<String, Arc<[tsig::Key]>>>,
    journals: Mutex<HashMap<String, VecDeque<Arc<Diff>>>>,
}

impl Transfers {
    /// Sets the keys that may transfer zone `origin` (lowercase, absolute).
    pub fn set_keys(&self, origin: &str, keys: Vec<tsig::Key>) {
        let mut all = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.is_empty() {
            all.remove(origin);
        } else {
            all.insert(origin.to_string(), keys.into());
        }
    }

    /// The keys of zone `origin` (empty: nobody may transfer it).
    pub fn keys(&self, origin: &str) -> Arc<[tsig::Key]> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(origin)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Whether zone `origin` keeps a journal (it has a TSIG key, so a
    /// secondary may ask for IXFR).
    pub fn keeps_journal(&self, origin: &str) -> bool {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(origin)
    }

    /// Appends a change; one that does not follow the last starts the journal over.
    pub fn record(&self, origin: &str, diff: Diff) {
        let mut all = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        let j = all.entry(origin.to_string()).or_default();
        if j.back().is_some_and(|last| last.to() != diff.from()) {
            j.clear();
        }
        if j.len() == JOURNAL_DIFFS {
            j.pop_front();
        }
        j.push_back(Arc::new(diff));
    }

    /// Forgets a zone's journal (it was replaced whole).
    pub fn reset(&self, origin: &str) {
        self.journals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(origin);
    }

    /// The changes from serial `from` to `to`, if the journal holds every one.
    pub fn since(&self, origin: &str, from: u32, to: u32) -> Option<Vec<Arc<Diff>>> {
        let all = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        let j = all.get(origin)?;
        let start = j.iter().position(|d| d.from() == from)?;
        let run: Vec<Arc<Diff>> = j.iter().skip(start).cloned().collect();
        let unbroken = run.windows(2).all(|w| w[0].to() == w[1].from());
        let end = run.iter().position(|d| d.to() == to)?;
        unbroken.then(|| run[..=end].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::RData;

    fn soa_at(serial: u32) -> Record {
        let n = Name::from_ascii("z.").expect("name");
        Record::from_rdata(
            n.clone(),
            60,
            RData::SOA(SOA::new(n.clone(), n, serial, 1, 1, 1, 1)),
        )
    }

    fn a(name: &str, last: u8) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).expect("name"),
            5,
            RData::A(A::new(10, 0, 0, last)),
        )
    }

    fn step(from: u32) -> Diff {
        Diff {
            old_soa: soa_at(from),
            new_soa: soa_at(from + 1),
            removed: vec![a("h.node.z.", from as u8)],
            added: vec![a("h.node.z.", from as u8 + 1)],
        }
    }

    #[test]
    fn a_diff_survives_the_store_and_runs_are_found_only_when_whole() {
        let d = step(7);
        assert_eq!(Diff::decode(&d.encode().expect("encodes")), Some(d));
        let t = Transfers::default();
        for s in 1..5 {
            t.record("z.", step(s));
        }
        let run = t.since("z.", 2, 5).expect("2..5 is kept");
        assert_eq!(run.iter().map(|d| d.from()).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(t.since("z.", 0, 5).is_none(), "before the journal");
        assert!(t.since("z.", 2, 6).is_none(), "past the journal");
        // A gap (a change not journaled) starts over.
        t.record("z.", step(9));
        assert!(t.since("z.", 2, 10).is_none());
        assert!(t.since("z.", 9, 10).is_some());
        assert!(newer(1, u32::MAX) && !newer(u32::MAX, 1) && !newer(3, 3));
    }
}
