//! HTTP/1.1 framing, for the code that copies messages as bytes (the
//! listeners' short way, `inbound::passthrough`, and `outbound::raw`): how a response body ends
//! (RFC 9112 §6.3), the chunked coding (§7.1), the length field, and the
//! hop-by-hop headers a proxy never passes on (RFC 9110 §7.6.1). No I/O here:
//! this module says what the bytes mean; the caller reads and writes them.

use std::mem::MaybeUninit;

/// The header that carries an error's reason code, for sidecars reading a peer's answer.
pub const REASON: &str = "x-switchboard-reason";

/// Header fields parsed in one head; a request with more goes through hyper.
pub const MAX_HEADERS: usize = 64;

/// Hop-by-hop headers (RFC 9110 §7.6.1): about one connection, never passed on.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names a message's `Connection` header lists: hop-by-hop as well.
pub fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    values
        .flat_map(|v| v.split(|&b| b == b',').map(|t| t.trim_ascii()))
        .filter(|t| !t.is_empty())
        .collect()
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, PartialEq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head as the client gets it (without the blank line).
pub struct ResponseHead {
    pub head: Vec<u8>,
    /// The status code.
    pub code: u16,
    /// The `X-Switchboard-Reason` a refusal carries (`reply::REASON`).
    pub reason: Option<Vec<u8>>,
    pub framing: Framing,
    /// The backend's connection may carry the next request.
    pub reuse: bool,
}

/// What the bytes read so far from a backend begin with.
pub enum Answer {
    /// Not a whole response head yet.
    Partial,
    /// An interim (1xx) answer's head, this long: dropped, as hyper's client does.
    Interim(usize),
    /// A final answer's head, this long, as the client is to get it.
    Final(usize, ResponseHead),
}

/// Parses the response head at the start of `buf`, once: its length, and for
/// a final answer the head as the client is to get it and how its body ends.
/// `head_method`: the request was a HEAD (its answer has no body).
pub fn response_head(buf: &[u8], head_method: bool) -> Result<Answer, &'static str> {
    const BAD: &str = "an answer that is not HTTP/1.1";
    // (not zeroed: httparse fills what it returns, and 128 empty headers are 4 KiB to write)
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS * 2];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Answer::Partial),
        Err(_) => return Err(BAD),
    };
    let code = resp.code.ok_or(BAD)?;
    if code == 101 {
        return Err("a protocol switch nobody asked for");
    }
    if (100..200).contains(&code) {
        return Ok(Answer::Interim(len));
    }
    let listed = connection_tokens(
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    );
    let backend_close =
        resp.version != Some(1) || listed.iter().any(|t| t.eq_ignore_ascii_case(b"close"));
    // Repeated lengths, in one field or several, must agree (RFC 9112 §6.3).
    let mut lengths = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|v| parse_length(v.trim_ascii()));
    let length = match lengths.next() {
        None => None,
        Some(first) => {
            let n = first.ok_or(BAD)?;
            if lengths.any(|l| l != Some(n)) {
                return Err(BAD);
            }
            Some(n)
        }
    };
    let coding = resp
        .headers
        .iter()
        .rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|h| h.value);
    let framing = if head_method || code == 204 || code == 304 {
        Framing::Empty
    } else if let Some(te) = coding {
        let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let reason = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(REASON))
        .map(|h| h.value.to_vec());
    let mut out = Vec::with_capacity(len + 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads exactly three digits (a code below 100 is refused downstream).
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // The framing goes through as it is, whatever `Connection` lists; a
        // length beside a coding does not (RFC 9112 §6.1).
        let framing_header = name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"content-length");
        let hop = if framing_header {
            coding.is_some() && name.eq_ignore_ascii_case(b"content-length")
        } else {
            HOP_BY_HOP
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
                || listed.iter().any(|t| t.eq_ignore_ascii_case(name))
        };
        if !hop {
            push_header(&mut out, name, h.value);
        }
    }
    Ok(Answer::Final(
        len,
        ResponseHead {
            head: out,
            code,
            reason,
            framing,
            // A backend that sends both a coding and a length is not trusted to
            // frame the next answer either.
            reuse: !backend_close
                && framing != Framing::UntilClose
                && !(coding.is_some() && length.is_some()),
        },
    ))
}

