//! DNS answers for every row of SPEC's derived table, checked with `dig`
//! against the demo cluster.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use switchboard_directory::model::PublicKey;
use switchboard_tests::{dns_query, Directory};

const Z: &str = "cluster.example.";

fn n(rel: &str) -> String {
    format!("{rel}.{Z}")
}

#[test]
fn node_names_answer_addresses_and_attributes() {
    let d = Directory::demo();
    let a = d.dig(&n("web2.node"), "A", &[]);
    assert_eq!(a.status, "NOERROR");
    assert!(a.has_flag("aa"), "authoritative: {:?}", a.flags);
    assert!(!a.has_flag("ra"), "no recursion offered: {:?}", a.flags);
    assert_eq!(a.data("A"), vec!["10.0.1.12"]);
    assert_eq!(a.answer[0].ttl, 60, "node TTL is 60 s");
    assert_eq!(
        d.dig(&n("web2.node"), "AAAA", &[]).data("AAAA"),
        vec!["fd00::12"]
    );
    let txt = d.dig(&n("web1.node"), "TXT", &[]).data("TXT");
    assert_eq!(txt.len(), 1);
    for want in [
        "\"roles=web\"",
        "\"available=1\"",
        "\"key=ed25519:",
        "\"rack=a1\"",
    ] {
        assert!(txt[0].contains(want), "{want} in {txt:?}");
    }
}

#[test]
fn service_names_answer_available_bindings_with_addresses_in_additional() {
    let d = Directory::demo();
    let srv = d.dig(&n("mysql.service"), "SRV", &[]);
    assert_eq!(
        srv.data("SRV"),
        vec![
            format!("0 0 3306 db1.node.{Z}"),
            format!("10 0 3306 db2.node.{Z}")
        ],
        "master priority 0, replica priority 10"
    );
    assert_eq!(srv.answer[0].ttl, 5, "service TTL is 5 s");
    let mut extra: Vec<String> = srv
        .additional
        .iter()
        .filter(|r| r.rtype == "A")
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        vec![
            format!("db1.node.{Z} 10.0.4.11"),
            format!("db2.node.{Z} 10.0.4.12")
        ]
    );
    assert_eq!(
        d.dig(&n("http.service"), "A", &[]).data("A"),
        vec!["10.0.1.11", "10.0.1.12"]
    );
    assert_eq!(
        d.dig(&n("http.service"), "AAAA", &[]).data("AAAA"),
        vec!["fd00::12"]
    );
}

#[test]
fn role_filters_narrow_service_answers() {
    let d = Directory::demo();
    let one = |role: &str| {
        d.dig(&n(&format!("{role}.mysql.service")), "SRV", &[])
            .data("SRV")
    };
    assert_eq!(one("master"), vec![format!("0 0 3306 db1.node.{Z}")]);
    assert_eq!(one("replica"), vec![format!("10 0 3306 db2.node.{Z}")]);
    assert_eq!(one("readonly"), vec![format!("10 0 3306 db2.node.{Z}")]);
    assert_eq!(one("readwrite"), vec![format!("0 0 3306 db1.node.{Z}")]);
    assert_eq!(
        d.dig(&n("master.mysql.service"), "A", &[]).data("A"),
        vec!["10.0.4.11"]
    );
    // No masters among http bindings: the name exists, with no records.
    let none = d.dig(&n("master.http.service"), "SRV", &[]);
    assert_eq!(none.status, "NOERROR");
    assert!(none.answer.is_empty());
}

