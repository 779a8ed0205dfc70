//! TSIG (RFC 8945) with `hmac-sha256`, on raw DNS messages.
//!
//! A zone transfer, a NOTIFY and a secondary's SOA check are signed with a key
//! the zone holds. This module finds the TSIG record at the end of a message
//! (`split`), checks a request's MAC and time (`verify`), and signs an answer
//! by appending a TSIG record (`sign`): the first message of an answer over
//! the request's MAC (§5.3), each later one of a transfer over the previous
//! MAC and the timers only (§5.3.1). Errors are those of §5.2: an unknown key
//! or algorithm is BADKEY, a wrong MAC BADSIG (both answered NOTAUTH with an
//! unsigned TSIG record), a time outside the fudge BADTIME (signed, with our
//! time as other data).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// RR type TSIG.
pub const TYPE_TSIG: u16 = 250;
const CLASS_ANY: u16 = 255;
/// How far apart two clocks may be (RFC 8945 §10 recommends 300 s).
pub const FUDGE: u16 = 300;
/// `hmac-sha256.` in wire format.
const HMAC_SHA256: &[u8] = b"\x0bhmac-sha256\x00";

/// TSIG error codes (RFC 8945 §3, RFC 6895).
pub const BADSIG: u16 = 16;
pub const BADKEY: u16 = 17;
pub const BADTIME: u16 = 18;
/// The shortest MAC accepted: half the hash (RFC 8945 §5.2.2.1).
const MIN_MAC: usize = 16;

/// A key the directory signs and verifies with.
#[derive(Clone)]
pub struct Key {
    /// The key's name in lowercase wire format.
    pub name: Vec<u8>,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key named `name` (a domain name, with or without the final dot).
    pub fn new(name: &str, secret: Vec<u8>) -> Option<Key> {
        Some(Key {
            name: wire_name(name)?,
            secret,
        })
    }
}

/// A name as lowercase wire format.
pub fn wire_name(name: &str) -> Option<Vec<u8>> {
    let mut w = Vec::with_capacity(name.len() + 2);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        w.push(u8::try_from(label.len()).ok().filter(|l| *l <= 63)?);
        w.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    w.push(0);
    (w.len() <= 255).then_some(w)
}

/// A message's TSIG record, read.
#[derive(Debug, Clone)]
pub struct Tsig {
    /// Key name and algorithm, lowercase wire format.
    pub key: Vec<u8>,
    pub algorithm: Vec<u8>,
    pub time: u64,
    pub fudge: u16,
    pub mac: Vec<u8>,
    pub original_id: u16,
    pub error: u16,
    pub other: Vec<u8>,
}

/// Why a message could not be read for its TSIG.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the message is cut short")]
    Short,
    #[error("a TSIG record that is not the last record of the message")]
    Misplaced,
    #[error("a TSIG record that does not parse")]
    BadRecord,
    #[error("bytes after the message's last record")]
    Trailing,
}

fn u16_at(m: &[u8], i: usize) -> Result<u16, Malformed> {
    Ok(u16::from_be_bytes([
        *m.get(i).ok_or(Malformed::Short)?,
        *m.get(i + 1).ok_or(Malformed::Short)?,
    ]))
}

/// The offset after the name at `i` (labels, or a compression pointer).
fn skip_name(m: &[u8], mut i: usize) -> Result<usize, Malformed> {
    loop {
        let len = *m.get(i).ok_or(Malformed::Short)?;
        match len & 0xc0 {
            0 if len == 0 => return Ok(i + 1),
            0 => i += 1 + usize::from(len),
            0xc0 => return Ok(i + 2),
            _ => return Err(Malformed::BadRecord),
        }
    }
}

