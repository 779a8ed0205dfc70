//! `serve`: load zone files, open the store, start DNS (UDP+TCP), the admin
//! port (API and console, `listener`), health checks and webhooks; on a
//! signal, stop them in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::{self, Admin};
use crate::dns::DnsHandler;
use crate::model::Zone;
use crate::state::Directory;
use crate::store::etcd::EtcdStore;
use crate::store::sled::SledStore;
use crate::view::ViewConfig;
use crate::zonefile;

/// What `serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub zones: PathBuf,
    pub data: PathBuf,
    /// `etcd://…`: the shared store instead of the sled store under `data`
    /// (docs/high-availability.md).
    pub store: Option<String>,
    pub dns: SocketAddr,
    pub http: SocketAddr,
    pub view: ViewConfig,
    /// Threads answering UDP (0: one per core).
    pub udp_workers: usize,
    /// Response rate limiting: (answers per second per network, slip).
    pub rrl: Option<(u32, u32)>,
    pub tcp: crate::dns::TcpLimits,
    pub checks: crate::checks::ChecksConfig,
    /// Receivers of every audit event.
    pub webhooks: Vec<crate::webhooks::Webhook>,
    /// The names the admin API answers to (`--public-name`, checked by
    /// `admin::public_name`); empty: the address a client connected to.
    pub public_names: Vec<String>,
    /// Connection, body size and body time limits of the admin API.
    pub admin_limits: admin::Limits,
    /// The hosts whose `directory` binding is this server's admin port (`--advertise`).
    pub advertise: Vec<crate::advertise::Advertise>,
}

/// In the data directory while the admin API takes changes: a start that finds it
/// knows the last run stopped without holding its port into a new second.
const RUNNING_MARKER: &str = "admin.running";

/// Waits until the clock is in a later unix second than `after`.
///
/// A directory refuses signatures created before the second it opened its admin
/// port (its replay guard starts empty). So that no signature its last run took
/// can be taken again, that run's last second must be over before the port
/// opens: a clean stop holds the port into the next second, and a start after a
/// crash waits out the second it began in.
async fn next_second_after(after: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let next = std::time::Duration::from_secs(after.saturating_add(1));
    if let Some(wait) = next.checked_sub(now) {
        tokio::time::sleep(wait).await;
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    ZoneFile(#[from] zonefile::ZoneFileError),
    #[error("{0}")]
    Start(String),
}

/// Reads and checks every `*.zone` file in `dir`, in name order.
pub fn load_zone_files(dir: &Path) -> Result<Vec<Zone>, ServeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), "no zones directory; serving what the store holds");
            return Ok(vec![]);
        }
        Err(e) => {
            return Err(ServeError::Start(format!(
                "cannot read {}: {e}",
                dir.display()
            )))
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "zone"))
        .collect();
    paths.sort();
    let mut zones = Vec::new();
    for p in paths {
        let name = p.display().to_string();
        let text = std::fs::read_to_string(&p)
            .map_err(|e| ServeError::Start(format!("cannot read {name}: {e}")))?;
        let origin = zonefile::origin_from_file_name(&p);
        zones.push(zonefile::parse(&text, &name, origin.as_deref())?);
    }
    Ok(zones)
}

async fn bind_dns(addr: SocketAddr) -> Result<(std::net::UdpSocket, TcpListener), ServeError> {
    // With port 0 the UDP port is picked first and TCP must get the same one.
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind(addr)
            .map_err(|e| ServeError::Start(format!("cannot bind DNS UDP {addr}: {e}")))?;
        let actual = udp
            .local_addr()
            .map_err(|e| ServeError::Start(e.to_string()))?;
        match TcpListener::bind(actual).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if addr.port() == 0 => continue,
            Err(e) => {
                return Err(ServeError::Start(format!(
                    "cannot bind DNS TCP {actual}: {e}"
                )))
            }
        }
    }
    Err(ServeError::Start(format!("no free port for DNS on {addr}")))
}

