//! The bodies of the fuzz targets (`fuzz/`, run with `cargo fuzz`), kept here so
//! that `tests/fuzz_corpus.rs` replays every saved input on stable Rust in the
//! normal test run. Each takes arbitrary bytes, must not panic, and checks
//! something that would catch a wrong answer, not only a crash.

use std::sync::{Arc, OnceLock};

use switchboard_directory::dns::DnsHandler;
use switchboard_directory::model::{
    AdminKey, Binding, Database, DbPosition, Health, Host, Op, Repo, Zone,
};
use switchboard_directory::state::{ApplyError, Directory};
use switchboard_directory::store::memory::MemoryStore;
use switchboard_directory::view::{self, View, ViewConfig};
use switchboard_directory::{dns, sign, zonefile};

const ORIGIN: &str = "cluster.example.";

fn demo_zone() -> Zone {
    let text = include_str!("../../zones/cluster.example.zone");
    zonefile::parse(text, "demo", Some(ORIGIN)).expect("the demo zone parses")
}

struct Dns {
    view: Arc<arc_swap::ArcSwap<View>>,
    handler: DnsHandler,
    runtime: tokio::runtime::Runtime,
}

fn dns_fixture() -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    DNS.get_or_init(|| {
        let zv = view::build(&demo_zone(), ViewConfig::default()).expect("view");
        let view = Arc::new(arc_swap::ArcSwap::from_pointee(View {
            zones: vec![Arc::new(zv)],
        }));
        Dns {
            handler: DnsHandler::new(view.clone()),
            view,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    })
}

/// A query in, through the UDP fast path and the full path: whatever either
/// sends back must be a well-formed DNS response to that query.
pub fn dns(data: &[u8]) {
    let f = dns_fixture();
    let mut out = Vec::new();
    if dns::fast::answer(&f.view.load(), data, &mut out).is_some() {
        let m = hickory_proto::op::Message::from_vec(&out)
            .unwrap_or_else(|e| panic!("fast path sent an unreadable response: {e}"));
        assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]));
        assert_eq!(m.queries.len(), 1, "the question is echoed");
        assert!(out.len() <= 1232, "a UDP answer fits the EDNS limit");
    }
    let src = ([127, 0, 0, 1], 5300).into();
    let answer = f.runtime.block_on(switchboard_directory::dns::respond(
        &f.handler,
        data.to_vec(),
        src,
        hickory_server::net::xfer::Protocol::Udp,
    ));
    if let Some(bytes) = answer {
        assert!(bytes.len() >= 12, "a response has a header");
        assert_eq!(
            &bytes[0..2],
            &data[0..2],
            "the response carries the query id"
        );
        assert!(bytes[2] & 0x80 != 0, "QR is set");
    }
}

/// Zone-file text in: either a refusal naming the file, or a zone whose export
/// reads back as the same zone.
pub fn zonefile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = zonefile::parse(text, "fuzz.zone", Some(ORIGIN));
    // The plain reader (one record per line, most files) and hickory's parser (all
    // of them) read a file alike: both refuse it, or both give the same zone.
    match (
        &parsed,
        zonefile::parse_with_hickory(text, "fuzz.zone", Some(ORIGIN)),
    ) {
        (Ok(a), Ok(b)) => assert_eq!(a, &b, "the plain reader and hickory's disagree"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("the plain reader and hickory's disagree:\n{a:?}\n{b:?}"),
    }
    match parsed {
        Err(e) => assert!(e.to_string().starts_with("fuzz.zone"), "{e}"),
        Ok(zone) => {
            let cfg = ViewConfig::default();
            if view::build(&zone, cfg).is_err() {
                return;
            }
            let exported = zonefile::export(&zone, cfg.node_ttl, cfg.service_ttl);
            let again = zonefile::parse(&exported, "export", Some(ORIGIN))
                .unwrap_or_else(|e| panic!("an export does not read back: {e}\n{exported}"));
            assert_eq!(again, zone, "export and import round-trip\n{exported}");
        }
    }
}

