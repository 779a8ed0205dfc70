//! Repositories end to end: three repository hosts, each with its sidecar and a
//! real sshd whose ForceCommand is that host's `ssh-exec`; git over SSH,
//! versions, replication, failover, concurrent pushes, and refusals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use switchboard_tests::{
    minimal_zone, run, signed_headers, ssh_client_key, stderr, stdout, unix_now, Backend,
    Directory, Git, Sidecar, Sshd,
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
    hosts_with(&[])
}

/// [`hosts`] with extra sidecar flags (for `run` and `ssh-exec` alike).
fn hosts_with(extra: &[&str]) -> Hosts {
    let d = Directory::with_zone(minimal_zone, &[]);
    let key = ssh_client_key(d.dir.path());
    let backends: Vec<Backend> = NAMES.iter().map(|n| Backend::start(n)).collect();
    let hosts = NAMES
        .iter()
        .zip(&backends)
        .map(|(name, b)| {
            let sc = d.sidecar_with(name, "repo", Some(b), extra);
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
        Git::over_ssh(self.sshd(0).ssh_command(&self.key)).run(dir, args)
    }

    fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        Git::over_ssh(self.sshd(0).ssh_command(&self.key)).ok(dir, args)
    }

    /// The work tree `name` (made on first use) with one new commit on main; returns (dir, sha).
    fn commit(&self, name: &str) -> (PathBuf, String) {
        let dir = self.work.path().join(name);
        let sha = Git::over_ssh(self.sshd(0).ssh_command(&self.key)).commit(&dir);
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
        stderr(&out).contains("r1 is read-only: its master repo1 is unavailable"),
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

/// `NAME.cluster.example.` answers of the directory: the TXT strings, and the SRV targets.
fn repo_txt(d: &Directory) -> String {
    d.dig("r1.repo.cluster.example.", "TXT", &[])
        .data("TXT")
        .join(" ")
}

fn srv_hosts(d: &Directory, name: &str) -> Vec<String> {
    d.dig(&format!("{name}.cluster.example."), "SRV", &[])
        .data("SRV")
        .iter()
        .filter_map(|r| r.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// A web host in front of the repository hosts: git over HTTP and Conduit.
struct Web {
    sc: Sidecar,
    _backend: Backend,
}

impl Web {
    fn start(h: &Hosts) -> Web {
        let backend = Backend::start("web1");
        let sc = h.d.sidecar("web1", "web", Some(&backend));
        Web {
            sc,
            _backend: backend,
        }
    }

    /// The git URL of r1 through this host, with credentials the echo backend admits.
    fn url(&self) -> String {
        self.sc
            .http_url("/source/r1.git")
            .replacen("http://", "http://t:p@", 1)
    }

    /// A Conduit write naming r1: (status, JSON answer).
    fn conduit_write(&self) -> (u16, serde_json::Value) {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run(Command::new("curl")
            .args(["-s", "-o"])
            .arg(dir.path().join("out"))
            .args([
                "-w",
                "%{http_code}",
                "--data-binary",
                "repository=r1",
                &self.sc.http_url("/api/diffusion.repository.edit"),
            ]));
        let body = std::fs::read(dir.path().join("out")).unwrap_or_default();
        (
            stdout(&out).trim().parse().unwrap_or(0),
            serde_json::from_slice(&body).unwrap_or_default(),
        )
    }
}

impl Hosts {
    /// `git push` of a new commit through `url`, bounded (a hang fails the test).
    fn try_push(&self, url: &str) -> std::process::Output {
        let (src, _) = self.commit("src");
        run(Command::new("timeout")
            .args(["60", "git", "push", "-q", url, "HEAD:main"])
            .current_dir(&src)
            .env("GIT_SSH_COMMAND", self.sshd(0).ssh_command(&self.key))
            .env("GIT_TERMINAL_PROMPT", "0"))
    }

    /// A clone of r1 through `url`: its HEAD.
    fn clone_head(&self, url: &str, name: &str) -> String {
        self.git_ok(self.work.path(), &["clone", "-q", url, name]);
        self.git_ok(&self.work.path().join(name), &["rev-parse", "HEAD"])
            .trim()
            .to_string()
    }
}

#[test]
fn a_frozen_repository_refuses_every_write_with_the_message_and_serves_reads() {
    let h = hosts();
    let web = Web::start(&h);
    let (src, first) = h.commit("src");
    h.git_ok(&src, &["push", "-q", &h.sshd(0).url("r1"), "main"]);
    h.wait_converged();

    let msg = "moving r1 to new disks until 14:00 UTC";
    h.d.cli_ok(&["repo", "freeze", "r1", "--message", msg]);
    let txt = repo_txt(&h.d);
    assert!(
        txt.contains("frozen=1") && txt.contains("readonly=1") && txt.contains(msg),
        "{txt}"
    );
    assert!(
        srv_hosts(&h.d, "write.r1.repo").is_empty(),
        "no write answer while frozen"
    );
    assert_eq!(srv_hosts(&h.d, "read.r1.repo").len(), 3, "reads go on");
    let show: serde_json::Value =
        serde_json::from_str(&h.d.cli_ok(&["--json", "repo", "show", "r1"])).expect("json");
    assert_eq!(
        (show["frozen"].as_str(), show["readonly"].as_bool()),
        (Some(msg), Some(true))
    );
    let events = h.d.cli_ok(&["events"]);
    assert!(
        events.contains("frozen"),
        "the freeze is in the audit log: {events}"
    );

    // Over SSH, through the master and through a replica: git shows the message.
    let v = h.master_version();
    for i in [0, 1] {
        h.d.wait_for("the freeze to reach the sidecars", || {
            let out = h.try_push(&h.sshd(i).url("r1"));
            !out.status.success() && stderr(&out).contains(msg)
        });
        let out = h.try_push(&h.sshd(i).url("r1"));
        let err = stderr(&out);
        assert!(
            err.contains("r1 is frozen for maintenance") && err.contains("reads still work"),
            "{err}"
        );
    }
    // Over HTTP: the refusal is plain text, which git shows as `remote: …`.
    let out = h.try_push(&web.url());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("remote: r1 is frozen for maintenance: {msg}")),
        "{}",
        stderr(&out)
    );
    // Over Conduit: a JSON refusal with the reason.
    let (code, v_json) = web.conduit_write();
    assert_eq!(
        (code, v_json["reason"].as_str()),
        (403, Some("frozen")),
        "{v_json}"
    );
    assert!(v_json["error"].as_str().unwrap_or("").contains(msg));
    assert_eq!(h.master_version(), v, "no write landed while frozen");

    // Reads go on, over SSH and HTTP.
    assert_eq!(h.clone_head(&h.sshd(2).url("r1"), "frozen-ssh"), first);
    assert_eq!(h.clone_head(&web.url(), "frozen-http"), first);

    // Thawed: writes go through again.
    h.d.cli_ok(&["repo", "thaw", "r1"]);
    assert!(repo_txt(&h.d).contains("readonly=0"));
    h.d.wait_for("writes to be taken again", || {
        h.try_push(&h.sshd(1).url("r1")).status.success()
    });
    assert_eq!(h.master_version(), v + 1);
    assert!(h.d.cli_ok(&["events"]).contains("thaw"));
}

#[test]
fn without_a_master_a_repository_is_read_only_and_reads_go_to_the_newest_copies() {
    let mut h = hosts();
    let web = Web::start(&h);
    let (src, _) = h.commit("src");
    h.git_ok(&src, &["push", "-q", &h.sshd(0).url("r1"), "main"]);
    h.wait_converged();
    // repo3 stops following; a second write reaches repo1 and repo2 only.
    h.hosts[2].0.kill();
    let (src, second) = h.commit("src");
    h.git_ok(&src, &["push", "-q", &h.sshd(0).url("r1"), "main"]);
    h.d.wait_for("repo2 to have the second write", || {
        h.versions().get("repo2") == Some(&2)
    });
    assert_eq!(h.versions().get("repo3"), Some(&1));

    // The master goes away.
    h.hosts[0].0.kill();
    h.d.cli_ok(&["host", "disable", "repo1"]);
    let txt = repo_txt(&h.d);
    assert!(
        txt.contains("readonly=1") && !txt.contains("frozen=1"),
        "{txt}"
    );
    assert!(srv_hosts(&h.d, "write.r1.repo").is_empty());
    assert_eq!(
        srv_hosts(&h.d, "read.r1.repo"),
        vec!["repo2.node.cluster.example.".to_string()],
        "reads from the host with the highest version only"
    );

    // Every write is refused at once, saying why and that reads work: over
    // SSH through a replica's own sidecar, over HTTP, and over Conduit.
    let want = "r1 is read-only: its master repo1 is unavailable";
    for i in [1, 2] {
        h.d.wait_for("the read-only state to reach the sidecars", || {
            stderr(&h.try_push(&h.sshd(i).url("r1"))).contains(want)
        });
        assert!(stderr(&h.try_push(&h.sshd(i).url("r1"))).contains("reads still work"));
    }
    let out = h.try_push(&web.url());
    assert!(
        !out.status.success() && stderr(&out).contains(&format!("remote: {want}")),
        "{}",
        stderr(&out)
    );
    let (code, v) = web.conduit_write();
    assert_eq!(
        (code, v["reason"].as_str()),
        (503, Some("no-master")),
        "{v}"
    );
    // Straight to repo2's cluster listener, signed: no write on a replica.
    let url = h.hosts[1]
        .0
        .cluster_url("/source/r1.git/info/refs?service=git-receive-pack");
    let mut curl = Command::new("curl");
    curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
    for (k, val) in signed_headers(&web.sc.key, "GET", &url, b"", unix_now()) {
        curl.arg("-H").arg(format!("{k}: {val}"));
    }
    let code = stdout(&run(curl.arg(&url)));
    assert!(code.starts_with('4') || code.starts_with('5'), "{code}");
    assert_eq!(h.versions().get("repo2"), Some(&2), "no version moved");

    // Reads go on from repo2, whichever host they reach.
    assert_eq!(h.clone_head(&h.sshd(1).url("r1"), "ro-local"), second);
    assert_eq!(h.clone_head(&h.sshd(2).url("r1"), "ro-tunnel"), second);
    assert_eq!(h.clone_head(&web.url(), "ro-http"), second);
}

#[test]
fn after_a_push_a_replica_syncs_once_and_serves_every_waiting_clone() {
    // A loaded test machine may take a while to fetch; no read may go to the
    // master for that (the default is 10 s).
    let h = hosts_with(&["--sync-timeout", "120"]);
    let series = "switchboard_sidecar_requests_total{kind=\"upload-pack\",outcome=\"served\"}";
    let served = || h.hosts[0].0.metric(series).unwrap_or(0.0);
    let push = || {
        let (src, sha) = h.commit("src");
        h.git_ok(&src, &["push", "-q", &h.sshd(0).url("r1"), "main"]);
        sha
    };
    push();
    h.wait_converged();
    // What the master serves for one push: each replica's catch-up.
    let m0 = served();
    push();
    h.wait_converged();
    let per_push = served() - m0;
    assert!(per_push > 0.0, "the replicas fetched from the master");

    // Right after a push, 50 clones at once through a replica.
    let m1 = served();
    let sha = push();
    let url = h.sshd(1).url("r1");
    let clones: Vec<_> = (0..50)
        .map(|i| {
            let dir = h.work.path().join(format!("c{i}"));
            Command::new("git")
                .args(["-c", "init.defaultBranch=main", "clone", "-q", &url])
                .arg(&dir)
                .env("GIT_SSH_COMMAND", h.sshd(0).ssh_command(&h.key))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("git clone")
        })
        .collect();
    let mut said = Vec::new();
    for (i, c) in clones.into_iter().enumerate() {
        let out = c.wait_with_output().expect("clone");
        assert!(out.status.success(), "clone {i}: {}", stderr(&out));
        if !stderr(&out).trim().is_empty() {
            said.push(format!("clone {i}: {}", stderr(&out).trim()));
        }
        let dir = h.work.path().join(format!("c{i}"));
        assert_eq!(
            h.git_ok(&dir, &["rev-parse", "HEAD"]).trim(),
            sha,
            "clone {i} sees the push"
        );
    }
    h.wait_converged();
    assert_eq!(
        served() - m1,
        per_push,
        "the master served the replicas' catch-ups only: one fetch by repo2 for all 50 clones, none forwarded; the clones said: {said:?}"
    );
}