/// The name at `i`, decompressed, in lowercase wire format, and the offset after it.
fn read_name(m: &[u8], mut i: usize) -> Result<(Vec<u8>, usize), Malformed> {
    let mut out = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *m.get(i).ok_or(Malformed::Short)?;
        match len & 0xc0 {
            0 if len == 0 => {
                out.push(0);
                return Ok((out, end.unwrap_or(i + 1)));
            }
            0 => {
                let label = m
                    .get(i + 1..i + 1 + usize::from(len))
                    .ok_or(Malformed::Short)?;
                out.push(len);
                out.extend(label.iter().map(u8::to_ascii_lowercase));
                if out.len() > 255 {
                    return Err(Malformed::BadRecord);
                }
                i += 1 + usize::from(len);
            }
            0xc0 => {
                let ptr = usize::from(u16_at(m, i)? & 0x3fff);
                end.get_or_insert(i + 2);
                if ptr >= i {
                    return Err(Malformed::BadRecord);
                }
                i = ptr;
            }
            _ => return Err(Malformed::BadRecord),
        }
    }
    Err(Malformed::BadRecord)
}

/// Splits a message into the message without its TSIG record (ARCOUNT one
/// less, ID the original ID: what the MAC covers) and the record. `Ok(None)`
/// when the message carries no TSIG.
pub fn split(m: &[u8]) -> Result<Option<(Vec<u8>, Tsig)>, Malformed> {
    let counts = [u16_at(m, 4)?, u16_at(m, 6)?, u16_at(m, 8)?, u16_at(m, 10)?];
    let mut i = 12;
    for _ in 0..counts[0] {
        i = skip_name(m, i)? + 4;
    }
    let records = usize::from(counts[1]) + usize::from(counts[2]) + usize::from(counts[3]);
    let mut last = None;
    for n in 0..records {
        let start = i;
        i = skip_name(m, i)?;
        let rtype = u16_at(m, i)?;
        let rdlen = usize::from(u16_at(m, i + 8)?);
        i += 10 + rdlen;
        if i > m.len() {
            return Err(Malformed::Short);
        }
        if rtype == TYPE_TSIG {
            if n + 1 != records || counts[3] == 0 {
                return Err(Malformed::Misplaced);
            }
            last = Some(start);
        }
    }
    if i != m.len() {
        return Err(Malformed::Trailing);
    }
    let Some(start) = last else {
        return Ok(None);
    };
    let (key, at) = read_name(m, start)?;
    let rdata = at + 10;
    let (algorithm, mut j) = read_name(m, rdata)?;
    let time_hi = u64::from(u16_at(m, j)?);
    let time_lo = u64::from(u16_at(m, j + 2)?) << 16 | u64::from(u16_at(m, j + 4)?);
    let fudge = u16_at(m, j + 6)?;
    let mac_len = usize::from(u16_at(m, j + 8)?);
    j += 10;
    let mac = m.get(j..j + mac_len).ok_or(Malformed::Short)?.to_vec();
    j += mac_len;
    let original_id = u16_at(m, j)?;
    let error = u16_at(m, j + 2)?;
    let other_len = usize::from(u16_at(m, j + 4)?);
    let other = m
        .get(j + 6..j + 6 + other_len)
        .ok_or(Malformed::Short)?
        .to_vec();
    if j + 6 + other_len != i {
        return Err(Malformed::BadRecord);
    }
    let mut stripped = m[..start].to_vec();
    stripped[0..2].copy_from_slice(&original_id.to_be_bytes());
    stripped[10..12].copy_from_slice(&(counts[3] - 1).to_be_bytes());
    Ok(Some((
        stripped,
        Tsig {
            key,
            algorithm,
            time: time_hi << 32 | time_lo,
            fudge,
            mac,
            original_id,
            error,
            other,
        },
    )))
}