#[test]
fn rfc2782_and_dns_sd_names() {
    let d = Directory::demo();
    assert_eq!(
        d.dig(&n("_mysql._tcp"), "SRV", &[]).data("SRV"),
        vec![
            format!("0 0 3306 db1.node.{Z}"),
            format!("10 0 3306 db2.node.{Z}")
        ]
    );
    assert_eq!(
        d.dig(&n("_mysql._tcp"), "PTR", &[]).data("PTR"),
        vec![
            format!("db1._mysql._tcp.{Z}"),
            format!("db2._mysql._tcp.{Z}")
        ],
        "DNS-SD browse lists every instance"
    );
    let inst = d.dig(&n("db2._mysql._tcp"), "SRV", &[]);
    assert_eq!(inst.data("SRV"), vec![format!("10 0 3306 db2.node.{Z}")]);
    assert!(inst.additional.iter().any(|r| r.data == "10.0.4.12"));
    assert_eq!(
        d.dig(&n("db2._mysql._tcp"), "TXT", &[]).data("TXT"),
        vec!["\"role=replica\" \"readonly=1\" \"available=1\""]
    );
    let types = d.dig(&n("_services._dns-sd._udp"), "PTR", &[]).data("PTR");
    let want: Vec<String> = ["conduit", "http", "jenkins", "mysql", "ssh", "switchboard"]
        .iter()
        .map(|s| format!("_{s}._tcp.{Z}"))
        .collect();
    assert_eq!(types, want);
}

#[test]
fn repository_names_answer_master_readers_and_versions() {
    let d = Directory::demo();
    let txt = d.dig(&n("phabricator.repo"), "TXT", &[]).data("TXT");
    assert_eq!(txt.len(), 1);
    for want in [
        "\"master=repo1\"",
        "\"replicas=repo2,repo3\"",
        "\"version=42\"",
        "\"max_lag=0\"",
        "\"readonly=0\"",
    ] {
        assert!(txt[0].contains(want), "{want} in {txt:?}");
    }
    assert_eq!(
        d.dig(&n("write.phabricator.repo"), "SRV", &[]).data("SRV"),
        vec![format!("0 0 7443 repo1.node.{Z}")]
    );
    assert_eq!(
        d.dig(&n("write.phabricator.repo"), "A", &[]).data("A"),
        vec!["10.0.3.11"]
    );
    // repo3 is at 41, one behind with max_lag 0: not a reader.
    assert_eq!(
        d.dig(&n("read.phabricator.repo"), "SRV", &[]).data("SRV"),
        vec![
            format!("0 0 7443 repo1.node.{Z}"),
            format!("0 0 7443 repo2.node.{Z}")
        ]
    );
    // libphutil allows a lag of 2: repo1 at 18 reads for master repo3 at 19.
    assert_eq!(
        d.dig(&n("read.libphutil.repo"), "A", &[]).data("A"),
        vec!["10.0.3.11", "10.0.3.13"]
    );
}

#[test]
fn key_fingerprints_point_at_their_host() {
    let d = Directory::demo();
    let txt = d.dig(&n("web1.node"), "TXT", &[]).data("TXT");
    let key: PublicKey = txt[0]
        .split('"')
        .find_map(|s| s.strip_prefix("key="))
        .expect("key in node TXT")
        .parse()
        .expect("a valid key");
    let fpr = key.fingerprint();
    assert_eq!(fpr.len(), 52);
    assert_eq!(
        d.dig(&n(&format!("{fpr}.key")), "PTR", &[]).data("PTR"),
        vec![format!("web1.node.{Z}")]
    );
    let ktxt = d.dig(&n(&format!("{fpr}.key")), "TXT", &[]).data("TXT");
    assert_eq!(
        ktxt,
        vec![format!("\"host=web1\" \"roles=web\" \"key={key}\"")]
    );
}

