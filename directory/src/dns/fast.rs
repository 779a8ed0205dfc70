//! The UDP fast path: a loop that reads only a query's header and question,
//! copies the pre-encoded answer (`wire`) from the view and patches it.
//!
//! Answering is: check that the query is plain (QUERY, one question, class IN,
//! no EDNS version above 0), lowercase the name into a stack buffer, one hash
//! lookup, write the header, copy the client's question (so its case is echoed)
//! and the encoded records, and append an OPT record when the client sent one.
//! NXDOMAIN and NODATA are assembled from the question and the zone's
//! pre-encoded SOA. Anything else — other opcodes or classes, ANY, zone
//! transfers, malformed packets, an answer larger than the client's buffer —
//! returns `None` and takes hickory's full path (`dns::handler`). No
//! allocation: `out` is the caller's buffer, reused from query to query.

use crate::view::{View, ZoneView};

const TYPE_OPT: u16 = 41;
/// Our largest UDP answer, whatever the client offers (as in the slow path).
const MAX_UDP: usize = 1232;

/// A plain query's question, parsed without allocating.
struct Question {
    /// Lowercase wire name.
    name: [u8; 256],
    name_len: usize,
    /// Offsets of each label within the name (for the zone suffix).
    labels: [u8; 128],
    label_count: usize,
    qtype: u16,
    /// End of the question section in the packet.
    end: usize,
    /// The client's EDNS buffer size, if it sent OPT.
    edns: Option<u16>,
}

fn u16_at(p: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]))
}

fn parse(q: &[u8]) -> Option<Question> {
    let flags = *q.get(2)?;
    if flags & 0x80 != 0 || (flags >> 3) & 0x0f != 0 {
        return None;
    }
    if u16_at(q, 4)? != 1 || u16_at(q, 6)? != 0 || u16_at(q, 8)? != 0 {
        return None;
    }
    let ar = u16_at(q, 10)?;
    if ar > 1 {
        return None;
    }
    let mut qu = Question {
        name: [0; 256],
        name_len: 0,
        labels: [0; 128],
        label_count: 0,
        qtype: 0,
        end: 0,
        edns: None,
    };
    let mut pos = 12;
    loop {
        let len = *q.get(pos)? as usize;
        if len & 0xc0 != 0 {
            return None;
        }
        if qu.name_len + 1 + len > 255 || qu.label_count >= 128 {
            return None;
        }
        let label = q.get(pos..pos + 1 + len)?;
        if len > 0 {
            qu.labels[qu.label_count] = qu.name_len as u8;
            qu.label_count += 1;
        }
        for (i, b) in label.iter().enumerate() {
            qu.name[qu.name_len + i] = if i == 0 { *b } else { b.to_ascii_lowercase() };
        }
        qu.name_len += 1 + len;
        pos += 1 + len;
        if len == 0 {
            break;
        }
    }
    qu.qtype = u16_at(q, pos)?;
    let qclass = u16_at(q, pos + 2)?;
    pos += 4;
    qu.end = pos;
    if qclass != 1 || matches!(qu.qtype, 0 | 41 | 251 | 252 | 255) {
        return None;
    }
    if ar == 1 {
        // Exactly one OPT at the root, EDNS version 0; options are ignored (RFC 6891 §6.1.2).
        if *q.get(pos)? != 0 || u16_at(q, pos + 1)? != TYPE_OPT {
            return None;
        }
        let size = u16_at(q, pos + 3)?;
        if *q.get(pos + 6)? != 0 {
            return None;
        }
        let rdlen = u16_at(q, pos + 9)? as usize;
        if pos + 11 + rdlen != q.len() {
            return None;
        }
        qu.edns = Some(size);
    } else if pos != q.len() {
        return None;
    }
    Some(qu)
}

fn limit(edns: Option<u16>) -> usize {
    match edns {
        Some(size) => (size as usize).clamp(512, MAX_UDP),
        None => 512,
    }
}