/// Runs the directory until SIGINT or SIGTERM.
pub async fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    small_pages();
    let started = crate::time::unix_secs();
    let t = std::time::Instant::now();
    let files = load_zone_files(&cfg.zones)?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "zone files read");
    let t = std::time::Instant::now();
    let (store, place): (Box<dyn crate::store::Store>, String) = match &cfg.store {
        Some(url) => {
            let store = EtcdStore::open(url)
                .map_err(|e| ServeError::Start(format!("cannot open the store {url}: {e}")))?;
            // The data directory still holds this server's own files (the admin API's marker).
            std::fs::create_dir_all(&cfg.data).map_err(|e| {
                ServeError::Start(format!("cannot create {}: {e}", cfg.data.display()))
            })?;
            (Box::new(store), url.clone())
        }
        None => {
            let store = SledStore::open(&cfg.data).map_err(|e| ServeError::Start(e.to_string()))?;
            (Box::new(store), cfg.data.display().to_string())
        }
    };
    let dir = Directory::open(store, cfg.view)
        .map_err(|e| ServeError::Start(format!("cannot load the store in {place}: {e}")))?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "store loaded");
    let dir = Arc::new(dir);
    let followed = dir.follow_store();
    // A zone seeded from its file answers before it is written to the store (the
    // file stays the truth until then); changes are taken only after.
    let mut unsaved = Vec::new();
    for z in files {
        let t = std::time::Instant::now();
        let origin = z.origin().to_string();
        match dir
            .seed_unsaved(z)
            .map_err(|e| ServeError::Start(format!("cannot seed {origin}: {e}")))?
        {
            Some(seed) => unsaved.push((seed, origin, t)),
            None => {
                tracing::info!(zone = %origin, "store already has this zone; zone file not used (use `zone import` to replace)")
            }
        }
    }

    let (udp, tcp) = bind_dns(cfg.dns).await?;
    let marker = cfg.data.join(RUNNING_MARKER);
    if marker.exists() {
        tracing::info!("the last run did not stop cleanly; the admin API opens in the next second, so that no signature it took is taken again");
        next_second_after(started).await;
    }
    let http = TcpListener::bind(cfg.http)
        .await
        .map_err(|e| ServeError::Start(format!("cannot bind HTTP {}: {e}", cfg.http)))?;
    let not_before = crate::time::unix_secs();
    if let Err(e) = std::fs::write(&marker, b"") {
        tracing::warn!(error = %e, file = %marker.display(), "cannot mark the admin API open; a restart after a crash may take a signature this run took in its last second");
    }
    let dns_addr = udp
        .local_addr()
        .map_err(|e| ServeError::Start(e.to_string()))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| ServeError::Start(e.to_string()))?;

    let handler = Arc::new(DnsHandler::with_transfers(dir.view(), dir.transfers()));
    let workers = match cfg.udp_workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let rrl = cfg.rrl.map(|(rate, slip)| {
        tracing::info!(rate, slip, "response rate limiting on");
        Arc::new(crate::dns::rrl::Rrl::new(rate, slip))
    });
    crate::dns::spawn_udp(
        udp,
        dir.view(),
        handler.clone(),
        tokio::runtime::Handle::current(),
        workers,
        rrl,
    );
    for (seed, origin, t) in unsaved {
        dir.save_seed(seed)
            .map_err(|e| ServeError::Start(format!("cannot store {origin}: {e}")))?;
        tracing::info!(zone = %origin, ms = t.elapsed().as_millis() as u64, "seeded from its zone file");
    }
    release_memory();
    if let Some(mut followed) = followed {
        // Other servers' changes, one at a time, in the order the store took them.
        let dir = dir.clone();
        tokio::spawn(async move {
            while let Some(f) = followed.recv().await {
                let dir = dir.clone();
                let _ = tokio::task::spawn_blocking(move || dir.follow(f)).await;
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let checks_task = tokio::spawn(crate::checks::run(dir.clone(), cfg.checks, stop_rx.clone()));
    // This server's own directory binding, before the port is announced.
    let waiting = crate::advertise::start(&dir, &cfg.advertise, http_addr.port());
    tokio::spawn(crate::advertise::follow(
        dir.clone(),
        waiting,
        http_addr.port(),
        stop_rx.clone(),
    ));
    for hook in cfg.webhooks.iter().cloned() {
        // Not awaited at shutdown: a delivery in flight may take its timeout,
        // and its cursor says where the next start resumes.
        tokio::spawn(crate::webhooks::deliver(dir.clone(), hook, stop_rx.clone()));
    }
    tokio::spawn(crate::notify::run(dir.clone(), stop_rx.clone()));
    let tcp_task = tokio::spawn(crate::dns::serve_tcp(
        tcp,
        handler,
        cfg.tcp,
        stop_rx.clone(),
    ));

    let admin = Arc::new(Admin::new(
        dir.clone(),
        admin::AdminConfig {
            public_names: cfg.public_names.clone(),
            limits: cfg.admin_limits,
            not_before,
        },
    ));
    let http_task = tokio::spawn(crate::listener::serve(http, admin.clone(), stop_rx));

    println!(
        "switchboard-directory: listening dns={dns_addr} http={http_addr} zones={}",
        dir.origins().join(",")
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    crate::process::wait_for_signal().await;
    tracing::info!("shutting down");
    admin.close();
    let closed = crate::time::unix_secs();
    let _ = stop_tx.send(true);
    let _ = tcp_task.await;
    let _ = checks_task.await;
    let http = http_task.await.ok();
    let t = std::time::Instant::now();
    match dir.save_views() {
        Ok(()) => tracing::debug!(ms = t.elapsed().as_millis() as u64, "views saved"),
        Err(e) => {
            tracing::warn!(error = %e, "could not save the views; the next start rebuilds them")
        }
    }
    next_second_after(closed).await;
    drop(http);
    let _ = std::fs::remove_file(&marker);
    Ok(())
}

/// Transparent huge pages off for this process (unless `SWITCHBOARD_HUGE_PAGES=1`).
///
/// mimalloc asks for huge pages on its arenas. On the VMs we measure on, a start
/// whose heap is faulted in as fresh 2 MiB pages takes 1.2-1.4 s to the first
/// answer at 100k hosts, against 0.9-1.0 s on 4 KiB pages, and which of the two a
/// start gets depends on what ran before it (docs/benchmarks.md#scale).
#[cfg(target_os = "linux")]
fn small_pages() {
    if std::env::var_os("SWITCHBOARD_HUGE_PAGES").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory map.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot turn transparent huge pages off");
    }
}

/// Other systems have no transparent huge pages to turn off.
#[cfg(not(target_os = "linux"))]
fn small_pages() {}

/// Hands the memory that loading freed (the parsed zone files, the store's read
/// buffers, the records the view was built from) back to the system, so the
/// resident size is what the running directory holds. (The binary runs on
/// mimalloc; see main.rs.)
pub fn release_memory() {
    // SAFETY: mi_collect only returns free pages of mimalloc's heap to the system.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
