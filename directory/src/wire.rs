//! The answer encoder: each record set of a view encoded once, in wire format,
//! when the view is built, so that answering a query is a copy.
//!
//! Every (name, type) that has records gets its response encoded minus the
//! header and question (`encode_set`; a node's sets are packed in one
//! allocation, read back with `sets`). The encoding is exactly what hickory's
//! encoder writes for the same records (tested against it), with names
//! compressed against the question's name at offset 12. At a CNAME's owner an
//! alias set holds the chain and its target's records (`encode_alias_set`).
//! The fast path that copies these sets into answers is `dns::fast`.

use hickory_proto::op::Query;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

/// A name in lowercase wire format.
pub fn wire_name(name: &Name) -> Option<Box<[u8]>> {
    let mut w = Vec::with_capacity(name.len().min(255) + 2);
    for label in name.iter() {
        w.push(u8::try_from(label.len()).ok().filter(|l| *l <= 63)?);
        w.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    w.push(0);
    // As hickory's encoder: no name is longer than 255 bytes.
    (w.len() <= 255).then(|| w.into_boxed_slice())
}

/// Bytes before a set's records: TYPE, ANCOUNT, ARCOUNT (u16 each), LEN (u32,
/// its top bit `ALIAS`).
const SET_HEAD: usize = 10;

/// The bit of a set's LEN that marks an alias set (no set is 2 GiB long).
const ALIAS: u32 = 1 << 31;

/// One encoded record set of a node (see `encode_set`).
#[derive(Debug, Clone, Copy)]
pub struct Set<'a> {
    pub rtype: u16,
    pub answers: u16,
    pub additionals: u16,
    /// The answer and additional records, encoded to follow a response's
    /// header and question (their compression pointers assume the question name
    /// at offset 12, so any question of the same name fits).
    pub body: &'a [u8],
    /// An answer built at a CNAME's owner from the end of its chain (RFC 1034
    /// §4.3.2: the CNAMEs, then the target's records of `rtype`): it answers a
    /// query there, but holds no record of the owner's own (not in ANY, not
    /// exported).
    pub alias: bool,
}

/// Appends the record set (name, type) to `out`, a node's packed sets: the
/// response minus its header and question, which the fast path takes from the
/// query. Nothing is appended for an empty set or one that does not encode.
pub fn encode_set(
    name: &Name,
    rtype: RecordType,
    records: &[Record],
    additionals: &[Record],
    out: &mut Vec<u8>,
) {
    encode(name, rtype, records, additionals, false, out)
}

/// `encode_set` for an alias set (see `Set::alias`).
pub fn encode_alias_set(
    name: &Name,
    rtype: RecordType,
    records: &[Record],
    additionals: &[Record],
    out: &mut Vec<u8>,
) {
    encode(name, rtype, records, additionals, true, out)
}

fn encode(
    name: &Name,
    rtype: RecordType,
    records: &[Record],
    additionals: &[Record],
    alias: bool,
    out: &mut Vec<u8>,
) {
    if records.is_empty() {
        return;
    }
    let plain = records
        .iter()
        .chain(additionals)
        .all(|r| Enc::handles(&r.data));
    let encoded = if plain {
        Enc::set(name, rtype, records, additionals)
    } else {
        hickory_set(name, rtype, records, additionals)
    };
    if let Some((buf, start, end, counts)) = encoded {
        push_set(
            out,
            &Set {
                rtype: u16::from(rtype),
                answers: counts[0],
                additionals: counts[1],
                body: &buf[start..end],
                alias,
            },
        );
    }
}

/// An encoded set: the message from offset 0, where its records start and end, and
/// how many answers and additionals it holds.
type Encoded = (Vec<u8>, usize, usize, [u16; 2]);

/// `encode_set` through hickory's encoder, for any record type.
fn hickory_set(
    name: &Name,
    rtype: RecordType,
    records: &[Record],
    additionals: &[Record],
) -> Option<Encoded> {
    // A set too large for one message (tens of thousands of records) keeps the
    // records that fit: a client gets TC over UDP and that part over TCP.
    let mut buf = Vec::with_capacity(256);
    let mut enc = BinEncoder::new(&mut buf);
    let start = enc
        .emit_vec(&[0; 12])
        .and_then(|_| Query::query(name.to_lowercase(), rtype).emit(&mut enc))
        .map(|_| enc.len())
        .ok()?;
    // The bytes after a record that did not fit are dropped, and nothing is
    // encoded after it (a later name could point into them).
    let mut counts = [0u16; 2];
    let mut end = start;
    'parts: for (i, part) in [records, additionals].into_iter().enumerate() {
        for r in part {
            if r.emit(&mut enc).is_err() || counts[i] == u16::MAX {
                break 'parts;
            }
            counts[i] += 1;
            end = enc.len();
        }
    }
    drop(enc);
    Some((buf, start, end, counts))
}

