//! Several directory servers (SPEC "Directory high availability": the
//! directory is a service of its own zone). Each server lists its admin API
//! as a `directory` binding of its own host (`serve --advertise`); a sidecar
//! given `--directory` twice and no `--directory-api` finds the API through
//! `directory.service.Z`, spreads its lookups, and when one server is killed
//! (SIGKILL) under a stream of requests it loses none, follows the other's
//! change feed and sees a change made there. These servers have a sled store
//! each, seeded from the same zone file; what a shared store would hold in
//! both (each other's binding, the hosts) the test adds to both.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_tests::{
    bin, conduit_call, minimal_zone, run, sidecar_of, stderr, stdout, Backend, Directory, Outcome,
    DEADLINE,
};

const Z: &str = "cluster.example.";

fn n(rel: &str) -> String {
    format!("{rel}.{Z}")
}

/// The SRV data `dig` shows for `host`'s binding on `port`.
fn srv(host: &str, port: u16) -> String {
    format!("0 0 {port} {host}.node.{Z}")
}

/// Two servers, dir1 and dir2, each advertising itself (`--advertise`) and,
/// as a shared store would, listing the other as well.
fn pair(serve: &[&str]) -> (Directory, Directory) {
    let with = |me: &str| -> Vec<String> {
        let mut v: Vec<String> = serve.iter().map(|s| s.to_string()).collect();
        v.extend(["--advertise".to_string(), me.to_string()]);
        v
    };
    let a1 = with("dir1");
    let d1 = Directory::with_zone(
        minimal_zone,
        &a1.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let a2 = with("dir2");
    let d2 = d1.twin(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    for d in [&d1, &d2] {
        for h in ["dir1", "dir2"] {
            d.cli_ok(&[
                "host",
                "add",
                h,
                "--addr",
                "127.0.0.1",
                "--roles",
                "directory",
            ]);
        }
    }
    for (d, me) in [(&d1, "dir1"), (&d2, "dir2")] {
        let want = vec![srv(me, d.http.port())];
        d.wait_for(&format!("{me} in its own directory.service"), || {
            d.dig(&n("directory.service"), "SRV", &[]).data("SRV") == want
        });
    }
    d1.cli_ok(&[
        "bind",
        "add",
        "dir2",
        "directory",
        &d2.http.port().to_string(),
    ]);
    d2.cli_ok(&[
        "bind",
        "add",
        "dir1",
        "directory",
        &d1.http.port().to_string(),
    ]);
    (d1, d2)
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn serve_advertise_lists_the_server_in_directory_service_once_its_host_exists() {
    let mut d = Directory::with_zone(minimal_zone, &["--advertise", "dir1"]);
    let port = d.http.port();
    // No host dir1 yet: nothing listed, and the server runs.
    assert_eq!(
        d.dig(&n("directory.service"), "SRV", &[]).status,
        "NXDOMAIN"
    );
    d.cli_ok(&["host", "add", "dir1", "--addr", "127.0.0.1"]);
    let want = vec![srv("dir1", port)];
    d.wait_for("dir1's directory binding", || {
        d.dig(&n("directory.service"), "SRV", &[]).data("SRV") == want
    });
    assert_eq!(d.dig(&n("_directory._tcp"), "SRV", &[]).data("SRV"), want);
    let a = d.dig(&n("directory.service"), "SRV", &[]);
    assert!(
        a.additional.iter().any(|r| r.data == "127.0.0.1"),
        "the host's address comes with it: {}",
        a.raw
    );
    // Added by the directory itself, as the audit log says.
    let (code, events) = d.curl("GET", "/v1/events?last=20", &[], None);
    assert_eq!(code, 200);
    let added: Vec<_> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "binding" && e["name"] == "dir1/directory" && e["action"] == "add")
        .collect();
    assert_eq!(added.len(), 1, "{events}");
    assert_eq!(added[0]["by"], "directory");

    // A restart finds it there (it is ensured before the port opens): no
    // second change, the serial stays.
    let serial = |d: &Directory| d.dig(Z, "SOA", &[]).answer[0].data.clone();
    let before = serial(&d);
    d.stop();
    d.start();
    assert_eq!(d.http.port(), port);
    assert_eq!(d.dig(&n("directory.service"), "SRV", &[]).data("SRV"), want);
    assert_eq!(serial(&d), before, "a restart changed nothing");

    // A bad value: one line, non-zero, nothing served.
    let out = run(Command::new(bin("switchboard-directory"))
        .args([
            "serve",
            "--advertise",
            "no such host",
            "--dns",
            "127.0.0.1:0",
        ])
        .args(["--http", "127.0.0.1:0", "--data"])
        .arg(d.dir.path().join("other-data")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--advertise") && stderr(&out).lines().count() == 1,
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_lookup_goes_on_when_one_directory_server_does_not_answer() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let (key, pubkey, _) = switchboard_tests::keygen(d.dir.path(), "web1");
    d.cli_ok(&[
        "host",
        "add",
        "web1",
        "--addr",
        "127.0.0.1",
        "--pubkey",
        &pubkey,
        "--roles",
        "web",
    ]);
    // A server that takes queries and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let whoami = |dirs: &[&str]| {
        let mut cmd = Command::new(bin("switchboard-sidecar"));
        cmd.args(["whoami", "--json", "--zone", Z, "--key"])
            .arg(&key);
        for a in dirs {
            cmd.args(["--directory", a]);
        }
        run(&mut cmd)
    };
    // The silent one is asked first; the lookup moves on to the other.
    let t = Instant::now();
    let out = whoami(&[&silent_addr, &d.dns.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["host"], "web1");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Only the silent one: a clear error naming it.
    let out = whoami(&[&silent_addr]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&silent_addr), "{}", stderr(&out));
    drop(silent);
}

#[test]
fn a_sidecar_finds_the_api_in_the_zone_and_rides_out_a_directory_server_dying() {
    // Service answers live 60 s: a change seen sooner came by the change feed.
    let (mut d1, mut d2) = pair(&["--service-ttl", "60"]);
    let backends = [Backend::start("app1"), Backend::start("app2")];
    let (dns1, dns2) = (d1.dns.to_string(), d2.dns.to_string());
    let at = ["--directory", &dns1, "--directory", &dns2];
    let both = [&d1, &d2];
    let _app1 = sidecar_of(&both, "app1", "web", Some(&backends[0]), &at, &[]);
    let _app2 = sidecar_of(&both, "app2", "web", Some(&backends[1]), &at, &[]);
    // A web host without a backend sends Conduit calls to conduit.service hosts.
    let front = sidecar_of(&both, "front", "web", None, &at, &[]);
    for d in both {
        for h in ["app1", "app2"] {
            d.cli_ok(&["bind", "add", h, "conduit", "80"]);
        }
    }
    // It found the admin API through directory.service (not the :8053 default).
    let urls = [d1.server_url(), d2.server_url()];
    wait("the front's feed on a listed server", || {
        front.feed_source().is_some_and(|s| urls.contains(&s))
            && front.metric("switchboard_sidecar_feed_up") == Some(1.0)
    });
    let seen = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    wait("calls through the front reach both apps", || {
        let r = conduit_call(front.http);
        let mut s = seen.lock().expect("lock");
        s.push(r);
        let hosts: Vec<_> = s
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|(_, h)| h.clone())
            .collect();
        hosts.contains(&"app1".to_string()) && hosts.contains(&"app2".to_string())
    });
    assert!(
        seen.lock()
            .expect("lock")
            .iter()
            .all(|r| matches!(r, Ok((200, _)))),
        "{:?}",
        seen.lock().expect("lock")
    );

    // A stream of calls while the server whose feed it follows is killed.
    let followed = front.feed_source().expect("a feed source");
    let (dead, alive) = if followed == d1.server_url() {
        (&mut d1, &mut d2)
    } else {
        (&mut d2, &mut d1)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stream: Arc<Mutex<Vec<(Instant, Outcome)>>> = Arc::default();
    let worker = {
        let (stop, stream, addr) = (stop.clone(), stream.clone(), front.http);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = conduit_call(addr);
                stream.lock().expect("lock").push((Instant::now(), r));
            }
        })
    };
    wait("calls flowing", || stream.lock().expect("lock").len() >= 20);
    let killed = Instant::now();
    dead.kill9();
    // The feed moves to the survivor.
    let alive_url = alive.server_url();
    wait("the front following the survivor's feed", || {
        front.feed_source().as_deref() == Some(alive_url.as_str())
            && front.metric("switchboard_sidecar_feed_up") == Some(1.0)
    });
    // A change made there reaches routing: app2 out of service.
    alive.cli_ok(&["host", "disable", "app2"]);
    let disabled = Instant::now();
    wait("calls no longer reaching app2", || {
        let s = stream.lock().expect("lock");
        let after: Vec<_> = s.iter().filter(|(t, _)| *t > disabled).collect();
        after.len() >= 10
            && after[after.len() - 10..]
                .iter()
                .all(|(_, r)| matches!(r, Ok((_, h)) if h == "app1"))
    });
    let took = disabled.elapsed();
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("the stream's thread");
    let s = stream.lock().expect("lock");
    let failed: Vec<_> = s
        .iter()
        .filter(|(_, r)| !matches!(r, Ok((200, _))))
        .collect();
    assert!(failed.is_empty(), "calls failed: {failed:?}");
    let after_kill = s.iter().filter(|(t, _)| *t > killed).count();
    eprintln!(
        "{} calls, {after_kill} after the kill; the change reached routing in {took:?}; followed {followed}, then {alive_url}",
        s.len()
    );
    assert!(after_kill >= 10, "only {after_kill} calls after the kill");
    assert!(
        took < Duration::from_secs(10),
        "the change took {took:?} (the TTL is 60 s)"
    );
    // Lookups went on against the survivor: fresh answers, not stale ones.
    assert_eq!(front.metric("switchboard_sidecar_directory_up"), Some(1.0));
    assert_eq!(front.metric("switchboard_sidecar_serving_stale"), Some(0.0));
    drop(s);
    let mut front = front;
    let mut log = front.terminate();
    log.wait_log("following another directory server's change feed");
    log.wait_log("drained");
}

