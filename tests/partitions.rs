//! Network partitions between real hosts: the directory and three repository
//! hosts each in their own network namespace (`ip netns`, veth pairs on a
//! bridge, each host its own address), made by the test and removed after it.
//! The master is cut off from the replicas and the directory (nftables drops
//! its packets both ways), a replica's link is made slow and lossy (`tc netem`
//! where the kernel has it, else `tbf` plus an nftables random drop), then the
//! network heals. Checked: no acknowledged push is lost, no host that is not
//! the master in the directory accepts a write, the healthy side keeps serving
//! reads, and every replica converges after healing.
//!
//! Needs root (CAP_NET_ADMIN), iproute2 and nftables: `scripts/test.sh`
//! installs them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use switchboard_tests::{bin, keygen, minimal_zone, run, stderr, stdout, wait_listening};

const NET: &str = "10.77.0";
const DIR_IP: &str = "10.77.0.10";

fn sh(args: &[&str]) -> Output {
    let out = run(Command::new(args[0]).args(&args[1..]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// The namespaces, the bridge and the processes of one test, all removed on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    tmp: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        // Whatever an earlier, killed run left behind goes first: it would hold
        // the same addresses.
        let listed = stdout(&run(Command::new("ip").args(["netns", "list"])));
        for ns in listed.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with("sbp") {
                let _ = run(Command::new("ip").args(["netns", "del", ns]));
            }
        }
        let links = stdout(&run(Command::new("ip").args(["-o", "link", "show"])));
        for l in links.lines() {
            if let Some(name) = l
                .split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n))
            {
                if name.starts_with("sbp") {
                    let _ = run(Command::new("ip").args(["link", "del", name]));
                }
            }
        }
        let prefix = format!("sbp{}", std::process::id() % 100_000);
        let lab = Lab {
            prefix,
            namespaces: vec![],
            children: vec![],
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        let br = lab.bridge();
        sh(&["ip", "link", "add", "name", &br, "type", "bridge"]);
        sh(&["ip", "addr", "add", &format!("{NET}.254/24"), "dev", &br]);
        sh(&["ip", "link", "set", &br, "up"]);
        lab
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// A namespace `short` at `NET.last`, on the bridge.
    fn host(&mut self, short: &str, last: u8) {
        let ns = self.ns(short);
        let outside = format!("{}{short}h", self.prefix);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh(&["ip", "link", "set", &outside, "master", &self.bridge()]);
        sh(&["ip", "link", "set", &outside, "up"]);
        let addr = format!("{NET}.{last}/24");
        for cmd in [
            vec!["ip", "addr", "add", &addr, "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
        ] {
            let mut full = vec!["ip", "netns", "exec", &ns];
            full.extend(cmd);
            sh(&full);
        }
    }

    /// `program args` inside namespace `short`.
    fn exec(&self, short: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(short)]).arg(program);
        c
    }

    fn spawn(&mut self, mut cmd: Command, what: &str) -> String {
        let log = std::fs::File::create(self.path(&format!("{what}.log"))).expect("log file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let line = wait_listening(&mut child, what);
        self.children.push(child);
        line
    }

    /// Drops every packet between namespace `short` and `peers` (addresses), both ways.
    fn cut(&self, short: &str, peers: &[&str]) {
        let ns = self.ns(short);
        let nft = |rule: &str| {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sh",
                "-c",
                &format!("nft {rule}"),
            ]);
        };
        nft("add table inet partition");
        nft("add chain inet partition in '{ type filter hook input priority 0; }'");
        nft("add chain inet partition out '{ type filter hook output priority 0; }'");
        for p in peers {
            nft(&format!("add rule inet partition in ip saddr {p} drop"));
            nft(&format!("add rule inet partition out ip daddr {p} drop"));
        }
    }

    fn heal(&self, short: &str) {
        let ns = self.ns(short);
        let _ = run(Command::new("ip").args([
            "netns",
            "exec",
            &ns,
            "nft",
            "delete",
            "table",
            "inet",
            "partition",
        ]));
    }

    /// Makes `short`'s link slow and lossy; returns how.
    fn degrade(&self, short: &str) -> &'static str {
        let ns = self.ns(short);
        let netem = run(Command::new("ip").args([
            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay",
            "40ms", "10ms", "loss", "5%",
        ]));
        let how = if netem.status.success() {
            "netem delay 40ms±10ms, loss 5%"
        } else {
            // This kernel has no sch_netem: queueing delay from a slow token
            // bucket, and random loss from nftables.
            sh(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                "rate", "2mbit", "burst", "16kb", "latency", "400ms",
            ]);
            "tbf 2 Mbit/s (queueing delay) and nftables random loss 5%"
        };
        let nft = |rule: &str| {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sh",
                "-c",
                &format!("nft {rule}"),
            ]);
        };
        nft("add table inet lossy");
        nft("add chain inet lossy out '{ type filter hook output priority 0; }'");
        if !netem.status.success() {
            nft("add rule inet lossy out meta l4proto tcp numgen random mod 100 lt 5 drop");
        }
        how
    }

    fn restore(&self, short: &str) {
        let ns = self.ns(short);
        let _ = run(Command::new("ip").args([
            "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
        ]));
        let _ = run(Command::new("ip").args([
            "netns", "exec", &ns, "nft", "delete", "table", "inet", "lossy",
        ]));
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

fn git(dir: &Path, args: &[&str]) -> Output {
    run(Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "http.lowSpeedLimit=1",
            "-c",
            "http.lowSpeedTime=15",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0"))
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out).trim().to_string()
}

/// `main` in host `h`'s copy of r1, read from its disk.
fn main_of(lab: &Lab, h: &str) -> Option<String> {
    let dir = lab.path(&format!("repos-{h}/r1.git"));
    let out = run(Command::new("git").arg("--git-dir").arg(&dir).args([
        "rev-parse",
        "--verify",
        "-q",
        "main",
    ]));
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

#[test]
fn a_partitioned_master_loses_nothing_acknowledged_and_accepts_no_write() {
    let mut lab = Lab::new();
    lab.host("d", 10);
    let hosts = [("h1", 11u8), ("h2", 12), ("h3", 13)];
    for (h, last) in hosts {
        lab.host(h, last);
    }
    let ip = |h: &str| -> String {
        let last = hosts
            .iter()
            .find(|(n, _)| *n == h)
            .map(|(_, l)| *l)
            .expect("host");
        format!("{NET}.{last}")
    };

    // The directory, in its namespace.
    let (admin, admin_pub, _) = keygen(lab.tmp.path(), "admin");
    std::fs::create_dir_all(lab.path("zones")).expect("mkdir");
    std::fs::write(
        lab.path("zones/cluster.example.zone"),
        minimal_zone(&admin_pub),
    )
    .expect("zone");
    let mut serve = lab.exec("d", &bin("switchboard-directory"));
    serve
        .arg("serve")
        .arg("--zones")
        .arg(lab.path("zones"))
        .arg("--data")
        .arg(lab.path("data"))
        .args([
            "--dns",
            &format!("{DIR_IP}:5353"),
            "--http",
            &format!("{DIR_IP}:8053"),
        ]);
    lab.spawn(serve, "directory");
    let api = format!("http://{DIR_IP}:8053");
    let cli = |args: &[&str]| -> Output {
        run(Command::new(bin("switchboard-directory"))
            .args(["--server", &api, "--key"])
            .arg(&admin)
            .args(args))
    };
    let cli_ok = |args: &[&str]| {
        let out = cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };

    // Three repository hosts, each with a web backend (the git authenticator)
    // and a sidecar in its own namespace.
    for (h, _) in hosts {
        let backend = lab.spawn(
            {
                let mut c = lab.exec(h, &bin("echo-backend"));
                c.arg(h);
                c
            },
            &format!("echo-backend-{h}"),
        );
        let backend_addr = backend
            .split_whitespace()
            .nth(1)
            .expect("backend address")
            .to_string();
        let (key, pubkey, _) = keygen(lab.tmp.path(), h);
        cli_ok(&[
            "host",
            "add",
            h,
            "--addr",
            &ip(h),
            "--pubkey",
            &pubkey,
            "--roles",
            "repo,web",
        ]);
        cli_ok(&["bind", "add", h, "switchboard", "7443"]);
        let mut sidecar = lab.exec(h, &bin("switchboard-sidecar"));
        sidecar
            .arg("run")
            .arg("--key")
            .arg(&key)
            .args([
                "--directory",
                &format!("{DIR_IP}:5353"),
                "--directory-api",
                &api,
            ])
            .args(["--zone", "cluster.example."])
            .arg("--repos")
            .arg(lab.path(&format!("repos-{h}")))
            .args(["--web-backend", &format!("http://{backend_addr}")])
            .args([
                "--http",
                &format!("{}:8080", ip(h)),
                "--cluster",
                &format!("{}:7443", ip(h)),
            ]);
        lab.spawn(sidecar, h);
    }
    cli_ok(&["repo", "add", "r1", "--master", "h1", "--replicas", "h2,h3"]);

    let url = |h: &str| format!("http://tester:secret@{}:8080/source/r1.git", ip(h));
    let work = lab.path("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git_ok(&work, &["init", "-q"]);
    let mut acked: Vec<String> = vec![];
    let mut n = 0;
    let mut commit = |work: &Path| {
        n += 1;
        std::fs::write(work.join("file"), format!("{n}\n")).expect("write");
        git_ok(work, &["add", "file"]);
        git_ok(work, &["commit", "-q", "-m", &format!("c{n}")]);
        git_ok(work, &["rev-parse", "HEAD"])
    };
    let push =
        |work: &Path, via: &str| git(work, &["push", "-q", &url(via), "HEAD:refs/heads/main"]);
    // Converged: every host has the commit on disk, and the directory counts
    // every host as current (it records a replica's version only for what it
    // fetched, so a copy can be on disk before the directory says so).
    let readers = || -> Vec<String> {
        let shown = stdout(&cli(&["--json", "repo", "show", "r1"]));
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap_or_default();
        let mut r: Vec<String> = v["readers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        r.sort();
        r
    };
    let converged = |lab: &Lab, want: &str| {
        hosts
            .iter()
            .all(|(h, _)| main_of(lab, h).as_deref() == Some(want))
            && readers() == ["h1", "h2", "h3"]
    };

    // 1. Healthy: pushes through a replica land on the master; replicas follow.
    for _ in 0..3 {
        let c = commit(&work);
        let out = push(&work, "h2");
        assert!(
            out.status.success(),
            "push failed while healthy: {}",
            stderr(&out)
        );
        acked.push(c);
    }
    let last = acked.last().cloned().expect("acked");
    wait_for(
        "every replica at the master's commit",
        Duration::from_secs(30),
        || converged(&lab, &last),
    );

    // 2. The master is cut off from the replicas and the directory.
    lab.cut("h1", &[DIR_IP, &ip("h2"), &ip("h3")]);
    let c = commit(&work);
    let out = push(&work, "h3");
    assert!(
        !out.status.success(),
        "a push through h3 was acknowledged with the master unreachable"
    );
    let _ = c;
    git_ok(&work, &["reset", "-q", "--hard", &last]);
    // The healthy side keeps serving reads.
    for h in ["h2", "h3"] {
        let out = git(&work, &["ls-remote", &url(h), "refs/heads/main"]);
        if !out.status.success() {
            let log = std::fs::read_to_string(lab.path(&format!("{h}.log"))).unwrap_or_default();
            panic!(
                "reads through {h} during the partition failed: {}\n{log}",
                stderr(&out)
            );
        }
        let heads = stdout(&out);
        assert!(
            heads.starts_with(&last),
            "reads through {h} during the partition: {heads}"
        );
    }
    // The cut-off master cannot take its write lease, so it accepts no write.
    let c = commit(&work);
    let out = push(&work, "h1");
    assert!(
        !out.status.success(),
        "the partitioned master acknowledged a push"
    );
    assert_eq!(
        main_of(&lab, "h1").as_deref(),
        Some(last.as_str()),
        "h1 moved without its lease"
    );
    let _ = c;
    git_ok(&work, &["reset", "-q", "--hard", &last]);

    // 3. The operator promotes a current replica; writes go on through the others,
    //    also over a slow, lossy link.
    cli_ok(&["repo", "promote", "r1", "h2"]);
    for via in ["h3", "h2"] {
        let c = commit(&work);
        let out = push(&work, via);
        assert!(
            out.status.success(),
            "push through {via} after promotion: {}",
            stderr(&out)
        );
        acked.push(c);
    }
    let how = lab.degrade("h3");
    for _ in 0..2 {
        let c = commit(&work);
        let out = push(&work, "h3");
        assert!(
            out.status.success(),
            "push over a degraded link ({how}): {}",
            stderr(&out)
        );
        acked.push(c);
    }
    lab.restore("h3");
    // The deposed master, still cut off, still refuses writes.
    let c = commit(&work);
    assert!(
        !push(&work, "h1").status.success(),
        "the deposed master acknowledged a push"
    );
    let _ = c;
    let last = acked.last().cloned().expect("acked");
    git_ok(&work, &["reset", "-q", "--hard", &last]);
    assert_ne!(main_of(&lab, "h1").as_deref(), Some(last.as_str()));

    // 4. Heal: the old master learns it is a replica and catches up; all converge.
    lab.heal("h1");
    wait_for(
        "every host at the new master's commit after healing",
        Duration::from_secs(60),
        || converged(&lab, &last),
    );
    // No acknowledged push is lost anywhere.
    for (h, _) in hosts {
        let dir = lab.path(&format!("repos-{h}/r1.git"));
        for c in &acked {
            let ok = run(Command::new("git").arg("--git-dir").arg(&dir).args([
                "merge-base",
                "--is-ancestor",
                c,
                "main",
            ]));
            assert!(
                ok.status.success(),
                "acknowledged commit {c} missing on {h}"
            );
        }
    }
    // And the directory agrees: every host at the master's version.
    let shown = stdout(&cli(&["--json", "repo", "show", "r1"]));
    let v: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(v["master"].as_str(), Some("h2"), "{v}");
    println!(
        "partitions: {} acknowledged pushes survived; degraded link: {how}",
        acked.len()
    );
}
