//! Where an error is: hickory's parser reports neither file nor line, so on
//! error a light scan of the file's entries (`entries`) finds the line the
//! error belongs to. Also refuses what must never reach hickory's parser.

use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::txt::Parser;

/// Refuses what must never reach hickory's parser, wherever it appears on a line
/// (even where a quote might hide it): `$INCLUDE`, which would read files outside
/// the zones directory, and `\DDD` escapes, which hickory-proto 0.26 decodes
/// wrongly (it would serve other bytes than BIND does).
pub(super) fn forbidden(text: &str) -> Option<(usize, String)> {
    for (i, line) in text.lines().enumerate() {
        if line.to_ascii_uppercase().contains("$INCLUDE") {
            return Some((
                i + 1,
                "$INCLUDE is not supported: put the records in this file".into(),
            ));
        }
        let b = line.as_bytes();
        if b.windows(4)
            .any(|w| w[0] == b'\\' && w[1..].iter().all(u8::is_ascii_digit))
        {
            return Some((
                i + 1,
                "\\DDD escapes are not supported: write the character itself".into(),
            ));
        }
    }
    None
}

/// One entry of a zone file, as the line scan sees it.
pub(super) struct Entry {
    pub(super) line: usize,
    pub(super) owner: Option<Name>,
    pub(super) rtype: Option<RecordType>,
    /// The entry's text with its owner made absolute, for re-parsing alone.
    text: String,
    /// What is wrong with the entry, as the scan alone can tell.
    pub(super) error: Option<String>,
}

/// Splits a zone file into entries (joining parenthesised lines, skipping comments)
/// and notes each one's first line, owner and type. Also refuses `$INCLUDE`, which
/// would read files outside the zones directory.
pub(super) fn entries(text: &str, origin: Option<&Name>) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut origin = origin.cloned();
    let mut last_owner: Option<Name> = None;
    let mut cur = String::new();
    let mut start = 1;
    let mut line = 1;
    let (mut depth, mut quoted, mut escaped, mut comment) = (0i32, false, false, false);
    let finish = |cur: &mut String,
                  start: usize,
                  out: &mut Vec<Entry>,
                  origin: &mut Option<Name>,
                  last_owner: &mut Option<Name>| {
        let entry = std::mem::take(cur);
        if entry.trim().is_empty() {
            return;
        }
        let mut words = entry.split_whitespace();
        let first = words.next().unwrap_or("");
        let upper = first.to_ascii_uppercase();
        if upper == "$INCLUDE" {
            out.push(Entry {
                line: start,
                owner: None,
                rtype: None,
                text: entry,
                error: Some("$INCLUDE is not supported: put the records in this file".into()),
            });
            return;
        }
        if upper == "$ORIGIN" {
            if let Some(o) = words.next() {
                match Name::parse(o, origin.as_ref()) {
                    Ok(n) => *origin = Some(n),
                    Err(e) => out.push(Entry {
                        line: start,
                        owner: None,
                        rtype: None,
                        text: entry.clone(),
                        error: Some(format!("bad $ORIGIN: {e}")),
                    }),
                }
            }
            return;
        }
        if upper.starts_with('$') {
            return;
        }
        let (owner, rest): (Option<Name>, Vec<&str>) = if entry.starts_with([' ', '\t']) {
            (last_owner.clone(), entry.split_whitespace().collect())
        } else if first == "@" {
            (origin.clone(), words.collect())
        } else {
            (Name::parse(first, origin.as_ref()).ok(), words.collect())
        };
        let rtype = rest
            .iter()
            .filter(|w| !w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .find(|w| !matches!(w.to_ascii_uppercase().as_str(), "IN" | "CH" | "HS" | "CS"))
            .and_then(|w| w.to_ascii_uppercase().parse::<RecordType>().ok());
        let text = match &owner {
            Some(o) => format!("{} {}", o, rest.join(" ")),
            None => entry.clone(),
        };
        *last_owner = owner.clone();
        out.push(Entry {
            line: start,
            owner,
            rtype,
            text,
            error: None,
        });
    };
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
            if depth <= 0 && !quoted {
                finish(&mut cur, start, &mut out, &mut origin, &mut last_owner);
                start = line;
                depth = 0;
                continue;
            }
            cur.push(' ');
            continue;
        }
        if comment {
            continue;
        }
        if escaped {
            escaped = false;
            cur.push(c);
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                comment = true;
                continue;
            }
            '(' if !quoted => {
                depth += 1;
                cur.push(' ');
                continue;
            }
            ')' if !quoted && depth == 0 => {
                out.push(Entry {
                    line,
                    owner: None,
                    rtype: None,
                    text: String::new(),
                    error: Some("')' without a '(' before it".into()),
                });
                continue;
            }
            ')' if !quoted => {
                depth -= 1;
                cur.push(' ');
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if depth > 0 || quoted {
        let what = if quoted {
            "a '\"' is never closed"
        } else {
            "a '(' is never closed"
        };
        out.push(Entry {
            line: start,
            owner: None,
            rtype: None,
            text: String::new(),
            error: Some(what.to_string()),
        });
        return out;
    }
    finish(&mut cur, start, &mut out, &mut origin, &mut last_owner);
    out
}

/// Re-parses each entry alone to find the first one hickory's parser refuses.
pub(super) fn locate_syntax_error(scanned: &[Entry], origin: Option<&Name>) -> Option<usize> {
    let head = match origin {
        Some(o) => format!("$ORIGIN {o}\n$TTL 3600\n"),
        None => "$TTL 3600\n".to_string(),
    };
    for e in scanned {
        if e.owner.is_none() {
            return Some(e.line);
        }
        let text = format!("{head}{}\n", e.text);
        if Parser::new(text.as_str(), None, origin.cloned())
            .parse()
            .is_err()
        {
            return Some(e.line);
        }
    }
    None
}