fn opt(out: &mut Vec<u8>) {
    // Root owner, TYPE OPT, CLASS = our payload size, TTL 0 (rcode, version, flags), RDLEN 0.
    out.extend_from_slice(&[
        0,
        0,
        41,
        (MAX_UDP >> 8) as u8,
        (MAX_UDP & 0xff) as u8,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
}

/// Answers `query` from `view` into `out`; `None` means "take the full path".
pub fn answer(view: &View, query: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let qu = parse(query)?;
    let name = &qu.name[..qu.name_len];
    let rd = query[2] & 0x01;
    let cd = query[3] & 0x10;
    let question = &query[12..qu.end];
    // The zone: the longest origin that is a suffix at a label boundary.
    let mut zone = None;
    for z in &view.zones {
        let o = &z.wire_origin[..];
        if o.len() > name.len() {
            continue;
        }
        let start = name.len() - o.len();
        let boundary = start == name.len() - 1
            || qu.labels[..qu.label_count]
                .iter()
                .any(|&l| l as usize == start);
        if boundary && &name[start..] == o {
            zone = Some((z, start));
            break;
        }
    }
    out.clear();
    let Some((z, origin_at)) = zone else {
        // REFUSED: not authoritative, question echoed.
        out.extend_from_slice(&query[0..2]);
        out.extend_from_slice(&[
            0x80 | rd,
            cd | 5,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(qu.edns.is_some()),
        ]);
        out.extend_from_slice(question);
        if qu.edns.is_some() {
            opt(out);
        }
        return Some(());
    };
    match z.node(name) {
        Some(node) => {
            let Some(set) = node.answer(qu.qtype) else {
                return negative(out, query, &qu, question, z, origin_at, 0);
            };
            let ar = set.additionals.checked_add(u16::from(qu.edns.is_some()))?;
            out.extend_from_slice(&query[0..2]);
            out.extend_from_slice(&[0x84 | rd, cd, 0, 1]);
            out.extend_from_slice(&set.answers.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&ar.to_be_bytes());
            out.extend_from_slice(question);
            out.extend_from_slice(set.body);
            if qu.edns.is_some() {
                opt(out);
            }
            (out.len() <= limit(qu.edns)).then_some(())
        }
        None => negative(out, query, &qu, question, z, origin_at, 3),
    }
}

/// A truncated empty answer to `query` (TC set, the question echoed): what rate
/// limiting "slips" so that a real client retries over TCP. `None` for a query
/// the fast path cannot read (those are dropped instead).
pub fn truncated(query: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let qu = parse(query)?;
    let rd = query[2] & 0x01;
    let cd = query[3] & 0x10;
    out.clear();
    out.extend_from_slice(&query[0..2]);
    out.extend_from_slice(&[
        0x86 | rd,
        cd,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(qu.edns.is_some()),
    ]);
    out.extend_from_slice(&query[12..qu.end]);
    if qu.edns.is_some() {
        opt(out);
    }
    Some(())
}

/// NODATA (rcode 0) or NXDOMAIN (rcode 3): the question and the zone's SOA.
fn negative(
    out: &mut Vec<u8>,
    query: &[u8],
    qu: &Question,
    question: &[u8],
    z: &ZoneView,
    origin_at: usize,
    rcode: u8,
) -> Option<()> {
    let rd = query[2] & 0x01;
    let cd = query[3] & 0x10;
    out.extend_from_slice(&query[0..2]);
    out.extend_from_slice(&[
        0x84 | rd,
        cd | rcode,
        0,
        1,
        0,
        0,
        0,
        1,
        0,
        u8::from(qu.edns.is_some()),
    ]);
    out.extend_from_slice(question);
    let pointer = 0xc000u16 | (12 + origin_at) as u16;
    out.extend_from_slice(&pointer.to_be_bytes());
    out.extend_from_slice(&z.soa_tail);
    if qu.edns.is_some() {
        opt(out);
    }
    (out.len() <= limit(qu.edns)).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_answers_a_plain_query() {
        let text = include_str!("../../../zones/cluster.example.zone");
        let zone = crate::zonefile::parse(text, "demo", Some("cluster.example.")).expect("zone");
        let zv = crate::view::build(&zone, Default::default()).expect("view");
        let view = View {
            zones: vec![std::sync::Arc::new(zv)],
        };
        let mut q = vec![0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["web1", "node", "cluster", "example"] {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut out = Vec::new();
        assert!(parse(&q).is_some(), "parses");
        assert!(answer(&view, &q, &mut out).is_some(), "answers");
        assert_eq!(&out[0..2], &[0, 7]);
    }
}
