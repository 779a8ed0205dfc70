//! Health checks the directory runs on bindings (`bind add --check`): a backend
//! that stops answering leaves DNS within interval × failures and comes back
//! when it answers again; an HTTP check wants its status; a flapping backend
//! does not flap DNS.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_tests::{minimal_zone, Backend, Directory};

const Z: &str = "cluster.example.";

fn n(rel: &str) -> String {
    format!("{rel}.{Z}")
}

/// The hosts in `SVC.service`'s SRV answer.
fn targets(d: &Directory, svc: &str) -> Vec<String> {
    let mut t: Vec<String> = d
        .dig(&n(&format!("{svc}.service")), "SRV", &[])
        .data("SRV")
        .iter()
        .filter_map(|r| {
            r.split_whitespace()
                .nth(3)
                .map(|h| h.trim_end_matches('.').to_string())
        })
        .collect();
    t.sort();
    t
}

/// The health= of a binding's instance TXT.
fn health(d: &Directory, host: &str, svc: &str) -> String {
    d.dig(&n(&format!("{host}._{svc}._tcp")), "TXT", &[])
        .data("TXT")
        .join(" ")
        .split_whitespace()
        .find_map(|w| {
            w.trim_matches('"')
                .strip_prefix("health=")
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

#[test]
fn a_backend_that_stops_answering_leaves_dns_and_comes_back() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    for h in ["app1", "app2"] {
        d.cli_ok(&["host", "add", h, "--addr", "127.0.0.1", "--roles", "app"]);
    }
    d.cli_ok(&[
        "bind",
        "add",
        "app1",
        "api",
        &port,
        "--check",
        "tcp",
        "--check-interval",
        "1",
        "--check-failures",
        "2",
        "--check-recoveries",
        "2",
        "--check-timeout-ms",
        "500",
    ]);
    // app2 has no check: it stays whatever app1 does.
    d.cli_ok(&["bind", "add", "app2", "api", "9"]);
    d.wait_for("app1's first check to pass", || {
        health(&d, "app1", "api") == "passing"
    });
    assert_eq!(
        targets(&d, "api"),
        vec![
            n("app1.node").trim_end_matches('.'),
            n("app2.node").trim_end_matches('.')
        ]
    );

    drop(listener);
    let stopped = Instant::now();
    d.wait_for("app1 to leave api.service", || {
        targets(&d, "api").len() == 1
    });
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "interval 1 s × 2 failures, yet {took:?} to leave DNS"
    );
    assert_eq!(
        targets(&d, "api"),
        vec![n("app2.node").trim_end_matches('.')]
    );
    assert_eq!(health(&d, "app1", "api"), "critical");

    let _back = TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind again");
    d.wait_for("app1 to come back", || targets(&d, "api").len() == 2);
    assert_eq!(health(&d, "app1", "api"), "passing");
}

/// A tiny HTTP server answering 200 and 500 by turns.
fn flapping_server() -> (u16, Arc<AtomicBool>, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU32::new(0));
    let (stop2, served2) = (stop.clone(), served.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut s) = conn else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let n = served2.fetch_add(1, Ordering::Relaxed);
            let status = if n % 2 == 0 { "200 OK" } else { "500 Oops" };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, stop, served)
}

#[test]
fn http_checks_want_their_status_and_flapping_does_not_flap_dns() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let backend = Backend::start("web");
    let port = backend.addr.port().to_string();
    for h in ["w1", "w2", "w3"] {
        d.cli_ok(&["host", "add", h, "--addr", "127.0.0.1", "--roles", "web"]);
    }
    let fast = [
        "--check-interval",
        "1",
        "--check-failures",
        "2",
        "--check-recoveries",
        "2",
    ];
    // The echo backend answers 200 to everything.
    let mut args = vec![
        "bind",
        "add",
        "w1",
        "web",
        &port,
        "--check",
        "http:200:/healthz",
    ];
    args.extend(fast);
    d.cli_ok(&args);
    let mut args = vec![
        "bind",
        "add",
        "w2",
        "web",
        &port,
        "--check",
        "http:204:/healthz",
    ];
    args.extend(fast);
    d.cli_ok(&args);
    d.wait_for("w1 passing", || health(&d, "w1", "web") == "passing");
    d.wait_for("w2 critical (200 is not the 204 it wants)", || {
        health(&d, "w2", "web") == "critical"
    });
    assert_eq!(targets(&d, "web"), vec![n("w1.node").trim_end_matches('.')]);

    // A backend that fails every other probe never fails two in a row: w3 stays.
    let (flap, stop, served) = flapping_server();
    let flap = flap.to_string();
    let mut args = vec!["bind", "add", "w3", "web", &flap, "--check", "http:200:/"];
    args.extend(fast);
    d.cli_ok(&args);
    d.wait_for("w3 passing", || health(&d, "w3", "web") == "passing");
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(
            targets(&d, "web").contains(&n("w3.node").trim_end_matches('.').to_string()),
            "a flapping check flapped DNS"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        served.load(Ordering::Relaxed) >= 5,
        "the flapping backend was probed"
    );
    assert_eq!(health(&d, "w3", "web"), "passing");
    stop.store(true, Ordering::Relaxed);
}
