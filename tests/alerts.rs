//! Alerts: every transition lands in the audit log (`events`) and reaches each
//! webhook exactly once, in order, through receiver failures and a restart; a
//! sidecar's heartbeat keeps its `heartbeat` check passing and its stale-answer
//! episodes are reported; a replica behind its max_lag for too long is an event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_tests::{minimal_zone, signed_headers, stdout, unix_now, Backend, Directory};

/// A webhook receiver: answers 500 to the first `fail_first` deliveries, then
/// 204, and keeps the events it accepted (and how many attempts it saw).
struct Receiver {
    url: String,
    accepted: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<Mutex<u32>>,
}

impl Receiver {
    fn start(fail_first: u32) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/hooks/switchboard",
            listener.local_addr().expect("addr")
        );
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0u32));
        let (acc, att) = (accepted.clone(), attempts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                let (acc, att) = (acc.clone(), att.clone());
                std::thread::spawn(move || serve(stream, fail_first, &acc, &att));
            }
        });
        Receiver {
            url,
            accepted,
            attempts,
        }
    }

    fn accepted(&self) -> Vec<Value> {
        self.accepted.lock().expect("lock").clone()
    }
}

/// Reads HTTP/1.1 requests off one connection and answers each.
fn serve(stream: std::net::TcpStream, fail_first: u32, acc: &Mutex<Vec<Value>>, att: &Mutex<u32>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /hooks/switchboard "), "{line}");
        let (mut len, mut id) = (0usize, None::<u64>);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header");
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().expect("length"),
                "switchboard-event-id" => id = v.trim().parse().ok(),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).expect("body");
        let event: Value = serde_json::from_slice(&body).expect("a JSON event");
        assert_eq!(
            event["id"].as_u64(),
            id,
            "Switchboard-Event-Id is the event's id"
        );
        let n = {
            let mut a = att.lock().expect("lock");
            *a += 1;
            *a
        };
        let status = if n <= fail_first {
            "500 Not Now"
        } else {
            acc.lock().expect("lock").push(event);
            "204 No Content"
        };
        let _ = write!(out, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
    }
}

/// (kind, name, action, from, to) of an event.
fn what(e: &Value) -> (String, String, String, String, String) {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
    (s("kind"), s("name"), s("action"), s("from"), s("to"))
}

fn t(
    kind: &str,
    name: &str,
    action: &str,
    from: &str,
    to: &str,
) -> (String, String, String, String, String) {
    (
        kind.into(),
        name.into(),
        action.into(),
        from.into(),
        to.into(),
    )
}

/// Every event in the log, by `events --json`.
fn logged(d: &Directory) -> Vec<Value> {
    let out = d.cli_ok(&["--json", "events", "--last", "1000"]);
    out.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["id"].as_u64()).collect()
}

