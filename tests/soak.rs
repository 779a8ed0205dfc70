//! A bounded soak: DNS queries and admin changes at the same time for several
//! minutes (loopback only; stops by itself). Ignored by default so the normal run
//! stays short:
//!
//!     cargo test --release -p switchboard-tests --test soak -- --ignored --nocapture
//!
//! `SWITCHBOARD_SOAK_SECS` sets the length (default 180). Checks: no error
//! answers, every change visible to the next query, and no growth in resident
//! memory after warm-up.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_tests::{demo_zone, dns_query, Directory};

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    dns_query(id, name, qtype, false)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "minutes long: run with --ignored"]
fn dns_and_changes_together_hold_for_minutes() {
    let secs: u64 = std::env::var("SWITCHBOARD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let d = Directory::with_zone(demo_zone, &[]);
    let pid = d.pid().expect("directory running");
    let stop = Arc::new(AtomicBool::new(false));
    let (asked, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));

    // Readers: a steady stream of A, SRV, TXT and NXDOMAIN questions.
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (stop, asked, bad, dns) = (stop.clone(), asked.clone(), bad.clone(), d.dns);
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let names: [(&str, u16, u8); 4] = [
                    ("web1.node.cluster.example", 1, 0),
                    ("http.service.cluster.example", 33, 0),
                    ("arcanist.repo.cluster.example", 16, 0),
                    ("nobody.node.cluster.example", 1, 3),
                ];
                let mut buf = [0u8; 1500];
                let mut id: u16 = r * 30000;
                while !stop.load(Ordering::Relaxed) {
                    for (name, qtype, rcode) in names {
                        id = id.wrapping_add(1);
                        s.send_to(&query(id, name, qtype), dns).expect("send");
                        asked.fetch_add(1, Ordering::Relaxed);
                        match s.recv_from(&mut buf) {
                            Ok((n, _))
                                if n >= 12
                                    && buf[0..2] == id.to_be_bytes()
                                    && buf[3] & 0x0f == rcode
                                    && (rcode != 0 || buf[7] > 0) => {}
                            _ => {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();

    // A writer: add a host, see it in DNS at once, take it away, see it gone.
    let cli = d.cli_command();
    let dig = {
        let dns = d.dns;
        move |name: &str| -> Option<u8> {
            let s = UdpSocket::bind("127.0.0.1:0").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.send_to(&query(7, name, 1), dns).ok()?;
            let mut buf = [0u8; 512];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            (n >= 12).then_some(buf[3] & 0x0f)
        }
    };
    let started = Instant::now();
    let warm_until = started + Duration::from_secs(secs / 5);
    let mut warm_rss = 0;
    let mut peak_after_warm = 0;
    let mut changes = 0u64;
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        i += 1;
        let host = format!("soak{}", i % 50);
        let name = format!("{host}.node.cluster.example");
        let add = cli(&[
            "host", "add", &host, "--addr", "10.6.0.1", "--roles", "build",
        ]);
        assert!(
            add.status.success(),
            "add {host} failed at change {changes}"
        );
        assert_eq!(
            dig(&name),
            Some(0),
            "{host} not answered right after its add"
        );
        let rm = cli(&["host", "rm", &host]);
        assert!(rm.status.success(), "rm {host} failed at change {changes}");
        assert_eq!(
            dig(&name),
            Some(3),
            "{host} still answered right after its removal"
        );
        changes += 2;
        let rss = rss_kb(pid);
        if Instant::now() < warm_until {
            warm_rss = warm_rss.max(rss);
        } else {
            peak_after_warm = peak_after_warm.max(rss);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    let (asked, bad) = (asked.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    println!(
        "soak: {secs} s, {asked} queries ({bad} wrong or unanswered), {changes} changes, RSS {warm_rss} kB after warm-up, peak {peak_after_warm} kB after"
    );
    assert_eq!(
        bad, 0,
        "{bad} of {asked} queries got a wrong answer or none"
    );
    assert!(changes > 0);
    assert!(
        peak_after_warm <= warm_rss + warm_rss / 10 + 2048,
        "resident memory grew after warm-up: {warm_rss} kB -> {peak_after_warm} kB"
    );
}
