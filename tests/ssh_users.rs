//! Who may use a repository over SSH: real sshd whose `AuthorizedKeysCommand` is
//! a host's `authorized-keys`, the web application (the echo backend with a
//! users table) saying which user holds a key and what that user may do, and
//! `ssh-exec --user` asking it before every git session. A repository host
//! without a web backend asks a conduit host over the signed cluster channel.

use std::path::{Path, PathBuf};
use std::process::Command;

use switchboard_tests::{
    minimal_zone, run, stderr, stdout, Backend, Directory, Git, Sidecar, Sshd,
};

/// The cluster: app1 (web, a conduit host, with its web application), repo1
/// (master of r1, with a web application of its own), repo2 (replica of r1,
/// without one); repo1 and repo2 run sshd asking `authorized-keys`.
struct Cluster {
    d: Directory,
    app: Backend,
    repo1_app: Backend,
    app1: Sidecar,
    _repos: Vec<Sidecar>,
    sshd: Vec<Sshd>,
    work: tempfile::TempDir,
    users: Users,
}

/// The users' keys (alice, bob, carol unknown to the web application, and dave,
/// whose fingerprint the web application answers with alice's key).
struct Users {
    keys: Vec<(String, PathBuf, String)>,
}

impl Users {
    fn make(dir: &Path) -> Users {
        let keys = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|name| {
                let key = dir.join(format!("{name}_ed25519"));
                let out = run(Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                    .arg(&key));
                assert!(out.status.success(), "ssh-keygen: {}", stderr(&out));
                let out = run(Command::new("ssh-keygen")
                    .arg("-lf")
                    .arg(key.with_extension("pub")));
                let fpr = stdout(&out)
                    .split_whitespace()
                    .nth(1)
                    .expect("ssh-keygen -l prints a fingerprint")
                    .to_string();
                (name.to_string(), key, fpr)
            })
            .collect();
        Users { keys }
    }

    fn get(&self, name: &str) -> &(String, PathBuf, String) {
        self.keys.iter().find(|k| k.0 == name).expect("a user")
    }

    fn public(&self, name: &str) -> String {
        std::fs::read_to_string(self.get(name).1.with_extension("pub"))
            .expect("read .pub")
            .trim()
            .to_string()
    }

    /// The web application's table (`echo-backend`'s `ECHO_BACKEND_USERS`).
    fn table(&self) -> String {
        let fpr = |n: &str| self.get(n).2.clone();
        format!(
            "key {} alice {}\nkey {} bob {}\nkey {} dave {}\nallow alice r1 read\nallow alice r1 write\nallow bob r1 read\n",
            fpr("alice"),
            self.public("alice"),
            fpr("bob"),
            self.public("bob"),
            fpr("dave"),
            self.public("alice"),
        )
    }
}

fn cluster() -> Cluster {
    let d = Directory::with_zone(minimal_zone, &[]);
    let work = tempfile::tempdir().expect("tempdir");
    let users = Users::make(work.path());
    let table = work.path().join("users");
    std::fs::write(&table, users.table()).expect("write the users table");
    let env = [("ECHO_BACKEND_USERS", table.as_os_str())];
    let app = Backend::start_with("app1", &env);
    let repo1_app = Backend::start_with("repo1", &env);
    let app1 = d.sidecar("app1", "web", Some(&app));
    d.cli_ok(&["bind", "add", "app1", "conduit", "80"]);
    let repos = vec![
        d.sidecar("repo1", "repo", Some(&repo1_app)),
        d.sidecar("repo2", "repo", None),
    ];
    let sshd = repos
        .iter()
        .map(|sc| Sshd::with_keys_command(d.dir.path(), &sc.name, &sc.authorized_keys_command()))
        .collect();
    d.cli_ok(&[
        "repo",
        "add",
        "r1",
        "--master",
        "repo1",
        "--replicas",
        "repo2",
    ]);
    Cluster {
        d,
        app,
        repo1_app,
        app1,
        _repos: repos,
        sshd,
        work,
        users,
    }
}

