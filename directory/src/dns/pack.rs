//! Packs records into the messages of a zone transfer, straight from the
//! view's pre-encoded sets (`wire`): each record's names are read back from
//! the set's own frame (where its compression pointers point) and written
//! compressed against the message being filled (RFC 1035 §4.1.4), the rest of
//! it copied. No record is decoded into hickory's types on the way, so a full
//! transfer costs a copy of the zone, not a parse and an encode of it.
//!
//! Names in RDATA are compressed only where RFC 1035 allows it (NS, CNAME,
//! PTR, MX, SOA; RFC 3597 §4); an SRV target is written whole (RFC 2782).

use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use rustc_hash::FxHashMap;

use crate::wire;

/// The largest offset a compression pointer can hold.
const MAX_POINTER: usize = 0x3fff;

/// One message being filled.
pub struct Packer {
    buf: Vec<u8>,
    /// Where each name (and suffix) already written starts, by a hash of
    /// its wire form (checked against the message on a hit).
    names: FxHashMap<u64, u16>,
    count: u16,
    /// A name being copied.
    scratch: Vec<u8>,
    /// The last owner name written, and where: a set's records, and a
    /// node's sets, share their owner.
    last_owner: Vec<u8>,
    last_owner_at: u16,
}

fn hash(name: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(name)
}

/// Whether the name written at `at` in `m` (maybe compressed) is `name`.
fn same_name(m: &[u8], mut at: usize, name: &[u8]) -> bool {
    let mut i = 0;
    for _ in 0..128 {
        let Some(&len) = m.get(at) else { return false };
        if len & 0xc0 == 0xc0 {
            match u16_at(m, at) {
                Some(p) if usize::from(p & 0x3fff) < at => at = usize::from(p & 0x3fff),
                _ => return false,
            }
            continue;
        }
        let l = usize::from(len) + 1;
        if m.get(at..at + l) != name.get(i..i + l) {
            return false;
        }
        if len == 0 {
            return true;
        }
        at += l;
        i += l;
    }
    false
}

fn u16_at(m: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]))
}

/// A set's records as the view holds them: their compression pointers point
/// into a response whose question (the owner's name) is at offset 12 and whose
/// records start after it (`wire::message`). Read in place, not copied into
/// such a response: the copy was most of a transfer's time.
#[derive(Clone, Copy)]
struct Frame<'a> {
    owner: &'a [u8],
    records: &'a [u8],
    /// Where `records` start in the response.
    base: usize,
}

impl<'a> Frame<'a> {
    fn of_set(owner: &'a [u8], records: &'a [u8]) -> Self {
        Frame {
            owner,
            records,
            base: 12 + owner.len() + 4,
        }
    }

    /// A lone record, uncompressed, at offset 0.
    fn of_record(record: &'a [u8]) -> Self {
        Frame {
            owner: &[],
            records: record,
            base: 0,
        }
    }

