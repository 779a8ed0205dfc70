//! `axfr ADDR ZONE KEYNAME SECRET ROUNDS`: transfers ZONE from the server at
//! ADDR (AXFR over TCP, signed with the TSIG key KEYNAME/SECRET, hmac-sha256)
//! ROUNDS times, reading every message to the closing SOA without decoding
//! more than each record's type, and prints one line of JSON: the median
//! seconds from the request to the last byte, and the bytes, messages and
//! records of a transfer. The client does the same small work whoever serves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

fn fail(msg: String) -> ! {
    switchboard_bench::fail("axfr", msg)
}

fn u16_at(m: &[u8], i: usize) -> u16 {
    match (m.get(i), m.get(i + 1)) {
        (Some(a), Some(b)) => u16::from_be_bytes([*a, *b]),
        _ => fail(format!("a message cut short at byte {i}")),
    }
}

/// The offset after the name at `i`.
fn skip_name(m: &[u8], mut i: usize) -> usize {
    loop {
        let len = *m
            .get(i)
            .unwrap_or_else(|| fail("a name runs past its message".into()));
        if len == 0 {
            return i + 1;
        }
        if len & 0xc0 == 0xc0 {
            return i + 2;
        }
        i += 1 + usize::from(len);
    }
}

/// Records and SOA records in one message.
fn scan(m: &[u8]) -> (usize, usize) {
    let rcode = m.get(3).map_or(0, |b| b & 0x0f);
    if rcode != 0 {
        fail(format!("the server answered rcode {rcode}"));
    }
    let (qd, an) = (u16_at(m, 4), u16_at(m, 6));
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(m, i) + 4;
    }
    let mut soas = 0;
    for _ in 0..an {
        i = skip_name(m, i);
        if u16_at(m, i) == 6 {
            soas += 1;
        }
        i += 10 + usize::from(u16_at(m, i + 8));
    }
    (usize::from(an), soas)
}

fn query(zone: &str, key: &switchboard_directory::tsig::Key) -> Vec<u8> {
    let mut q = vec![0x5b, 0x0d, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 252, 0, 1]);
    let now = switchboard_bench::unix_now();
    switchboard_directory::tsig::sign(&mut q, key, None, false, now, 0, &[]);
    q
}

/// One transfer: (seconds, bytes, messages, records).
fn transfer(addr: SocketAddr, q: &[u8]) -> (f64, usize, usize, usize) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| fail(format!("connect {addr}: {e}")));
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(q);
    s.write_all(&frame)
        .unwrap_or_else(|e| fail(format!("send: {e}")));
    let (mut bytes, mut messages, mut records, mut soas) = (0, 0, 0, 0);
    let mut buf = vec![0u8; 65536];
    while soas < 2 {
        let mut len = [0u8; 2];
        s.read_exact(&mut len)
            .unwrap_or_else(|e| fail(format!("the transfer ended early: {e}")));
        let n = usize::from(u16::from_be_bytes(len));
        s.read_exact(&mut buf[..n])
            .unwrap_or_else(|e| fail(format!("the transfer ended early: {e}")));
        let (r, so) = scan(&buf[..n]);
        bytes += n;
        messages += 1;
        records += r;
        soas += so;
    }
    (t.elapsed().as_secs_f64(), bytes, messages, records)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        fail("usage: axfr ADDR ZONE KEYNAME SECRET-BASE64 ROUNDS".into());
    }
    let addr: SocketAddr = a[1].parse().unwrap_or_else(|_| fail("bad address".into()));
    let secret = base64_decode(&a[4]);
    let key = switchboard_directory::tsig::Key::new(&a[3], secret)
        .unwrap_or_else(|| fail("bad key name".into()));
    let rounds: usize = a[5].parse().unwrap_or_else(|_| fail("bad ROUNDS".into()));
    let mut times = Vec::new();
    let mut last = (0, 0, 0);
    for _ in 0..rounds.max(1) {
        let (secs, bytes, messages, records) = transfer(addr, &query(&a[2], &key));
        times.push(secs);
        last = (bytes, messages, records);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"seconds\": {:.4}, \"bytes\": {}, \"messages\": {}, \"records\": {}}}",
        times[times.len() / 2],
        last.0,
        last.1,
        last.2
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|_| fail("the secret is not base64".into()))
}