/// Request headers and a body in (`Name: value` lines, a blank line, the
/// body): parsing and verifying them against a fixed key never panics, and a
/// signature made by another key never verifies.
/// Where the strict scanner reads signature headers, the general RFC 8941
/// parser reads them the same: the same parts, or the same refusal.
fn scanner_agrees(headers: &http::HeaderMap) {
    let Some(fast) = sign::parse_canonical(headers) else {
        return;
    };
    match (fast, sign::parse_general(headers)) {
        (Ok(a), Ok(b)) => assert_eq!(
            a.reading(),
            b.reading(),
            "the scanner and the general parser read different signatures"
        ),
        (Err(a), Err(b)) => assert_eq!(a.reason(), b.reason(), "{a} / {b}"),
        (a, b) => panic!("the scanner and the general parser disagree: {a:?} / {b:?}"),
    }
}

pub fn signature(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = http::HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    scanner_agrees(&headers);
    let Ok(parsed) = sign::parse(&headers) else {
        return;
    };
    let _ = (
        parsed.keyid(),
        parsed.nonce(),
        parsed.expires(),
        parsed.label(),
    );
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    let uri: http::Uri = "http://repo1.cluster.example:7000/api/diffusion.querycommits"
        .parse()
        .expect("uri");
    let verdict = parsed.verify(
        &http::Method::POST,
        &uri,
        &headers,
        body,
        &stranger,
        1_700_000_000,
        &sign::Policy::default(),
    );
    assert!(
        verdict.is_err(),
        "a signature by another key verified against the stranger's"
    );
}

/// Headers as [`signature`] reads them, from `data`.
fn header_lines(head: &[u8]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    headers
}

/// A session-signed call in (as [`signature`]): parsing and checking it under
/// a fixed session key never panics, and a tag made under another key (the
/// seed's) never verifies.
pub fn session_signature(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let headers = header_lines(head);
    scanner_agrees(&headers);
    let Ok(parsed) = sign::parse(&headers) else {
        return;
    };
    let uri: http::Uri = "http://repo1.cluster.example:7000/api/diffusion.querycommits"
        .parse()
        .expect("uri");
    let verdict = parsed
        .verify_hmac_headers(
            &http::Method::POST,
            &uri,
            &headers,
            !body.is_empty(),
            &[9; 32],
            1_700_000_000,
            &sign::Policy::default(),
        )
        .and_then(|()| parsed.check_body(&headers, &sign::BodyHash::of(body)));
    assert!(
        verdict.is_err(),
        "a tag made under another key verified under the fixed one"
    );
}

/// A handshake message in: read as a caller's hello and as an answer, never a
/// panic. A hello that is read gets an answer whose signature verifies over
/// the transcript with the answering key; an answer is never accepted from a
/// host whose key did not sign it.
pub fn session_handshake(data: &[u8]) {
    use switchboard_proto::session;
    let me = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let me_fpr = sign::fingerprint(&me.verifying_key());
    if let Ok((share, _)) = session::parse_hello(data) {
        if let Ok((accept, s)) = session::respond(data, "caller", &me, &me_fpr, 1_700_000_000) {
            let body = serde_json::to_vec(&accept).expect("json");
            let (theirs, sig, back) = session::parse_accept(&body).expect("our answer parses");
            assert_eq!(
                (back.session.as_str(), back.expires),
                (s.id.as_str(), s.expires)
            );
            let t = session::transcript(&share, &theirs, "caller", &me_fpr, &s.id, s.expires);
            me.verifying_key()
                .verify_strict(&t, &sig)
                .expect("our answer's signature verifies");
        }
    }
    let _ = session::parse_accept(data);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    let got = session::Initiator::new().finish(data, &me_fpr, "b", &stranger, 1_700_000_000);
    assert!(
        got.is_err(),
        "an answer not signed by the host called was accepted"
    );
}