/// The records views are made of (A, AAAA, TXT, SRV, PTR, NS, CNAME) in wire
/// format, byte for byte as hickory's `BinEncoder` writes them, name compression
/// included (`wire::tests::the_view_encoder_writes_what_hickory_writes`): a view
/// holds ~500k sets at 100k hosts, and hickory's general encoder was a third of
/// building one.
struct Enc {
    buf: Vec<u8>,
    /// Names written so far, for compression: (offset, bytes in `seen`), as
    /// hickory keeps them, at most `MAX_POINTERS`.
    pointers: Vec<(usize, std::ops::Range<usize>)>,
    seen: Vec<u8>,
    /// Names written with compression; past `MAX_COMPRESSED`, none is.
    compressed: usize,
}

/// hickory's limits: its encoder keeps 64 candidate names, and compresses the
/// first 120 names of a message; no message is longer than 65,535 bytes.
const MAX_POINTERS: usize = 64;
const MAX_COMPRESSED: usize = 120;
const MAX_MESSAGE: usize = u16::MAX as usize;

/// A record that does not fit in a message.
struct TooLong;

impl Enc {
    fn handles(data: &RData) -> bool {
        matches!(
            data,
            RData::A(_)
                | RData::AAAA(_)
                | RData::TXT(_)
                | RData::SRV(_)
                | RData::PTR(_)
                | RData::NS(_)
                | RData::CNAME(_)
        )
    }

