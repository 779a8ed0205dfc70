//! Encryption in transit (`--cluster-tls`) end to end: real sidecars speaking
//! TLS 1.3 to each other, pinned to the keys the directory publishes; an
//! `openssl s_server` playing an impostor (a certificate of a key nobody has,
//! and a valid certificate of another host); `curl` as a plain or TLS caller;
//! and hosts with the flag on one side only.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_tests::{
    free_port, keygen, minimal_zone, plain_log_line, run, ssh_client_key, stderr, stdout, Backend,
    Directory, Sidecar, Sshd,
};

const TLS: &[&str] = &["--cluster-tls"];

fn git(dir: &Path, args: &[&str], ssh: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("git");
    cmd.args([
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.com",
        "-c",
        "init.defaultBranch=main",
    ])
    .args(args)
    .current_dir(dir)
    .env("GIT_TERMINAL_PROMPT", "0");
    if let Some(s) = ssh {
        cmd.env("GIT_SSH_COMMAND", s);
    }
    run(&mut cmd)
}

fn git_ok(dir: &Path, args: &[&str], ssh: Option<&str>) -> String {
    let out = git(dir, args, ssh);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// A POST of a Conduit call through `url`: (status, JSON, seconds taken).
fn conduit(url: &str, body: &str) -> (u16, serde_json::Value, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let out = run(Command::new("curl")
        .args(["-s", "-m", "15", "-o"])
        .arg(dir.path().join("out"))
        .args(["-w", "%{http_code}", "--data-binary", body, url]));
    let took = t.elapsed().as_secs_f64();
    let code = stdout(&out).trim().parse().unwrap_or(0);
    let v = serde_json::from_slice(&std::fs::read(dir.path().join("out")).unwrap_or_default())
        .unwrap_or_default();
    (code, v, took)
}

fn logged(log: &Arc<Mutex<Vec<String>>>, what: &str) -> bool {
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|l| l.contains(what))
}

fn commit(w: &Path) -> String {
    git_ok(w, &["init", "-q", "src"], None);
    let src = w.join("src");
    std::fs::write(src.join("README"), "hello\n").expect("write");
    git_ok(&src, &["add", "README"], None);
    git_ok(&src, &["commit", "-q", "-m", "first"], None);
    git_ok(&src, &["rev-parse", "HEAD"], None)
        .trim()
        .to_string()
}

fn has_commit(s: &Sidecar, repo: &str, sha: &str) -> bool {
    run(Command::new("git")
        .arg("--git-dir")
        .arg(s.repos.join(format!("{repo}.git")))
        .args(["cat-file", "-e", &format!("{sha}^{{commit}}")]))
    .status
    .success()
}

