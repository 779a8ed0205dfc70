//! The plain form of a zone file, read without hickory's whole-file parser.
//!
//! hickory-proto's `Parser` builds every record set in a `BTreeMap` keyed by name before
//! anything is used: ~1–2 s for the ~300k records of a 100,000-host zone, more than the
//! whole start-up budget. Most of such a file is lines of the one form [`super::export`]
//! writes, one record per line: `OWNER [TTL] [IN] A|AAAA|TXT|SRV DATA`. Those are read
//! here straight into [`Rec`]s. Every other entry (SOA, NS, any other type, parenthesised
//! ones) is handed to hickory's parser as a small zone of its own, with the same `$ORIGIN`
//! and `$TTL`. Anything this reader is not sure it reads exactly as hickory would (an
//! owner left out, an escape, a class other than IN, a TTL it would have to inherit, an
//! `$ORIGIN` that moves, unquoted TXT, a malformed address...) makes it give up, and the
//! caller parses the whole file with hickory, which also finds the line of any error.
//! The `zonefile` fuzz target checks the two readers agree.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::rr::{DNSClass, Name, Record, RecordSet, RecordType};
use hickory_proto::serialize::txt::Parser;

use super::{Data, Owner, Rec};

/// One token of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a str),
    Quoted(&'a str),
    Open,
    Close,
}

/// The tokens of one line up to its comment, or `None` for what this reader leaves to
/// hickory (escapes, quotes that do not close on the line or touch other text).
fn tokenize<'a>(line: &'a str, out: &mut Vec<Tok<'a>>) -> Option<()> {
    out.clear();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' => i += 1,
            b';' => break,
            b'(' | b')' => {
                // hickory reads a parenthesis touching a word as part of it.
                let apart = |c: Option<&u8>| {
                    c.is_none_or(|c| matches!(c, b' ' | b'\t' | b'(' | b')' | b';'))
                };
                if !apart(i.checked_sub(1).and_then(|p| b.get(p))) || !apart(b.get(i + 1)) {
                    return None;
                }
                out.push(if b[i] == b'(' { Tok::Open } else { Tok::Close });
                i += 1;
            }
            b'"' => {
                let len = b[i + 1..].iter().position(|&c| c == b'"')?;
                let s = &line[i + 1..i + 1 + len];
                if s.contains('\\') {
                    return None;
                }
                out.push(Tok::Quoted(s));
                i += len + 2;
                if i < b.len() && !matches!(b[i], b' ' | b'\t' | b';') {
                    return None;
                }
            }
            b'\\' => return None,
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b';' | b'(' | b')') {
                    if matches!(b[i], b'"' | b'\\') {
                        return None;
                    }
                    i += 1;
                }
                out.push(Tok::Word(&line[start..i]));
            }
        }
    }
    Some(())
}

/// ASCII without control characters but tab (hickory's lexer takes a vertical tab
/// or form feed for a blank, say) and without a carriage return.
fn plain_text(line: &str) -> bool {
    line.bytes()
        .all(|c| c == b'\t' || (0x20..0x7f).contains(&c))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
}

/// Whether `l` is a label hickory's `Name::parse` takes as it is, but for case: one
/// that starts with `_` (kept as written) or a host-name label that is not an IDNA
/// one (lower-cased by UTS #46); anything else (a `_` inside, `xn--`) is left to hickory.
fn plain_label(l: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    !l.is_empty()
        && l.len() <= 63
        && match l.strip_prefix('_') {
            Some(rest) => rest.bytes().all(|c| word(c) || c == b'_'),
            // hickory's Label::from_ascii refuses a leading '-'.
            None => {
                l.bytes().all(word)
                    && !l.starts_with('-')
                    && !l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("xn--"))
            }
        }
}

/// The labels of `written` below `origin` (lower case, leaf first), if it is a plain
/// name inside the zone. `origin` is absolute and lower case.
fn relative<'a>(written: &'a str, origin: &str) -> Option<Vec<Cow<'a, str>>> {
    if written == "@" {
        return Some(Vec::new());
    }
    if written.len() + origin.len() > 250 {
        return None;
    }
    let inner = match written.strip_suffix('.') {
        Some(abs) => {
            if abs.eq_ignore_ascii_case(origin.trim_end_matches('.')) {
                return Some(Vec::new());
            }
            let cut = abs.len().checked_sub(origin.len())?;
            let (head, tail) = abs.split_at(cut);
            // tail is ".origin" without origin's final dot.
            if !tail.starts_with('.')
                || !tail[1..].eq_ignore_ascii_case(&origin[..origin.len() - 1])
            {
                return None;
            }
            head
        }
        None => written,
    };
    inner
        .split('.')
        .map(|l| {
            plain_label(l).then(|| match l.bytes().any(|c| c.is_ascii_uppercase()) {
                true => Cow::Owned(l.to_ascii_lowercase()),
                false => Cow::Borrowed(l),
            })
        })
        .collect()
}