    fn set(
        name: &Name,
        rtype: RecordType,
        records: &[Record],
        additionals: &[Record],
    ) -> Option<Encoded> {
        let mut e = Enc {
            buf: Vec::with_capacity(256),
            pointers: Vec::new(),
            seen: Vec::new(),
            compressed: 0,
        };
        e.buf.extend_from_slice(&[0; 12]);
        // The question, its name lowercased.
        e.name(name.iter(), true, true).ok()?;
        e.u16(u16::from(rtype)).ok()?;
        e.u16(1).ok()?;
        let start = e.buf.len();
        let mut counts = [0u16; 2];
        let mut end = start;
        'parts: for (i, part) in [records, additionals].into_iter().enumerate() {
            for r in part {
                if e.record(r).is_err() || counts[i] == u16::MAX {
                    break 'parts;
                }
                counts[i] += 1;
                end = e.buf.len();
            }
        }
        Some((e.buf, start, end, counts))
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), TooLong> {
        if self.buf.len() + b.len() > MAX_MESSAGE {
            return Err(TooLong);
        }
        self.buf.extend_from_slice(b);
        Ok(())
    }

    fn u16(&mut self, v: u16) -> Result<(), TooLong> {
        self.bytes(&v.to_be_bytes())
    }

    fn character_string(&mut self, s: &[u8]) -> Result<(), TooLong> {
        let len = u8::try_from(s.len()).map_err(|_| TooLong)?;
        self.bytes(&[len])?;
        self.bytes(s)
    }

    /// A name, compressed when `compress` (and fewer than 120 names were), as
    /// hickory's `Name::emit` does: every label is written, then the first whose
    /// suffix was written before becomes a pointer to it; the suffixes before it
    /// are remembered for later names.
    fn name<'a>(
        &mut self,
        labels: impl Iterator<Item = &'a [u8]>,
        compress: bool,
        lowercase: bool,
    ) -> Result<(), TooLong> {
        let compress = compress && self.compressed < MAX_COMPRESSED;
        let begin = self.buf.len();
        let mut starts = [0usize; 128];
        let mut n = 0;
        for label in labels {
            if label.len() > 63 || n == starts.len() {
                return Err(TooLong);
            }
            starts[n] = self.buf.len();
            n += 1;
            self.character_string(label)?;
            if lowercase {
                let l = self.buf.len();
                self.buf[l - label.len()..].make_ascii_lowercase();
            }
        }
        let last = self.buf.len();
        if compress {
            self.compressed += 1;
        }
        for &at in &starts[..n] {
            if compress {
                let found = self
                    .pointers
                    .iter()
                    .find(|(_, r)| self.seen.get(r.clone()) == self.buf.get(at..last));
                if let Some(&(to, _)) = found {
                    if to < 0x4000 {
                        self.buf.truncate(at);
                        return self.u16(0xC000 | to as u16);
                    }
                }
            }
            // hickory only remembers names it writes below offset 0x3FFF.
            if last < 0x3FFF && self.pointers.len() < MAX_POINTERS {
                let from = self.seen.len();
                self.seen.extend_from_slice(&self.buf[at..last]);
                self.pointers.push((at, from..self.seen.len()));
            }
        }
        self.bytes(&[0])?;
        if self.buf.len() - begin > 255 {
            return Err(TooLong);
        }
        Ok(())
    }

    fn record(&mut self, r: &Record) -> Result<(), TooLong> {
        self.name(r.name.iter(), true, false)?;
        self.u16(u16::from(r.record_type()))?;
        self.u16(u16::from(r.dns_class))?;
        self.bytes(&r.ttl.to_be_bytes())?;
        let len_at = self.buf.len();
        self.u16(0)?;
        match &r.data {
            RData::A(a) => self.bytes(&a.0.octets())?,
            RData::AAAA(a) => self.bytes(&a.0.octets())?,
            RData::TXT(t) => {
                for s in t.txt_data.iter() {
                    self.character_string(s)?;
                }
            }
            RData::SRV(srv) => {
                self.u16(srv.priority)?;
                self.u16(srv.weight)?;
                self.u16(srv.port)?;
                // RFC 2782: the target is never compressed (later names may point at it).
                self.name(srv.target.iter(), false, false)?;
            }
            RData::PTR(n) => self.name(n.0.iter(), true, false)?,
            RData::NS(n) => self.name(n.0.iter(), true, false)?,
            RData::CNAME(n) => self.name(n.0.iter(), true, false)?,
            _ => return Err(TooLong),
        }
        let len = u16::try_from(self.buf.len() - len_at - 2).map_err(|_| TooLong)?;
        self.buf[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

fn push_set(out: &mut Vec<u8>, set: &Set<'_>) {
    out.extend_from_slice(&set.rtype.to_be_bytes());
    out.extend_from_slice(&set.answers.to_be_bytes());
    out.extend_from_slice(&set.additionals.to_be_bytes());
    let flag = if set.alias { ALIAS } else { 0 };
    out.extend_from_slice(&(set.body.len() as u32 | flag).to_be_bytes());
    out.extend_from_slice(set.body);
}

/// The sets packed in `b` by `encode_set`.
pub fn sets(b: &[u8]) -> impl Iterator<Item = Set<'_>> {
    let mut rest = b;
    std::iter::from_fn(move || {
        let head = rest.get(..SET_HEAD)?;
        let len = u32::from_be_bytes([head[6], head[7], head[8], head[9]]);
        let alias = len & ALIAS != 0;
        let len = (len & !ALIAS) as usize;
        let body = rest.get(SET_HEAD..SET_HEAD + len)?;
        let set = Set {
            rtype: u16::from_be_bytes([head[0], head[1]]),
            answers: u16::from_be_bytes([head[2], head[3]]),
            additionals: u16::from_be_bytes([head[4], head[5]]),
            body,
            alias,
        };
        rest = &rest[SET_HEAD + len..];
        Some(set)
    })
}

/// Packed sets `b` with only the sets `keep` says yes to.
pub fn retain_sets(b: &[u8], keep: impl Fn(&Set<'_>) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for s in sets(b).filter(|s| keep(s)) {
        push_set(&mut out, &s);
    }
    out
}

/// A whole response for a set at `name` (lowercase wire format), for decoding.
pub fn message(name: &[u8], set: &Set<'_>) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + name.len() + 4 + set.body.len());
    message_into(name, set, &mut m);
    m
}

/// `message`, written into `m` (cleared first).
pub fn message_into(name: &[u8], set: &Set<'_>, m: &mut Vec<u8>) {
    m.clear();
    m.extend_from_slice(&[0x00, 0x00, 0x84, 0x00, 0x00, 0x01]);
    m.extend_from_slice(&set.answers.to_be_bytes());
    m.extend_from_slice(&[0x00, 0x00]);
    m.extend_from_slice(&set.additionals.to_be_bytes());
    m.extend_from_slice(name);
    m.extend_from_slice(&set.rtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(set.body);
}

/// The negative-answer SOA from its TYPE on: TYPE, CLASS, TTL, RDLENGTH, RDATA
/// with uncompressed names (the owner is a pointer into the question).
pub fn soa_tail(negative_soa: &Record) -> Box<[u8]> {
    let mut tail = Vec::new();
    if let hickory_proto::rr::RData::SOA(soa) = &negative_soa.data {
        let mut rdata = Vec::new();
        rdata.extend_from_slice(&wire_name(&soa.mname).unwrap_or_default());
        rdata.extend_from_slice(&wire_name(&soa.rname).unwrap_or_default());
        rdata.extend_from_slice(&soa.serial.to_be_bytes());
        rdata.extend_from_slice(&soa.refresh.to_be_bytes());
        rdata.extend_from_slice(&soa.retry.to_be_bytes());
        rdata.extend_from_slice(&soa.expire.to_be_bytes());
        rdata.extend_from_slice(&soa.minimum.to_be_bytes());
        tail.extend_from_slice(&6u16.to_be_bytes());
        tail.extend_from_slice(&1u16.to_be_bytes());
        tail.extend_from_slice(&negative_soa.ttl.to_be_bytes());
        tail.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        tail.extend_from_slice(&rdata);
    }
    tail.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets shaped like a view's, and some that push hickory's limits: every one
    /// must come out of `Enc` exactly as hickory's encoder writes it.
    #[test]
    fn the_view_encoder_writes_what_hickory_writes() {
        use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SRV, TXT};
        use std::str::FromStr;
        let n = |s: &str| Name::from_str(s).expect("name");
        let rec = |owner: &str, data: RData| Record::from_rdata(n(owner), 60, data);
        let node = |i: usize| n(&format!("h{i}.node.cluster.example."));
        let srv = |i: usize, owner: &str| {
            rec(
                owner,
                RData::SRV(SRV::new(0, (i % 7) as u16, 8000 + i as u16, node(i))),
            )
        };
        let addr = |i: usize| {
            Record::from_rdata(
                node(i),
                60,
                RData::A(A::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)),
            )
        };
        let mut cases: Vec<(Name, RecordType, Vec<Record>, Vec<Record>)> = Vec::new();
        let q = "Git.Service.Cluster.Example.";
        for count in [1, 3, 70, 130, 2_000, 20_000] {
            let answers = (0..count).map(|i| srv(i, &q.to_lowercase())).collect();
            let extra = (0..count).map(addr).collect();
            cases.push((n(q), RecordType::SRV, answers, extra));
        }
        let host = "h1.node.cluster.example.";
        cases.push((
            n(host),
            RecordType::A,
            vec![rec(host, RData::A(A::new(10, 0, 0, 1)))],
            vec![],
        ));
        cases.push((
            n(host),
            RecordType::AAAA,
            vec![rec(
                host,
                RData::AAAA(AAAA::from_str("fd00::1").expect("v6")),
            )],
            vec![],
        ));
        let long = "x".repeat(300);
        for strings in [
            vec!["roles=web".to_string(), "rack=r1".to_string()],
            vec![],
            vec!["a".to_string(), long],
        ] {
            cases.push((
                n(host),
                RecordType::TXT,
                vec![rec(host, RData::TXT(TXT::new(strings)))],
                vec![],
            ));
        }
        let kname = "abc.key.cluster.example.";
        cases.push((
            n(kname),
            RecordType::PTR,
            vec![rec(kname, RData::PTR(PTR(node(1))))],
            vec![],
        ));
        let apex = "cluster.example.";
        cases.push((
            n(apex),
            RecordType::NS,
            vec![
                rec(apex, RData::NS(NS(n("ns1.cluster.example.")))),
                rec(apex, RData::NS(NS(n("ns.elsewhere.test.")))),
            ],
            vec![rec("ns1.cluster.example.", RData::A(A::new(10, 0, 0, 9)))],
        ));
        cases.push((
            n("www.cluster.example."),
            RecordType::CNAME,
            vec![rec(
                "www.cluster.example.",
                RData::CNAME(CNAME(n("web1.node.cluster.example."))),
            )],
            vec![],
        ));
        // More distinct names than hickory keeps as candidates, and names in
        // other zones, some owners in upper case.
        let many = (0..100)
            .map(|i| {
                rec(
                    "_http._tcp.cluster.example.",
                    RData::PTR(PTR(n(&format!("I{i}.svc{}.other{}.test.", i % 5, i % 3)))),
                )
            })
            .collect();
        cases.push((
            n("_http._tcp.cluster.example."),
            RecordType::PTR,
            many,
            vec![],
        ));
        for (name, t, answers, extra) in cases {
            assert!(answers.iter().chain(&extra).all(|r| Enc::handles(&r.data)));
            let ours = Enc::set(&name, t, &answers, &extra);
            let theirs = hickory_set(&name, t, &answers, &extra);
            let (Some(ours), Some(theirs)) = (ours, theirs) else {
                panic!("{name} {t}: a set that does not encode");
            };
            assert_eq!(
                (ours.1, ours.2, ours.3),
                (theirs.1, theirs.2, theirs.3),
                "{name} {t} ({} answers): start, end, counts",
                answers.len()
            );
            assert!(
                ours.0[..ours.2] == theirs.0[..theirs.2],
                "{name} {t} ({} answers): the bytes differ",
                answers.len()
            );
        }
    }

    #[test]
    fn wire_names_are_hickorys_lowercased() {
        use std::str::FromStr;
        let long = format!("{}.example.", vec!["a".repeat(63); 3].join("."));
        for s in [
            ".",
            "Example.",
            "h1.NODE.cluster.example.",
            "_git._tcp.z.",
            &long,
        ] {
            let name = Name::from_str(s).expect("name");
            let theirs = name
                .to_lowercase()
                .to_bytes()
                .ok()
                .map(Vec::into_boxed_slice);
            assert_eq!(wire_name(&name), theirs, "{s}");
        }
    }
}