impl Cluster {
    /// ssh as `user` (its key only), as git runs it.
    fn ssh_command(&self, user: &str) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes",
            self.users.get(user).1.display()
        )
    }

    /// git as `user` in `dir`.
    fn git(&self, user: &str, dir: &Path, args: &[&str]) -> std::process::Output {
        Git::over_ssh(self.ssh_command(user)).run(dir, args)
    }

    fn git_ok(&self, user: &str, dir: &Path, args: &[&str]) -> String {
        Git::over_ssh(self.ssh_command(user)).ok(dir, args)
    }

    /// A new commit in the work tree `name` (made on first use); returns (dir, sha).
    fn commit(&self, name: &str) -> (PathBuf, String) {
        let dir = self.work.path().join(name);
        let sha = Git::over_ssh(self.ssh_command("alice")).commit(&dir);
        (dir, sha)
    }

    fn url(&self, host: usize) -> String {
        format!("ssh://127.0.0.1:{}/r1", self.sshd[host].port)
    }

    fn master_version(&self) -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&self.d.cli_ok(&["--json", "repo", "show", "r1"])).expect("json");
        v["version"].as_u64().unwrap_or(0)
    }

    /// What a web application was asked about SSH users.
    fn asked(b: &Backend) -> Vec<String> {
        let out = run(Command::new("curl").args(["-s", &format!("{}/auth-log", b.url())]));
        serde_json::from_slice(&out.stdout).expect("the auth log is JSON")
    }

    /// One SSH session as `user` through `host`, running `command`.
    fn ssh(&self, user: &str, host: usize, command: &str) -> std::process::Output {
        let cmd = self.ssh_command(user);
        run(Command::new("ssh")
            .args(cmd.split_whitespace().skip(1))
            .args([
                "-p",
                &self.sshd[host].port.to_string(),
                "127.0.0.1",
                command,
            ]))
    }

    /// Alice pushes and clones; bob clones, and his push is refused with one
    /// line and moves nothing; carol's and dave's keys are refused by sshd.
    fn users_through(&self, host: usize) {
        let url = self.url(host);
        let (src, first) = self.commit(&format!("alice{host}"));
        self.git_ok("alice", &src, &["push", "-q", &url, "HEAD:main"]);
        let version = self.master_version();
        assert!(version >= 1, "alice's push is a write");
        let alice = format!("alice-clone{host}");
        self.git_ok("alice", self.work.path(), &["clone", "-q", &url, &alice]);
        let head = |name: &str| {
            self.git_ok(
                "alice",
                &self.work.path().join(name),
                &["rev-parse", "HEAD"],
            )
            .trim()
            .to_string()
        };
        assert_eq!(head(&alice), first);
        // bob reads.
        let bob = format!("bob-clone{host}");
        self.git_ok("bob", self.work.path(), &["clone", "-q", &url, &bob]);
        assert_eq!(head(&bob), first);
        // bob may not write: one clear line, and nothing moves.
        let dir = self.work.path().join(&bob);
        std::fs::write(dir.join("file"), "bob was here\n").expect("write");
        self.git_ok("bob", &dir, &["commit", "-q", "-am", "bob"]);
        let out = self.git("bob", &dir, &["push", "-q", &url, "HEAD:main"]);
        assert!(!out.status.success(), "bob's push was accepted");
        let err = stderr(&out);
        let refusals: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("switchboard: "))
            .collect();
        assert_eq!(
            refusals,
            ["switchboard: user bob may not write r1 (the web application said 403: bob has no write access to r1)"],
            "{err}"
        );
        assert_eq!(
            self.master_version(),
            version,
            "bob's refused push moved the master"
        );
        let master = self.git_ok("alice", self.work.path(), &["ls-remote", &url, "main"]);
        assert!(master.starts_with(&first), "main moved: {master}");
        // Keys the web application does not vouch for never get a session.
        for user in ["carol", "dave"] {
            let out = self.ssh(user, host, "git-upload-pack 'r1'");
            assert!(!out.status.success(), "{user} got in");
            assert!(
                stderr(&out).contains("Permission denied (publickey)"),
                "{user}: {}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn the_web_application_says_who_holds_a_key_and_what_they_may_do() {
    let c = cluster();
    c.users_through(0);
    // repo1 has its own web application: it was asked, app1's was not.
    let asked = Cluster::asked(&c.repo1_app);
    let alice = c.users.get("alice").2.clone();
    for q in [
        format!("ssh-key {alice}"),
        "git alice r1 write".to_string(),
        "git alice r1 read".to_string(),
        "git bob r1 read".to_string(),
        "git bob r1 write".to_string(),
        format!("ssh-key {}", c.users.get("carol").2),
        format!("ssh-key {}", c.users.get("dave").2),
    ] {
        assert!(asked.contains(&q), "{q:?} not in {asked:?}");
    }
    assert!(
        Cluster::asked(&c.app).is_empty(),
        "{:?}",
        Cluster::asked(&c.app)
    );
}

#[test]
fn a_repository_host_without_a_web_backend_asks_a_conduit_host() {
    let c = cluster();
    // repo2, a replica without a web backend: asks app1 over the cluster
    // channel, and tunnels alice's push to the master.
    c.users_through(1);
    let asked = Cluster::asked(&c.app);
    let alice = c.users.get("alice").2.clone();
    for q in [
        format!("ssh-key {alice}"),
        "git alice r1 write".to_string(),
        "git bob r1 write".to_string(),
        format!("ssh-key {}", c.users.get("carol").2),
    ] {
        assert!(asked.contains(&q), "{q:?} not in {asked:?}");
    }
    // The user listener does not let a client ask in the sidecar's name.
    let before = Cluster::asked(&c.app).len();
    for path in [
        "/switchboard/auth/git?repository=r1&access=write&user=alice",
        "/%73witchboard/auth/ssh-key?fingerprint=x",
    ] {
        let out = run(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &c.app1.http_url(path),
        ]));
        assert_eq!(stdout(&out), "404", "{path}");
    }
    assert_eq!(Cluster::asked(&c.app).len(), before);
}
