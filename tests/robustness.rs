//! The directory under hostile clients: TCP connections that hog or dawdle, and
//! UDP floods met by response rate limiting (`serve --rrl-rate`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use switchboard_tests::{demo_zone, dns_query, Directory};

const Z: &str = "cluster.example.";

fn n(rel: &str) -> String {
    format!("{rel}.{Z}")
}

/// A plain query for `name` A with this id, as it goes on the wire.
fn query(id: u16, name: &str) -> Vec<u8> {
    dns_query(id, name, 1, false)
}

/// Whether the server closed `s` (EOF or reset) within `within`, having sent nothing.
fn closed_within(s: &TcpStream, within: Duration) -> bool {
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// dig over TCP from another client address (127.0.1.1 is loopback too, but not
/// the address the hogging client uses).
fn dig_tcp_from(d: &Directory, source: &str) -> Vec<String> {
    d.dig(&n("web1.node"), "A", &["+tcp", "-b", source])
        .data("A")
}

#[test]
fn tcp_clients_that_hog_or_dawdle_do_not_lock_others_out() {
    let d = Directory::with_zone(
        demo_zone,
        &[
            "--tcp-max-per-client",
            "8",
            "--tcp-max-connections",
            "32",
            "--tcp-idle-timeout",
            "1",
        ],
    );
    // One client opens 40 connections and says nothing: 8 are held, the rest are
    // closed at once.
    let hog: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(d.dns).expect("connect"))
        .collect();
    let closed_at_once = hog[8..]
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(500)))
        .count();
    assert_eq!(closed_at_once, 32, "connections past the per-client limit");
    // Another client is still served meanwhile.
    assert_eq!(dig_tcp_from(&d, "127.0.1.1"), vec!["10.0.1.11"]);
    // The 8 silent ones are dropped after the idle timeout (1 s).
    let started = Instant::now();
    for s in hog.iter().take(8) {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "a silent connection outlived the idle timeout"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(hog);

    // A client that sends its query one byte at a time, slower than the timeout
    // allows, is cut off without an answer, and others are answered meanwhile.
    let q = query(0x5151, &n("web1.node"));
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    let mut slow = TcpStream::connect(d.dns).expect("connect");
    let started = Instant::now();
    let mut cut_off = false;
    for b in &framed {
        if slow.write_all(&[*b]).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    assert!(
        cut_off || closed_within(&slow, Duration::from_secs(3)),
        "a one-byte-at-a-time client kept its connection"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(dig_tcp_from(&d, "127.0.0.1"), vec!["10.0.1.11"]);

    // A well-behaved TCP client may send several queries on one connection.
    let mut s = TcpStream::connect(d.dns).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for id in [1u16, 2, 3] {
        let q = query(id, &n("web1.node"));
        s.write_all(&(q.len() as u16).to_be_bytes()).expect("write");
        s.write_all(&q).expect("write");
        let mut len = [0u8; 2];
        s.read_exact(&mut len).expect("answer length");
        let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut answer).expect("answer");
        assert_eq!(&answer[0..2], &id.to_be_bytes());
        assert_eq!(answer[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&answer[6..8], &[0, 1], "one answer record");
    }
}

/// Sends `count` queries from `socket` in bursts, and sorts what comes back into
/// (full answers, truncated answers).
fn flood(socket: &UdpSocket, to: SocketAddr, count: u16) -> (usize, usize) {
    socket
        .set_read_timeout(Some(Duration::from_millis(30)))
        .expect("timeout");
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 1500];
    let mut drain = |full: &mut usize, truncated: &mut usize| {
        while let Ok((len, _)) = socket.recv_from(&mut buf) {
            if len < 12 {
                continue;
            }
            if buf[2] & 0x02 != 0 {
                *truncated += 1;
            } else if buf[7] > 0 {
                *full += 1;
            }
        }
    };
    for burst in 0..count / 50 {
        for i in 0..50 {
            let q = query(burst * 50 + i, &n("web1.node"));
            socket.send_to(&q, to).expect("send");
        }
        drain(&mut full, &mut truncated);
    }
    drain(&mut full, &mut truncated);
    (full, truncated)
}

#[test]
fn rate_limiting_is_off_by_default_and_slows_a_flood_when_on() {
    // Off: every query of a burst is answered.
    let open = Directory::demo();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (full, truncated) = flood(&socket, open.dns, 400);
    assert_eq!((full, truncated), (400, 0), "no limit unless asked for");
    drop(open);

    // On, 20 answers a second per network, every second refused answer slipped.
    let d = Directory::with_zone(demo_zone, &["--rrl-rate", "20"]);
    let started = Instant::now();
    let (full, truncated) = flood(&socket, d.dns, 400);
    let allowed = 20.0 + 20.0 * started.elapsed().as_secs_f64() + 2.0;
    assert!(
        (full as f64) <= allowed,
        "{full} full answers in {:?} at 20/s",
        started.elapsed()
    );
    assert!(full >= 10, "the first second's answers go out ({full})");
    assert!(
        truncated >= 100,
        "refused answers slip as TC so real clients retry over TCP ({truncated})"
    );
    assert!(full + truncated < 400, "the rest are dropped");
    // A client on another network is not starved by the flood...
    let other = d.dig(&n("web1.node"), "A", &["-b", "127.0.1.1"]);
    assert_eq!(other.data("A"), vec!["10.0.1.11"]);
    // ...and the flooded network's real clients get their answer over TCP.
    assert_eq!(
        d.dig(&n("web1.node"), "A", &["+tcp"]).data("A"),
        vec!["10.0.1.11"]
    );
}
