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
    self, admin::AdminCmd, bind::BindCmd, host::HostCmd, repo::RepoCmd, zone::ZoneCmd, Client,
    Global,
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
        /// The store's directory.
        #[arg(long, default_value = "./switchboard-data")]
        data: PathBuf,
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
    },
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
    /// Zone files in and out.
    #[command(subcommand)]
    Zone(ZoneCmd),
    /// Admin keys.
    #[command(subcommand)]
    Admin(AdminCmd),
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
                dns,
                http,
                node_ttl,
                service_ttl,
                udp_workers,
            } => {
                let cfg = ServeConfig {
                    zones,
                    data,
                    dns,
                    http,
                    view: ViewConfig {
                        node_ttl,
                        service_ttl,
                    },
                    udp_workers,
                };
                server::serve(cfg).await.map_err(|e| e.to_string())
            }
            Command::Keygen { out } => cli::keygen(&out, global.json).map_err(|e| e.to_string()),
            command => {
                let client = Client::new(&global).map_err(|e| e.to_string())?;
                match command {
                    Command::Status => cli::status::run(&client).await,
                    Command::Host(c) => cli::host::run(&client, c).await,
                    Command::Bind(c) => cli::bind::run(&client, c).await,
                    Command::Repo(c) => cli::repo::run(&client, c).await,
                    Command::Zone(c) => cli::zone::run(&client, c).await,
                    Command::Admin(c) => cli::admin::run(&client, c).await,
                    Command::Serve { .. } | Command::Keygen { .. } => Ok(()),
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
