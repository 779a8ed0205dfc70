//! `switchboard-sidecar`: argument parsing only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// mimalloc, as in the directory: every forwarded request allocates and frees
/// its head and buffers, and glibc's malloc cost ~5% of a core under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use switchboard_sidecar::metrics::Metrics;
use switchboard_sidecar::server::{self, RunConfig};
use switchboard_sidecar::sidecar::Common;

/// Switchboard's sidecar: routes Conduit and git traffic and signs every call between hosts.
#[derive(Debug, Parser)]
#[command(name = "switchboard-sidecar", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Where {
    /// This host's ed25519 private key: PKCS#8 PEM (`keygen`) or OpenSSH (`/etc/ssh/ssh_host_ed25519_key`).
    #[arg(long, env = "SWITCHBOARD_KEY")]
    key: PathBuf,
    /// The directory's DNS address (or any server of its zone); repeat for
    /// several: lookups take them in turn and skip one that does not answer.
    #[arg(long, default_value = "127.0.0.1:5353", value_name = "ADDR:PORT")]
    directory: Vec<SocketAddr>,
    /// The zone.
    #[arg(long, default_value = "cluster.example.")]
    zone: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new host key (PKCS#8 PEM, mode 0600) and print its public key and fingerprint.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print this key's fingerprint and what the directory says this host is.
    Whoami {
        #[command(flatten)]
        at: Where,
        #[arg(long)]
        json: bool,
    },
    /// Route traffic.
    Run {
        #[command(flatten)]
        common: CommonArgs,
        /// User-facing HTTP (Conduit, git smart HTTP); only hosts with the web role serve it.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// The signed listener other hosts' sidecars call (publish it as this host's `switchboard` binding).
        #[arg(long, default_value = "127.0.0.1:7443")]
        cluster: SocketAddr,
        /// The largest request body either listener takes, in MiB (a git push is one body).
        #[arg(long, default_value_t = 4096)]
        max_body_mb: u64,
        /// SSH sessions one host may tunnel to this one at once.
        #[arg(long, default_value_t = 32)]
        max_tunnels_per_peer: usize,
        /// On SIGTERM, how long requests and SSH sessions in flight may take to finish,
        /// in seconds, once every listener has stopped accepting.
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
        #[command(flatten)]
        db: Box<DbArgs>,
    },
    /// Serve one SSH session: what sshd runs as a forced command (reads SSH_ORIGINAL_COMMAND).
    SshExec {
        #[command(flatten)]
        common: CommonArgs,
        /// The user sshd admitted (set by `authorized-keys`): the web application
        /// is asked whether this user may read or write each repository.
        #[arg(long, value_parser = switchboard_sidecar::ssh::users::parse_user)]
        user: Option<String>,
    },
    /// sshd's `AuthorizedKeysCommand ... %f`: asks the web application which user
    /// holds the key with this fingerprint and prints its authorized_keys line
    /// (`ssh-exec` with these flags and `--user USER`), or nothing.
    AuthorizedKeys {
        /// The offered key's fingerprint, as sshd's %f gives it (SHA256:...).
        fingerprint: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Git hooks the sidecar installs for itself (not for people to run).
    #[command(hide = true)]
    Hook {
        /// The hook's name (reference-transaction).
        name: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// The database flags of `run` (SPEC "Databases", docs/databases.md).
#[derive(Debug, clap::Args)]
struct DbArgs {
    /// A database port: DB=write@ADDR:PORT (to the master) or DB=read@ADDR:PORT
    /// (to a replica that has the master's writes); repeatable.
    #[arg(long = "db", value_name = "DB=write|read@ADDR:PORT")]
    ports: Vec<switchboard_sidecar::db::config::DbPort>,
    /// This host runs a server of DB (at ADDR:PORT, else at its directory
    /// address and the database's port): report its position, promote and fence it.
    #[arg(long = "db-local", value_name = "DB[=ADDR:PORT]")]
    local: Vec<switchboard_sidecar::db::config::DbLocal>,
    /// The monitoring account the sidecar reads positions, promotes and fences with.
    #[arg(long)]
    db_user: Option<String>,
    /// The file holding that account's password.
    #[arg(long)]
    db_password_file: Option<PathBuf>,
    /// Read-after-write on read ports: on (a new read connection sees every
    /// write acknowledged before it opened) or off (spread reads without waiting).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    db_causal: String,
    /// How long a read connection may wait for a replica to catch up before the master serves it.
    #[arg(long, default_value_t = 1000)]
    db_causal_wait_ms: u64,
}

/// Flags `run` and `ssh-exec` share.
#[derive(Debug, clap::Args)]
struct CommonArgs {
    #[command(flatten)]
    at: Where,
    /// The directory's admin API, for its change feed, heartbeats and version
    /// records; repeat for several (default: the servers `directory.service.ZONE`
    /// lists, else http://DIRECTORY-IP:8053).
    #[arg(long, value_name = "URL")]
    directory_api: Vec<String>,
    /// Bare repositories this host serves, as DIR/REPO.git.
    #[arg(long)]
    repos: PathBuf,
    /// The local web application (Phabricator) that serves Conduit and web pages.
    #[arg(long)]
    web_backend: Option<http::Uri>,
    /// How long a read that reaches a replica which is behind waits for the
    /// replica to fetch from the master before the master serves it (seconds;
    /// 0 turns sync-before-read off: such reads go to the master at once).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    sync_timeout: f64,
    /// Speak TLS 1.3 on the cluster channel (listener and calls to peers), with a
    /// certificate made from the host key and each peer pinned to the key the
    /// directory publishes for it. Turn it on on every host at once.
    #[arg(long)]
    cluster_tls: bool,
    /// How calls to other hosts are signed: `session` (one handshake per peer,
    /// then HMAC-SHA256 under the session key) or `ed25519` (one signature per
    /// call with the host key). Both are always accepted.
    #[arg(long, default_value = "session", value_parser = ["session", "ed25519"])]
    cluster_auth: String,
}

impl From<CommonArgs> for Common {
    fn from(c: CommonArgs) -> Self {
        Common {
            key: c.at.key,
            directory: c.at.directory,
            directory_api: c.directory_api,
            zone: c.at.zone,
            repos: c.repos,
            web_backend: c.web_backend,
            sync_timeout: std::time::Duration::try_from_secs_f64(c.sync_timeout)
                .unwrap_or(switchboard_sidecar::repo::sync::DEFAULT_TIMEOUT),
            cluster_tls: c.cluster_tls,
            cluster_auth: c.cluster_auth.parse().unwrap_or_default(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    switchboard_proto::process::init_logging();
    // On one core (a cgroup or `taskset` limit) a work-stealing pool only adds
    // cross-thread wake-ups; the single-threaded scheduler does the same work.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchboard-sidecar: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async move {
        match args.command {
            Command::Keygen { out } => switchboard_proto::keys::keygen(&out, false).map_err(|e| e.to_string()),
            Command::Whoami { at, json } => {
                let id = switchboard_sidecar::identity::Identity::load(&at.key).map_err(|e| e.to_string())?;
                let found = switchboard_sidecar::identity::who_am_i(&at.key, &at.directory, &at.zone, Arc::new(Metrics::default())).await;
                match (found, json) {
                    (Ok((_, me, _)), true) => {
                        println!("{}", serde_json::json!({"fingerprint": id.fingerprint, "public_key": id.public.to_base64(), "host": me.host, "roles": me.roles}));
                        Ok(())
                    }
                    (Ok((_, me, _)), false) => {
                        println!("fingerprint: {}", id.fingerprint);
                        println!("public key:  {}", id.public.to_base64());
                        println!("host:        {}", me.host);
                        println!("roles:       {}", me.roles.join(","));
                        Ok(())
                    }
                    (Err(e), _) => Err(format!("fingerprint {}: {e}", id.fingerprint)),
                }
            }
            Command::Run { common, http, cluster, max_body_mb, max_tunnels_per_peer, drain_timeout, db } => {
                let db = switchboard_sidecar::db::config::DbConfig::new(
                    db.ports,
                    db.local,
                    db.db_user,
                    db.db_password_file.as_deref(),
                    db.db_causal == "on",
                    std::time::Duration::from_millis(db.db_causal_wait_ms),
                )?;
                let limits = switchboard_sidecar::sidecar::Limits {
                    max_body: max_body_mb.max(1).saturating_mul(1 << 20),
                    max_tunnels_per_peer: max_tunnels_per_peer.max(1),
                };
                server::run(RunConfig {
                    common: common.into(),
                    http,
                    cluster,
                    limits,
                    drain_timeout: std::time::Duration::from_secs(drain_timeout),
                    db,
                }).await.map_err(|e| e.to_string())
            }
            Command::SshExec { common, user } => {
                let code = switchboard_sidecar::ssh::exec::exec(common.into(), user).await;
                std::process::exit(code);
            }
            Command::AuthorizedKeys { fingerprint, common } => {
                let code = switchboard_sidecar::ssh::users::authorized_keys(common.into(), &fingerprint).await;
                std::process::exit(code);
            }
            Command::Hook { name, args } => match name.as_str() {
                "reference-transaction" => {
                    switchboard_sidecar::repo::hook::reference_transaction(args.first().map(String::as_str).unwrap_or("")).await
                        .map_err(|e| e.to_string())
                }
                other => Err(format!("no hook {other}")),
            },
        }
    });
    // Whatever a drain left open is dropped now, not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}