fn time48(t: u64) -> [u8; 6] {
    let b = t.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// The TSIG variables of §4.3.3 (all of them, or the timers only of §5.3.1).
fn variables(key: &[u8], t: &Vars<'_>, timers_only: bool, out: &mut Vec<u8>) {
    if !timers_only {
        out.extend_from_slice(key);
        out.extend_from_slice(&CLASS_ANY.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(HMAC_SHA256);
    }
    out.extend_from_slice(&time48(t.time));
    out.extend_from_slice(&t.fudge.to_be_bytes());
    if !timers_only {
        out.extend_from_slice(&t.error.to_be_bytes());
        out.extend_from_slice(&(t.other.len() as u16).to_be_bytes());
        out.extend_from_slice(t.other);
    }
}

/// What a TSIG record says besides its MAC.
struct Vars<'a> {
    time: u64,
    fudge: u16,
    error: u16,
    other: &'a [u8],
}

fn mac_of(secret: &[u8], prior: Option<&[u8]>, message: &[u8], vars: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    if let Some(p) = prior {
        mac.update(&(p.len() as u16).to_be_bytes());
        mac.update(p);
    }
    mac.update(message);
    mac.update(vars);
    mac
}

/// The outcome of checking a request's TSIG.
#[derive(Debug)]
pub enum Checked {
    /// Signed with `key`, MAC and time good: answer, and sign the answer.
    Good { key: Key, tsig: Tsig },
    /// The key or algorithm is not one we hold (BADKEY) or the MAC is wrong
    /// (BADSIG): answer NOTAUTH with an unsigned TSIG.
    Refused { tsig: Tsig, error: u16 },
    /// MAC good, time outside the fudge: answer NOTAUTH, signed, with our time.
    BadTime { key: Key, tsig: Tsig },
}

/// Checks the TSIG of a request (already `split`) against the keys that may sign it.
pub fn verify(stripped: &[u8], tsig: Tsig, keys: &[Key], now: u64) -> Checked {
    let Some(key) = keys
        .iter()
        .find(|k| k.name == tsig.key && tsig.algorithm == HMAC_SHA256)
        .cloned()
    else {
        return Checked::Refused {
            tsig,
            error: BADKEY,
        };
    };
    if tsig.mac.len() < MIN_MAC || tsig.mac.len() > 32 {
        return Checked::Refused {
            tsig,
            error: BADSIG,
        };
    }
    let mut vars = Vec::with_capacity(300);
    let v = Vars {
        time: tsig.time,
        fudge: tsig.fudge,
        error: tsig.error,
        other: &tsig.other,
    };
    variables(&key.name, &v, false, &mut vars);
    if mac_of(&key.secret, None, stripped, &vars)
        .verify_truncated_left(&tsig.mac)
        .is_err()
    {
        return Checked::Refused {
            tsig,
            error: BADSIG,
        };
    }
    if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
        return Checked::BadTime { key, tsig };
    }
    Checked::Good { key, tsig }
}

/// Appends a TSIG record to `message` (whose ID is the original ID and whose
/// ARCOUNT does not count it yet) and returns its MAC. `prior` is the
/// request's MAC for an answer's first message, the previous message's MAC for
/// a later one of the same answer (then only the timers are covered: `timers_only`).
pub fn sign(
    message: &mut Vec<u8>,
    key: &Key,
    prior: Option<&[u8]>,
    timers_only: bool,
    now: u64,
    error: u16,
    other: &[u8],
) -> Vec<u8> {
    let v = Vars {
        time: now,
        fudge: FUDGE,
        error,
        other,
    };
    let mut vars = Vec::with_capacity(300);
    variables(&key.name, &v, timers_only, &mut vars);
    let mac = mac_of(&key.secret, prior, message, &vars)
        .finalize()
        .into_bytes()
        .to_vec();
    append(message, &key.name, &v, &mac);
    mac
}

/// Appends an unsigned TSIG record (empty MAC) for a BADKEY or BADSIG answer.
pub fn append_unsigned(message: &mut Vec<u8>, tsig: &Tsig, error: u16) {
    let v = Vars {
        time: tsig.time,
        fudge: tsig.fudge,
        error,
        other: &[],
    };
    append(message, &tsig.key, &v, &[]);
}

