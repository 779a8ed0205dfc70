//! Micro-benchmarks of the hot pieces (`cargo bench -p switchboard-directory`):
//! answering one UDP query from the view, patching the view after one change,
//! and signing and verifying one request (and 16 in one batch).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard_directory::model::{Health, Host};
use switchboard_directory::sign::{self, Policy, Signer};
use switchboard_directory::view::{self, Scope, View, ViewConfig};
use switchboard_directory::{dns, zonefile};

/// A zone of `hosts` hosts and `services` services with three bindings each.
fn zone_text(hosts: usize, services: usize) -> String {
    let key = switchboard_directory::keys::public(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let mut z = format!(
        "$ORIGIN bench.example.\n@ 3600 IN SOA ns1 hostmaster ( 1 3600 600 604800 30 )\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\nb._admin 60 IN TXT \"key={key}\"\n"
    );
    for h in 0..hosts {
        z.push_str(&format!(
            "h{h}.node 60 IN A 10.{}.{}.{}\nh{h}.node 60 IN TXT \"roles=web\" \"available=1\"\n",
            (h >> 16) & 255,
            (h >> 8) & 255,
            h & 255
        ));
    }
    for s in 0..services {
        for k in 0..3 {
            let h = (s * 3 + k) % hosts;
            z.push_str(&format!(
                "h{h}._s{s}._tcp 5 IN SRV 0 0 {} h{h}.node\n",
                8000 + k
            ));
        }
    }
    z
}

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

fn answering(c: &mut Criterion) {
    let zone =
        zonefile::parse(&zone_text(10_000, 1_000), "bench", Some("bench.example.")).expect("zone");
    let zv = view::build(&zone, ViewConfig::default()).expect("view");
    let view = View {
        zones: vec![std::sync::Arc::new(zv)],
    };
    let mut out = Vec::with_capacity(1500);
    for (what, name, t) in [
        ("A", "h4242.node.bench.example", 1u16),
        ("SRV", "s42.service.bench.example", 33),
        ("NXDOMAIN", "nope.node.bench.example", 1),
    ] {
        let q = query(7, name, t);
        assert!(
            dns::fast::answer(&view, &q, &mut out).is_some(),
            "{what} takes the fast path"
        );
        c.bench_function(&format!("answer one {what} query (10k hosts)"), |b| {
            b.iter(|| {
                dns::fast::answer(&view, black_box(&q), &mut out);
                black_box(out.len())
            })
        });
    }
}

fn patching(c: &mut Criterion) {
    let mut zone = zonefile::parse(&zone_text(100_000, 10_000), "bench", Some("bench.example."))
        .expect("zone");
    let cfg = ViewConfig::default();
    let zv = view::build(&zone, cfg).expect("view");
    let mut available = true;
    c.bench_function("patch the view after one host change (100k hosts)", |b| {
        b.iter(|| {
            let scope = Scope::host(&zone, "h4242");
            let gone = view::names_of(&zone, cfg, &scope).expect("names");
            available = !available;
            if let Some(h) = zone.hosts.get_mut("h4242") {
                let h: &mut Host = h;
                h.available = available;
                h.health = Health::Passing;
            }
            zone.serial += 1;
            black_box(view::patch(&zv, gone, &zone, &scope, cfg).expect("patch"))
        })
    });
}

/// `body` POSTed to `uri`, signed by `key`: the headers.
fn signed(key: &ed25519_dalek::SigningKey, uri: &http::Uri, body: &[u8]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    Signer {
        key,
        keyid: &sign::fingerprint(&key.verifying_key()),
    }
    .sign(&http::Method::POST, uri, &mut h, body, 1_800_000_000)
    .expect("sign");
    h
}

fn signing(c: &mut Criterion) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let keyid = sign::fingerprint(&key.verifying_key());
    let uri: http::Uri = "http://10.0.0.1:7443/api/diffusion.querycommits?x=1"
        .parse()
        .expect("uri");
    let body = b"repository=r1&limit=10";
    c.bench_function("sign one request", |b| {
        b.iter(|| {
            let mut h = http::HeaderMap::new();
            Signer {
                key: &key,
                keyid: &keyid,
            }
            .sign(&http::Method::POST, &uri, &mut h, body, 1_800_000_000)
            .expect("sign");
            black_box(h)
        })
    });
    let headers = signed(&key, &uri, body);
    let vk = key.verifying_key();
    c.bench_function("parse and verify one request", |b| {
        b.iter(|| {
            let p = sign::parse(black_box(&headers)).expect("parse");
            p.verify(
                &http::Method::POST,
                &uri,
                &headers,
                body,
                &vk,
                1_800_000_010,
                &Policy::default(),
            )
            .expect("verify");
        })
    });
}

/// What the sidecar's batch verifier does for 16 calls that arrive together.
fn batch_verifying(c: &mut Criterion) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let vk = key.verifying_key();
    let body = b"repository=r1&limit=10";
    let calls: Vec<(http::Uri, http::HeaderMap)> = (0..16)
        .map(|i| {
            let uri: http::Uri = format!("http://10.0.0.1:7443/api/diffusion.querycommits?x={i}")
                .parse()
                .expect("uri");
            let h = signed(&key, &uri, body);
            (uri, h)
        })
        .collect();
    c.bench_function("parse and verify 16 requests in one batch", |b| {
        b.iter(|| {
            let mut bases = Vec::with_capacity(16);
            let mut sigs = Vec::with_capacity(16);
            for (uri, h) in &calls {
                let p = sign::parse(black_box(h)).expect("parse");
                let base = p
                    .signed_base(
                        &http::Method::POST,
                        uri,
                        h,
                        true,
                        1_800_000_010,
                        &Policy::default(),
                    )
                    .expect("base");
                bases.push(base);
                sigs.push(*p.signature());
            }
            let messages: Vec<&[u8]> = bases.iter().map(|b| b.as_bytes()).collect();
            ed25519_dalek::verify_batch(&messages, &sigs, &[vk; 16]).expect("batch");
        })
    });
}

criterion_group!(hot, answering, patching, signing, batch_verifying);
criterion_main!(hot);