#[test]
fn apex_static_and_negative_answers() {
    let d = Directory::demo();
    let soa = d.dig(Z, "SOA", &[]);
    assert_eq!(soa.answer.len(), 1);
    assert!(soa.answer[0]
        .data
        .starts_with(&format!("ns1.{Z} hostmaster.{Z} 2026112501 ")));
    assert_eq!(d.dig(Z, "NS", &[]).data("NS"), vec![format!("ns1.{Z}")]);
    assert!(
        d.dig(Z, "NS", &[])
            .additional
            .iter()
            .any(|r| r.data == "127.0.0.1"),
        "glue for the in-zone NS"
    );
    // Static records are served verbatim.
    assert_eq!(
        d.dig(Z, "TXT", &[]).data("TXT"),
        vec!["\"switchboard demo cluster\""]
    );
    assert_eq!(
        d.dig(&n("www"), "CNAME", &[]).data("CNAME"),
        vec![format!("web1.node.{Z}")]
    );
    assert_eq!(d.dig(&n("ns1"), "A", &[]).data("A"), vec!["127.0.0.1"]);

    let nx = d.dig(&n("nosuchhost.node"), "A", &[]);
    assert_eq!(nx.status, "NXDOMAIN");
    assert!(nx.answer.is_empty());
    assert_eq!(nx.authority.len(), 1);
    assert_eq!(nx.authority[0].rtype, "SOA");
    assert_eq!(
        nx.authority[0].ttl, 30,
        "negative TTL is the SOA minimum (RFC 2308)"
    );

    let nodata = d.dig(&n("web1.node"), "MX", &[]);
    assert_eq!(nodata.status, "NOERROR");
    assert!(nodata.answer.is_empty());
    assert_eq!(nodata.authority[0].rtype, "SOA");

    // Empty non-terminals exist (RFC 8020): NODATA, not NXDOMAIN.
    for ent in ["node", "service", "_tcp", "repo", "key"] {
        assert_eq!(d.dig(&n(ent), "A", &[]).status, "NOERROR", "{ent}");
    }

    let outside = d.dig("example.org.", "A", &[]);
    assert_eq!(outside.status, "REFUSED");
    assert!(!outside.has_flag("aa"));
}

#[test]
fn large_answers_truncate_over_udp_and_complete_over_tcp() {
    let d = Directory::demo();
    // Seven switchboard bindings with their addresses make a response over 512
    // bytes; the seven SRV records fit, so only addresses are left out, and
    // that sets no TC (RFC 2181 §9: a client looks them up if it needs them).
    let udp = d.dig(&n("switchboard.service"), "SRV", &["+noedns", "+ignore"]);
    assert!(
        !udp.has_flag("tc"),
        "no TC for additional records: {}",
        udp.raw
    );
    assert_eq!(udp.data("SRV").len(), 7, "every SRV record: {}", udp.raw);
    assert!(udp.additional.len() < 8, "not every address: {}", udp.raw);
    let tcp = d.dig(&n("switchboard.service"), "SRV", &["+noedns", "+tcp"]);
    assert!(!tcp.has_flag("tc"));
    assert_eq!(tcp.data("SRV").len(), 7);
    assert_eq!(tcp.additional.len(), 8, "seven A and web2's AAAA");
    let edns = d.dig(&n("switchboard.service"), "SRV", &["+bufsize=1232"]);
    assert!(
        !edns.has_flag("tc"),
        "fits in the EDNS buffer: {}",
        edns.raw
    );
    assert_eq!(edns.data("SRV").len(), 7);
}

#[test]
fn garbage_packets_leave_the_server_answering() {
    let d = Directory::demo();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 11],
        vec![0xff; 12],
        vec![0x41; 600],
    ];
    // A header claiming questions that are not there, and a compression-pointer loop.
    junk.push(vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0]);
    junk.push(vec![
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01,
    ]);
    for _ in 0..200 {
        junk.push(
            (0..rand::random::<u8>())
                .map(|_| rand::random::<u8>())
                .collect(),
        );
    }
    for j in &junk {
        udp.send_to(j, d.dns).expect("send");
    }
    // A malformed query with an intact header gets FORMERR back.
    udp.send_to(&junk[5], d.dns).expect("send");
    let mut buf = [0u8; 512];
    let mut got_formerr = false;
    while let Ok((len, _)) = udp.recv_from(&mut buf) {
        if len >= 4 && buf[0] == 0x12 && buf[1] == 0x34 && (buf[3] & 0x0f) == 1 {
            got_formerr = true;
        }
    }
    assert!(
        got_formerr,
        "FORMERR for a query whose questions are missing"
    );
    for j in junk.iter().take(20) {
        if let Ok(mut s) = TcpStream::connect(d.dns) {
            let _ = s.write_all(&(j.len() as u16).to_be_bytes());
            let _ = s.write_all(j);
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let _ = s.read(&mut buf);
        }
    }
    // A TCP client that connects and says nothing does not block others.
    let _idle = TcpStream::connect(d.dns).expect("connect");
    assert_eq!(
        d.dig(&n("web1.node"), "A", &[]).data("A"),
        vec!["10.0.1.11"]
    );
    assert_eq!(
        d.dig(&n("web1.node"), "A", &["+tcp"]).data("A"),
        vec!["10.0.1.11"]
    );
}