/// Appends one header line.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Finds where a chunked body ends (RFC 9112 §7.1), fed its bytes as they come.
#[derive(Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    /// How many of `bytes` belong to the body, and whether the body ends there.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + d;
                        Size
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => Extension,
                    b'\r' if self.digits > 0 => SizeLf,
                    _ => return Err("bad chunk size"),
                },
                Extension => match b {
                    b'\r' => SizeLf,
                    b'\n' => return Err("bare LF in a chunk extension"),
                    _ => Extension,
                },
                SizeLf if b == b'\n' => {
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                Data => {
                    let n = self.size.min((bytes.len() - i) as u64);
                    self.size -= n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => {
                    self.digits = 0;
                    Size
                }
                TrailerStart if b == b'\r' => EndLf,
                TrailerStart | Trailer if b != b'\r' && b != b'\n' => Trailer,
                Trailer if b == b'\r' => TrailerLf,
                TrailerLf if b == b'\n' => TrailerStart,
                EndLf if b == b'\n' => {
                    self.state = Done;
                    return Ok((i + 1, true));
                }
                Done => return Ok((i, true)),
                _ => return Err("bad chunked framing"),
            };
            i += 1;
        }
        Ok((i, self.state == Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<(usize, bool), &'static str> {
        Chunked::default().feed(body)
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let end = body.len() - b"GET / HTTP/1.1".len();
        assert_eq!(whole(body), Ok((end, true)));
        // Fed a byte at a time, it ends at the same byte.
        let mut c = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            let (n, done) = c.feed(std::slice::from_ref(b)).expect("valid");
            if done {
                assert_eq!((i + 1, n), (end, 1));
                break;
            }
            assert_eq!(n, 1, "byte {i} belongs to the body");
        }
        assert_eq!(whole(b"0\r\n\r\n"), Ok((5, true)));
        assert_eq!(whole(b"A\r\n0123456789\r\n"), Ok((15, false)));
    }

    #[test]
    fn bad_chunked_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello",
            b"5\r\nhelloX",
            b"1234567890abcdef0\r\n",
            b"0\r\nX-T: 1\n",
        ] {
            assert!(whole(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1024"), Some(1024));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1 ",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod response_heads {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_with_its_length_and_rewritten() {
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nContent-Length: 5\r\nX-Switchboard-Reason: r\r\n\r\n";
        let mut all = interim.to_vec();
        all.extend_from_slice(head);
        all.extend_from_slice(b"hello");
        assert!(matches!(
            response_head(&all[..10], false),
            Ok(Answer::Partial)
        ));
        match response_head(&all, false) {
            Ok(Answer::Interim(n)) => assert_eq!(n, interim.len()),
            _ => panic!("the 100 is an interim answer"),
        }
        let Ok(Answer::Final(n, r)) = response_head(&all[interim.len()..], false) else {
            panic!("a final answer");
        };
        assert_eq!(
            n,
            head.len(),
            "the length ends at the blank line, not the body"
        );
        assert_eq!(r.code, 200);
        assert!(r.framing == Framing::Length(5) && r.reuse);
        assert_eq!(r.reason.as_deref(), Some(&b"r"[..]));
        assert_eq!(
            String::from_utf8_lossy(&r.head),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Switchboard-Reason: r\r\n",
            "hop-by-hop headers, and those Connection lists, are dropped"
        );
        // A HEAD's answer has no body whatever its length says.
        let Ok(Answer::Final(_, r)) = response_head(head, true) else {
            panic!("a final answer");
        };
        assert!(r.framing == Framing::Empty);
        for bad in [&b"HTTP/1.1 101 Switching\r\n\r\n"[..], b"SSH-2.0-x\r\n\r\n"] {
            assert!(response_head(bad, false).is_err());
        }
    }
}
