//! Standard secondaries: real BIND 9, NSD and Knot transfer the directory's
//! zone with TSIG (AXFR, then IXFR on each NOTIFY), answer exactly as the
//! directory does, and a transfer without the key, or with a wrong one, is
//! refused (docs/high-availability.md).

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_tests::secondary::{Kind, Secondary, TsigKey};
use switchboard_tests::*;

const ZONE: &str = "cluster.example.";

/// `zone tsig add`: a new key, read back from the CLI's JSON.
fn tsig_add(d: &Directory, name: &str) -> TsigKey {
    let out = d.cli_ok(&["--json", "zone", "tsig", "add", "cluster.example", name]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("tsig add prints JSON");
    TsigKey {
        name: name.to_string(),
        secret: v["secret"].as_str().expect("a secret").to_string(),
    }
}

fn serial(d: &Directory) -> u32 {
    let dig = d.dig(ZONE, "SOA", &[]);
    dig.answer
        .iter()
        .find(|r| r.rtype == "SOA")
        .and_then(|r| r.data.split_whitespace().nth(2)?.parse().ok())
        .expect("the directory answers its SOA")
}

/// `dig AXFR` from the directory, signed with `key` (`-y`): (exit ok, output).
fn axfr(d: &Directory, key: &TsigKey, qtype: &str) -> String {
    let out = run(Command::new("dig")
        .arg(format!("@{}", d.dns.ip()))
        .args(["-p", &d.dns.port().to_string()])
        .args(["-y", &format!("hmac-sha256:{}:{}", key.name, key.secret)])
        .args(["+time=5", "+tries=1", ZONE, qtype]));
    stdout(&out)
}

/// Every (name, type) the directory serves, read from its own transfer.
fn served(d: &Directory, key: &TsigKey) -> Vec<(String, String)> {
    let text = axfr(d, key, "AXFR");
    let mut all: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] != "TSIG").then(|| (f[0].to_lowercase(), f[3].to_string()))
        })
        .collect();
    all.sort();
    all.dedup();
    assert!(
        all.len() > 100,
        "the demo zone's transfer holds every derived name: {text}"
    );
    all
}

/// An answer as a comparable line: status, then the sorted answer records.
fn answer_of(d: &Dig) -> String {
    let mut rrs: Vec<String> = d
        .answer
        .iter()
        .map(|r| format!("{} {} {} {}", r.name.to_lowercase(), r.ttl, r.rtype, r.data))
        .collect();
    rrs.sort();
    format!("{} {rrs:?}", d.status)
}

/// The (name, type) pairs where `s` answers otherwise than the directory.
fn differences(d: &Directory, s: &Secondary, names: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let extra = [
        ("nosuch.node.cluster.example.".to_string(), "A".to_string()),
        ("web1.node.cluster.example.".to_string(), "MX".to_string()),
    ];
    for (name, rtype) in names.iter().chain(&extra) {
        let ours = answer_of(&d.dig(name, rtype, &[]));
        let theirs = answer_of(&s.dig(name, rtype));
        if ours != theirs {
            out.push(format!(
                "{name} {rtype}: directory {ours}, {} {theirs}",
                s.kind.name()
            ));
        }
    }
    out
}