#[test]
fn hosts_with_cluster_tls_route_conduit_git_replication_and_ssh_over_tls() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let key = ssh_client_key(d.dir.path());
    let backends: Vec<Backend> = ["web1", "repo1", "repo2"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    let web1 = d.sidecar_with("web1", "web", Some(&backends[0]), TLS);
    let repo1 = d.sidecar_with("repo1", "repo", Some(&backends[1]), TLS);
    let repo2 = d.sidecar_with("repo2", "repo", Some(&backends[2]), TLS);
    d.cli_ok(&[
        "repo",
        "add",
        "r1",
        "--master",
        "repo1",
        "--replicas",
        "repo2",
    ]);

    // A Conduit call for r1 through web1 lands on repo1, over TLS.
    let (code, v, _) = conduit(
        &web1.http_url("/api/diffusion.querycommits"),
        "repository=r1&limit=1",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["host"], "repo1", "{v}");

    // git over HTTP through web1: the push lands on the master, the replica
    // fetches it (loopback proxy -> forwarder, the same channel), a clone works.
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let head = commit(w);
    let authed = |s: &Sidecar| {
        s.http_url("/source/r1.git")
            .replacen("http://", "http://tester:secret@", 1)
    };
    git_ok(
        &w.join("src"),
        &["push", "-q", &authed(&web1), "HEAD:refs/heads/main"],
        None,
    );
    assert!(has_commit(&repo1, "r1", &head));
    d.wait_for("the replica repo2 to fetch the push over TLS", || {
        has_commit(&repo2, "r1", &head)
    });
    git_ok(
        w,
        &["clone", "-q", "-b", "main", &authed(&web1), "via-web1"],
        None,
    );
    assert_eq!(
        git_ok(&w.join("via-web1"), &["rev-parse", "HEAD"], None).trim(),
        head
    );

    // An SSH session on web1 tunnelled to repo1 (ssh-exec --cluster-tls),
    // ed25519-signed: for its one call a handshake would cost more.
    let series = |s: &Sidecar, name: &str| s.metric(name).unwrap_or(0.0);
    let answered = "switchboard_sidecar_session_handshakes_total{side=\"answered\"}";
    let by_key = "switchboard_sidecar_cluster_calls_total{direction=\"verified\",auth=\"ed25519\"}";
    let (answered_before, by_key_before) = (series(&repo1, answered), series(&repo1, by_key));
    let sshd = Sshd::start(d.dir.path(), "web1", &web1.ssh_exec_command(), &key);
    assert!(web1.ssh_exec_command().contains("--cluster-tls"));
    let ssh = sshd.ssh_command(&key);
    git_ok(
        w,
        &["clone", "-q", "-b", "main", &sshd.url("r1"), "via-ssh"],
        Some(&ssh),
    );
    assert_eq!(
        git_ok(&w.join("via-ssh"), &["rev-parse", "HEAD"], None).trim(),
        head
    );
    assert_eq!(
        series(&repo1, answered),
        answered_before,
        "{}",
        repo1.metrics()
    );
    assert!(
        series(&repo1, by_key) > by_key_before,
        "{}",
        repo1.metrics()
    );

    // The cluster listeners speak TLS only: a plain HTTP call is refused in
    // one line that says so.
    let out = run(Command::new("curl")
        .args(["-s", "-m", "10", "-i"])
        .arg(repo1.cluster_url("/api/user.whoami")));
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 421"), "{text}");
    assert!(
        text.contains("x-switchboard-reason: tls-required"),
        "{text}"
    );
    assert!(text.contains("speaks TLS only"), "{text}");
    assert!(
        repo1
            .metric("switchboard_sidecar_signature_refusals_total{reason=\"tls-required\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        repo1.metrics()
    );
    // So every call above reached repo1 over TLS; the metrics scrape alone is
    // still served in plain HTTP.
    assert!(
        repo1
            .metric("switchboard_sidecar_requests_total{kind=\"cluster\",outcome=\"accepted\"}")
            .unwrap_or(0.0)
            >= 3.0,
        "{}",
        repo1.metrics()
    );
    // Inside TLS the calls are session-signed: the handshake went over TLS too
    // (it once went in plain HTTP, was refused, and every call fell back to
    // ed25519).
    assert!(
        series(
            &repo1,
            "switchboard_sidecar_session_handshakes_total{side=\"answered\"}"
        ) >= 1.0,
        "{}",
        repo1.metrics()
    );
    assert!(
        series(
            &repo1,
            "switchboard_sidecar_cluster_calls_total{direction=\"verified\",auth=\"session\"}"
        ) >= 1.0,
        "{}",
        repo1.metrics()
    );
    assert_eq!(
        series(
            &web1,
            "switchboard_sidecar_cluster_calls_total{direction=\"signed\",auth=\"ed25519\"}"
        ),
        series(
            &web1,
            "switchboard_sidecar_session_handshakes_total{side=\"made\"}"
        ),
        "web1 signed only its handshakes with ed25519: {}",
        web1.metrics()
    );
}

/// An `openssl s_server` on a free port presenting the certificate made from
/// `key` (a PEM private key), answering with its own page.
struct Impostor {
    child: Child,
    port: u16,
}

impl Impostor {
    fn start(dir: &Path, name: &str, key: &Path) -> Impostor {
        let cert = dir.join(format!("{name}-cert.pem"));
        let out = run(Command::new("openssl")
            .args(["req", "-x509", "-days", "1", "-subj"])
            .arg(format!("/CN={name}.node.cluster.example"))
            .arg("-key")
            .arg(key)
            .arg("-out")
            .arg(&cert));
        assert!(out.status.success(), "openssl req: {}", stderr(&out));
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-tls1_3", "-www", "-quiet", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "s_server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Impostor { child, port }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_peer_whose_certificate_is_not_the_directory_key_of_the_host_called_is_refused() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let backend = Backend::start("web1");
    let mut web1 = d.sidecar_with("web1", "web", Some(&backend), TLS);
    let repo1 = d.sidecar_with("repo1", "repo", None, TLS);
    let log = web1.keep_log();
    let dir = d.dir.path();

    // "fake1" is registered with a key of its own, but its cluster port is an
    // impostor whose certificate holds a key nobody in the directory has.
    let (_, fake_pub, _) = keygen(dir, "fake1-real");
    let (stranger, _, _) = keygen(dir, "stranger");
    let one = Impostor::start(dir, "fake1", &stranger);
    // "fake2": the impostor presents repo1's own, valid certificate key: right
    // key for repo1, but web1 meant to reach fake2.
    let (_, fake2_pub, _) = keygen(dir, "fake2-real");
    let two = Impostor::start(dir, "fake2", &repo1.key);
    for (host, public, port, repo) in [
        ("fake1", &fake_pub, one.port, "rf1"),
        ("fake2", &fake2_pub, two.port, "rf2"),
    ] {
        d.cli_ok(&[
            "host",
            "add",
            host,
            "--addr",
            "127.0.0.1",
            "--pubkey",
            public,
            "--roles",
            "repo",
        ]);
        d.cli_ok(&["bind", "add", host, "switchboard", &port.to_string()]);
        d.cli_ok(&["repo", "add", repo, "--master", host]);
    }

    let (code, v, took) = conduit(
        &web1.http_url("/api/diffusion.querycommits"),
        "repository=rf1",
    );
    assert_eq!(code, 502, "{v}");
    assert!(took < 10.0, "took {took} s");
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("refused fake1's TLS certificate") && msg.contains("belongs to no host"),
        "{v}"
    );
    d.wait_for("web1 to log the refusal of fake1", || {
        logged(&log, "refused fake1's TLS certificate")
    });

    let (code, v, _) = conduit(
        &web1.http_url("/api/diffusion.querycommits"),
        "repository=rf2",
    );
    assert_eq!(code, 502, "{v}");
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("we meant to reach fake2") && msg.contains("is the key of repo1"),
        "{v}"
    );
    d.wait_for("web1 to log the refusal of fake2", || {
        logged(&log, "we meant to reach fake2")
    });

    // "fake3": a certificate whose key is not ed25519 (P-256) cannot even
    // finish the handshake: the caller offers ed25519 signatures only.
    let ec = dir.join("fake3-ec.pem");
    let out = run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&ec));
    assert!(out.status.success(), "openssl genpkey: {}", stderr(&out));
    let three = Impostor::start(dir, "fake3", &ec);
    let (_, fake3_pub, _) = keygen(dir, "fake3-real");
    d.cli_ok(&[
        "host",
        "add",
        "fake3",
        "--addr",
        "127.0.0.1",
        "--pubkey",
        &fake3_pub,
        "--roles",
        "repo",
    ]);
    d.cli_ok(&[
        "bind",
        "add",
        "fake3",
        "switchboard",
        &three.port.to_string(),
    ]);
    d.cli_ok(&["repo", "add", "rf3", "--master", "fake3"]);
    let (code, v, took) = conduit(
        &web1.http_url("/api/diffusion.querycommits"),
        "repository=rf3",
    );
    assert_eq!(code, 502, "{v}");
    assert!(took < 10.0, "took {took} s");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("TLS handshake with fake3 failed"),
        "{v}"
    );

    // The real repo1 is still reached.
    d.cli_ok(&["repo", "add", "ok", "--master", "repo1"]);
    let (code, v, _) = conduit(
        &web1.http_url("/api/diffusion.querycommits"),
        "repository=ok",
    );
    // (repo1 has no web backend: it says so, so the call got through.)
    assert_eq!(
        (code, v["reason"].as_str()),
        (502, Some("no-web-backend")),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap_or_default().contains("repo1"),
        "{v}"
    );
    web1.kill();
}

