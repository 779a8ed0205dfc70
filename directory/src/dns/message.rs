//! Small readers and writers of raw DNS messages that the TSIG and transfer
//! paths share: where the question ends, an answer with no records, the
//! client's UDP buffer, and which zone's keys a query is signed with.

use std::sync::Arc;

use hickory_proto::op::{Message, Query, ResponseCode};

use crate::transfer::Transfers;
use crate::tsig;
use crate::view::{View, ZoneView};

pub fn u16_at(m: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]))
}

/// The end of the question section of a message with one question.
pub fn question_end(m: &[u8]) -> Option<usize> {
    if u16_at(m, 4)? != 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*m.get(i)?);
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
    (i + 5 <= m.len()).then_some(i + 5)
}

/// An answer with no records: the query's header and question, `rcode`.
pub fn error_reply(query: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    let end = question_end(query).unwrap_or(12);
    let mut m = query.get(..end)?.to_vec();
    m[2] = 0x80 | (query[2] & 0x79);
    m[3] = rcode.low() & 0x0f;
    if end == 12 {
        m[4..6].copy_from_slice(&[0, 0]);
    }
    m[6..12].copy_from_slice(&[0; 6]);
    Some(m)
}

/// The client's UDP buffer for an answer (`message` holds its OPT, if any):
/// at least 512 bytes, at most our 1232.
pub fn udp_limit(message: &[u8]) -> usize {
    Message::from_vec(message)
        .ok()
        .and_then(|m| m.edns.map(|e| usize::from(e.max_payload())))
        .unwrap_or(512)
        .clamp(512, 1232)
}

/// The zone a query asks about, and its TSIG keys (none for a name outside every zone).
pub fn keys_for(view: &View, transfers: &Transfers, query: &[u8]) -> Arc<[tsig::Key]> {
    zone_of(view, query)
        .map(|zv| transfers.keys(&zv.origin.to_string()))
        .unwrap_or_else(|| Arc::from(Vec::new()))
}

pub fn question(query: &[u8]) -> Option<Query> {
    Message::from_vec(query).ok()?.queries.into_iter().next()
}

pub fn zone_of(view: &View, query: &[u8]) -> Option<Arc<ZoneView>> {
    let q = question(query)?;
    let name = hickory_proto::rr::LowerName::new(q.name());
    view.zones
        .iter()
        .find(|z| name.zone_of(&z.origin) || z.origin == name)
        .cloned()
}
