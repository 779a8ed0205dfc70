//! A database host's duties (`--db-local DB`): read the local server's
//! replication position for the heartbeat, and make the server what the
//! directory says it is.
//!
//! Once a second, and on every change the feed reports:
//! - the directory names this host master: if the server still replicates, it
//!   first applies what it has received, then `STOP SLAVE; RESET SLAVE ALL`;
//!   then `SET GLOBAL read_only=OFF` (a promotion);
//! - the directory names it a replica and the server is writable without
//!   replicating: it was the master and was deposed (or came back after a
//!   promotion): `read_only=ON` and its client connections closed (fencing);
//!   a writable server that replicates is only made read-only. It is not re-pointed at the
//!   new master: its binary log may hold transactions the new master lacks;
//!   docs/databases.md says how an operator rejoins it;
//! - it is a read-only replica of another server: `CHANGE MASTER TO` the
//!   directory's master, by GTID (`MASTER_USE_GTID=slave_pos`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::model::DbPositionReport;
use tokio::sync::watch;

use super::config::Account;
use super::monitor::{column, first_text, quote, Monitor, MonitorError, SlaveStatus};
use super::topology::{Current, Topology};

/// The positions this host's servers are at, for the heartbeat.
#[derive(Default)]
pub struct DbReports {
    reports: Mutex<BTreeMap<String, DbPositionReport>>,
}

impl DbReports {
    pub fn snapshot(&self) -> Vec<DbPositionReport> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn set(&self, db: &str, r: Option<DbPositionReport>) {
        let mut m = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Some(r) => m.insert(db.to_string(), r),
            None => m.remove(db),
        };
    }
}

/// How long one statement on the local server may take.
const STATEMENT: Duration = Duration::from_secs(5);
/// How long a new master may take to apply what it had received.
const APPLY_WAIT_S: u32 = 10;
/// How often the server is looked at without a change.
const TICK: Duration = Duration::from_secs(1);

/// What the local server is now.
struct Local {
    binlog_pos: String,
    slave_pos: String,
    read_only: bool,
    slave: Option<SlaveStatus>,
    io_pos: String,
}

async fn look(m: &Monitor) -> Result<Local, MonitorError> {
    let rows = m
        .rows(
            "SELECT @@gtid_binlog_pos, @@gtid_slave_pos, @@read_only",
            STATEMENT,
            true,
        )
        .await?;
    let row = rows.first();
    let col = |i| {
        row.and_then(|r| super::monitor::text(r, i))
            .unwrap_or_default()
    };
    let (binlog_pos, slave_pos, read_only) = (col(0), col(1), col(2) == "1");
    let status = m.rows("SHOW SLAVE STATUS", STATEMENT, true).await?;
    let io_pos = status
        .first()
        .and_then(|r| column(r, "Gtid_IO_Pos"))
        .unwrap_or_default();
    Ok(Local {
        binlog_pos,
        slave_pos,
        read_only,
        slave: SlaveStatus::from_rows(&status),
        io_pos,
    })
}