#[test]
fn queries_are_case_insensitive_and_other_classes_refused() {
    let d = Directory::demo();
    assert_eq!(
        d.dig("WEB1.Node.Cluster.EXAMPLE.", "A", &[]).data("A"),
        vec!["10.0.1.11"]
    );
    assert_eq!(d.dig(&n("web1.node"), "A", &["-c", "CH"]).status, "REFUSED");
}

#[test]
fn a_burst_of_queries_from_many_senders_gets_every_answer_to_its_sender() {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    let d = Directory::demo();
    // Four senders, 64 queries each, all sent before any answer is read, so the
    // server takes them many to a system call.
    let senders: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let names = [
        ("web1.node", "10.0.1.11"),
        ("nosuch.node", ""),
        ("web1.node", "10.0.1.11"),
    ];
    for (s, sock) in senders.iter().enumerate() {
        for i in 0..64u16 {
            let (name, _) = names[i as usize % names.len()];
            let id = (s as u16) << 8 | i;
            sock.send_to(&dns_query(id, &n(name), 1, false), d.dns)
                .expect("send");
        }
    }
    for (s, sock) in senders.iter().enumerate() {
        // A deadline per answer, not a wait: each recv returns as soon as one arrives.
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = [0u8; 1500];
        while seen.len() < 64 {
            let (len, from) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("sender {s}: {} of 64 answers, then {e}", seen.len()));
            assert_eq!(from, d.dns);
            let m = Message::from_vec(&buf[..len]).expect("a DNS message");
            let id = m.metadata.id;
            assert_eq!(id >> 8, s as u16, "sender {s} got another sender's answer");
            let (_, want) = names[(id & 0xff) as usize % names.len()];
            let got: Vec<String> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect();
            if want.is_empty() {
                assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m:?}");
            } else {
                assert_eq!(got, vec![want.to_string()], "{m:?}");
            }
            assert!(seen.insert(id), "one answer per query: {id:#x} twice");
        }
    }
}

/// Sends `query` over UDP and returns the reply.
fn udp_exchange(d: &Directory, query: &[u8]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(switchboard_tests::DEADLINE))
        .expect("timeout");
    sock.send_to(query, d.dns).expect("send");
    let mut buf = [0u8; 65535];
    let (len, _) = sock.recv_from(&mut buf).expect("a UDP reply");
    buf[..len].to_vec()
}

/// Sends `query` over TCP (RFC 7766 framing) and returns the reply.
fn tcp_exchange(d: &Directory, query: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(d.dns).expect("connect");
    s.set_read_timeout(Some(switchboard_tests::DEADLINE))
        .expect("timeout");
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).expect("send");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("a TCP reply");
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut reply).expect("the whole TCP reply");
    reply
}

/// A query with opcode `opcode`, RD and CD set (`dig +opcode=N +rec +cd`).
fn query_with_opcode(id: u16, opcode: u8, edns: bool) -> Vec<u8> {
    let mut q = dns_query(id, &n("web1.node"), 1, edns);
    q[2] = (opcode << 3) | 0x01;
    q[3] = 0x10;
    q
}

/// (opcode, RD, CD, rcode) of a reply, after checking it is a reply to `id`.
fn reply_flags(reply: &[u8], id: u16) -> (u8, bool, bool, u8) {
    assert!(
        reply.len() >= 12,
        "a reply shorter than a header: {reply:?}"
    );
    assert_eq!(u16::from_be_bytes([reply[0], reply[1]]), id, "reply id");
    assert!(reply[2] & 0x80 != 0, "QR set");
    (
        (reply[2] >> 3) & 0x0f,
        reply[2] & 0x01 != 0,
        reply[3] & 0x10 != 0,
        reply[3] & 0x0f,
    )
}