#[test]
fn a_tls_caller_whose_key_is_no_hosts_is_refused_by_the_listener() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let mut repo1 = d.sidecar_with("repo1", "repo", None, TLS);
    let log = repo1.keep_log();
    let dir = d.dir.path();
    let (stranger, _, _) = keygen(dir, "stranger");
    let cert = dir.join("stranger-cert.pem");
    let out = run(Command::new("openssl")
        .args(["req", "-x509", "-days", "1", "-subj", "/CN=stranger"])
        .arg("-key")
        .arg(&stranger)
        .arg("-out")
        .arg(&cert));
    assert!(out.status.success(), "openssl req: {}", stderr(&out));
    let url = format!("https://{}/api/user.whoami", repo1.cluster);

    // With a certificate of a key no host has: the handshake completes (the
    // key is proven), then the listener refuses in one line and closes.
    let out = run(Command::new("curl")
        .args(["-s", "-k", "-m", "10", "-i", "--tlsv1.3", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&stranger)
        .arg(&url));
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}{}", stderr(&out));
    assert!(text.contains("x-switchboard-reason: unknown-key"), "{text}");
    assert!(
        text.contains("belongs to no host in the directory"),
        "{text}"
    );
    d.wait_for("repo1 to log the refusal", || {
        logged(&log, "refused the TLS caller")
    });

    // A stranger's flood of handshakes: each is refused and counted, but the
    // log gets a few lines a second, and a later line says how many it left out.
    let lines = |log: &Arc<Mutex<Vec<String>>>| -> Vec<String> {
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.contains("refused the TLS caller"))
            .map(|l| plain_log_line(l))
            .collect()
    };
    let before = lines(&log).len();
    let started = std::time::Instant::now();
    const FLOOD: usize = 60;
    let out = run(Command::new("curl")
        .args(["-s", "-k", "-m", "60", "--tlsv1.3", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&stranger)
        .args(std::iter::repeat_n(&url, FLOOD)));
    let elapsed = started.elapsed().as_secs() as usize;
    assert_eq!(
        stdout(&out).matches("unknown-key").count(),
        FLOOD,
        "{}",
        stderr(&out)
    );
    d.wait_for("every refusal counted", || {
        repo1
            .metric("switchboard_sidecar_signature_refusals_total{reason=\"unknown-key\"}")
            .unwrap_or(0.0)
            >= (FLOOD + 1) as f64
    });
    let logged_now = lines(&log).len() - before;
    assert!(
        logged_now <= 10 * (elapsed + 2),
        "{logged_now} lines for {FLOOD} refusals in {elapsed} s"
    );
    // Bursts of 15, so some are left out even on a slow machine, and a later
    // one is logged with the count.
    d.wait_for("a line saying how many were left out", || {
        let _ = run(Command::new("curl")
            .args(["-s", "-k", "-m", "10", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&stranger)
            .args(std::iter::repeat_n(&url, 15)));
        lines(&log)
            .iter()
            .any(|l| l.contains("skipped=") && !l.contains("skipped=0"))
    });

    // Without a certificate: no connection at all.
    let out = run(Command::new("curl")
        .args([
            "-s",
            "-k",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(&url));
    assert!(
        !out.status.success(),
        "a caller without a certificate got in"
    );
    assert_eq!(stdout(&out).trim(), "000");

    // A caller with a host's own key (repo1's, known and available) gets in
    // the TLS door, and is then checked as every call is: unsigned, refused.
    let own = dir.join("repo1-cert.pem");
    let out = run(Command::new("openssl")
        .args(["req", "-x509", "-days", "1", "-subj", "/CN=repo1"])
        .arg("-key")
        .arg(&repo1.key)
        .arg("-out")
        .arg(&own));
    assert!(out.status.success(), "openssl req: {}", stderr(&out));
    let out = run(Command::new("curl")
        .args(["-s", "-k", "-m", "10", "-i", "--cert"])
        .arg(&own)
        .arg("--key")
        .arg(&repo1.key)
        .arg(&url));
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}{}", stderr(&out));

    // The key exchange is X25519 alone (rustls' ring list starts with P-384,
    // several times the cost per connection): the same caller offering only
    // P-384 finds no common group; offering X25519 it gets in as above.
    for (curve, gets_in) in [("P-384", false), ("X25519", true)] {
        let out = run(Command::new("curl")
            .args([
                "-s",
                "-k",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["--tlsv1.3", "--curves", curve, "--cert"])
            .arg(&own)
            .arg("--key")
            .arg(&repo1.key)
            .arg(&url));
        let code = stdout(&out);
        assert_eq!(code.trim() == "401", gets_in, "{curve}: {code}");
    }
    repo1.kill();
}

#[test]
fn cluster_tls_on_one_side_only_fails_fast_and_says_why_on_both_sides() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let backends: Vec<Backend> = ["web1", "web2", "repo1", "repo2"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    // web1 (TLS) -> repo1 (plain), web2 (plain) -> repo2 (TLS).
    let mut web1 = d.sidecar_with("web1", "web", Some(&backends[0]), TLS);
    let mut web2 = d.sidecar_with("web2", "web", Some(&backends[1]), &[]);
    let mut repo1 = d.sidecar_with("repo1", "repo", Some(&backends[2]), &[]);
    let mut repo2 = d.sidecar_with("repo2", "repo", Some(&backends[3]), TLS);
    let logs: Vec<_> = [&mut web1, &mut web2, &mut repo1, &mut repo2]
        .into_iter()
        .map(|s| s.keep_log())
        .collect();
    d.cli_ok(&["repo", "add", "r1", "--master", "repo1"]);
    d.cli_ok(&["repo", "add", "r2", "--master", "repo2"]);

    // A TLS caller to a plain listener.
    let (code, v, took) = conduit(
        &web1.http_url("/api/diffusion.querycommits"),
        "repository=r1",
    );
    assert_eq!(code, 502, "{v}");
    assert!(took < 10.0, "took {took} s");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("repo1 answered without TLS: is --cluster-tls on there?"),
        "{v}"
    );
    d.wait_for("web1 and repo1 to say why", || {
        logged(
            &logs[0],
            "repo1 answered without TLS: is --cluster-tls on there?",
        ) && logged(&logs[2], "is --cluster-tls on there but not here?")
    });

    // A plain caller to a TLS listener.
    let (code, v, took) = conduit(
        &web2.http_url("/api/diffusion.querycommits"),
        "repository=r2",
    );
    assert_eq!(code, 421, "{v}");
    assert!(took < 10.0, "took {took} s");
    assert_eq!(v["reason"], "tls-required", "{v}");
    d.wait_for("web2 and repo2 to say why", || {
        logged(&logs[1], "turn --cluster-tls on here too")
            && logged(&logs[3], "is --cluster-tls on there?")
    });
    for s in [&mut web1, &mut web2, &mut repo1, &mut repo2] {
        s.kill();
    }
}