/// A plain name as hickory's `Name::parse` reads it relative to `origin` (absolute,
/// lower case): labels starting with `_` as written, the others in lower case.
pub(super) fn name(written: &str, origin: &str) -> Option<Name> {
    relative(written, origin)?;
    let mut text = String::with_capacity(written.len() + origin.len() + 1);
    let own = match written {
        "@" => "",
        w => w.strip_suffix('.').unwrap_or(w),
    };
    for l in own.split('.').filter(|l| !l.is_empty()) {
        if l.starts_with('_') {
            text.push_str(l);
        } else {
            text.extend(l.chars().map(|c| c.to_ascii_lowercase()));
        }
        text.push('.');
    }
    if !written.ends_with('.') {
        text.push_str(origin);
    }
    Name::from_ascii(text).ok()
}

/// The data of a plain record of type `rtype`, or `None` to leave it to hickory.
fn data<'a>(rtype: &str, toks: &[Tok<'a>], origin: &str) -> Option<Data<'a>> {
    // No allocation for the address and SRV lines (most of a large zone).
    if rtype.eq_ignore_ascii_case("A") {
        let [Tok::Word(ip)] = toks else { return None };
        Some(Data::A(Ipv4Addr::from_str(ip).ok()?))
    } else if rtype.eq_ignore_ascii_case("AAAA") {
        let [Tok::Word(ip)] = toks else { return None };
        Some(Data::Aaaa(Ipv6Addr::from_str(ip).ok()?))
    } else if rtype.eq_ignore_ascii_case("SRV") {
        let [Tok::Word(prio), Tok::Word(weight), Tok::Word(port), Tok::Word(target)] = toks else {
            return None;
        };
        let num = |s: &str| is_digits(s).then(|| s.parse::<u16>().ok()).flatten();
        // hickory's lexer reads `@` as its own token, which record data refuses.
        if target.starts_with('@') {
            return None;
        }
        Some(Data::Srv(
            num(prio)?,
            num(weight)?,
            num(port)?,
            Box::new(name(target, origin)?),
        ))
    } else if rtype.eq_ignore_ascii_case("TXT") {
        let strings: Option<Vec<&'a str>> = toks
            .iter()
            .map(|t| match t {
                Tok::Quoted(s) if s.len() <= 255 => Some(*s),
                _ => None,
            })
            .collect();
        Some(Data::Txt(strings.filter(|s| !s.is_empty())?))
    } else {
        None
    }
}