#[test]
fn replies_to_other_opcodes_clear_rd_and_cd() {
    let d = Directory::demo();
    // dig itself: `dig +opcode=15 +rec +cd` gets NOTIMP with neither flag back.
    for transport in ["+notcp", "+tcp"] {
        let r = d.dig(
            &n("web1.node"),
            "A",
            &["+opcode=15", "+rec", "+cd", transport],
        );
        assert_eq!(r.status, "NOTIMP", "{transport}: {}", r.raw);
        assert!(
            !r.has_flag("rd") && !r.has_flag("cd"),
            "{transport}: RD and CD are QUERY's only: {:?}",
            r.flags
        );
    }
    // Every other opcode (IQUERY, STATUS, NOTIFY, UPDATE, DSO, unassigned ones),
    // with and without EDNS, over UDP and TCP.
    let mut id = 0x4000;
    for opcode in [1u8, 2, 3, 4, 5, 6, 7, 15] {
        for edns in [false, true] {
            for tcp in [false, true] {
                id += 1;
                let q = query_with_opcode(id, opcode, edns);
                let reply = if tcp {
                    tcp_exchange(&d, &q)
                } else {
                    udp_exchange(&d, &q)
                };
                let (op, rd, cd, rcode) = reply_flags(&reply, id);
                let what = format!("opcode {opcode} edns {edns} tcp {tcp}");
                assert_eq!(op, opcode, "{what}: the opcode is echoed");
                assert_eq!(rcode, 4, "{what}: NOTIMP");
                assert!(!rd && !cd, "{what}: RD {rd} CD {cd} in the reply");
            }
        }
    }
    // An EDNS version we do not speak on another opcode: whatever the rcode,
    // RD and CD stay clear.
    let mut q = query_with_opcode(0x5000, 4, true);
    let ttl_at = q.len() - 11 + 5;
    q[ttl_at + 1] = 1;
    let (_, rd, cd, _) = reply_flags(&udp_exchange(&d, &q), 0x5000);
    assert!(!rd && !cd, "EDNS version 1 NOTIFY: RD {rd} CD {cd}");
    // A burst, so the UDP workers take them many to a system call (mmsg).
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(switchboard_tests::DEADLINE))
        .expect("timeout");
    for i in 0..64u16 {
        let opcode = [4u8, 5, 15][usize::from(i) % 3];
        sock.send_to(&query_with_opcode(0x6000 + i, opcode, i % 2 == 0), d.dns)
            .expect("send");
    }
    let mut buf = [0u8; 1500];
    for _ in 0..64 {
        let (len, _) = sock.recv_from(&mut buf).expect("every reply of the burst");
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        let (_, rd, cd, rcode) = reply_flags(&buf[..len], id);
        assert_eq!(rcode, 4, "{id:#x}: NOTIMP");
        assert!(!rd && !cd, "{id:#x}: RD {rd} CD {cd} in the reply");
    }
    // QUERY still echoes both (RFC 1035 §4.1.1, RFC 4035 §3.1.6), on the fast
    // path (A) and the full path (ANY).
    for (qtype, tcp) in [(1u16, false), (1, true), (255, false)] {
        let mut q = dns_query(0x7000, &n("web1.node"), qtype, false);
        q[2] |= 0x01;
        q[3] |= 0x10;
        let reply = if tcp {
            tcp_exchange(&d, &q)
        } else {
            udp_exchange(&d, &q)
        };
        let (op, rd, cd, rcode) = reply_flags(&reply, 0x7000);
        assert_eq!(
            (op, rd, cd, rcode),
            (0, true, true, 0),
            "QUERY type {qtype}"
        );
    }
}

/// One record of a strictly parsed reply: owner (lowercase, dotted), type, RDATA.
#[derive(Debug)]
struct WireRr {
    name: String,
    rtype: u16,
    rdata: Vec<u8>,
}

/// A reply parsed strictly: every count matches the records present, every
/// name and RDLENGTH stays inside the message, every TXT RDATA is whole
/// character-strings, and nothing follows the last record.
#[derive(Debug)]
struct Strict {
    tc: bool,
    rcode: u8,
    answers: Vec<WireRr>,
    authority: Vec<WireRr>,
    additional: Vec<WireRr>,
}

