//! Cutting a full-path UDP response to the client's buffer, at a record
//! boundary (RFC 1035 §4.2.1, RFC 2181 §9, RFC 6891 §7): hickory's own cut can
//! drop the OPT record, and sets TC when only additional records went.

const TYPE_OPT: u16 = 41;

/// The offset just past the name at `pos` (a pointer ends it).
fn skip_name(m: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *m.get(pos)?;
        match len & 0xc0 {
            0xc0 => return (pos + 2 <= m.len()).then_some(pos + 2),
            0 if len == 0 => return Some(pos + 1),
            0 => pos += 1 + usize::from(len),
            _ => return None,
        }
    }
}

/// Cuts the encoded response `msg` to at most `limit` bytes for UDP, at a
/// record boundary: the answer, authority and additional records that fit, in
/// order, then the OPT record; counts rewritten to the records kept. TC is set
/// when an answer or authority record had to go, not for additional records
/// (RFC 2181 §9); the OPT record is kept whatever else goes (RFC 6891 §7).
/// Returns whether anything was cut. A message it cannot walk keeps only its
/// header (and question, if that much is whole), with TC.
pub fn truncate(msg: &mut Vec<u8>, limit: usize) -> bool {
    if msg.len() <= limit || msg.len() < 12 {
        return false;
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    let mut pos = 12;
    for _ in 0..qd {
        match skip_name(msg, pos) {
            Some(p) if p + 4 <= msg.len() => pos = p + 4,
            _ => {
                msg[4..6].copy_from_slice(&[0, 0]);
                return cut(msg, 12, [0; 3], None, true);
            }
        }
    }
    let question_end = pos;
    // Each record's end, and the OPT record's place if there is one.
    let mut ends = Vec::with_capacity(an + ns + ar);
    let mut opt = None;
    for i in 0..an + ns + ar {
        let Some(p) = skip_name(msg, pos).filter(|p| p + 10 <= msg.len()) else {
            return cut(msg, question_end, [0; 3], None, true);
        };
        let rtype = u16::from_be_bytes([msg[p], msg[p + 1]]);
        let end = p + 10 + usize::from(u16::from_be_bytes([msg[p + 8], msg[p + 9]]));
        if end > msg.len() {
            return cut(msg, question_end, [0; 3], None, true);
        }
        if i >= an + ns && rtype == TYPE_OPT {
            opt = Some(pos..end);
        } else {
            ends.push((i, end));
        }
        pos = end;
    }
    let opt_len = opt.as_ref().map_or(0, |r| r.len());
    let budget = limit.saturating_sub(opt_len);
    // Records are kept as a prefix: a later record's names may point into an
    // earlier one, never the other way. The OPT record comes last.
    let before_opt = |i: usize, end: usize| match &opt {
        Some(o) => i < an + ns || end <= o.start,
        None => true,
    };
    let kept = ends
        .iter()
        .take_while(|&&(i, end)| end <= budget && before_opt(i, end))
        .count();
    let end = if kept == 0 {
        question_end
    } else {
        ends[kept - 1].1
    };
    let kept_an = kept.min(an);
    let kept_ns = kept.saturating_sub(an).min(ns);
    let kept_ar = kept - kept_an - kept_ns;
    let tc = kept_an < an || kept_ns < ns;
    cut(msg, end, [kept_an, kept_ns, kept_ar], opt, tc)
}

/// `msg` cut to `end`, its counts set to `counts` (plus the OPT record, moved to
/// the end), TC set when `tc`.
fn cut(
    msg: &mut Vec<u8>,
    end: usize,
    counts: [usize; 3],
    opt: Option<std::ops::Range<usize>>,
    tc: bool,
) -> bool {
    let opt_bytes = opt.map(|r| msg[r].to_vec()).unwrap_or_default();
    msg.truncate(end);
    msg.extend_from_slice(&opt_bytes);
    let ar = counts[2] + usize::from(!opt_bytes.is_empty());
    for (at, n) in [(6, counts[0]), (8, counts[1]), (10, ar)] {
        msg[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
    }
    if tc {
        msg[2] |= 0x02;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_whole_records_and_the_opt_record() {
        // Header (1 question, 3 answers, 0, 1 additional: OPT), question "a.", three
        // A records at a pointer to it, then OPT.
        let mut m = vec![
            0, 1, 0x84, 0, 0, 1, 0, 3, 0, 0, 0, 1, 1, b'a', 0, 0, 1, 0, 1,
        ];
        for i in 0..3 {
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, i]);
        }
        let opt = [0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&opt);
        let mut cut = m.clone();
        assert!(!truncate(&mut cut, m.len()), "it fits");
        assert!(truncate(&mut cut, 19 + 16 + 11 + 5));
        assert_eq!(cut.len(), 19 + 16 + 11);
        assert_eq!(&cut[4..12], &[0, 1, 0, 1, 0, 0, 0, 1], "counts");
        assert!(cut[2] & 0x02 != 0, "TC");
        assert_eq!(&cut[cut.len() - 11..], &opt);
        // An answer record that runs past the end: header and question, TC.
        let mut bad = m[..19 + 10].to_vec();
        bad.extend_from_slice(&[0, 200]);
        bad.extend_from_slice(&[0; 40]);
        assert!(truncate(&mut bad, 40));
        assert_eq!(bad.len(), 19);
        assert_eq!(&bad[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(bad[2] & 0x02 != 0, "TC");
    }
}