fn wait_serial(s: &Secondary, want: u32, within: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < within {
        if s.serial(ZONE) == Some(want) {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "{} did not reach serial {want} within {within:?} (it has {:?}); its log:\n{}",
        s.kind.name(),
        s.serial(ZONE),
        s.log()
    );
}

/// Whether a secondary's log says it took serial `serial` by an incremental
/// transfer. BIND (at debug 3) and Knot name the kind of transfer; NSD does
/// not at any verbosity, but logs each update's size: an IXFR of a change is a
/// small fraction of the zone its first transfer (an AXFR) brought.
fn took_ixfr(s: &Secondary, serial: u32) -> bool {
    let log = s.log();
    match s.kind {
        Kind::Bind => log.contains("requesting IXFR") && log.contains("Transfer completed"),
        Kind::Knot => log.contains("IXFR, incoming") && log.contains("finished"),
        Kind::Nsd => {
            let bytes = |l: &str| -> Option<u64> {
                l.split(" of ")
                    .last()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            let updates: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("received update to serial") && l.contains(" bytes in "))
                .collect();
            let first = updates.first().and_then(|l| bytes(l));
            let last = updates
                .iter()
                .rev()
                .find(|l| l.contains(&format!("serial {serial} ")))
                .and_then(|l| bytes(l));
            matches!((first, last), (Some(f), Some(l)) if l * 4 < f)
        }
    }
}

/// BIND, NSD and Knot as secondaries: listed with `zone secondary add`, then
/// started (each change of the list is a change of the zone; NSD 4.6, given
/// several back to back while it bootstraps, retries only at its refresh).
fn start_all(d: &Directory, key: &TsigKey) -> Vec<Secondary> {
    let mut all: Vec<Secondary> = [Kind::Bind, Kind::Nsd, Kind::Knot]
        .into_iter()
        .map(|k| Secondary::prepare(k, d.dir.path(), ZONE, d.dns, key))
        .collect();
    for s in &all {
        d.cli_ok(&[
            "zone",
            "secondary",
            "add",
            "cluster.example",
            &s.addr(),
            "--tsig",
            &key.name,
        ]);
    }
    for s in all.iter_mut() {
        s.restart();
    }
    all
}

#[test]
fn bind_nsd_and_knot_transfer_the_zone_answer_as_the_directory_does_and_take_each_change_by_ixfr() {
    let d = Directory::demo();
    let key = tsig_add(&d, "xfr-test");
    let secondaries = start_all(&d, &key);
    let listed = d.cli_ok(&["zone", "secondary", "list", "cluster.example"]);
    for s in &secondaries {
        assert!(listed.contains(&s.addr()), "listed: {listed}");
    }
    let now = serial(&d);
    for s in &secondaries {
        wait_serial(s, now, DEADLINE);
    }
    let names = served(&d, &key);
    for s in &secondaries {
        let diff = differences(&d, s, &names);
        assert!(
            diff.is_empty(),
            "{} answers otherwise:\n{}",
            s.kind.name(),
            diff.join("\n")
        );
    }

    // A change: NOTIFY, then IXFR, on every secondary within a second.
    let before = serial(&d);
    d.cli_ok(&["host", "disable", "web2"]);
    let after = serial(&d);
    assert!(after > before);
    for s in &secondaries {
        let took = wait_serial(s, after, Duration::from_secs(1));
        eprintln!("{} has serial {after} after {took:?}", s.kind.name());
    }
    let full: Vec<String> = secondaries
        .iter()
        .filter(|s| !took_ixfr(s, after))
        .map(|s| format!("{}:\n{}", s.kind.name(), s.log()))
        .collect();
    assert!(
        full.is_empty(),
        "no incremental transfer logged by {}",
        full.join("\n\n")
    );
    for s in &secondaries {
        let ours = answer_of(&d.dig("http.service.cluster.example.", "SRV", &[]));
        assert!(!ours.contains("web2"), "web2 left the service: {ours}");
        assert_eq!(
            answer_of(&s.dig("http.service.cluster.example.", "SRV")),
            ours
        );
    }
    // Two more, back to back: each secondary ends at the last, answering alike.
    d.cli_ok(&["host", "enable", "web2"]);
    d.cli_ok(&["repo", "promote", "phabricator", "repo2"]);
    let last = serial(&d);
    let names = served(&d, &key);
    for s in &secondaries {
        wait_serial(s, last, DEADLINE);
        let diff = differences(&d, s, &names);
        assert!(
            diff.is_empty(),
            "{} answers otherwise:\n{}",
            s.kind.name(),
            diff.join("\n")
        );
    }
}

/// Sends `query` over TCP and returns the first answer's RCODE.
fn tcp_rcode(d: &Directory, query: &[u8]) -> u8 {
    let mut s = std::net::TcpStream::connect(d.dns).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut frame = (query.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(query);
    s.write_all(&frame).expect("send");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("an answer");
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).expect("the answer");
    answer[3] & 0x0f
}

#[test]
fn a_transfer_without_the_key_is_refused_and_with_a_wrong_key_is_notauth() {
    let d = Directory::demo();
    // Before any key: nobody may transfer.
    assert_eq!(
        tcp_rcode(&d, &dns_query(7, ZONE, 252, false)),
        5,
        "AXFR: REFUSED"
    );
    let key = tsig_add(&d, "xfr-test");
    assert_eq!(
        tcp_rcode(&d, &dns_query(8, ZONE, 252, false)),
        5,
        "AXFR without TSIG: REFUSED"
    );
    assert_eq!(
        tcp_rcode(&d, &dns_query(9, ZONE, 251, false)),
        5,
        "IXFR without TSIG: REFUSED"
    );

    let good = axfr(&d, &key, "AXFR");
    assert!(
        good.contains("XFR size"),
        "the key transfers the zone: {good}"
    );
    // Names are case-insensitive, the zone's name in a transfer request too.
    let out = run(Command::new("dig")
        .arg(format!("@{}", d.dns.ip()))
        .args(["-p", &d.dns.port().to_string()])
        .args(["-y", &format!("hmac-sha256:{}:{}", key.name, key.secret)])
        .args(["+time=5", "+tries=1", "CLUSTER.Example.", "AXFR"]));
    assert!(stdout(&out).contains("XFR size"), "{}", stdout(&out));
    let wrong = TsigKey {
        name: key.name.clone(),
        secret: "c2VjcmV0IHRoYXQgaXMgbm90IHRoZSBvbmUsIG5vdCBhdCBhbGw=".into(),
    };
    let out = axfr(&d, &wrong, "AXFR");
    assert!(
        out.contains("BADSIG") && !out.contains("XFR size"),
        "wrong secret: {out}"
    );
    let unknown = TsigKey {
        name: "nobody-holds-this".into(),
        secret: key.secret.clone(),
    };
    let out = axfr(&d, &unknown, "AXFR");
    assert!(
        out.contains("BADKEY") && !out.contains("XFR size"),
        "unknown key: {out}"
    );
    // The NOTAUTH code itself, read off the wire by dig's +qr-less header line.
    let out = run(Command::new("dig")
        .arg(format!("@{}", d.dns.ip()))
        .args(["-p", &d.dns.port().to_string()])
        .args([
            "-y",
            &format!("hmac-sha256:{}:{}", wrong.name, wrong.secret),
        ])
        .args(["+tcp", "+time=5", "+tries=1", ZONE, "SOA"]));
    assert!(
        stdout(&out).contains("NOTAUTH"),
        "a signed query with a wrong key: {}",
        stdout(&out)
    );

    // Keys are listed by name only; the secret is never shown again.
    let listed = d.cli_ok(&["zone", "tsig", "list", "cluster.example"]);
    assert!(
        listed.contains("xfr-test") && !listed.contains(&key.secret),
        "{listed}"
    );
    let (_, v) = d.curl("GET", "/v1/tsig", &[], None);
    assert!(!v.to_string().contains(&key.secret), "{v}");
    let log = d.cli_ok(&["--json", "events"]);
    assert!(!log.contains(&key.secret), "the audit log holds no secret");
    // Removing a key a secondary uses is refused; without users it goes, and
    // transfers with it stop.
    d.cli_ok(&[
        "zone",
        "secondary",
        "add",
        "cluster.example",
        "127.0.0.1:9",
        "--tsig",
        "xfr-test",
    ]);
    let out = d.cli(&["zone", "tsig", "rm", "cluster.example", "xfr-test"]);
    assert!(
        !out.status.success() && stderr(&out).contains("127.0.0.1:9"),
        "{}",
        stderr(&out)
    );
    d.cli_ok(&["zone", "secondary", "rm", "cluster.example", "127.0.0.1:9"]);
    d.cli_ok(&["zone", "tsig", "rm", "cluster.example", "xfr-test"]);
    let out = axfr(&d, &key, "AXFR");
    assert!(
        out.contains("BADKEY") && !out.contains("XFR size"),
        "removed key: {out}"
    );
}

/// The minimal zone with two services of 1000 bindings each (their SRV sets
/// are as big as a response can hold) and `between` services of one binding
/// that come between them in the zone's order.
fn big_sets_zone(admin_pub: &str, between: usize) -> String {
    let mut z = minimal_zone(admin_pub);
    let host = |i: usize| format!("host-with-a-long-name-to-fill-{i:04}");
    for i in 0..1000 {
        let h = host(i);
        z += &format!(
            "{h}.node 60 IN A 10.0.{}.{}\n{h}.node 60 IN TXT \"roles=web\" \"available=1\"\n",
            i / 256,
            i % 256
        );
        for svc in ["big1", "big2"] {
            z += &format!("{h}._{svc}._tcp 5 IN SRV 0 0 8000 {h}.node\n");
        }
    }
    for i in 0..between {
        z += &format!(
            "{}._big1s{i:03}._tcp 5 IN SRV 0 0 8000 {}.node\n",
            host(i),
            host(i)
        );
    }
    z
}

#[test]
fn a_set_bigger_than_what_is_left_of_a_message_goes_on_in_the_next() {
    // Each big set ends a message; the small services after `big1` fill
    // about half the next one, and then comes `big2`'s set.
    let d = Directory::with_zone(|k| big_sets_zone(k, 160), &[]);
    let key = tsig_add(&d, "xfr-big");
    let text = axfr(&d, &key, "AXFR");
    assert!(
        text.contains("XFR size"),
        "the transfer completes: {}",
        &text[text.len().saturating_sub(500)..]
    );
    for svc in ["big1", "big2"] {
        let owner = format!("{svc}.service.{ZONE}");
        let mut sent: Vec<String> = text
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [o, _, _, "SRV", ref data @ ..] if o == owner => Some(data.join(" ")),
                _ => None,
            })
            .collect();
        sent.sort();
        let answered = d.dig(&owner, "SRV", &["+tcp"]).data("SRV");
        assert!(sent.len() > 500, "{owner}: {} records sent", sent.len());
        assert_eq!(
            sent, answered,
            "{owner} is transferred as the directory answers it"
        );
    }
}