fn append(message: &mut Vec<u8>, key: &[u8], v: &Vars<'_>, mac: &[u8]) {
    if message.len() < 12 {
        return;
    }
    let id = [message[0], message[1]];
    let rdlen = HMAC_SHA256.len() + 6 + 2 + 2 + mac.len() + 2 + 2 + 2 + v.other.len();
    message.extend_from_slice(key);
    message.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    message.extend_from_slice(&CLASS_ANY.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    message.extend_from_slice(&(rdlen as u16).to_be_bytes());
    message.extend_from_slice(HMAC_SHA256);
    message.extend_from_slice(&time48(v.time));
    message.extend_from_slice(&v.fudge.to_be_bytes());
    message.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    message.extend_from_slice(mac);
    message.extend_from_slice(&id);
    message.extend_from_slice(&v.error.to_be_bytes());
    message.extend_from_slice(&(v.other.len() as u16).to_be_bytes());
    message.extend_from_slice(v.other);
    let ar = u16::from_be_bytes([message[10], message[11]]).wrapping_add(1);
    message[10..12].copy_from_slice(&ar.to_be_bytes());
}

/// How many bytes `sign` appends with `key`: room to leave in a UDP answer.
pub fn record_len(key: &Key) -> usize {
    key.name.len() + 10 + HMAC_SHA256.len() + 16 + 32 + 6
}

/// Checks a signed answer to a request we signed (a NOTIFY's reply).
pub fn verify_answer(answer: &[u8], key: &Key, request_mac: &[u8], now: u64) -> Result<(), String> {
    let (stripped, tsig) = match split(answer) {
        Ok(Some(x)) => x,
        Ok(None) => return Err("the answer is not signed".into()),
        Err(e) => return Err(e.to_string()),
    };
    if tsig.error != 0 {
        return Err(format!("the answer carries TSIG error {}", tsig.error));
    }
    if tsig.key != key.name || tsig.algorithm != HMAC_SHA256 {
        return Err("the answer is signed with another key".into());
    }
    let mut vars = Vec::with_capacity(300);
    let v = Vars {
        time: tsig.time,
        fudge: tsig.fudge,
        error: tsig.error,
        other: &tsig.other,
    };
    variables(&key.name, &v, false, &mut vars);
    if tsig.mac.len() < MIN_MAC
        || mac_of(&key.secret, Some(request_mac), &stripped, &vars)
            .verify_truncated_left(&tsig.mac)
            .is_err()
    {
        return Err("the answer's MAC is wrong".into());
    }
    if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
        return Err("the answer's time is outside the fudge".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> Vec<u8> {
        // ID 0x1234, QUERY, one question: example. SOA IN.
        let mut m = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(b"\x07example\x00\x00\x06\x00\x01");
        m
    }

    #[test]
    fn a_signed_message_verifies_and_a_changed_one_does_not() {
        let key = Key::new("xfr-key", b"0123456789abcdef0123456789abcdef".to_vec()).expect("key");
        let mut m = query();
        let mac = sign(&mut m, &key, None, false, 1_700_000_000, 0, &[]);
        assert_eq!(mac.len(), 32);
        let (stripped, tsig) = split(&m).expect("parses").expect("signed");
        assert_eq!(stripped, query());
        assert!(matches!(
            verify(
                &stripped,
                tsig.clone(),
                std::slice::from_ref(&key),
                1_700_000_100
            ),
            Checked::Good { .. }
        ));
        assert!(matches!(
            verify(
                &stripped,
                tsig.clone(),
                std::slice::from_ref(&key),
                1_700_001_000
            ),
            Checked::BadTime { .. }
        ));
        let other = Key::new("xfr-key", b"another secret, just as long...".to_vec()).expect("key");
        assert!(matches!(
            verify(&stripped, tsig.clone(), &[other], 1_700_000_000),
            Checked::Refused { error: BADSIG, .. }
        ));
        let named = Key::new("other", key.secret.clone()).expect("key");
        assert!(matches!(
            verify(&stripped, tsig, &[named], 1_700_000_000),
            Checked::Refused { error: BADKEY, .. }
        ));
        // One flipped bit in the question.
        let mut bent = m.clone();
        bent[14] ^= 1;
        let (stripped, tsig) = split(&bent).expect("parses").expect("signed");
        assert!(matches!(
            verify(&stripped, tsig, &[key], 1_700_000_000),
            Checked::Refused { error: BADSIG, .. }
        ));
    }

    #[test]
    fn cut_or_misplaced_records_are_malformed_not_a_panic() {
        let key = Key::new("k", vec![1; 32]).expect("key");
        let mut m = query();
        sign(&mut m, &key, None, false, 5, 0, &[]);
        for end in 0..m.len() {
            let _ = split(&m[..end]);
        }
        assert!(split(&query()).expect("parses").is_none());
    }
}