/// The SOA and every record of `text`, or `None` when hickory's parser must read it.
pub(super) fn records<'a>(
    text: &'a str,
    origin: Option<&'a str>,
) -> Option<(Record, impl Iterator<Item = Rec<'a>>)> {
    // Lower case, so hickory's `Name::from_ascii` of it (the given origin) and its
    // `Name::parse` (an `$ORIGIN`) are the same name.
    let plain_origin = |o: &str| {
        o.strip_suffix('.').is_some_and(|o| {
            o.split('.').all(plain_label) && !o.bytes().any(|c| c.is_ascii_uppercase())
        })
    };
    let mut origin = origin;
    if origin.is_some_and(|o| !plain_origin(o)) {
        return None;
    }
    let mut default_ttl: Option<u32> = None;
    // Entries for hickory, with the $TTL in force before each.
    let mut other = String::new();
    let mut other_ttl: Option<u32> = None;
    let mut recs = Vec::with_capacity(text.len() / 40);
    let mut toks = Vec::with_capacity(16);
    let mut lines = text.split('\n');
    while let Some(line) = lines.next() {
        if !plain_text(line) {
            return None;
        }
        tokenize(line, &mut toks)?;
        if toks.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // The owner left out: the previous record's (RFC 1035 §5.1).
            return None;
        }
        let Tok::Word(owner) = toks[0] else {
            return None;
        };
        if let Some(directive) = owner.strip_prefix('$') {
            let [_, Tok::Word(value)] = toks[..] else {
                return None;
            };
            // hickory's lexer knows the directives in upper case only.
            if directive == "ORIGIN" {
                match origin {
                    Some(o) if o == value => {}
                    None if plain_origin(value) => origin = Some(value),
                    _ => return None,
                }
            } else if directive == "TTL" && is_digits(value) {
                default_ttl = Some(value.parse().ok()?);
            } else {
                return None;
            }
            continue;
        }
        let o = origin?;
        let mut ttl = None;
        let mut rest = toks[1..].iter();
        let rtype = loop {
            match rest.next()? {
                Tok::Word(w) if is_digits(w) => ttl = Some(w.parse::<u32>().ok()?),
                Tok::Word(w) if w.eq_ignore_ascii_case("IN") => {}
                Tok::Word(w) => break *w,
                _ => return None,
            }
        };
        let rest = rest.as_slice();
        let ttl = ttl.or(default_ttl)?;
        if let Some(data) = data(rtype, rest, o) {
            recs.push(Rec {
                owner: Owner::Text {
                    written: owner,
                    origin: o,
                },
                rel: Some(relative(owner, o)?),
                ttl,
                class: DNSClass::IN,
                data,
            });
            continue;
        }
        // Another type (or a plain type this reader does not take): hickory reads it,
        // unless it is one of the plain types, which must not be split between readers.
        let upper = rtype.to_ascii_uppercase();
        if DNSClass::from_str(&upper).is_ok() {
            // A class (hickory keeps it for the lines after): not plain.
            return None;
        }
        match RecordType::from_str(&upper) {
            Ok(RecordType::A | RecordType::AAAA | RecordType::TXT | RecordType::SRV) | Err(_) => {
                return None
            }
            Ok(_) => {}
        }
        if default_ttl != other_ttl {
            other.push_str(&format!("$TTL {}\n", default_ttl?));
            other_ttl = default_ttl;
        }
        other.push_str(line);
        other.push('\n');
        let mut depth = 0i32;
        loop {
            for t in &toks {
                match t {
                    Tok::Open => depth += 1,
                    Tok::Close => depth -= 1,
                    // hickory does not read quotes inside parentheses as we do.
                    Tok::Quoted(_) if depth > 0 => return None,
                    _ => {}
                }
            }
            if depth <= 0 {
                break;
            }
            let next = lines.next()?;
            // A directive inside parentheses: left to hickory.
            if !plain_text(next) || next.trim_start().starts_with('$') {
                return None;
            }
            tokenize(next, &mut toks)?;
            other.push_str(next);
            other.push('\n');
        }
        if depth < 0 {
            return None;
        }
    }
    let origin = origin?;
    let apex = Name::from_ascii(origin).ok()?.to_lowercase();
    let (_, sets) = Parser::new(&other, None, Some(apex.clone())).parse().ok()?;
    let parsed: Vec<Record> = sets
        .into_values()
        .flat_map(RecordSet::into_iter)
        .filter(|r| r.record_type() != RecordType::RRSIG)
        .collect();
    let mut soas = parsed.iter().filter(|r| r.record_type() == RecordType::SOA);
    let soa = soas.next()?.clone();
    if soas.next().is_some() || soa.name.to_lowercase() != apex {
        return None;
    }
    // Not appended to `recs` (~300 bytes a record): that would copy them all.
    let parsed = parsed.into_iter().map(move |r| Rec::parsed(r, &apex));
    Some((soa, parsed.chain(recs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "$ORIGIN cluster.example.
$TTL 3600
@ IN SOA ns1 hostmaster ( 1 3600 600 604800 30 )
@ IN NS ns1
ns1 IN A 127.0.0.1
web1.node 60 IN A 10.0.0.1 ; a comment
WEB1.node 60 IN AAAA fd00::1
web1.node 60 IN TXT \"roles=web\" \"available=1\" \"note=a;b (c)\"
web1._conduit._tcp 5 IN SRV 0 0 8080 web1.node
web1._conduit._tcp.cluster.example. 5 IN TXT \"role=master\"
mx 300 IN MX 10 mail.example.org.
";

    fn both(text: &str) -> (super::super::Zone, super::super::Zone) {
        let fast = {
            let (soa, recs) = records(text, Some("cluster.example.")).expect("plain");
            super::super::build(soa, recs).expect("fast build")
        };
        let (_, sets) = Parser::new(
            text,
            None,
            Some(Name::from_ascii("cluster.example.").unwrap()),
        )
        .parse()
        .expect("hickory");
        let records: Vec<Record> = sets.into_values().flat_map(RecordSet::into_iter).collect();
        let soa = records
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
            .cloned()
            .expect("soa");
        let apex = soa.name.to_lowercase();
        let slow = super::super::build(soa, records.into_iter().map(|r| Rec::parsed(r, &apex)))
            .expect("slow build");
        (fast, slow)
    }

    #[test]
    fn plain_lines_read_as_hickory_reads_them() {
        let (fast, slow) = both(ZONE);
        assert_eq!(fast, slow);
        assert_eq!(fast.hosts["web1"].addrs.len(), 2);
        assert_eq!(fast.meta.statics.len(), 2, "ns1 A and mx MX");
        // The same record twice is one record, whichever reader.
        let twice = format!("{ZONE}web1.node 60 IN A 10.0.0.1\nns1 IN A 127.0.0.1\n");
        let (fast, slow) = both(&twice);
        assert_eq!(fast, slow);
        assert_eq!(fast.hosts["web1"].addrs.len(), 2);
        // A record equal to an earlier one of its RRset is dropped before the
        // records are applied in turn: the key is K2, the port 8081, the role replica.
        let repeats = format!(
            "{ZONE}web2.node 60 IN A 10.0.0.2
web2.node 60 IN TXT \"key=ed25519:2u+T1To66qKQ1My8LiGl/GsF9SrOo9GdXywhR+8b4EU=\"
web2.node 60 IN TXT \"key=ed25519:3bh4OQAy/QEk0XseX1FZU/dTlulptxR9p0RpJ2YRPoU=\"
web2.node 60 IN TXT \"key=ed25519:2u+T1To66qKQ1My8LiGl/GsF9SrOo9GdXywhR+8b4EU=\"
web1._conduit._tcp 5 IN SRV 0 0 8081 web1.node
web1._conduit._tcp 5 IN SRV 0 0 8080 web1.node
web1._conduit._tcp 5 IN TXT \"role=replica\"
web1._conduit._tcp 5 IN TXT \"role=master\"
"
        );
        let (fast, slow) = both(&repeats);
        assert_eq!(fast, slow);
        assert_eq!(
            fast.hosts["web2"].key.map(|k| k.to_string()),
            Some("ed25519:3bh4OQAy/QEk0XseX1FZU/dTlulptxR9p0RpJ2YRPoU=".to_string())
        );
        let b = &fast.bindings[&("web1".to_string(), "conduit".to_string())];
        assert_eq!(
            (b.port, b.role.map(|r| r.as_str())),
            (8081, Some("replica"))
        );
    }

    #[test]
    fn names_are_read_as_hickory_reads_them() {
        let origin = Name::from_ascii("cluster.example.").unwrap();
        for w in [
            "@",
            "web1.node",
            "WEB1.Node",
            "repo3._switchboard.N",
            "_Conduit._tcp",
            "Web1.node.cluster.example.",
            "a-b.c--d",
        ] {
            let ours = name(w, "cluster.example.").expect(w);
            let theirs = if w == "@" {
                origin.clone()
            } else {
                Name::parse(w, Some(&origin)).expect(w)
            };
            assert_eq!(ours.to_string(), theirs.to_string(), "{w}");
        }
        for w in ["a_b.node", "xn--nxasmq6b.node", "a..b", "*.node", "-1.node"] {
            assert!(name(w, "cluster.example.").is_none(), "{w} left to hickory");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_hickory() {
        let plain =
            |extra: &str| records(&format!("{ZONE}{extra}\n"), Some("cluster.example.")).is_some();
        assert!(plain("h2.node 60 IN A 10.0.0.2"));
        for extra in [
            "  60 IN A 10.0.0.2",                               // owner left out
            "h2.node 60 CH A 10.0.0.2",                         // another class
            "h2.node 60 IN A 010.0.0.2x",                       // not an address
            "h2.node 60 IN TXT unquoted",                       // unquoted TXT
            "h2.node 60 IN TXT \"a\\\"b\"",                     // escape
            "h2.node 60 IN A ( 10.0.0.2 )",                     // parenthesised plain type
            "$ORIGIN other.example.",                           // the origin moves
            "$TTL 1h",                                          // a TTL with a unit
            "h*.node 60 IN A 10.0.0.2",                         // not a plain label
            "h2.node.other.example. 60 IN A 10.0.0.2",          // outside the zone
            "h2.node 60 IN TYPE999 \\# 0",                      // escape in other data
            "h2.node 60 IN BOGUS x",                            // no such type
            "@ IN SOA ns1 hostmaster ( 2 3600 600 604800 30 )", // a second SOA
            "x 60 IN NS (",                                     // parentheses never closed
            "x 60 IN HINFO a( b",                               // a parenthesis touching a word
            "x 60 IN HINFO ( \"a\" b )",                        // a quote inside parentheses
            "x 60 IN MX (\n$TTL 60\n10 mail )",                 // a directive inside them
            "_sip._udp 60 IN SRV 0 0 5060 @",                   // `@` in record data
            "\u{b} IN MX 10 mail",                              // a vertical tab for a blank
        ] {
            assert!(!plain(extra), "{extra:?} read as plain");
        }
        assert!(
            records("$ORIGIN cluster.example.\nweb1.node IN A 10.0.0.1\n", None).is_none(),
            "no TTL"
        );
    }
}
