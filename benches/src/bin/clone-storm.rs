//! Clones right after a push (issue 19): a directory, three repository hosts
//! (repo1 the master, repo2 and repo3 replicas), each with its sidecar and a
//! real sshd running `ssh-exec`. Each round pushes one commit through the
//! master and at once starts N clones over SSH through the replicas (half
//! each). It reports the time to the last clone, and how many fetches the
//! master served meanwhile (its `upload-pack` counter: the replicas' own
//! catch-ups, two requests each, plus every clone sent on to it), with
//! sync-before-read on (the default) and off (`--sync-timeout 0`: a replica
//! that is behind sends the read to the master, as before issue 19).
//!
//! `clone-storm [CLONES] [ROUNDS]`; binaries from `SWITCHBOARD_BIN_DIR`
//! (benches/run.sh points it at the release build).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use switchboard_tests::{minimal_zone, ssh_client_key, stderr, Directory, Git, Sidecar, Sshd};

const SERIES: &str = "switchboard_sidecar_requests_total{kind=\"upload-pack\",outcome=\"served\"}";

struct Cluster {
    d: Directory,
    hosts: Vec<(Sidecar, Sshd)>,
    key: std::path::PathBuf,
    work: tempfile::TempDir,
}

fn git(dir: &Path, ssh: &str, args: &[&str]) {
    Git::over_ssh(ssh).ok(dir, args);
}

impl Cluster {
    fn start(sync_timeout: &str) -> Cluster {
        let d = Directory::with_zone(minimal_zone, &[]);
        let key = ssh_client_key(d.dir.path());
        let hosts = ["repo1", "repo2", "repo3"]
            .iter()
            .map(|name| {
                let sc = d.sidecar_with(name, "repo", None, &["--sync-timeout", sync_timeout]);
                let sshd = Sshd::start(d.dir.path(), name, &sc.ssh_exec_command(), &key);
                (sc, sshd)
            })
            .collect();
        d.cli_ok(&[
            "repo",
            "add",
            "r1",
            "--master",
            "repo1",
            "--replicas",
            "repo2,repo3",
        ]);
        Cluster {
            d,
            hosts,
            key,
            work: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn ssh(&self) -> String {
        self.hosts[0].1.ssh_command(&self.key)
    }

    fn served(&self) -> f64 {
        self.hosts[0].0.metric(SERIES).unwrap_or(0.0)
    }

    fn versions_converged(&self) -> bool {
        let show = self.d.cli_ok(&["--json", "repo", "show", "r1"]);
        let v = |k: &str| {
            show.split(&format!("\"{k}\":"))
                .nth(1)
                .and_then(|s| s.split([',', '}']).next())
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        let m = v("repo1");
        m.is_some() && v("repo2") == m && v("repo3") == m
    }

    /// A first push of ~2 MB of content, so that a clone is not free.
    fn seed(&self) -> std::path::PathBuf {
        let src = self.work.path().join("src");
        git(self.work.path(), &self.ssh(), &["init", "-q", "src"]);
        for i in 0..64 {
            let body: String = (0..32 * 1024)
                .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
                .collect();
            std::fs::write(src.join(format!("f{i}")), body).expect("write");
        }
        git(&src, &self.ssh(), &["add", "."]);
        git(&src, &self.ssh(), &["commit", "-q", "-m", "seed"]);
        git(
            &src,
            &self.ssh(),
            &["push", "-q", &self.hosts[0].1.url("r1"), "main"],
        );
        src
    }

    fn wait_converged(&self) {
        self.d
            .wait_for("the replicas to catch up", || self.versions_converged());
    }

    /// One round: a push, then `clones` clones through the replicas at once.
    /// (seconds to the last clone, fetches the master served).
    fn round(&self, src: &Path, clones: usize, round: usize) -> (f64, f64) {
        // ~2 MB new per push: the replicas' catch-up takes a while, as a
        // busy repository's does, and reads arrive meanwhile.
        for i in 0..8 {
            let body: String = (0..256 * 1024)
                .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
                .collect();
            std::fs::write(src.join(format!("round{i}")), body).expect("write");
        }
        git(src, &self.ssh(), &["add", "."]);
        git(src, &self.ssh(), &["commit", "-q", "-m", "round"]);
        let before = self.served();
        git(
            src,
            &self.ssh(),
            &["push", "-q", &self.hosts[0].1.url("r1"), "main"],
        );
        let started = Instant::now();
        let children: Vec<_> = (0..clones)
            .map(|i| {
                let url = self.hosts[1 + i % 2].1.url("r1");
                let dir = self.work.path().join(format!("r{round}-c{i}"));
                Command::new("git")
                    .args([
                        "-c",
                        "init.defaultBranch=main",
                        "clone",
                        "-q",
                        "--bare",
                        &url,
                    ])
                    .arg(&dir)
                    .env("GIT_SSH_COMMAND", self.ssh())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("git clone")
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().expect("clone");
            assert!(out.status.success(), "clone: {}", stderr(&out));
        }
        let took = started.elapsed().as_secs_f64();
        self.wait_converged();
        let served = self.served() - before;
        for i in 0..clones {
            let _ = std::fs::remove_dir_all(self.work.path().join(format!("r{round}-c{i}")));
        }
        (took, served)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let clones: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    for (label, timeout) in [("sync-before-read", "10"), ("forward-to-master", "0")] {
        let c = Cluster::start(timeout);
        let src = c.seed();
        c.wait_converged();
        let (mut times, mut served) = (vec![], vec![]);
        for r in 0..rounds {
            let (t, s) = c.round(&src, clones, r);
            times.push(t);
            served.push(s);
        }
        println!(
            "clone-storm: {label} clones={clones} rounds={rounds} last_clone_s_median={:.3} last_clone_s_all={:?} master_fetches_median={} master_fetches_all={:?}",
            median(times.clone()),
            times.iter().map(|t| (t * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            median(served.clone()),
            served
        );
    }
}