fn strict_name(m: &[u8], mut pos: usize) -> (String, usize) {
    let mut labels = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *m
            .get(pos)
            .unwrap_or_else(|| panic!("name runs off the end at {pos}"));
        if len & 0xc0 == 0xc0 {
            let to = usize::from(u16::from_be_bytes([len, m[pos + 1]]) & 0x3fff);
            assert!(to < pos, "compression pointer forward at {pos}");
            end.get_or_insert(pos + 2);
            pos = to;
            continue;
        }
        assert!(len & 0xc0 == 0, "bad label type at {pos}");
        if len == 0 {
            return (
                labels.join(".").to_lowercase() + ".",
                end.unwrap_or(pos + 1),
            );
        }
        let label = m
            .get(pos + 1..pos + 1 + usize::from(len))
            .unwrap_or_else(|| panic!("label runs off the end at {pos}"));
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos += 1 + usize::from(len);
    }
    panic!("a name of more than 128 labels");
}

fn strict(m: &[u8]) -> Strict {
    assert!(m.len() >= 12, "shorter than a header");
    let count = |i: usize| usize::from(u16::from_be_bytes([m[i], m[i + 1]]));
    let mut pos = 12;
    for _ in 0..count(4) {
        pos = strict_name(m, pos).1 + 4;
    }
    let mut sections: [Vec<WireRr>; 3] = Default::default();
    for (s, at) in [6, 8, 10].into_iter().enumerate() {
        for i in 0..count(at) {
            let (name, p) = strict_name(m, pos);
            let head = m.get(p..p + 10).unwrap_or_else(|| {
                panic!("section {s} record {i} ({name}): header runs off the end")
            });
            let rtype = u16::from_be_bytes([head[0], head[1]]);
            let rdlen = usize::from(u16::from_be_bytes([head[8], head[9]]));
            let rdata = m.get(p + 10..p + 10 + rdlen).unwrap_or_else(|| {
                panic!(
                    "section {s} record {i} ({name} type {rtype}): RDLENGTH {rdlen} past the end ({} bytes)",
                    m.len()
                )
            });
            if rtype == 16 {
                assert!(rdlen > 0, "{name} TXT with RDLENGTH 0");
                let mut at = 0;
                while at < rdlen {
                    at += 1 + usize::from(rdata[at]);
                }
                assert_eq!(at, rdlen, "{name} TXT: a character-string cut short");
            }
            sections[s].push(WireRr {
                name,
                rtype,
                rdata: rdata.to_vec(),
            });
            pos = p + 10 + rdlen;
        }
    }
    assert_eq!(
        pos,
        m.len(),
        "{} bytes after the last record",
        m.len() - pos
    );
    let [answers, authority, additional] = sections;
    Strict {
        tc: m[2] & 0x02 != 0,
        rcode: m[3] & 0x0f,
        answers,
        authority,
        additional,
    }
}

/// A query offering an EDNS buffer of `size` bytes.
fn dns_query_bufsize(id: u16, name: &str, qtype: u16, size: u16) -> Vec<u8> {
    let mut q = dns_query(id, name, qtype, true);
    let at = q.len() - 11 + 3;
    q[at..at + 2].copy_from_slice(&size.to_be_bytes());
    q
}