    /// `len` bytes at offset `i` of the response.
    fn bytes(&self, i: usize, len: usize) -> Option<&'a [u8]> {
        if i >= self.base {
            self.records.get(i - self.base..i - self.base + len)
        } else if i >= 12 {
            self.owner.get(i - 12..i - 12 + len)
        } else {
            None
        }
    }

    fn u16_at(&self, i: usize) -> Option<u16> {
        self.bytes(i, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// The offset after the record at `at` (its owner read into `scratch`).
    fn record_end(&self, at: usize, scratch: &mut Vec<u8>) -> Option<usize> {
        let i = self.name(at, scratch)?;
        Some(i + 10 + usize::from(self.u16_at(i + 8)?))
    }

    /// The name at `i`, decompressed into `out`; the offset after it.
    fn name(&self, mut i: usize, out: &mut Vec<u8>) -> Option<usize> {
        out.clear();
        let mut end = None;
        for _ in 0..128 {
            let len = *self.bytes(i, 1)?.first()?;
            match len & 0xc0 {
                0 if len == 0 => {
                    out.push(0);
                    return Some(end.unwrap_or(i + 1));
                }
                0 => {
                    out.extend_from_slice(self.bytes(i, 1 + usize::from(len))?);
                    i += 1 + usize::from(len);
                    if out.len() > 255 {
                        return None;
                    }
                }
                0xc0 => {
                    let ptr = usize::from(self.u16_at(i)? & 0x3fff);
                    end.get_or_insert(i + 2);
                    if ptr >= i {
                        return None;
                    }
                    i = ptr;
                }
                _ => return None,
            }
        }
        None
    }
}

impl Packer {
    /// A new message: a header to be filled in by `finish`, and the question
    /// (the transfer's first message only).
    pub fn new(question: Option<(&[u8], u16)>) -> Packer {
        let mut p = Packer {
            buf: Vec::with_capacity(40 * 1024),
            names: FxHashMap::default(),
            count: 0,
            scratch: Vec::with_capacity(256),
            last_owner: Vec::with_capacity(256),
            last_owner_at: 0,
        };
        p.buf.extend_from_slice(&[0; 12]);
        if let Some((name, qtype)) = question {
            p.name(name, true);
            p.buf.extend_from_slice(&qtype.to_be_bytes());
            p.buf.extend_from_slice(&1u16.to_be_bytes());
            p.buf[5] = 1;
        }
        p
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Writes a name (lowercase wire format, uncompressed), pointing at a
    /// suffix already in the message when `compress`. Returns where the name
    /// can be pointed at: where it starts, or where the name it points to does.
    fn name(&mut self, name: &[u8], compress: bool) -> usize {
        let start = self.buf.len();
        let mut i = 0;
        while i < name.len() && name[i] != 0 {
            if compress {
                let h = hash(&name[i..]);
                match self.names.get(&h) {
                    Some(&at) if same_name(&self.buf, usize::from(at), &name[i..]) => {
                        self.buf.extend_from_slice(&(0xc000 | at).to_be_bytes());
                        return if i == 0 { usize::from(at) } else { start };
                    }
                    // Another name with the same hash: write this one whole.
                    Some(_) => {}
                    None if self.buf.len() <= MAX_POINTER => {
                        self.names.insert(h, self.buf.len() as u16);
                    }
                    None => {}
                }
            }
            let len = usize::from(name[i]);
            self.buf.extend_from_slice(&name[i..i + 1 + len]);
            i += 1 + len;
        }
        self.buf.push(0);
        start
    }

    /// Copies the record at `at` in `frame`; returns the offset after it.
    fn copy(&mut self, frame: Frame<'_>, at: usize, scratch: &mut Vec<u8>) -> Option<usize> {
        let i = frame.name(at, scratch)?;
        let rtype = frame.u16_at(i)?;
        let rdlen = usize::from(frame.u16_at(i + 8)?);
        let rdata = i + 10;
        let end = rdata + rdlen;
        let raw = frame.bytes(rdata, rdlen)?;
        let start = self.buf.len();
        if !self.last_owner.is_empty() && *scratch == self.last_owner {
            self.buf
                .extend_from_slice(&(0xc000 | self.last_owner_at).to_be_bytes());
        } else {
            let at = self.name(scratch, true);
            if at <= MAX_POINTER {
                self.last_owner.clear();
                self.last_owner.extend_from_slice(scratch);
                self.last_owner_at = at as u16;
            }
        }
        self.buf.extend_from_slice(frame.bytes(i, 8)?);
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        let ok = match rtype {
            // NS, CNAME, PTR: one name.
            2 | 5 | 12 => {
                frame.name(rdata, scratch)?;
                self.name(scratch, true);
                Some(())
            }
            // MX: preference, exchange.
            15 => {
                self.buf.extend_from_slice(frame.bytes(rdata, 2)?);
                frame.name(rdata + 2, scratch)?;
                self.name(scratch, true);
                Some(())
            }
            // SOA: two names, five numbers.
            6 => {
                let j = frame.name(rdata, scratch)?;
                self.name(scratch, true);
                let j = frame.name(j, scratch)?;
                self.name(scratch, true);
                self.buf.extend_from_slice(frame.bytes(j, 20)?);
                Some(())
            }
            // SRV: priority, weight, port, target (never compressed).
            33 => {
                self.buf.extend_from_slice(frame.bytes(rdata, 6)?);
                frame.name(rdata + 6, scratch)?;
                self.name(scratch, false);
                Some(())
            }
            _ => {
                self.buf.extend_from_slice(raw);
                Some(())
            }
        };
        let written = self.buf.len() - len_at - 2;
        match (ok, u16::try_from(written)) {
            (Some(()), Ok(n)) => {
                self.buf[len_at..len_at + 2].copy_from_slice(&n.to_be_bytes());
                self.count += 1;
                Some(end)
            }
            _ => {
                self.buf.truncate(start);
                None
            }
        }
    }

    /// Copies the answer records of `set` at `owner` (a view's set: its own
    /// records, not the additional ones), from its record `from` on, while the
    /// message stays within `limit` bytes. Returns the index of the first
    /// record left out (`set.answers` when all went); None if the set does not
    /// decode.
    pub fn push_set(
        &mut self,
        owner: &[u8],
        set: &wire::Set<'_>,
        from: u16,
        limit: usize,
    ) -> Option<u16> {
        let frame = Frame::of_set(owner, set.body);
        let mut at = frame.base;
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut result = Some(set.answers);
        for i in 0..set.answers {
            let mark = self.buf.len();
            let next = if i < from {
                frame.record_end(at, &mut scratch)
            } else {
                self.copy(frame, at, &mut scratch)
            };
            match next {
                Some(_) if i >= from && self.buf.len() > limit => {
                    self.rollback(mark);
                    result = Some(i);
                    break;
                }
                Some(next) => at = next,
                None => {
                    result = None;
                    break;
                }
            }
        }
        self.scratch = scratch;
        result
    }

    /// Writes one record (the SOA, a journal's record) if the message stays
    /// within `limit` bytes. Returns whether it went; None if it does not
    /// encode.
    pub fn push_record(&mut self, r: &Record, limit: usize) -> Option<bool> {
        let mut one = Vec::with_capacity(128);
        let mut enc = BinEncoder::new(&mut one);
        enc.set_canonical_form(true);
        r.emit(&mut enc).ok()?;
        let mut scratch = Vec::with_capacity(256);
        let mark = self.buf.len();
        self.copy(Frame::of_record(&one), 0, &mut scratch)?;
        if self.buf.len() > limit {
            self.rollback(mark);
            return Some(false);
        }
        Some(true)
    }

    /// Takes back the last record copied, which started at `mark`: no name
    /// written with it may be pointed at after.
    fn rollback(&mut self, mark: usize) {
        self.buf.truncate(mark);
        self.count -= 1;
        self.names.retain(|_, at| usize::from(*at) < mark);
        if usize::from(self.last_owner_at) >= mark {
            self.last_owner.clear();
        }
    }

    /// The message: header with `id`, QR and AA, and the record count.
    pub fn finish(mut self, id: u16) -> Vec<u8> {
        self.buf[0..2].copy_from_slice(&id.to_be_bytes());
        self.buf[2] = 0x84;
        self.buf[3] = 0;
        self.buf[6..8].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::{CNAME, MX, SOA, SRV, TXT};
    use hickory_proto::rr::{Name, RData, RecordType};

    const MAX: usize = 65535;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).expect("name")
    }

    #[test]
    fn records_come_out_as_they_went_in_and_names_are_compressed() {
        let records = vec![
            Record::from_rdata(
                n("z."),
                60,
                RData::SOA(SOA::new(n("ns1.z."), n("host.z."), 7, 1, 2, 3, 4)),
            ),
            Record::from_rdata(
                n("_http._tcp.z."),
                5,
                RData::SRV(SRV::new(0, 10, 80, n("web1.node.z."))),
            ),
            Record::from_rdata(n("www.z."), 5, RData::CNAME(CNAME(n("web1.node.z.")))),
            Record::from_rdata(n("z."), 5, RData::MX(MX::new(10, n("mail.z.")))),
            Record::from_rdata(
                n("web1.node.z."),
                60,
                RData::TXT(TXT::new(vec!["roles=web".into(), "available=1".into()])),
            ),
        ];
        // Through a view's set encoding, then the packer.
        let mut p = Packer::new(Some((b"\x01z\x00", 252)));
        for r in &records {
            let mut packed = Vec::new();
            wire::encode_set(
                &r.name,
                r.record_type(),
                std::slice::from_ref(r),
                &[],
                &mut packed,
            );
            let set = wire::sets(&packed).next().expect("a set");
            let owner = wire::wire_name(&r.name).expect("owner");
            assert_eq!(p.push_set(&owner, &set, 0, MAX), Some(1), "packs");
        }
        assert_eq!(
            p.push_record(&records[0], MAX),
            Some(true),
            "packs a record"
        );
        let m = p.finish(42);
        let back = Message::from_vec(&m).expect("decodes");
        assert_eq!(back.metadata.id, 42);
        assert_eq!(back.answers.len(), records.len() + 1);
        for (a, b) in back.answers.iter().zip(records.iter().chain(&records[..1])) {
            assert_eq!(a, b);
        }
        // `z.` is written once and pointed at after.
        let plain: usize = records
            .iter()
            .chain(&records[..1])
            .map(|r| r.to_bytes().expect("encodes").len())
            .sum();
        assert!(m.len() < 12 + 7 + plain, "{} bytes: compressed", m.len());
    }

    #[test]
    fn a_set_too_big_for_one_message_goes_on_in_the_next() {
        use hickory_proto::rr::rdata::A;
        let owner_name = n("web.role.z.");
        let records: Vec<Record> = (0..2000u32)
            .map(|i| {
                Record::from_rdata(
                    owner_name.clone(),
                    60,
                    RData::A(A::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
                )
            })
            .collect();
        let mut packed = Vec::new();
        wire::encode_set(&owner_name, RecordType::A, &records, &[], &mut packed);
        let set = wire::sets(&packed).next().expect("a set");
        assert_eq!(set.answers, 2000);
        let owner = wire::wire_name(&owner_name).expect("owner");
        // A set the view holds fits one response; with a message already
        // half full it does not fit what is left.
        let limit = 12_000;
        let mut back = Vec::new();
        let mut from = 0;
        let mut messages = 0;
        while from < set.answers {
            let mut p = Packer::new(None);
            let next = p.push_set(&owner, &set, from, limit).expect("packs");
            assert!(next > from, "each message takes some of the set");
            let m = p.finish(1);
            assert!(m.len() <= limit, "{} bytes", m.len());
            back.extend(Message::from_vec(&m).expect("decodes").answers);
            from = next;
            messages += 1;
        }
        assert!(messages > 2, "2000 records do not fit 20 kB");
        assert_eq!(back, records, "every record, once, in order");
        // A record that would pass the limit is left out, and the message
        // stays whole.
        let mut p = Packer::new(None);
        assert_eq!(p.push_set(&owner, &set, 0, 12 + 40), Some(1));
        assert_eq!(p.push_record(&records[1], 12 + 40), Some(false));
        let m = p.finish(1);
        assert_eq!(
            Message::from_vec(&m).expect("decodes").answers,
            records[..1]
        );
    }
}
