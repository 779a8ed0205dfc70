//! Kept-open connections to one MariaDB server with the monitoring account
//! (`--db-user`): opened on first use, reopened after any failure, every step
//! bounded by a timeout so a dead or hung server costs a bounded wait, never a
//! stuck task. A few per server, so concurrent connection opens do not queue
//! behind one another.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use tokio::sync::Mutex;

use super::config::Account;

/// How long opening a monitoring connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a monitoring query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{addr}: no answer within {ms} ms")]
    Timeout { addr: SocketAddr, ms: u128 },
    #[error("{addr}: {source}")]
    Mysql {
        addr: SocketAddr,
        source: mysql_async::Error,
    },
    #[error("{addr}: every monitoring connection is busy")]
    Busy { addr: SocketAddr },
}

/// Several kept-open connections to one server.
pub struct Monitor {
    addr: SocketAddr,
    account: Arc<Account>,
    conns: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
}

impl Monitor {
    pub fn new(addr: SocketAddr, account: Arc<Account>, size: usize) -> Self {
        Monitor {
            addr,
            account,
            conns: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn connect(&self) -> Result<Conn, MonitorError> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(self.addr.ip().to_string())
            .tcp_port(self.addr.port())
            .user(Some(self.account.user.clone()))
            .pass(Some(self.account.password.clone()))
            // The address given, never a unix socket found through it.
            .prefer_socket(false)
            .tcp_nodelay(true)
            .stmt_cache_size(0);
        match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(source)) => Err(MonitorError::Mysql {
                addr: self.addr,
                source,
            }),
            Err(_) => Err(MonitorError::Timeout {
                addr: self.addr,
                ms: CONNECT_TIMEOUT.as_millis(),
            }),
        }
    }

    /// Runs `query` on a free connection (waiting for one if `wait`, else
    /// refusing when all are busy), all of it within `timeout`; the rows.
    pub async fn rows(
        &self,
        query: &str,
        timeout: Duration,
        wait: bool,
    ) -> Result<Vec<Row>, MonitorError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        let mut slot = None;
        for i in 0..n {
            if let Ok(g) = self.conns[(start + i) % n].try_lock() {
                slot = Some(g);
                break;
            }
        }
        let mut slot = match slot {
            Some(s) => s,
            None if wait => self.conns[start % n].lock().await,
            None => return Err(MonitorError::Busy { addr: self.addr }),
        };
        let work = async {
            if slot.is_none() {
                *slot = Some(self.connect().await?);
            }
            let Some(conn) = slot.as_mut() else {
                return Err(MonitorError::Busy { addr: self.addr });
            };
            conn.query::<Row, _>(query)
                .await
                .map_err(|source| MonitorError::Mysql {
                    addr: self.addr,
                    source,
                })
        };
        let r = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(MonitorError::Timeout {
                addr: self.addr,
                ms: timeout.as_millis(),
            }),
        };
        match &r {
            // The server refused the statement (a missing grant, a replica
            // that cannot be stopped): the connection is as good as before.
            Err(MonitorError::Mysql {
                source: mysql_async::Error::Server(_),
                ..
            })
            | Ok(_) => {}
            // A connection that failed or was cut off mid-query is not reused.
            Err(_) => *slot = None,
        }
        r
    }

    /// The first column of the first row, as text.
    pub async fn value(
        &self,
        query: &str,
        timeout: Duration,
    ) -> Result<Option<String>, MonitorError> {
        let rows = self.rows(query, timeout, true).await?;
        Ok(rows.into_iter().next().and_then(|r| first_text(&r)))
    }

    /// Runs statements one after another, stopping at the first failure.
    pub async fn exec(&self, statements: &[&str], timeout: Duration) -> Result<(), MonitorError> {
        for s in statements {
            self.rows(s, timeout, true).await?;
        }
        Ok(())
    }
}

/// Column 0 of `row` as text (NULL as `None`).
pub fn first_text(row: &Row) -> Option<String> {
    text(row, 0)
}

/// Column `i` of `row` as text (NULL as `None`).
pub fn text(row: &Row, i: usize) -> Option<String> {
    match row.as_ref(i)? {
        mysql_async::Value::NULL => None,
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        mysql_async::Value::Int(n) => Some(n.to_string()),
        mysql_async::Value::UInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A named column of `row` as text.
pub fn column(row: &Row, name: &str) -> Option<String> {
    let i = row
        .columns_ref()
        .iter()
        .position(|c| c.name_str().eq_ignore_ascii_case(name))?;
    text(row, i)
}

/// What `SHOW SLAVE STATUS` says of a replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlaveStatus {
    /// Both replication threads run (`Yes`, `Yes`).
    pub running: bool,
    /// The SQL thread runs (what was received is being applied).
    pub applying: bool,
    /// The I/O thread is trying to reach its master and cannot (`Connecting`).
    pub connecting: bool,
    pub seconds_behind: Option<u64>,
    pub master_host: String,
    pub master_port: u16,
    /// Why replication stopped, as the server says it (`Last_IO_Error`, else
    /// `Last_SQL_Error`, with its number): e.g. 1236 when the master's binary
    /// log lacks transactions this replica has.
    pub error: Option<String>,
}

impl SlaveStatus {
    /// `None` when the server replicates from nothing (no row).
    pub fn from_rows(rows: &[Row]) -> Option<SlaveStatus> {
        let r = rows.first()?;
        let is = |c: &str, v: &str| column(r, c).is_some_and(|x| x.eq_ignore_ascii_case(v));
        let applying = is("Slave_SQL_Running", "yes");
        Some(SlaveStatus {
            running: applying && is("Slave_IO_Running", "yes"),
            applying,
            connecting: is("Slave_IO_Running", "connecting"),
            seconds_behind: column(r, "Seconds_Behind_Master").and_then(|v| v.parse().ok()),
            master_host: column(r, "Master_Host").unwrap_or_default(),
            master_port: column(r, "Master_Port")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            error: ["IO", "SQL"].iter().find_map(|t| {
                let n = column(r, &format!("Last_{t}_Errno")).filter(|n| n != "0")?;
                let e = column(r, &format!("Last_{t}_Error")).unwrap_or_default();
                Some(format!("{n}: {e}"))
            }),
        })
    }
}

/// `s` quoted as an SQL string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting_keeps_a_value_a_value() {
        assert_eq!(super::quote("0-1-5"), "'0-1-5'");
        assert_eq!(super::quote("a'b\\"), "'a''b\\\\'");
    }
}
