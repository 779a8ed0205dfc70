//! `db list | show | add | rm | promote | freeze | thaw` (SPEC "Databases").

use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use super::{field, table, CliError, Client};

#[derive(Debug, Subcommand)]
pub enum DbCmd {
    /// Every database with its master, replicas and the hosts reads go to.
    List,
    /// One database: each host's reported position and lag, recorded losses.
    Show { db: String },
    /// Add a database (MariaDB with GTID replication).
    Add {
        db: String,
        #[arg(long)]
        master: String,
        #[arg(long, value_delimiter = ',')]
        replicas: Vec<String>,
        /// The port MariaDB listens on, on every host of the database.
        #[arg(long, default_value_t = switchboard_proto::model::DEFAULT_DB_PORT)]
        port: u16,
        /// Seconds a replica may be behind and still serve reads.
        #[arg(long, default_value_t = switchboard_proto::model::DEFAULT_DB_MAX_LAG_S)]
        max_lag_s: u64,
    },
    /// Remove a database from the directory (its data on the hosts is untouched).
    Rm { db: String },
    /// Make HOST the master of DB. Refused if HOST's last reported position is
    /// behind the master's unless --force.
    Promote {
        db: String,
        host: String,
        /// Promote even if transactions may be lost; the loss is recorded.
        #[arg(long)]
        force: bool,
    },
    /// Refuse writes to DB with MESSAGE (reads go on).
    Freeze {
        db: String,
        #[arg(long)]
        message: String,
    },
    /// Take writes to DB again.
    Thaw { db: String },
}

/// A host's position as one cell: `GTID`, and `+Ns` behind or `stopped`.
fn position(v: &Value, host: &str) -> (String, String) {
    let Some(p) = v.get("positions").and_then(|p| p.get(host)) else {
        return ("-".into(), "-".into());
    };
    let gtid = p.get("gtid").and_then(Value::as_str).unwrap_or("");
    let gtid = if gtid.is_empty() { "-" } else { gtid }.to_string();
    let state = if p.get("replicating").and_then(Value::as_bool) == Some(true) {
        match p.get("seconds_behind").and_then(Value::as_u64) {
            Some(s) => format!("replicating, {s} s behind"),
            None => "replicating".into(),
        }
    } else if p.get("read_only").and_then(Value::as_bool) == Some(true) {
        "not replicating, read-only".into()
    } else {
        "not replicating, writable".into()
    };
    (gtid, state)
}

pub async fn run(c: &Client, cmd: DbCmd) -> Result<(), CliError> {
    match cmd {
        DbCmd::List => {
            let v = c.get("/v1/dbs").await?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|d| {
                                vec![
                                    field(d, "name"),
                                    field(d, "master"),
                                    field(d, "replicas"),
                                    field(d, "port"),
                                    field(d, "max_lag_s"),
                                    field(d, "readonly"),
                                    field(d, "readers"),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{}",
                    table(
                        &[
                            "DB",
                            "MASTER",
                            "REPLICAS",
                            "PORT",
                            "MAX_LAG_S",
                            "READONLY",
                            "READERS"
                        ],
                        &rows
                    )
                );
            });
        }
        DbCmd::Show { db } => {
            let v = c.get(&format!("/v1/dbs/{db}")).await?;
            c.show(&v, |v| {
                for k in [
                    "name",
                    "master",
                    "replicas",
                    "port",
                    "max_lag_s",
                    "readonly",
                    "frozen",
                    "writer",
                    "readers",
                ] {
                    println!("{k:<10} {}", field(v, k));
                }
                let hosts: Vec<String> = std::iter::once(field(v, "master"))
                    .chain(
                        v.get("replicas")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(str::to_string),
                    )
                    .collect();
                let rows: Vec<Vec<String>> = hosts
                    .iter()
                    .map(|h| {
                        let (gtid, state) = position(v, h);
                        let lag = v
                            .get("lagging")
                            .and_then(|l| l.get(h))
                            .and_then(Value::as_str)
                            .unwrap_or("-")
                            .to_string();
                        vec![h.clone(), gtid, state, lag]
                    })
                    .collect();
                println!();
                println!("{}", table(&["HOST", "GTID", "STATE", "LAGGING"], &rows));
                if let Some(lost) = v
                    .get("lost")
                    .and_then(Value::as_array)
                    .filter(|l| !l.is_empty())
                {
                    println!();
                    println!("transactions that may have been lost by forced promotions:");
                    for l in lost {
                        let at = l
                            .get("at")
                            .and_then(Value::as_u64)
                            .map(|s| crate::state::clock(s.saturating_mul(1000)))
                            .unwrap_or_else(|| field(l, "at"));
                        println!(
                            "  {} was at {}, {} promoted at {} at {at}",
                            field(l, "old_master"),
                            field(l, "old_gtid"),
                            field(l, "new_master"),
                            field(l, "new_gtid"),
                        );
                    }
                }
            });
        }
        DbCmd::Add {
            db,
            master,
            replicas,
            port,
            max_lag_s,
        } => {
            let body = json!({"name": db, "master": master, "replicas": replicas, "port": port, "max_lag_s": max_lag_s});
            c.change(
                Method::POST,
                "/v1/dbs",
                Some(body),
                &format!("added database {db}"),
            )
            .await?;
        }
        DbCmd::Rm { db } => {
            c.change(
                Method::DELETE,
                &format!("/v1/dbs/{db}"),
                None,
                &format!("removed database {db}"),
            )
            .await?;
        }
        DbCmd::Promote { db, host, force } => {
            c.change(
                Method::POST,
                &format!("/v1/dbs/{db}/promote"),
                Some(json!({"host": host, "force": force})),
                &format!("{host} is now the master of database {db}"),
            )
            .await?;
        }
        DbCmd::Freeze { db, message } => {
            c.change(
                Method::POST,
                &format!("/v1/dbs/{db}/freeze"),
                Some(json!({"message": message})),
                &format!("database {db} is frozen: writes are refused"),
            )
            .await?;
        }
        DbCmd::Thaw { db } => {
            c.change(
                Method::POST,
                &format!("/v1/dbs/{db}/thaw"),
                None,
                &format!("database {db} takes writes again"),
            )
            .await?;
        }
    }
    Ok(())
}