#[test]
fn a_secondary_that_was_down_catches_up_and_keys_survive_a_restart() {
    let mut d = Directory::demo();
    let key = tsig_add(&d, "xfr-test");
    let mut secondaries = start_all(&d, &key);
    let now = serial(&d);
    for s in &secondaries {
        wait_serial(s, now, DEADLINE);
    }
    for s in secondaries.iter_mut() {
        s.wait_saved(ZONE);
        s.stop();
    }
    // Small changes, so that NSD's log tells an IXFR from an AXFR by size.
    d.cli_ok(&["bind", "rm", "repo3", "ssh"]);
    // The directory restarts too: keys, secondaries and the journal are in its store.
    d.stop();
    d.start();
    let listed = d.cli_ok(&["zone", "tsig", "list", "cluster.example"]);
    assert!(listed.contains("xfr-test"), "{listed}");
    d.cli_ok(&["bind", "add", "repo3", "ssh", "2222"]);
    let last = serial(&d);
    let names = served(&d, &key);
    for s in secondaries.iter_mut() {
        s.restart();
        wait_serial(s, last, DEADLINE);
        let diff = differences(&d, s, &names);
        assert!(
            diff.is_empty(),
            "{} answers otherwise:\n{}",
            s.kind.name(),
            diff.join("\n")
        );
        assert!(
            took_ixfr(s, last),
            "{} caught up by IXFR:\n{}",
            s.kind.name(),
            s.log()
        );
    }
}

#[test]
fn a_sidecar_finds_its_host_through_a_secondary_while_the_directory_is_down() {
    let mut d = Directory::demo();
    let key = tsig_add(&d, "xfr-test");
    let s = Secondary::start(Kind::Knot, d.dir.path(), ZONE, d.dns, &key);
    d.cli_ok(&[
        "zone",
        "secondary",
        "add",
        "cluster.example",
        &s.addr(),
        "--tsig",
        &key.name,
    ]);
    let (host_key, pubkey, _) = keygen(d.dir.path(), "web9");
    d.cli_ok(&[
        "host",
        "add",
        "web9",
        "--addr",
        "127.0.0.1",
        "--pubkey",
        &pubkey,
        "--roles",
        "web",
    ]);
    wait_serial(&s, serial(&d), DEADLINE);
    let dead = d.dns.to_string();
    d.kill9();
    // The directory first, as a sidecar lists it: it does not answer, the
    // secondary does, with the host the new key belongs to.
    let out = run(Command::new(bin("switchboard-sidecar"))
        .args(["whoami", "--json", "--zone", ZONE, "--key"])
        .arg(&host_key)
        .args(["--directory", &dead, "--directory", &s.addr()]));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["host"], "web9", "{v}");
}
