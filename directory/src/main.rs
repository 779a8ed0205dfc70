//! `switchboard-directory`: argument parsing only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: small records freed while a large view is built go back to the
/// system instead of pinning the heap between live answers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use switchboard_directory::cli::{
    self, admin::AdminCmd, bind::BindCmd, db::DbCmd, host::HostCmd, repo::RepoCmd, zone::ZoneCmd,
    Client, Global,
};
use switchboard_directory::server::{self, ServeConfig};
use switchboard_directory::view::ViewConfig;

/// Switchboard's service directory: a DNS server for the cluster and the CLI that changes it.
#[derive(Debug, Parser)]
#[command(name = "switchboard-directory", version)]
struct Args {
    /// The directory's admin API.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SERVER",
        default_value = "http://127.0.0.1:8053"
    )]
    server: String,
    /// Private key (PKCS#8 PEM) that signs changes.
    #[arg(long, global = true, env = "SWITCHBOARD_KEY")]
    key: Option<PathBuf>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The zone to act on, when the directory serves more than one.
    #[arg(long, global = true, env = "SWITCHBOARD_ZONE")]
    zone: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the directory: DNS on --dns, the admin API on --http.
    Serve {
        /// Zone files (*.zone) that seed zones the store does not have yet.
        #[arg(long, default_value = "zones")]
        zones: PathBuf,
        /// The store's directory (with --store: only this server's own files).
        #[arg(long, default_value = "./switchboard-data")]
        data: PathBuf,
        /// Keep the state in an etcd v3 cluster shared with other directory
        /// servers instead of under --data: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
        /// (docs/high-availability.md).
        #[arg(long, value_name = "etcd://HOST:PORT,...[/PREFIX]")]
        store: Option<String>,
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8053")]
        http: SocketAddr,
        /// TTL of node and key names.
        #[arg(long, default_value_t = switchboard_directory::schema::DEFAULT_NODE_TTL)]
        node_ttl: u32,
        /// TTL of service, repo and read/write names.
        #[arg(long, default_value_t = switchboard_directory::schema::DEFAULT_SERVICE_TTL)]
        service_ttl: u32,
        /// Threads answering DNS over UDP (0: one per core).
        #[arg(long, default_value_t = 0)]
        udp_workers: usize,
        /// Response rate limiting: at most N UDP answers per second to one client
        /// network (/24 or /56); 0 turns it off (the default, as in BIND and Knot).
        #[arg(long, default_value_t = 0)]
        rrl_rate: u32,
        /// With --rrl-rate, every Nth refused answer is sent truncated so real
        /// clients retry over TCP (0: drop them all).
        #[arg(long, default_value_t = 2)]
        rrl_slip: u32,
        /// DNS-over-TCP connections open at once.
        #[arg(long, default_value_t = 1024)]
        tcp_max_connections: usize,
        /// DNS-over-TCP connections open at once from one client address.
        #[arg(long, default_value_t = 64)]
        tcp_max_per_client: usize,
        /// Seconds a TCP client has to send each query before it is dropped.
        #[arg(long, default_value_t = 10)]
        tcp_idle_timeout: u64,
        /// POST every audit event as JSON to this URL (http:// only; repeat for several).
        #[arg(long = "webhook", value_name = "URL")]
        webhooks: Vec<String>,
        /// Seconds a replica may stay behind its repository's max_lag before an event says so.
        #[arg(long, default_value_t = 60)]
        lag_alert_after: u64,
        /// A NAME[:PORT] clients reach the admin API by, which changes must be signed
        /// for (repeat for several); default: the address a client connected to.
        #[arg(long = "public-name", value_name = "NAME[:PORT]")]
        public_names: Vec<String>,
        /// Admin API connections open at once.
        #[arg(long, default_value_t = 1024)]
        http_max_connections: usize,
        /// Admin API connections open at once from one client address.
        #[arg(long, default_value_t = 64)]
        http_max_per_client: usize,
        /// Seconds a change's body has to arrive (a zone import: to keep arriving;
        /// 12 times this in all).
        #[arg(long, default_value_t = 10)]
        http_body_timeout: u64,
        /// Make sure host HOST (added with `host add`) has a `directory` binding on
        /// this server's --http port, so `directory.service.ZONE` lists it; HOST for
        /// every zone, ZONE=HOST for one (repeat for several).
        #[arg(long = "advertise", value_name = "HOST|ZONE=HOST")]
        advertise: Vec<String>,
    },
    /// A one-time link that signs you in to the web console (signed with --key).
    Console(cli::console::ConsoleCmd),
    /// The audit log: the last events, and with --follow every new one as it happens.
    Events(cli::events::EventsCmd),
    /// Write a new ed25519 key (PKCS#8 PEM, mode 0600) and print its public key and fingerprint.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Zones, serials and counts.
    Status,
    /// Hosts.
    #[command(subcommand)]
    Host(HostCmd),
    /// Service bindings.
    #[command(subcommand)]
    Bind(BindCmd),
    /// Repositories.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Databases (MariaDB): master, replicas, failover, freeze.
    #[command(subcommand)]
    Db(DbCmd),
    /// Zone files in and out.
    #[command(subcommand)]
    Zone(ZoneCmd),
    /// Admin keys.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// The store itself (run where the directory's data is, not against its API).
    #[command(subcommand)]
    Store(StoreCmd),
}