#[test]
fn every_transition_reaches_the_webhook_once_and_the_log_survives_a_restart() {
    let hook = Receiver::start(2);
    let mut d = Directory::with_zone(minimal_zone, &["--webhook", &hook.url]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();

    d.cli_ok(&[
        "host",
        "add",
        "app1",
        "--addr",
        "127.0.0.1",
        "--roles",
        "app",
    ]);
    d.cli_ok(&[
        "host",
        "add",
        "app2",
        "--addr",
        "127.0.0.1",
        "--roles",
        "app",
    ]);
    d.cli_ok(&["host", "disable", "app1"]);
    // Already disabled: a change, but no transition.
    d.cli_ok(&["host", "disable", "app1"]);
    d.cli_ok(&["host", "enable", "app1"]);
    bind_checked(&d, "app1", "api", &port, "tcp");
    let passing = || {
        logged(&d)
            .iter()
            .any(|e| what(e) == t("binding", "app1/api", "health", "unknown", "passing"))
    };
    d.wait_for("the check's first pass in the log", passing);
    drop(listener);
    d.wait_for("the check's failure in the log", || {
        logged(&d)
            .iter()
            .any(|e| what(e) == t("binding", "app1/api", "health", "passing", "critical"))
    });
    let _back = TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind again");

    let expected = vec![
        t("host", "app1", "add", "", ""),
        t("host", "app2", "add", "", ""),
        t("host", "app1", "disable", "available", "unavailable"),
        t("host", "app1", "enable", "unavailable", "available"),
        t("binding", "app1/api", "add", "", ""),
        t("binding", "app1/api", "health", "unknown", "passing"),
        t("binding", "app1/api", "health", "passing", "critical"),
        t("binding", "app1/api", "health", "critical", "passing"),
    ];
    d.wait_for("every transition at the webhook", || {
        hook.accepted().len() >= expected.len()
    });
    let got = hook.accepted();
    assert_eq!(got.iter().map(what).collect::<Vec<_>>(), expected);
    assert!(
        *hook.attempts.lock().expect("lock") >= 3,
        "the two refused deliveries were retried"
    );
    // The same events, with the same ids, are in the log; ids grow by one.
    let log = logged(&d);
    let tail = &log[log.len() - expected.len()..];
    assert_eq!(tail, &got[..], "the webhook got what the audit log holds");
    let got_ids = ids(&got);
    assert!(got_ids.windows(2).all(|w| w[1] == w[0] + 1), "{got_ids:?}");
    assert_eq!(got[2]["by"].as_str(), Some("admin admin"), "{}", got[2]);
    assert_eq!(got[6]["by"].as_str(), Some("check"));
    assert!(
        got[6]["message"]
            .as_str()
            .unwrap_or("")
            .contains("leaves service answers"),
        "{}",
        got[6]
    );

    // A restart keeps the log and the webhook's place: nothing is sent twice.
    d.stop();
    d.start();
    assert_eq!(
        &logged(&d)[..log.len()],
        &log[..],
        "the log survived the restart"
    );
    d.cli_ok(&["host", "disable", "app2"]);
    d.wait_for("the change after the restart at the webhook", || {
        hook.accepted().len() > expected.len()
    });
    let all = hook.accepted();
    assert_eq!(all.len(), expected.len() + 1, "{all:#?}");
    assert_eq!(
        what(&all[expected.len()]),
        t("host", "app2", "disable", "available", "unavailable")
    );
    let all_ids = ids(&all);
    assert!(all_ids.windows(2).all(|w| w[1] == w[0] + 1), "{all_ids:?}");

    // The human form says what happened.
    let human = stdout(&d.cli(&["events", "--last", "1"]));
    assert!(
        human.contains("host app2 disable available->unavailable  by admin admin: host app2 marked unavailable"),
        "{human}"
    );
}

/// A POST through the admin API signed with the admin key: (status, body).
fn signed(d: &Directory, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string().into_bytes();
    let url = format!("{}{path}", d.server_url());
    let headers = signed_headers(&d.admin_key, method, &url, &body, unix_now());
    d.curl(method, path, &headers, Some(&body))
}

/// `bind add HOST SVC PORT` with a fast check of `probe`: every second, 500 ms
/// to answer, critical after 2 failures, back after 1 pass.
fn bind_checked(d: &Directory, host: &str, svc: &str, port: &str, probe: &str) {
    d.cli_ok(&[
        "bind",
        "add",
        host,
        svc,
        port,
        "--check",
        probe,
        "--check-interval",
        "1",
        "--check-failures",
        "2",
        "--check-recoveries",
        "1",
        "--check-timeout-ms",
        "500",
    ]);
}

/// Records `version` of `repo` on its master `host`, as the master's write
/// hook does: the write lease first, then the version under it.
fn master_writes(d: &Directory, repo: &str, host: &str, version: u64) {
    let path = format!("/v1/repos/{repo}/lease");
    let (code, lease) = signed(d, "POST", &path, &serde_json::json!({"host": host}));
    assert_eq!(code, 200, "{lease}");
    let path = format!("/v1/repos/{repo}/versions/{host}");
    let body = serde_json::json!({"version": version, "lease": lease["token"]});
    let (code, body) = signed(d, "PUT", &path, &body);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn database_changes_reach_the_webhook_like_the_others() {
    let hook = Receiver::start(0);
    let d = Directory::with_zone(minimal_zone, &["--webhook", &hook.url]);
    for h in ["db1", "db2"] {
        d.cli_ok(&["host", "add", h, "--addr", "127.0.0.1", "--roles", "db"]);
    }
    d.cli_ok(&["db", "add", "main", "--master", "db1", "--replicas", "db2"]);
    d.cli_ok(&["db", "freeze", "main", "--message", "backup"]);
    d.cli_ok(&["db", "thaw", "main"]);
    // Neither host has reported a position: nothing is behind, no force needed.
    d.cli_ok(&["db", "promote", "main", "db2"]);
    d.cli_ok(&["db", "rm", "main"]);
    let expected = vec![
        t("db", "main", "add", "", ""),
        t("db", "main", "freeze", "writable", "frozen"),
        t("db", "main", "thaw", "frozen", "writable"),
        t("db", "main", "promote", "db1", "db2"),
        t("db", "main", "remove", "", ""),
    ];
    d.wait_for("the database's events at the webhook", || {
        hook.accepted().iter().filter(|e| e["kind"] == "db").count() >= expected.len()
    });
    let got: Vec<_> = hook
        .accepted()
        .iter()
        .filter(|e| e["kind"] == "db")
        .map(what)
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_replica_behind_max_lag_for_too_long_is_an_event() {
    let d = Directory::with_zone(minimal_zone, &["--lag-alert-after", "1"]);
    for h in ["m1", "r2"] {
        d.cli_ok(&["host", "add", h, "--addr", "127.0.0.1", "--roles", "repo"]);
    }
    d.cli_ok(&[
        "repo",
        "add",
        "r1",
        "--master",
        "m1",
        "--replicas",
        "r2",
        "--max-lag",
        "0",
    ]);
    master_writes(&d, "r1", "m1", 1);
    let behind = Instant::now();
    let lagging = |d: &Directory| {
        logged(d)
            .into_iter()
            .filter(|e| what(e) == t("repo", "r1/r2", "lagging", "current", "lagging"))
            .count()
    };
    d.wait_for("a lagging event", || lagging(&d) == 1);
    assert!(
        behind.elapsed() >= Duration::from_secs(1),
        "alerted before --lag-alert-after"
    );
    let (code, body) = signed(
        &d,
        "PUT",
        "/v1/repos/r1/versions/r2",
        &serde_json::json!({"version": 1}),
    );
    assert_eq!(code, 200, "{body}");
    d.wait_for("a caught-up event", || {
        logged(&d)
            .iter()
            .any(|e| what(e) == t("repo", "r1/r2", "caught-up", "lagging", "current"))
    });
    assert_eq!(lagging(&d), 1, "one event per episode");
}

#[test]
fn heartbeats_keep_a_host_in_and_stale_answers_are_reported() {
    let mut d = Directory::with_zone(minimal_zone, &["--node-ttl", "1", "--service-ttl", "1"]);
    let backend = Backend::start("web1");
    let mut web1 = d.sidecar("web1", "web", Some(&backend));
    bind_checked(&d, "web1", "alive", "1", "heartbeat");
    let health = |d: &Directory| {
        d.dig("web1._alive._tcp.cluster.example.", "TXT", &[])
            .data("TXT")
            .join(" ")
            .split_whitespace()
            .find_map(|w| {
                w.trim_matches('"')
                    .strip_prefix("health=")
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    d.wait_for("the heartbeat check to pass", || health(&d) == "passing");

    web1.kill();
    let killed = Instant::now();
    d.wait_for("a silent sidecar's binding to turn critical", || {
        health(&d) == "critical"
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "interval 1 s × 2 failures, yet {took:?}"
    );
    assert!(
        d.dig("alive.service.cluster.example.", "SRV", &[])
            .data("SRV")
            .is_empty(),
        "a critical binding leaves the service answer"
    );
    web1.restart();
    d.wait_for("the heartbeat check to pass again", || {
        health(&d) == "passing"
    });

    // The directory goes away: once the sidecar's answers expire it routes on
    // stale ones, and says so when the directory is back.
    d.cli_ok(&["repo", "add", "r1", "--master", "web1"]);
    let lookup = || {
        let _ = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "--data-binary",
                "repository=r1",
            ])
            .arg(web1.http_url("/api/diffusion.querycommits"))
            .status();
    };
    lookup();
    d.stop();
    d.wait_for("the sidecar's answers to expire", || {
        web1.metric("switchboard_sidecar_cache_age_seconds")
            .unwrap_or(0.0)
            > 2.0
    });
    lookup();
    assert_eq!(web1.metric("switchboard_sidecar_serving_stale"), Some(1.0));
    d.start();
    d.wait_for("the stale episode in the log", || {
        let log = logged(&d);
        let n = |a: &str| {
            log.iter()
                .filter(|e| what(e).0 == "sidecar" && what(e).2 == a)
                .count()
        };
        if n("fresh") == 0 {
            // Fresh answers come with the next lookup.
            lookup();
        }
        n("stale") == 1 && n("fresh") == 1
    });
    let log = logged(&d);
    let sc: Vec<_> = log.iter().filter(|e| what(e).0 == "sidecar").collect();
    assert_eq!(what(sc[0]), t("sidecar", "web1", "stale", "fresh", "stale"));
    assert_eq!(what(sc[1]), t("sidecar", "web1", "fresh", "stale", "fresh"));
    assert_eq!(sc[1]["by"].as_str(), Some("host web1"));
}

#[test]
fn events_follow_prints_each_new_event_as_it_happens() {
    use std::process::{Command, Stdio};
    let d = Directory::with_zone(minimal_zone, &[]);
    let mut follow = Command::new(switchboard_tests::bin("switchboard-directory"))
        .args([
            "--server",
            &d.server_url(),
            "--json",
            "events",
            "--follow",
            "--last",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("events --follow");
    let out = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("an event within 20 s")
    };
    d.cli_ok(&[
        "host",
        "add",
        "app9",
        "--addr",
        "127.0.0.1",
        "--roles",
        "app",
    ]);
    assert_eq!(what(&next()), t("host", "app9", "add", "", ""));
    d.cli_ok(&["host", "disable", "app9"]);
    assert_eq!(
        what(&next()),
        t("host", "app9", "disable", "available", "unavailable")
    );
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn a_repository_that_opted_in_fails_over_only_to_a_replica_with_every_version() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let (m1, r2) = (
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    );
    let port = |l: &TcpListener| l.local_addr().expect("addr").port().to_string();
    for h in ["m1", "r2"] {
        d.cli_ok(&["host", "add", h, "--addr", "127.0.0.1", "--roles", "repo"]);
    }
    // Each host's sidecar stands in as a listener its `switchboard` binding's check probes.
    for (h, l) in [("m1", &m1), ("r2", &r2)] {
        bind_checked(&d, h, "switchboard", &port(l), "tcp");
    }
    d.cli_ok(&[
        "repo",
        "add",
        "auto",
        "--master",
        "m1",
        "--replicas",
        "r2",
        "--auto-failover",
    ]);
    d.cli_ok(&[
        "repo",
        "add",
        "manual",
        "--master",
        "m1",
        "--replicas",
        "r2",
    ]);
    d.cli_ok(&["repo", "add", "ahead", "--master", "m1", "--replicas", "r2"]);
    d.cli_ok(&["repo", "auto-failover", "ahead", "on"]);
    // The choice is part of the repository: in its TXT record and zone exports.
    let exported = d.cli_ok(&["zone", "export", "cluster.example."]);
    let opted: Vec<&str> = exported
        .lines()
        .filter(|l| l.contains("auto_failover=1"))
        .collect();
    assert_eq!(opted.len(), 2, "{exported}");
    // m1 has a write of `ahead` that r2 lacks.
    master_writes(&d, "ahead", "m1", 1);
    let master = |repo: &str| {
        let v: Value =
            serde_json::from_str(&d.cli_ok(&["--json", "repo", "show", repo])).expect("json");
        v["master"].as_str().unwrap_or("").to_string()
    };
    let writes_to = |repo: &str| {
        d.dig(&format!("write.{repo}.repo.cluster.example."), "SRV", &[])
            .data("SRV")
            .iter()
            .filter_map(|r| r.split_whitespace().nth(3).map(str::to_string))
            .collect::<Vec<_>>()
    };
    d.wait_for("m1 passing its check", || {
        logged(&d)
            .iter()
            .any(|e| what(e) == t("binding", "m1/switchboard", "health", "unknown", "passing"))
    });
    assert_eq!(
        writes_to("auto"),
        vec!["m1.node.cluster.example.".to_string()]
    );

    drop(m1);
    d.wait_for("writes of `auto` to go to r2", || {
        writes_to("auto") == vec!["r2.node.cluster.example.".to_string()]
    });
    let log = logged(&d);
    let promoted = log
        .iter()
        .find(|e| what(e) == t("repo", "auto", "promote", "m1", "r2"))
        .expect("the promotion in the log");
    assert_eq!(promoted["by"], "directory (auto-failover)");
    // Not opted in: the checks alert, nobody promotes.
    assert_eq!(master("manual"), "m1");
    // Opted in, but r2 lacks version 1: not promoted, said once.
    d.wait_for("the blocked failover in the log", || {
        logged(&d)
            .iter()
            .any(|e| what(e).1 == "ahead" && what(e).2 == "failover-blocked")
    });
    assert_eq!(master("ahead"), "m1");
    let blocked = logged(&d)
        .iter()
        .filter(|e| what(e).2 == "failover-blocked")
        .count();
    assert_eq!(blocked, 1, "said once");
    drop(r2);
}

/// Unix time in milliseconds, as heartbeats report it.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Adds host `name` with a fresh key, as an admin does for a new sidecar;
/// returns the key file.
fn host_with_key(d: &Directory, name: &str) -> std::path::PathBuf {
    let (key, pubkey, _) = switchboard_tests::keygen(d.dir.path(), name);
    d.cli_ok(&[
        "host",
        "add",
        name,
        "--addr",
        "127.0.0.1",
        "--pubkey",
        &pubkey,
        "--roles",
        "web",
    ]);
    key
}

/// A heartbeat signed with the host's own key, as its sidecar sends it:
/// (status, body).
fn heartbeat(d: &Directory, host: &str, key: &std::path::Path, report: &Value) -> (u16, Value) {
    let body = report.to_string().into_bytes();
    let path = format!("/v1/hosts/{host}/heartbeat");
    let url = format!("{}{path}", d.server_url());
    let headers = signed_headers(key, "POST", &url, &body, unix_now());
    d.curl("POST", &path, &headers, Some(&body))
}

/// Sends one signed heartbeat per report, all through one `curl` (one
/// connection, kept alive); returns each answer's status.
fn heartbeats(d: &Directory, host: &str, key: &std::path::Path, reports: &[Value]) -> Vec<u16> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("{}/v1/hosts/{host}/heartbeat", d.server_url());
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut config = String::new();
    for (i, report) in reports.iter().enumerate() {
        let body = report.to_string();
        if i > 0 {
            config.push_str("next\n");
        }
        config.push_str(&format!("url = {}\nrequest = \"POST\"\n", quote(&url)));
        for (k, v) in signed_headers(key, "POST", &url, body.as_bytes(), unix_now()) {
            config.push_str(&format!("header = {}\n", quote(&format!("{k}: {v}"))));
        }
        config.push_str("header = \"Content-Type: application/json\"\n");
        config.push_str(&format!("data-binary = {}\n", quote(&body)));
        config.push_str("output = \"/dev/null\"\nwrite-out = \"%{http_code}\\n\"\nsilent\n");
    }
    let file = dir.path().join("curl.conf");
    std::fs::write(&file, config).expect("write curl config");
    let out = switchboard_tests::run(std::process::Command::new("curl").arg("-K").arg(&file));
    stdout(&out)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

#[test]
fn a_heartbeat_that_reports_impossible_stale_times_is_refused_and_logs_nothing() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let key = host_with_key(&d, "web1");
    let now = now_ms();
    let (hour, day) = (3_600_000, 86_400_000);
    for report in [
        serde_json::json!({"last_stale": [0, u64::MAX]}),
        serde_json::json!({"last_stale": [now, u64::MAX]}),
        serde_json::json!({"last_stale": [now + hour, now + 2 * hour]}),
        serde_json::json!({"last_stale": [0, 1000]}),
        serde_json::json!({"last_stale": [now - 30 * day, now - 29 * day]}),
        serde_json::json!({"last_stale": [now - 1000, now - 5000]}),
        serde_json::json!({"stale_since": u64::MAX}),
        serde_json::json!({"stale_since": now + hour}),
        serde_json::json!({"stale_since": 0}),
    ] {
        let (code, body) = heartbeat(&d, "web1", &key, &report);
        assert_eq!(code, 400, "{report} was taken: {body}");
        assert_eq!(body["reason"], "bad-heartbeat", "{report}: {body}");
        let why = body["error"].as_str().unwrap_or_default();
        assert!(why.contains("stale"), "{report}: {why}");
    }
    assert!(
        logged(&d).iter().all(|e| e["kind"] != "sidecar"),
        "{:#?}",
        logged(&d)
    );

    // A true report from the same host is still taken and logged, with its times.
    let span = [now - 5000, now - 1000];
    let (code, body) = heartbeat(&d, "web1", &key, &serde_json::json!({ "last_stale": span }));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ack_stale"], serde_json::json!(span), "{body}");
    let sc: Vec<Value> = logged(&d)
        .into_iter()
        .filter(|e| e["kind"] == "sidecar")
        .collect();
    assert_eq!(
        sc.iter().map(what).collect::<Vec<_>>(),
        [
            t("sidecar", "web1", "stale", "fresh", "stale"),
            t("sidecar", "web1", "fresh", "stale", "fresh")
        ]
    );
    assert_eq!(
        sc[1]["span"],
        serde_json::json!({"from": span[0], "to": span[1]})
    );
    let human = d.cli_ok(&["events"]);
    let year = |y: &str| human.lines().all(|l| l.starts_with(y));
    assert!(year(&clock_year(now)), "{human}");
    assert!(human.contains("served stale ones for 4 s"), "{human}");

    // Once heard from, a host cannot date a new episode before that heartbeat.
    let report = serde_json::json!({"last_stale": [now - hour, now - hour + 1000]});
    let (code, body) = heartbeat(&d, "web1", &key, &report);
    assert_eq!(code, 400, "{body}");
    let why = body["error"].as_str().unwrap_or_default();
    assert!(why.contains("previous heartbeat"), "{why}");
    // One episode open at a time: a second start while stale is not another.
    for since in [now - 500, now - 400] {
        let (code, body) = heartbeat(
            &d,
            "web1",
            &key,
            &serde_json::json!({ "stale_since": since }),
        );
        assert_eq!(code, 200, "{body}");
    }
    let stale = logged(&d)
        .iter()
        .filter(|e| what(e) == t("sidecar", "web1", "stale", "fresh", "stale"))
        .count();
    assert_eq!(stale, 2, "{:#?}", logged(&d));
}

/// The year (`YYYY`) of a unix time in ms, as the directory prints it.
fn clock_year(ms: u64) -> String {
    switchboard_directory::state::clock(ms)[..4].to_string()
}

#[test]
fn a_host_flooding_heartbeats_is_rate_limited_and_admin_events_stay_in_view() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let key = host_with_key(&d, "web1");
    d.cli_ok(&[
        "host",
        "add",
        "app9",
        "--addr",
        "127.0.0.1",
        "--roles",
        "app",
    ]);
    let admin_event = logged(&d)
        .into_iter()
        .find(|e| what(e) == t("host", "app9", "add", "", ""))
        .expect("the admin's event");
    assert_eq!(admin_event["by"], "admin admin");

    // 1000 heartbeats, each reporting a made-up episode (within every bound).
    let start = Instant::now();
    let base = now_ms() - 30_000;
    let reports: Vec<Value> = (0..1000u64)
        .map(|i| {
            let (from, to) = (base + 10 * i, base + 10 * i + 5);
            match i % 3 {
                0 => serde_json::json!({ "last_stale": [from, to] }),
                1 => serde_json::json!({ "stale_since": from }),
                _ => serde_json::json!({ "last_stale": [from, to], "stale_since": to + 1 }),
            }
        })
        .collect();
    let mut codes = Vec::new();
    for chunk in reports.chunks(200) {
        codes.extend(heartbeats(&d, "web1", &key, chunk));
    }
    let took = start.elapsed();
    assert_eq!(codes.len(), 1000);
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");

    // The host wrote at most its burst plus one event per 10 s since.
    let log = logged(&d);
    let by_host = log.iter().filter(|e| e["by"] == "host web1").count();
    let allowed = 10 + took.as_secs() as usize / 10 + 1;
    assert!(
        (1..=allowed).contains(&by_host),
        "{by_host} events from web1 in {took:?}; at most {allowed}"
    );
    let shown: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "host", "show", "web1"])).expect("JSON");
    let dropped = shown["events_dropped"].as_u64().unwrap_or(0);
    assert!(dropped >= 1000, "events_dropped {dropped}: {shown}");

    // The admin's change is still in the last events: the CLI's and the console's.
    let last: Vec<Value> = d
        .cli_ok(&["--json", "events"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON event"))
        .collect();
    assert!(last.contains(&admin_event), "{last:#?}");
    let page = std::process::Command::new("curl")
        .args(["-s", &format!("{}/ui/events", d.server_url())])
        .output()
        .expect("curl the console");
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains(&format!("id=\"event-{}\"", admin_event["id"])),
        "{page}"
    );
}

#[test]
fn a_host_flipping_its_own_health_is_rate_limited_and_admins_are_not() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let key = host_with_key(&d, "web1");
    let path = "/v1/hosts/web1/health";
    let url = format!("{}{path}", d.server_url());
    let (mut taken, mut refused) = (0, 0);
    for i in 0..40 {
        let health = if i % 2 == 0 { "warning" } else { "passing" };
        let body = serde_json::json!({ "health": health })
            .to_string()
            .into_bytes();
        let headers = signed_headers(&key, "PUT", &url, &body, unix_now());
        let (code, v) = d.curl("PUT", path, &headers, Some(&body));
        match code {
            200 => taken += 1,
            429 => {
                assert_eq!(v["reason"], "event-rate", "{v}");
                refused += 1;
            }
            other => panic!("health change {i}: {other} {v}"),
        }
    }
    // The burst is 10 events (one more may come due within the loop). A
    // refused change leaves the health as it was, so the next one (back to
    // that health) is no change, writes no event and is taken.
    let by_host = logged(&d)
        .into_iter()
        .filter(|e| e["by"] == "host web1")
        .count();
    assert!((10..=11).contains(&by_host), "{by_host} events by web1");
    assert!(refused >= 10, "{refused} refused, {taken} taken");
    // An admin's changes of the same host are never limited.
    for _ in 0..15 {
        d.cli_ok(&["host", "disable", "web1"]);
        d.cli_ok(&["host", "enable", "web1"]);
    }
}