/// An `SSH_ORIGINAL_COMMAND` in: refused, or a command naming a repository
/// the model would accept (so nothing reaches a path outside the repos root).
pub fn ssh_command(data: &[u8]) {
    let Ok(cmd) = std::str::from_utf8(data) else {
        return;
    };
    match switchboard_sidecar::ssh::SshCommand::parse(cmd) {
        Ok(switchboard_sidecar::ssh::SshCommand::Git { repo, .. }) => {
            switchboard_directory::model::validate_label("repository", &repo)
                .unwrap_or_else(|e| panic!("parsed {cmd:?} to a bad repository {repo:?}: {e}"));
            assert!(!repo.contains('/') && !repo.contains(".."));
        }
        Ok(switchboard_sidecar::ssh::SshCommand::Conduit { method }) => {
            assert!(method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[derive(serde::Deserialize)]
struct NameBody {
    name: String,
}

#[derive(serde::Deserialize)]
struct AvailableBody {
    host: String,
    available: bool,
}

#[derive(serde::Deserialize)]
struct HealthBody {
    host: String,
    health: Health,
}

#[derive(serde::Deserialize)]
struct BindingKey {
    host: String,
    service: String,
}

#[derive(serde::Deserialize)]
struct PromoteBody {
    repo: String,
    host: String,
    force: bool,
}

#[derive(serde::Deserialize)]
struct DbPromoteBody {
    db: String,
    host: String,
    force: bool,
}

#[derive(serde::Deserialize)]
struct FreezeBody {
    db: String,
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct PositionBody {
    db: String,
    host: String,
    position: DbPosition,
}

#[derive(serde::Deserialize)]
struct VersionBody {
    repo: String,
    host: String,
    version: u64,
}

/// One admin change per line: a digit choosing the route, then its JSON body,
/// as the admin API would receive it. Each change is refused whole or applied;
/// after each applied one the patched view answers exactly as a view rebuilt
/// from the model, and the model survives export and import.
pub fn admin_ops(data: &[u8]) {
    let dir = Directory::open(Box::<MemoryStore>::default(), ViewConfig::default()).expect("open");
    dir.seed(demo_zone()).expect("seed");
    let mut applied = false;
    for line in data.split(|b| *b == b'\n').take(32) {
        let Some((&kind, body)) = line.split_first() else {
            continue;
        };
        let op = match kind {
            b'0' => serde_json::from_slice::<Host>(body).ok().map(Op::AddHost),
            b'1' => serde_json::from_slice::<Binding>(body)
                .ok()
                .map(Op::AddBinding),
            b'2' => serde_json::from_slice::<Repo>(body).ok().map(Op::AddRepo),
            b'3' => serde_json::from_slice::<AdminKey>(body)
                .ok()
                .map(Op::AddAdmin),
            b'4' => serde_json::from_slice::<NameBody>(body)
                .ok()
                .map(|b| Op::RemoveHost(b.name)),
            b'5' => serde_json::from_slice::<AvailableBody>(body)
                .ok()
                .map(|b| Op::SetAvailable {
                    host: b.host,
                    available: b.available,
                }),
            b'6' => serde_json::from_slice::<HealthBody>(body)
                .ok()
                .map(|b| Op::SetHealth {
                    host: b.host,
                    health: b.health,
                }),
            b'7' => serde_json::from_slice::<BindingKey>(body)
                .ok()
                .map(|b| Op::RemoveBinding {
                    host: b.host,
                    service: b.service,
                }),
            b'8' => serde_json::from_slice::<PromoteBody>(body)
                .ok()
                .map(|b| Op::Promote {
                    repo: b.repo,
                    host: b.host,
                    force: b.force,
                }),
            b'9' => serde_json::from_slice::<VersionBody>(body)
                .ok()
                .map(|b| Op::SetVersion {
                    repo: b.repo,
                    host: b.host,
                    version: b.version,
                    lease: None,
                }),
            b'r' => serde_json::from_slice::<NameBody>(body)
                .ok()
                .map(|b| Op::RemoveRepo(b.name)),
            b'd' => serde_json::from_slice::<Database>(body).ok().map(Op::AddDb),
            b'e' => serde_json::from_slice::<DbPromoteBody>(body)
                .ok()
                .map(|b| Op::PromoteDb {
                    db: b.db,
                    host: b.host,
                    force: b.force,
                }),
            b'f' => serde_json::from_slice::<FreezeBody>(body)
                .ok()
                .map(|b| Op::FreezeDb {
                    db: b.db,
                    message: b.message,
                }),
            b'g' => serde_json::from_slice::<PositionBody>(body)
                .ok()
                .map(|b| Op::SetDbPosition {
                    db: b.db,
                    host: b.host,
                    position: b.position,
                }),
            b'h' => serde_json::from_slice::<NameBody>(body)
                .ok()
                .map(|b| Op::RemoveDb(b.name)),
            _ => None,
        };
        let Some(op) = op else {
            continue;
        };
        let before = dir.read(ORIGIN, Clone::clone).expect("zone");
        match dir.apply(ORIGIN, op) {
            Ok(_) => applied = true,
            Err(ApplyError::Store(e)) => panic!("the memory store failed: {e}"),
            Err(_) => {
                let after = dir.read(ORIGIN, Clone::clone).expect("zone");
                assert_eq!(before, after, "a refused change left a trace");
            }
        }
    }
    if !applied {
        return;
    }
    let zone = dir.read(ORIGIN, Clone::clone).expect("zone");
    let current = dir.view().load_full();
    let patched = current
        .zones
        .iter()
        .find(|z| z.origin.to_string() == ORIGIN)
        .expect("zone view");
    let cfg = ViewConfig::default();
    let rebuilt = view::build(&zone, cfg).expect("rebuild");
    assert_eq!(
        patched.canonical(),
        rebuilt.canonical(),
        "the patched view differs from a rebuilt one"
    );
    let exported = zonefile::export(&zone, cfg.node_ttl, cfg.service_ttl);
    let again = zonefile::parse(&exported, "export", Some(ORIGIN))
        .unwrap_or_else(|e| panic!("an export does not read back: {e}\n{exported}"));
    // Databases' reported positions are not configuration: no zone file holds them.
    let mut zone = zone;
    for d in zone.dbs.values_mut() {
        d.positions.clear();
    }
    assert_eq!(again, zone, "export and import round-trip\n{exported}");
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, for the corpus replay.
pub const TARGETS: [(&str, Target); 8] = [
    ("dns", dns),
    ("zonefile", zonefile),
    ("signature", signature),
    ("session_handshake", session_handshake),
    ("session_signature", session_signature),
    ("ssh_command", ssh_command),
    ("admin_ops", admin_ops),
    ("tsig", tsig),
];

/// A message in, read for its TSIG record (RFC 8945) as a signed query is:
/// never a panic; a signature checked against a key that did not make it is
/// never good; and a readable message we sign verifies, and reads back as
/// itself once the signature is taken off.
pub fn tsig(data: &[u8]) {
    use switchboard_directory::tsig as t;
    let key = t::Key::new("xfr-fuzz", vec![9; 32]).expect("key");
    let now = 1_700_000_000;
    match t::split(data) {
        Err(_) => {}
        Ok(Some((stripped, found))) => {
            assert!(
                !matches!(
                    t::verify(&stripped, found, std::slice::from_ref(&key), now),
                    t::Checked::Good { .. }
                ),
                "a TSIG the fuzzer made cannot carry our key's MAC"
            );
        }
        // (A message whose ARCOUNT is full cannot count one more record.)
        Ok(None) if data.len() >= 12 && data[10..12] != [0xff, 0xff] => {
            let mut m = data.to_vec();
            let mac = t::sign(&mut m, &key, None, false, now, 0, &[]);
            let (stripped, found) = t::split(&m)
                .expect("a message we signed reads")
                .expect("and carries its TSIG");
            assert_eq!(stripped, data, "taking the TSIG off gives the message back");
            assert_eq!(found.mac, mac);
            assert!(matches!(
                t::verify(&stripped, found, &[key], now),
                t::Checked::Good { .. }
            ));
        }
        Ok(None) => {}
    }
}

/// Starting inputs for each target: well-formed cases the fuzzer mutates from.
/// `tests/fuzz_corpus.rs` replays them too, and writes them to
/// `fuzz/corpus/TARGET/` when `SWITCHBOARD_WRITE_SEEDS=1`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let q = crate::dns_query;
    let mut out = vec![
        ("dns", q(1, "web1.node.cluster.example", 1, false)),
        ("dns", q(2, "http.service.cluster.example", 33, true)),
        ("dns", q(3, "arcanist.repo.cluster.example", 16, true)),
        ("dns", q(4, "nope.node.cluster.example", 1, false)),
        ("dns", q(5, "cluster.example", 255, true)),
        (
            "dns",
            vec![
                0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0x00, 0x01, 0x00,
                0x01,
            ],
        ),
        (
            "zonefile",
            include_bytes!("../../zones/cluster.example.zone").to_vec(),
        ),
        (
            "zonefile",
            b"$TTL 60\n@ IN SOA ns1 hostmaster 1 3600 600 604800 30\n@ IN NS ns1\nns1 IN A 127.0.0.1\nh1.node IN A 10.0.0.1\nh1.node IN TXT \"roles=web\"\n"
                .to_vec(),
        ),
        ("ssh_command", b"git-upload-pack 'arcanist'".to_vec()),
        ("ssh_command", b"git-receive-pack '/source/arcanist.git'".to_vec()),
        ("ssh_command", b"conduit diffusion.querycommits".to_vec()),
        (
            "admin_ops",
            br#"0{"name":"web9","addrs":["10.0.1.19"],"roles":["web"]}
1{"host":"web9","service":"http","port":80}
1{"host":"web9","service":"api","port":81,"check":{"probe":{"kind":"http","path":"/healthz","status":200},"interval":5,"failures":2}}
1{"host":"web9","service":"tcp","port":82,"check":{"probe":{"kind":"tcp"}}}
5{"host":"web1","available":false}
6{"host":"db2","health":"critical"}
8{"repo":"arcanist","host":"repo3","force":false}
7{"host":"web9","service":"http"}
4{"name":"web9"}"#
                .to_vec(),
        ),
    ];
    // A request signed as the sidecar signs it.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let uri: http::Uri = "http://repo1.cluster.example:7000/api/diffusion.querycommits"
        .parse()
        .expect("uri");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let body = b"repository=arcanist";
    let signed = sign::Signer {
        key: &key,
        keyid: "fuzz",
    }
    .sign(&http::Method::POST, &uri, &mut headers, body, 1_700_000_000);
    if signed.is_ok() {
        let mut text = Vec::new();
        for (name, value) in &headers {
            text.extend_from_slice(name.as_str().as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(value.as_bytes());
            text.push(b'\n');
        }
        text.push(b'\n');
        text.extend_from_slice(body);
        out.push(("signature", text));
    }
    out.push(("tsig", q(6, "cluster.example", 252, false)));
    out.push(("tsig", q(7, "web1.node.cluster.example", 6, true)));
    // Databases: add, positions, refused and forced promotion, freeze, thaw.
    out.push((
        "admin_ops",
        include_bytes!("../../fuzz/corpus/admin_ops/seed-15").to_vec(),
    ));
    // A handshake hello and an answer, and a call signed under a session key.
    let init = switchboard_proto::session::Initiator::new();
    let hello = serde_json::to_vec(&init.hello()).expect("json");
    let me = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    if let Ok((accept, _)) =
        switchboard_proto::session::respond(&hello, "caller", &me, "me", 1_700_000_000)
    {
        out.push((
            "session_handshake",
            serde_json::to_vec(&accept).expect("json"),
        ));
    }
    out.push(("session_handshake", hello));
    let mut headers = http::HeaderMap::new();
    let signed = sign::HmacSigner {
        key: &[7; 32],
        keyid: "session-1",
    }
    .sign_hashed(
        &http::Method::POST,
        &uri,
        &mut headers,
        &sign::BodyHash::of(body),
        1_700_000_000,
    );
    if signed.is_ok() {
        let mut text = Vec::new();
        for (name, value) in &headers {
            text.extend_from_slice(name.as_str().as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(value.as_bytes());
            text.push(b'\n');
        }
        text.push(b'\n');
        text.extend_from_slice(body);
        out.push(("session_signature", text));
    }
    out
}