#[derive(Debug, Subcommand)]
enum StoreCmd {
    /// Copy a stopped directory's sled store (--data) into an etcd store, to
    /// go on with `serve --store etcd://...` (docs/high-availability.md).
    Migrate {
        /// The sled store's directory (the directory's --data); stop the directory first.
        #[arg(long)]
        from_data: PathBuf,
        /// The etcd store: etcd://HOST:PORT[,HOST:PORT...][/PREFIX], an empty prefix.
        #[arg(long)]
        to: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    switchboard_directory::process::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchboard-directory: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let global = Global {
        server: args.server,
        key: args.key,
        json: args.json,
        zone: args.zone,
    };
    let result: Result<(), String> = runtime.block_on(async move {
        match args.command {
            Command::Serve {
                zones,
                data,
                store,
                dns,
                http,
                node_ttl,
                service_ttl,
                udp_workers,
                rrl_rate,
                rrl_slip,
                tcp_max_connections,
                tcp_max_per_client,
                tcp_idle_timeout,
                webhooks,
                lag_alert_after,
                public_names,
                http_max_connections,
                http_max_per_client,
                http_body_timeout,
                advertise,
            } => {
                let advertise = advertise
                    .iter()
                    .map(|a| switchboard_directory::advertise::Advertise::parse(a))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let public_names = public_names
                    .iter()
                    .map(|n| switchboard_directory::admin::public_name(n))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let webhooks = webhooks
                    .iter()
                    .map(|u| switchboard_directory::webhooks::Webhook::parse(u))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let cfg = ServeConfig {
                    zones,
                    data,
                    store,
                    dns,
                    http,
                    view: ViewConfig {
                        node_ttl,
                        service_ttl,
                    },
                    udp_workers,
                    rrl: (rrl_rate > 0).then_some((rrl_rate, rrl_slip)),
                    tcp: switchboard_directory::dns::TcpLimits {
                        max_connections: tcp_max_connections.max(1),
                        max_per_client: tcp_max_per_client.max(1),
                        idle: std::time::Duration::from_secs(tcp_idle_timeout.max(1)),
                    },
                    checks: switchboard_directory::checks::ChecksConfig {
                        lag_alert_after: std::time::Duration::from_secs(lag_alert_after),
                    },
                    webhooks,
                    public_names,
                    admin_limits: switchboard_directory::admin::Limits {
                        max_connections: http_max_connections.max(1),
                        max_per_client: http_max_per_client.max(1),
                        body_timeout: std::time::Duration::from_secs(http_body_timeout.max(1)),
                    },
                    advertise,
                };
                server::serve(cfg).await.map_err(|e| e.to_string())
            }
            Command::Keygen { out } => cli::keygen(&out, global.json).map_err(|e| e.to_string()),
            Command::Store(StoreCmd::Migrate { from_data, to }) => {
                let json = global.json;
                let done = tokio::task::spawn_blocking(move || {
                    switchboard_directory::store::migrate::migrate(&from_data, &to)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                for u in &done.unreadable {
                    eprintln!(
                        "switchboard-directory: left out {} (unreadable: {})",
                        u.key, u.reason
                    );
                }
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(&done).map_err(|e| e.to_string())?
                    );
                } else {
                    for (zone, serial) in &done.zones {
                        println!("zone {zone} serial {serial}");
                    }
                    println!(
                        "{} audit events, {} webhook places",
                        done.events, done.cursors
                    );
                }
                Ok(())
            }
            command => {
                let client = Client::new(&global).map_err(|e| e.to_string())?;
                match command {
                    Command::Status => cli::status::run(&client).await,
                    Command::Host(c) => cli::host::run(&client, c).await,
                    Command::Bind(c) => cli::bind::run(&client, c).await,
                    Command::Repo(c) => cli::repo::run(&client, c).await,
                    Command::Db(c) => cli::db::run(&client, c).await,
                    Command::Zone(c) => cli::zone::run(&client, c).await,
                    Command::Admin(c) => cli::admin::run(&client, c).await,
                    Command::Events(c) => cli::events::run(&client, c).await,
                    Command::Console(c) => cli::console::run(&client, c).await,
                    Command::Serve { .. } | Command::Keygen { .. } | Command::Store(_) => Ok(()),
                }
                .map_err(|e| e.to_string())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-directory: {e}");
            ExitCode::FAILURE
        }
    }
}
