//! An etcd cluster of the test's own for the shared-store tests
//! (docs/high-availability.md#a-shared-store-on-etcd): Debian's `etcd`
//! (package `etcd-server`), each member with its own data dir and free peer
//! and client ports, started together with `--initial-cluster`; members can
//! be killed with SIGKILL and started again on the same data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::DEADLINE;

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    members: Vec<Member>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers through each.
    pub fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { dir, members };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// The flags member `i` runs with (docs/high-availability.md shows them).
    pub fn flags(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        vec![
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            self.data_dir(i).display().to_string(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{}", m.client),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{}", m.client),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{}", m.peer),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{}", m.peer),
            "--initial-cluster".into(),
            initial.join(","),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            format!("switchboard-test-{}", std::process::id()),
        ]
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[i].name)),
            )
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(self.flags(i))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): install Debian's etcd-server (scripts/test.sh does)"
                )
            });
        self.members[i].child = Some(child);
    }

    /// Waits until member `i` says it is healthy (it has a leader).
    pub fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].client);
        let deadline = Instant::now() + DEADLINE * 2;
        loop {
            let out = Command::new("curl")
                .args(["-s", "-m", "2", &url])
                .output()
                .expect("curl");
            if String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} is not healthy: see {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The store URL of the whole cluster (`--store`), under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}/{prefix}", hosts.join(","))
    }

    /// SIGKILL member `i`: no chance to say goodbye to its peers.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data (after `kill9`).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} still runs");
        self.spawn(i);
        self.wait_healthy(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
