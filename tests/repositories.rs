//! Repositories end to end: three repository hosts, each with its sidecar and a
//! real sshd whose ForceCommand is that host's `ssh-exec`; git over SSH,
//! versions, replication, failover, concurrent pushes, and refusals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use switchboard_tests::{
    minimal_zone, run, ssh_client_key, stderr, stdout, Backend, Directory, Sidecar, Sshd,
};

struct Hosts {
    d: Directory,
    hosts: Vec<(Sidecar, Sshd)>,
    key: PathBuf,
    work: tempfile::TempDir,
    _backends: Vec<Backend>,
}

const NAMES: [&str; 3] = ["repo1", "repo2", "repo3"];

fn hosts() -> Hosts {
    let d = Directory::with_zone(minimal_zone, &[]);
    let key = ssh_client_key(d.dir.path());
    let backends: Vec<Backend> = NAMES.iter().map(|n| Backend::start(n)).collect();
    let hosts = NAMES
        .iter()
        .zip(&backends)
        .map(|(name, b)| {
            let sc = d.sidecar(name, "repo", Some(b));
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
    Hosts {
        d,
        hosts,
        key,
        work: tempfile::tempdir().expect("tempdir"),
        _backends: backends,
    }
}

impl Hosts {
    fn sshd(&self, i: usize) -> &Sshd {
        &self.hosts[i].1
    }

    fn git(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=t@example.com",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_SSH_COMMAND", self.sshd(0).ssh_command(&self.key)))
    }

    fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        assert!(
            out.status.success(),
            "git {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// The work tree `name` (made on first use) with one new commit on main; returns (dir, sha).
    fn commit(&self, name: &str) -> (PathBuf, String) {
        let dir = self.work.path().join(name);
        if !dir.exists() {
            self.git_ok(self.work.path(), &["init", "-q", name]);
        }
        std::fs::write(
            dir.join("file"),
            format!("{name} {}\n", rand::random::<u64>()),
        )
        .expect("write");
        self.git_ok(&dir, &["add", "file"]);
        self.git_ok(&dir, &["commit", "-q", "-m", name]);
        let sha = self.git_ok(&dir, &["rev-parse", "HEAD"]).trim().to_string();
        (dir, sha)
    }

    fn versions(&self) -> BTreeMap<String, u64> {
        let v: serde_json::Value =
            serde_json::from_str(&self.d.cli_ok(&["--json", "repo", "show", "r1"])).expect("json");
        v["versions"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn master_version(&self) -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&self.d.cli_ok(&["--json", "repo", "show", "r1"])).expect("json");
        v["version"].as_u64().unwrap_or(0)
    }

    /// Waits until every host of r1 records the master's version.
    fn wait_converged(&self) -> u64 {
        let mut last = BTreeMap::new();
        self.d
            .wait_for("every replica to reach the master's version", || {
                last = self.versions();
                let m = self.master_version();
                last.len() == 3 && last.values().all(|v| *v == m)
            });
        self.master_version()
    }

    fn has_commit(&self, host: usize, sha: &str) -> bool {
        let repo = self.hosts[host].0.repos.join("r1.git");
        run(Command::new("git").arg("--git-dir").arg(&repo).args([
            "cat-file",
            "-e",
            &format!("{sha}^{{commit}}"),
        ]))
        .status
        .success()
    }

    /// `ssh -p PORT 127.0.0.1 COMMAND` through host `i`, with `input` on stdin.
    fn ssh(&self, i: usize, command: &str, input: &str) -> std::process::Output {
        let mut cmd = Command::new("ssh");
        let base = self.sshd(i).ssh_command(&self.key);
        cmd.args(base.split_whitespace().skip(1)).args([
            "-p",
            &self.sshd(i).port.to_string(),
            "127.0.0.1",
            command,
        ]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("ssh");
        if let Some(mut si) = child.stdin.take() {
            use std::io::Write;
            let _ = si.write_all(input.as_bytes());
        }
        child.wait_with_output().expect("ssh output")
    }
}

#[test]
fn push_and_clone_over_ssh_through_any_host_and_every_replica_catches_up() {
    let h = hosts();
    // Pushed through a replica: carried to the master, repo1.
    let (src, first) = h.commit("src");
    h.git_ok(&src, &["push", "-q", &h.sshd(1).url("r1"), "main"]);
    assert!(h.has_commit(0, &first), "the master has the push");
    assert_eq!(h.versions()["repo1"], 1, "the push is one write");
    h.wait_converged();
    for (i, name) in NAMES.iter().enumerate() {
        assert!(h.has_commit(i, &first), "{name} has the commit");
    }
    // Clones through every host, in each form git sends the path.
    for (i, path) in [(0, "r1"), (1, "r1.git"), (2, "source/r1.git")] {
        let name = format!("clone{i}");
        h.git_ok(h.work.path(), &["clone", "-q", &h.sshd(i).url(path), &name]);
        assert_eq!(
            h.git_ok(&h.work.path().join(&name), &["rev-parse", "HEAD"])
                .trim(),
            first
        );
    }
    // Read after write: a clone through a replica right after a push sees it.
    for round in 0..3 {
        let (src, sha) = h.commit("src");
        h.git_ok(&src, &["push", "-q", &h.sshd(0).url("r1"), "main"]);
        let name = format!("after{round}");
        h.git_ok(
            h.work.path(),
            &["clone", "-q", &h.sshd(2 - round % 2).url("r1"), &name],
        );
        assert_eq!(
            h.git_ok(&h.work.path().join(&name), &["rev-parse", "HEAD"])
                .trim(),
            sha,
            "round {round}"
        );
    }
    assert_eq!(h.wait_converged(), 4);
}

#[test]
fn failover_promotes_a_replica_and_the_old_master_catches_up() {
    let mut h = hosts();
    let (src, first) = h.commit("src");
    h.git_ok(&src, &["push", "-q", &h.sshd(0).url("r1"), "main"]);
    h.wait_converged();

    // The master goes away; its clients' writes fail clearly, never to a replica.
    h.hosts[0].0.kill();
    h.d.cli_ok(&["host", "disable", "repo1"]);
    let (src, second) = h.commit("src");
    let out = h.git(&src, &["push", "-q", &h.sshd(2).url("r1"), "main"]);
    assert!(
        !out.status.success(),
        "a write with no master available was accepted"
    );
    assert!(
        stderr(&out).contains("master of r1 is unavailable"),
        "{}",
        stderr(&out)
    );

    // An admin promotes repo2 (up to date: no force needed) and writes resume.
    h.d.cli_ok(&["repo", "promote", "r1", "repo2"]);
    h.git_ok(&src, &["push", "-q", &h.sshd(2).url("r1"), "main"]);
    assert!(h.has_commit(1, &second), "the new master has the push");
    assert!(!h.has_commit(0, &second));

    // The old master comes back as a replica and catches up.
    h.d.cli_ok(&["host", "enable", "repo1"]);
    h.hosts[0].0.restart();
    let v = h.wait_converged();
    assert_eq!(v, 2);
    assert!(h.has_commit(0, &second) && h.has_commit(0, &first));

    // A stale replica: stop repo3, write twice, then try to promote it.
    h.hosts[2].0.kill();
    h.d.cli_ok(&["host", "disable", "repo3"]);
    for _ in 0..2 {
        let (src, _) = h.commit("src");
        h.git_ok(&src, &["push", "-q", &h.sshd(1).url("r1"), "main"]);
    }
    let refused = h.d.cli(&["repo", "promote", "r1", "repo3"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    h.d.cli_ok(&["repo", "promote", "r1", "repo3", "--force"]);
    let show: serde_json::Value =
        serde_json::from_str(&h.d.cli_ok(&["--json", "repo", "show", "r1"])).expect("json");
    assert_eq!(show["master"], "repo3");
    assert_eq!(show["lost"][0]["old_master"], "repo2");
    assert_eq!(
        (
            show["lost"][0]["from"].as_u64(),
            show["lost"][0]["to"].as_u64()
        ),
        (Some(3), Some(4))
    );
}

#[test]
fn concurrent_pushes_lose_no_acknowledged_commit() {
    let h = hosts();
    let (src, base) = h.commit("base");
    h.git_ok(&src, &["push", "-q", &h.sshd(0).url("r1"), "main"]);
    // 20 clients push at once, each its own branch, entering through any host.
    let mut prepared = Vec::new();
    for i in 0..20 {
        let dir = h.work.path().join(format!("c{i}"));
        h.git_ok(
            h.work.path(),
            &["clone", "-q", &h.sshd(0).url("r1"), &format!("c{i}")],
        );
        std::fs::write(dir.join(format!("f{i}")), format!("{i}\n")).expect("write");
        h.git_ok(&dir, &["add", "."]);
        h.git_ok(&dir, &["commit", "-q", "-m", &format!("c{i}")]);
        let sha = h.git_ok(&dir, &["rev-parse", "HEAD"]).trim().to_string();
        prepared.push((dir, sha, i));
    }
    let pushes: Vec<_> = prepared
        .iter()
        .map(|(dir, sha, i)| {
            let url = h.sshd(i % 3).url("r1");
            let child = Command::new("git")
                .args(["push", "-q", &url, &format!("HEAD:refs/heads/b{i}")])
                .current_dir(dir)
                .env("GIT_SSH_COMMAND", h.sshd(0).ssh_command(&h.key))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("git push");
            (child, sha.clone())
        })
        .collect();
    let mut acknowledged = vec![base];
    for (child, sha) in pushes {
        let out = child.wait_with_output().expect("push");
        if out.status.success() {
            acknowledged.push(sha);
        } else {
            eprintln!(
                "a push was refused: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(
        acknowledged.len() > 15,
        "most pushes succeed: {}",
        acknowledged.len()
    );
    let v = h.wait_converged();
    assert_eq!(
        v as usize,
        acknowledged.len(),
        "one version per acknowledged write"
    );
    for (i, name) in NAMES.iter().enumerate() {
        for sha in &acknowledged {
            assert!(
                h.has_commit(i, sha),
                "{name} lacks acknowledged commit {sha}"
            );
        }
    }
}

#[test]
fn malformed_ssh_commands_and_traversal_are_refused() {
    let h = hosts();
    for bad in [
        "ls -la",
        "git-upload-pack '../etc'",
        "git-upload-pack '/etc/passwd'",
        "git-upload-pack 'r1'; id",
        "git-receive-pack '/source/../../r1.git'",
        "git-upload-pack r1",
        "conduit $(id)",
        "scp -t /tmp",
    ] {
        let out = h.ssh(1, bad, "");
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = stderr(&out);
        assert!(
            err.starts_with("switchboard: ") && err.trim().lines().count() == 1,
            "{bad:?}: one line: {err}"
        );
        assert!(stdout(&out).is_empty());
    }
    let out = h.ssh(1, "git-upload-pack 'nosuch'", "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no repository nosuch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn conduit_over_ssh_answers_from_a_host_of_the_repository() {
    let h = hosts();
    let out = h.ssh(
        2,
        "conduit diffusion.querycommits",
        r#"{"repository": "r1", "limit": 1}"#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert!(
        NAMES.contains(&v["host"].as_str().unwrap_or_default()),
        "{v}"
    );
    assert_eq!(v["path"], "/api/diffusion.querycommits");
    // A write lands on the master.
    let out = h.ssh(
        2,
        "conduit diffusion.repository.edit",
        r#"{"repository": "r1"}"#,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(v["host"], "repo1", "{v}");
    // Bad input: a clear refusal.
    let out = h.ssh(2, "conduit diffusion.querycommits", "not json");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
}

/// Sidecars killed with SIGKILL at random moments of replicated pushes (the
/// master's, a tunnelling replica's, a catching-up replica's), and started
/// again: no acknowledged push is lost, and no host is ever recorded at a
/// version whose acknowledged commits it does not have.
#[test]
fn sidecars_killed_mid_push_lose_nothing_and_claim_nothing_they_lack() {
    let mut h = hosts();
    let (src, first) = h.commit("src");
    h.git_ok(&src, &["push", "-q", &h.sshd(0).url("r1"), "main"]);
    h.wait_converged();
    // (version the master was at after the push, commit) for every acknowledged push.
    let mut acked: Vec<(u64, String)> = vec![(h.master_version(), first)];
    let check_claims = |h: &Hosts, acked: &[(u64, String)]| {
        for (host, v) in h.versions() {
            let i = NAMES.iter().position(|n| *n == host).expect("a known host");
            for (at, sha) in acked.iter().filter(|(at, _)| *at <= v) {
                assert!(
                    h.has_commit(i, sha),
                    "{host} is recorded at version {v} but lacks {sha} (version {at})"
                );
            }
        }
    };
    for round in 0..12 {
        let (src, sha) = h.commit("src");
        let via = 1 + round % 2;
        let mut push = Command::new("git")
            .args(["push", "-q", &h.sshd(via).url("r1"), "main"])
            .current_dir(&src)
            .env("GIT_SSH_COMMAND", h.sshd(0).ssh_command(&h.key))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("git push");
        let victim = rand::random::<usize>() % 3;
        std::thread::sleep(std::time::Duration::from_millis(
            rand::random::<u64>() % 300,
        ));
        h.hosts[victim].0.kill();
        h.hosts[victim].0.restart();
        let status = push.wait().expect("push finished");
        if status.success() {
            acked.push((h.master_version(), sha));
        } else {
            // Not acknowledged: the work tree goes back to what the master has.
            let _ = h.git(
                &src,
                &["pull", "-q", "--rebase", &h.sshd(0).url("r1"), "main"],
            );
        }
        check_claims(&h, &acked);
    }
    println!(
        "mid-push kills: {} of 12 pushes acknowledged",
        acked.len() - 1
    );
    assert!(
        acked.len() >= 4,
        "only {} pushes acknowledged",
        acked.len() - 1
    );
    h.wait_converged();
    check_claims(&h, &acked);
    for (i, name) in NAMES.iter().enumerate() {
        for (_, sha) in &acked {
            assert!(h.has_commit(i, sha), "acknowledged {sha} lost on {name}");
        }
    }
}