#[test]
fn truncated_udp_answers_hold_whole_records_and_tcp_the_whole_answer() {
    // A host whose node TXT (about 1 KB of properties) fits neither 512 bytes
    // nor a 600-byte EDNS buffer, and a service of 16 bindings (SRV answers of
    // about 700 bytes, then 16 addresses).
    let props: Vec<String> = (0..10)
        .map(|i| format!("\"p{i}={}\"", "x".repeat(90)))
        .collect();
    let mut bindings = String::new();
    for i in 0..16 {
        bindings.push_str(&format!(
            "b{i}.node 60 IN A 10.0.8.{i}\nb{i}.node 60 IN TXT \"roles=web\"\nb{i}._wide._tcp 5 IN SRV 0 0 80 b{i}.node\n"
        ));
    }
    let d = Directory::with_zone(
        |k| {
            format!(
                "{}big.node 60 IN A 10.0.9.9\nbig.node 60 IN TXT \"roles=web\" \"available=1\" {}\n{bindings}",
                switchboard_tests::demo_zone(k),
                props.join(" ")
            )
        },
        &[],
    );
    let big = n("big.node");
    let wide = n("wide.service");
    for (name, qtype) in [(&big, 16u16), (&wide, 33)] {
        let full = strict(&tcp_exchange(&d, &dns_query(1, name, qtype, false)));
        assert!(!full.tc, "{name}: complete over TCP");
        assert_eq!(full.rcode, 0);
        let want = if qtype == 16 { 1 } else { 16 };
        assert_eq!(full.answers.len(), want, "{name}: every record over TCP");
        if qtype == 16 {
            assert_eq!(
                full.answers[0].rdata.len(),
                10 + 12 + 10 * 94,
                "the whole TXT"
            );
        }
        for (what, query, limit) in [
            ("no EDNS", dns_query(2, name, qtype, false), 512),
            ("EDNS 600", dns_query_bufsize(3, name, qtype, 600), 600),
        ] {
            let raw = udp_exchange(&d, &query);
            assert!(raw.len() <= limit, "{name} {what}: {} bytes", raw.len());
            let r = strict(&raw);
            assert!(r.tc, "{name} {what}: TC set");
            assert_eq!(r.rcode, 0, "{name} {what}");
            assert!(r.answers.len() < want, "{name} {what}: not all of it");
            assert!(
                r.answers
                    .iter()
                    .all(|a| a.name == *name && a.rtype == qtype),
                "{name} {what}: {:?}",
                r.answers
            );
            assert!(r.authority.is_empty(), "{name} {what}: {:?}", r.authority);
            let opts = r.additional.iter().filter(|a| a.rtype == 41).count();
            assert_eq!(opts, usize::from(what != "no EDNS"), "{name} {what}: OPT");
        }
        // With room for it, the whole answer over UDP.
        let r = strict(&udp_exchange(&d, &dns_query_bufsize(4, name, qtype, 1232)));
        assert!(!r.tc, "{name}: fits in 1232 bytes");
        assert_eq!(r.answers.len(), want);
    }
    // Room for every answer but not every address: no TC for what the
    // additional section left out (RFC 2181 §9), and the OPT record stays.
    let raw = udp_exchange(&d, &dns_query_bufsize(5, &wide, 33, 800));
    assert!(raw.len() <= 800, "{} bytes", raw.len());
    let r = strict(&raw);
    assert!(!r.tc, "TC for a short additional section");
    assert_eq!(r.answers.len(), 16);
    assert!(r.additional.len() < 17, "{:?}", r.additional);
    assert_eq!(r.additional.last().map(|a| a.rtype), Some(41), "OPT last");
}

