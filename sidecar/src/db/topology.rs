//! Who is master of a database and who replicates it, as the directory says
//! (`DB.db.Z` TXT and each host's `HOST.node.Z` address), kept current: asked
//! again on every change the feed reports and once a second, and published to
//! the ports and the host duties through a watch channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::schema::{self, txt};
use tokio::sync::watch;

use crate::directory::answers::{DirError, DirectoryClient};

/// One server of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub host: String,
    pub addr: SocketAddr,
}

/// A database as the directory has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub db: String,
    /// The master's host name (even when its address is unknown).
    pub master_host: String,
    /// The master, when it has an address.
    pub master: Option<Member>,
    pub replicas: Vec<Member>,
    pub max_lag_s: u64,
    /// Why the database takes no writes now (frozen, or no available master).
    pub refusal: Option<String>,
}

/// What a `watch` of one database holds: `None` until the directory has been
/// asked, or while it does not know the database.
pub type Current = Option<Arc<Topology>>;

/// Asks the directory about `db` now (serve-stale when it cannot answer).
/// `local` is where this host's own server of the database listens, if not at
/// its directory address.
pub async fn fetch(
    dir: &DirectoryClient,
    db: &str,
    me: &str,
    local: Option<SocketAddr>,
) -> Result<Option<Topology>, DirError> {
    let Some(t) = dir.txt_fresh(&format!("{db}.{}", schema::DB), true).await? else {
        return Ok(None);
    };
    let get = |k: &str| t.get(k).map(String::as_str).unwrap_or("");
    let port: u16 = get(txt::PORT).parse().unwrap_or(3306);
    let max_lag_s = get(txt::MAX_LAG_S).parse().unwrap_or(10);
    let member = |host: &str| {
        let host = host.to_string();
        async move {
            if host == me {
                if let Some(a) = local {
                    return Ok(Some(Member { host, addr: a }));
                }
            }
            Ok::<_, DirError>(dir.address(&host).await?.map(|ip| Member {
                addr: SocketAddr::new(ip, port),
                host,
            }))
        }
    };
    let master_host = get(txt::MASTER).to_string();
    let master = if master_host.is_empty() {
        None
    } else {
        member(&master_host).await?
    };
    let mut replicas = Vec::new();
    for h in get(txt::REPLICAS).split(',').filter(|h| !h.is_empty()) {
        if let Some(m) = member(h).await? {
            replicas.push(m);
        }
    }
    let refusal = if get(txt::FROZEN) == "1" {
        Some(format!(
            "database {db} is frozen: {}",
            get(txt::FROZEN_MESSAGE)
        ))
    } else if get(txt::READONLY) == "1" || master.is_none() {
        Some(format!(
            "database {db} is read-only: its master {master_host} is not available; reads still work through the read port"
        ))
    } else {
        None
    };
    Ok(Some(Topology {
        db: db.to_string(),
        master_host,
        master,
        replicas,
        max_lag_s,
        refusal,
    }))
}

/// How often the directory is asked even without a change from the feed.
const REFRESH: Duration = Duration::from_secs(1);

/// Keeps `tx` current for `db` until every receiver is gone.
pub async fn follow(
    dir: Arc<DirectoryClient>,
    db: String,
    me: String,
    local: Option<SocketAddr>,
    tx: watch::Sender<Current>,
) {
    let mut changes = dir.subscribe();
    loop {
        match fetch(&dir, &db, &me, local).await {
            Ok(t) => {
                let t = t.map(Arc::new);
                tx.send_if_modified(|cur| {
                    if *cur != t {
                        if let Some(new) = &t {
                            let old = cur.as_ref().map(|c| c.master_host.as_str());
                            if old.is_some_and(|o| o != new.master_host) {
                                tracing::info!(db = %db, master = %new.master_host, "the database has a new master");
                            }
                        }
                        *cur = t;
                        true
                    } else {
                        false
                    }
                });
            }
            Err(e) => {
                tracing::warn!(db = %db, error = %e, "cannot ask the directory about the database; keeping the last answer")
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}