#[test]
fn directory_api_given_is_the_one_used() {
    let (d1, mut d2) = pair(&[]);
    let (dns1, dns2, api2) = (d1.dns.to_string(), d2.dns.to_string(), d2.server_url());
    let at = [
        "--directory",
        &dns1,
        "--directory",
        &dns2,
        "--directory-api",
        &api2,
    ];
    let s = sidecar_of(&[&d1, &d2], "web1", "web", None, &at, &[]);
    wait("the feed on --directory-api", || {
        s.feed_source().as_deref() == Some(api2.as_str())
            && s.metric("switchboard_sidecar_feed_up") == Some(1.0)
    });
    // Its server gone, the feed is down: it does not move to the one the zone lists.
    d2.kill9();
    wait("the feed down", || {
        s.metric("switchboard_sidecar_feed_up") == Some(0.0)
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.feed_source().as_deref(), Some(api2.as_str()));
    assert_eq!(s.metric("switchboard_sidecar_feed_up"), Some(0.0));
    // DNS goes on through the other --directory.
    let line = s.metrics();
    assert!(
        line.contains("switchboard_sidecar_directory_up 1"),
        "{line}"
    );
}

fn git_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = run(Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0"));
    assert!(
        out.status.success(),
        "git {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn a_push_takes_its_lease_and_records_its_version_past_a_dead_admin_api() {
    let d = Directory::with_zone(minimal_zone, &[]);
    // The first --directory-api refuses connections: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let (dns, live) = (d.dns.to_string(), d.server_url());
    let at = [
        "--directory",
        &dns,
        "--directory-api",
        &dead,
        "--directory-api",
        &live,
    ];
    let backend = Backend::start("repo1");
    let repo1 = sidecar_of(&[&d], "repo1", "repo,web", Some(&backend), &at, &[]);
    d.cli_ok(&["repo", "add", "r1", "--master", "repo1"]);
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    git_ok(w, &["init", "-q", "src"]);
    let src = w.join("src");
    std::fs::write(src.join("README"), "hello\n").expect("write");
    git_ok(&src, &["add", "README"]);
    git_ok(&src, &["commit", "-q", "-m", "first"]);
    let url = repo1
        .http_url("/source/r1.git")
        .replacen("http://", "http://tester:secret@", 1);
    // The master may create the repository a moment after it is added.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = run(Command::new("git")
            .args(["push", "-q", &url, "HEAD:refs/heads/main"])
            .current_dir(&src)
            .env("GIT_TERMINAL_PROMPT", "0"));
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "push failed: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The hook took the lease and recorded version 1 through the live API.
    let (code, r) = d.curl("GET", "/v1/repos/r1", &[], None);
    assert_eq!(code, 200);
    assert_eq!(r["version"], 1, "{r}");
    assert_eq!(r["versions"]["repo1"], 1, "{r}");
}