#[test]
fn cname_answers_carry_the_targets_records_from_the_zone() {
    let extra = "alias IN CNAME www\n\
                 loop1 IN CNAME loop2\n\
                 loop2 IN CNAME loop1\n\
                 away IN CNAME example.org.\n\
                 sql IN CNAME mysql.service\n\
                 soon IN CNAME later.node\n";
    let d = Directory::with_zone(
        |k| format!("{}{extra}", switchboard_tests::demo_zone(k)),
        &[],
    );
    let rows = |r: &switchboard_tests::Dig| -> Vec<String> {
        r.answer
            .iter()
            .map(|a| format!("{} {} {}", a.name, a.rtype, a.data))
            .collect()
    };
    let www = format!("{} CNAME web1.node.{Z}", n("www"));
    // The same answers on the UDP fast path, without EDNS, and over TCP.
    for flags in [&[][..], &["+noedns"], &["+tcp"]] {
        let ask = |name: &str, t: &str| {
            let r = d.dig(&n(name), t, flags);
            assert_eq!(r.status, "NOERROR", "{name} {t} {flags:?}: {}", r.raw);
            assert!(r.has_flag("aa"), "{name} {t} {flags:?}: {:?}", r.flags);
            r
        };
        // RFC 1034 §4.3.2: the CNAME, then the target's records.
        assert_eq!(
            rows(&ask("www", "A")),
            vec![www.clone(), format!("web1.node.{Z} A 10.0.1.11")],
            "{flags:?}"
        );
        let txt = rows(&ask("www", "TXT"));
        assert_eq!(txt.len(), 2, "{txt:?}");
        assert_eq!(txt[0], www);
        assert!(txt[1].starts_with(&format!("web1.node.{Z} TXT \"roles=web\"")));
        // A chain within the zone, followed to its end.
        assert_eq!(
            rows(&ask("alias", "A")),
            vec![
                format!("{} CNAME www.{Z}", n("alias")),
                www.clone(),
                format!("web1.node.{Z} A 10.0.1.11"),
            ],
            "{flags:?}"
        );
        // The target has no such type: the chain alone.
        assert_eq!(rows(&ask("www", "AAAA")), vec![www.clone()]);
        assert_eq!(
            rows(&ask("alias", "AAAA")),
            vec![format!("{} CNAME www.{Z}", n("alias")), www.clone()]
        );
        // Asked for the CNAME itself: the CNAME only.
        assert_eq!(rows(&ask("www", "CNAME")), vec![www.clone()]);
        assert_eq!(
            rows(&ask("alias", "CNAME")),
            vec![format!("{} CNAME www.{Z}", n("alias"))]
        );
        // A target outside our zones: the CNAME alone.
        assert_eq!(
            rows(&ask("away", "A")),
            vec![format!("{} CNAME example.org.", n("away"))]
        );
        // A loop ends: each CNAME once, no more.
        assert_eq!(
            rows(&ask("loop1", "A")),
            vec![
                format!("{} CNAME loop2.{Z}", n("loop1")),
                format!("{} CNAME loop1.{Z}", n("loop2")),
            ]
        );
        // A derived target: SRV records, their addresses in the additional section.
        let srv = ask("sql", "SRV");
        assert_eq!(
            rows(&srv),
            vec![
                format!("{} CNAME mysql.service.{Z}", n("sql")),
                format!("mysql.service.{Z} SRV 0 0 3306 db1.node.{Z}"),
                format!("mysql.service.{Z} SRV 10 0 3306 db2.node.{Z}"),
            ]
        );
        assert!(
            srv.additional.iter().any(|r| r.data == "10.0.4.12"),
            "{}",
            srv.raw
        );
        // A target that does not exist yet.
        assert_eq!(
            rows(&ask("soon", "A")),
            vec![format!("{} CNAME later.node.{Z}", n("soon"))]
        );
    }
    // ANY at an alias is its CNAME, and the zone's records are not repeated
    // under it in a flat export.
    assert_eq!(rows(&d.dig(&n("www"), "ANY", &["+tcp"])), vec![www.clone()]);
    let flat = d.cli_ok(&["zone", "export", "cluster.example", "--flat"]);
    let a_lines = flat
        .lines()
        .filter(|l| l.starts_with(&format!("web1.node.{Z}\t")) && l.contains("\tA\t"))
        .count();
    assert_eq!(a_lines, 1, "{flat}");
    // The answers follow the model: a binding removed, a host added.
    d.cli_ok(&["bind", "rm", "db2", "mysql"]);
    let (_, later_pub, _) = switchboard_tests::keygen(d.dir.path(), "later");
    d.cli_ok(&[
        "host", "add", "later", "--addr", "10.0.7.1", "--pubkey", &later_pub, "--roles", "web",
    ]);
    for flags in [&[][..], &["+tcp"]] {
        assert_eq!(
            rows(&d.dig(&n("sql"), "SRV", flags)),
            vec![
                format!("{} CNAME mysql.service.{Z}", n("sql")),
                format!("mysql.service.{Z} SRV 0 0 3306 db1.node.{Z}"),
            ],
            "{flags:?}"
        );
        assert_eq!(
            rows(&d.dig(&n("soon"), "A", flags)),
            vec![
                format!("{} CNAME later.node.{Z}", n("soon")),
                format!("later.node.{Z} A 10.0.7.1"),
            ],
            "{flags:?}"
        );
    }
}