/// Carries out this host's duties for one database until the process ends.
/// The local server is where the topology puts this host (`--db-local`'s
/// address, or this host's address in the directory and the database's port).
pub async fn run(
    db: String,
    me: String,
    account: Arc<Account>,
    mut topo: watch::Receiver<Current>,
    reports: Arc<DbReports>,
) {
    let mut m: Option<Monitor> = None;
    let mut failing = false;
    // The replication error last logged, so that each is logged once.
    let mut stopped: Option<String> = None;
    loop {
        let t = topo.borrow_and_update().clone();
        let local = t.as_ref().and_then(|t| {
            t.master
                .iter()
                .chain(t.replicas.iter())
                .find(|x| x.host == me)
                .map(|x| x.addr)
        });
        match local {
            None => reports.set(&db, None),
            Some(addr) => {
                if m.as_ref().is_none_or(|m| m.addr() != addr) {
                    m = Some(Monitor::new(addr, account.clone(), 1));
                }
                let Some(m) = &m else { continue };
                match look(m).await {
                    Ok(l) => {
                        if failing {
                            tracing::info!(db = %db, server = %addr, "the local database server answers again");
                            failing = false;
                        }
                        let error = l
                            .slave
                            .as_ref()
                            .filter(|s| !s.running)
                            .and_then(|s| s.error.clone());
                        if error != stopped {
                            if let Some(e) = &error {
                                // After a forced promotion: 1236, this replica
                                // has transactions the new master never had.
                                tracing::warn!(db = %db, error = %e, "replication has stopped: the server says why; docs/databases.md (failover) says what to do");
                            }
                            stopped = error;
                        }
                        if let Some(t) = &t {
                            reports.set(&db, Some(report(&db, &me, t, &l)));
                            if let Err(e) = enforce(m, &db, &me, t, &l, &account.user).await {
                                tracing::warn!(db = %db, error = %e, "could not make the local server what the directory says");
                            }
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(db = %db, server = %addr, error = %e, "the local database server does not answer");
                            failing = true;
                        }
                        reports.set(&db, None);
                    }
                }
            }
        }
        tokio::select! {
            r = topo.changed() => if r.is_err() { return },
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

fn report(db: &str, me: &str, t: &Topology, l: &Local) -> DbPositionReport {
    let master = t.master_host == me;
    DbPositionReport {
        db: db.to_string(),
        gtid: if master {
            l.binlog_pos.clone()
        } else {
            l.slave_pos.clone()
        },
        seconds_behind: l.slave.as_ref().and_then(|s| s.seconds_behind),
        replicating: l.slave.as_ref().is_some_and(|s| s.running),
        read_only: l.read_only,
    }
}

async fn enforce(
    m: &Monitor,
    db: &str,
    me: &str,
    t: &Topology,
    l: &Local,
    monitor_user: &str,
) -> Result<(), MonitorError> {
    if t.master_host == me {
        if l.slave.is_some() {
            if !l.io_pos.is_empty() && l.slave.as_ref().is_some_and(|s| s.running) {
                // Apply what was received before replication stops.
                let q = format!(
                    "SELECT MASTER_GTID_WAIT({}, {APPLY_WAIT_S})",
                    quote(&l.io_pos)
                );
                let _ = m
                    .rows(&q, Duration::from_secs(u64::from(APPLY_WAIT_S) + 2), true)
                    .await;
            }
            m.exec(&["STOP SLAVE", "RESET SLAVE ALL"], STATEMENT)
                .await?;
            tracing::info!(db = %db, "promoted: replication stopped and forgotten");
        }
        if l.read_only {
            m.exec(&["SET GLOBAL read_only=OFF"], STATEMENT).await?;
            tracing::info!(db = %db, "this server is the master: writable");
        }
        return Ok(());
    }
    if !t.replicas.iter().any(|r| r.host == me) {
        return Ok(());
    }
    if !l.read_only && l.slave.is_some() {
        // A replica left writable: made read-only, its clients left alone.
        m.exec(&["SET GLOBAL read_only=ON"], STATEMENT).await?;
        tracing::info!(db = %db, "a replica: made read-only");
        return Ok(());
    }
    if !l.read_only {
        m.exec(&["SET GLOBAL read_only=ON"], STATEMENT).await?;
        let closed = close_clients(m, monitor_user).await?;
        tracing::warn!(
            db = %db,
            master = %t.master_host,
            closed,
            "fenced: this server is not the master; made read-only and its client connections closed"
        );
        return Ok(());
    }
    let (Some(s), Some(master)) = (&l.slave, &t.master) else {
        return Ok(());
    };
    let host = master.addr.ip().to_string();
    if s.master_host == host && s.master_port == master.addr.port() {
        return Ok(());
    }
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USE_GTID=slave_pos",
        quote(&host),
        master.addr.port()
    );
    m.exec(&["STOP SLAVE", &change, "START SLAVE"], STATEMENT)
        .await?;
    tracing::info!(db = %db, master = %master.host, addr = %master.addr, "replicating from the new master");
    Ok(())
}

/// Closes every client connection but replication's, the server's own and
/// this sidecar's; how many.
async fn close_clients(m: &Monitor, monitor_user: &str) -> Result<usize, MonitorError> {
    let q = format!(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
         AND USER NOT IN ('system user', 'event_scheduler', {}) \
         AND COMMAND NOT IN ('Binlog Dump', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker')",
        quote(monitor_user)
    );
    let ids: Vec<String> = m
        .rows(&q, STATEMENT, true)
        .await?
        .iter()
        .filter_map(first_text)
        .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let mut closed = 0;
    for id in ids {
        // One may have ended meanwhile: that is not a failure.
        if m.rows(&format!("KILL CONNECTION {id}"), STATEMENT, true)
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    Ok(closed)
}
