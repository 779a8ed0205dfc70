//! No acknowledged write is lost when the directory goes away between a push's
//! lease and the record of its version: the master journals the version on its
//! disk, refuses further writes to that repository until the journal is
//! replayed, and replays it as soon as the directory is back, so that every
//! replica catches up without another push.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use switchboard_tests::{minimal_zone, run, stderr, stdout, Backend, Directory, Git, Sidecar};

const NAMES: [&str; 3] = ["repo1", "repo2", "repo3"];

struct Hosts {
    d: Directory,
    hosts: Vec<Sidecar>,
    work: tempfile::TempDir,
    _backends: Vec<Backend>,
}

fn hosts() -> Hosts {
    let d = Directory::with_zone(minimal_zone, &[]);
    let backends: Vec<Backend> = NAMES.iter().map(|n| Backend::start(n)).collect();
    let hosts = NAMES
        .iter()
        .zip(&backends)
        // The master takes user requests too (smart HTTP straight to it).
        .map(|(name, b)| {
            let roles = if *name == "repo1" { "repo,web" } else { "repo" };
            d.sidecar(name, roles, Some(b))
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
        work: tempfile::tempdir().expect("tempdir"),
        _backends: backends,
    }
}

impl Hosts {
    /// Smart HTTP straight to the master's sidecar (its `run`, where the fail point is).
    fn master_url(&self) -> String {
        self.hosts[0]
            .http_url("/source/r1.git")
            .replacen("http://", "http://tester:secret@", 1)
    }

    fn git_cmd(&self, dir: &Path, args: &[&str]) -> Command {
        Git { ssh: None }.command(dir, args)
    }

    fn git(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        Git { ssh: None }.run(dir, args)
    }

    fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        Git { ssh: None }.ok(dir, args)
    }

    /// One new commit on main in the work tree `src`; its sha.
    fn commit(&self) -> (PathBuf, String) {
        let dir = self.work.path().join("src");
        let sha = Git { ssh: None }.commit(&dir);
        (dir, sha)
    }

    fn versions(&self) -> BTreeMap<String, u64> {
        let out = self.d.cli(&["--json", "repo", "show", "r1"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_default();
        v["versions"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wait_all_at(&self, version: u64) {
        self.d
            .wait_for(&format!("every host of r1 at version {version}"), || {
                let v = self.versions();
                v.len() == 3 && v.values().all(|v| *v == version)
            });
    }

    fn master_head(&self) -> String {
        let repo = self.hosts[0].repos.join("r1.git");
        stdout(&run(Command::new("git")
            .arg("--git-dir")
            .arg(&repo)
            .args(["rev-parse", "refs/heads/main"])))
        .trim()
        .to_string()
    }

    fn has_commit(&self, host: usize, sha: &str) -> bool {
        let repo = self.hosts[host].repos.join("r1.git");
        run(Command::new("git").arg("--git-dir").arg(&repo).args([
            "cat-file",
            "-e",
            &format!("{sha}^{{commit}}"),
        ]))
        .status
        .success()
    }
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

impl Hosts {
    fn fail_point(&self) -> PathBuf {
        self.work.path().join("failpoint")
    }

    fn reached(&self) -> PathBuf {
        self.work.path().join("failpoint.reached")
    }

    /// Restarts the master with the fail point armed (its log kept), pushes
    /// write 1 through it open and waits for every host to have it, then starts
    /// push 2 and waits until its hook holds the lease at `committed`. Returns
    /// the log, push 2 and its commit.
    fn push_held_at_the_fail_point(&mut self) -> (Log, std::process::Child, String) {
        let fail = self.fail_point();
        self.hosts[0].restart_with_env(&[(
            "SWITCHBOARD_FAILPOINT_HOOK_COMMITTED",
            fail.to_str().expect("utf-8 path"),
        )]);
        let log = self.hosts[0].keep_log();
        // Push 1: the fail point is open (its file exists), nothing waits.
        std::fs::write(&fail, "").expect("open the fail point");
        let (src, _) = self.commit();
        self.git_ok(&src, &["push", "-q", &self.master_url(), "main"]);
        self.wait_all_at(1);
        std::fs::remove_file(&fail).expect("close the fail point");
        std::fs::remove_file(self.reached()).expect("push 1 passed the fail point");
        // Push 2 stops between its lease and its record.
        let (src, second) = self.commit();
        let push = self
            .git_cmd(&src, &["push", "-q", &self.master_url(), "main"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start push 2");
        self.d
            .wait_for("push 2 to reach the fail point", || self.reached().exists());
        (log, push, second)
    }

    /// Opens the fail point and waits for the push held there.
    fn release(&self, push: std::process::Child) -> std::process::Output {
        std::fs::write(self.fail_point(), "").expect("open the fail point");
        push.wait_with_output().expect("the held push")
    }
}

#[test]
fn a_write_acknowledged_while_the_directory_dies_is_journaled_replayed_and_replicated() {
    let mut h = hosts();
    let (log, push, second) = h.push_held_at_the_fail_point();
    let journal = h.hosts[0].repos.join(".switchboard-journal/r1");
    // A read before the outage, so the master has answers to route reads on (serve-stale).
    h.git_ok(
        h.work.path(),
        &["clone", "-q", "-b", "main", &h.master_url(), "before"],
    );
    h.d.kill9();
    let out = h.release(push);
    assert!(
        out.status.success(),
        "push 2 is acknowledged with the directory away: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(h.master_head(), second, "the master has push 2");
    let text = std::fs::read_to_string(&journal).expect("the master journaled push 2");
    assert!(
        text.starts_with("repo=r1 version=2 time=")
            && text
                .trim_end()
                .ends_with(&format!(":{second}:refs/heads/main")),
        "journal: {text}"
    );

    h.d.wait_for("the master to log the journaled write", || {
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| l.contains("the write to r1 is applied but version 2 could not be recorded"))
    });
    h.d.wait_for("the master to show a journal pending", || {
        h.hosts[0].metric("switchboard_sidecar_write_journals_pending") == Some(1.0)
    });

    // Push 3 is refused, with one line saying why, and the master's refs stay.
    let (src, third) = h.commit();
    let out = h.git(&src, &["push", "-q", &h.master_url(), "main"]);
    assert!(
        !out.status.success(),
        "push 3 was accepted with a journal waiting"
    );
    let err = stderr(&out);
    assert!(
        err.contains("writes to r1 are refused: version 2 was written on repo1 but is not yet recorded in the directory")
            && err.contains("writes resume once the directory is back and it is recorded (reads still work)"),
        "{err}"
    );
    assert_eq!(h.master_head(), second, "push 3 did not move the master");
    // Reads still work (from the cached answers), and see push 2.
    h.git_ok(
        h.work.path(),
        &["clone", "-q", "-b", "main", &h.master_url(), "read"],
    );
    assert_eq!(
        h.git_ok(&h.work.path().join("read"), &["rev-parse", "HEAD"])
            .trim(),
        second
    );

    // The directory comes back: the journal is replayed without another push,
    // and every replica catches up to push 2.
    h.d.start();
    h.wait_all_at(2);
    for (i, name) in NAMES.iter().enumerate() {
        assert!(h.has_commit(i, &second), "{name} has push 2");
    }
    // Removed (and logged) just after the versions are recorded.
    h.d.wait_for("the replayed journal to be removed and logged", || {
        !journal.exists()
            && log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|l| l.contains("write journal replayed"))
    });
    h.d.wait_for("the master to show no journal pending", || {
        h.hosts[0].metric("switchboard_sidecar_write_journals_pending") == Some(0.0)
    });

    // Writes resume.
    h.git_ok(&src, &["push", "-q", &h.master_url(), "main"]);
    assert_eq!(h.master_head(), third);
    h.wait_all_at(3);
}

/// The directory restarts between a push's lease and its record: it answers
/// again but has forgotten the lease, so it refuses the record. The version is
/// journaled all the same and replayed under a new lease at once.
#[test]
fn a_record_refused_for_a_lost_lease_is_journaled_and_replayed_at_once() {
    let mut h = hosts();
    let (log, push, second) = h.push_held_at_the_fail_point();
    h.d.kill9();
    h.d.start();
    let out = h.release(push);
    assert!(
        out.status.success(),
        "push 2 is acknowledged: {}{}",
        stdout(&out),
        stderr(&out)
    );
    h.d.wait_for("the master to log the refused record", || {
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| {
                l.contains("the write to r1 is applied but version 2 could not be recorded")
                    && l.contains("without holding its write lease")
            })
    });
    h.wait_all_at(2);
    for (i, name) in NAMES.iter().enumerate() {
        assert!(h.has_commit(i, &second), "{name} has push 2");
    }
    h.d.wait_for("the journal to be replayed and removed", || {
        !h.hosts[0].repos.join(".switchboard-journal/r1").exists()
    });
    let (src, third) = h.commit();
    h.git_ok(&src, &["push", "-q", &h.master_url(), "main"]);
    assert_eq!(h.master_head(), third);
    h.wait_all_at(3);
}

#[test]
fn a_push_under_way_when_a_freeze_lands_finishes_and_later_ones_are_refused() {
    let mut h = hosts();
    let (_log, push, second) = h.push_held_at_the_fail_point();
    // Push 2 holds the lease; the freeze lands before it records its version.
    h.d.cli_ok(&["repo", "freeze", "r1", "--message", "disk swap"]);
    let out = h.release(push);
    assert!(
        out.status.success(),
        "the push under way finishes: {}",
        stderr(&out)
    );
    h.wait_all_at(2);
    assert_eq!(h.master_head(), second);
    // The next one is refused with the message, and nothing moves.
    let (src, _) = h.commit();
    let out = h.git(&src, &["push", "-q", &h.master_url(), "main"]);
    assert!(
        !out.status.success() && stderr(&out).contains("r1 is frozen for maintenance: disk swap"),
        "{}",
        stderr(&out)
    );
    assert_eq!(h.master_head(), second);
}
