//! `db-connect ADDR USER PASSWORD SECONDS CONCURRENCY`: for SECONDS, CONCURRENCY
//! loops each open a NEW connection to the MariaDB server (or port) at ADDR,
//! run `SELECT @@server_id` and disconnect. Prints JSON: connections per second,
//! p50/p99 of open + query in microseconds (the disconnect is not timed), the
//! failures, and how many connections each server (by `server_id`) took.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

fn fail(msg: String) -> ! {
    switchboard_bench::fail("db-connect", msg)
}

#[derive(Default)]
struct Tally {
    micros: Vec<u64>,
    servers: BTreeMap<u64, u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn one(opts: OptsBuilder) -> Result<u64, String> {
    let mut conn = Conn::new(opts).await.map_err(|e| e.to_string())?;
    let id: Option<u64> = conn
        .query_first("SELECT @@server_id")
        .await
        .map_err(|e| e.to_string())?;
    Ok(id.unwrap_or(0))
}

async fn run_loop(opts: OptsBuilder, until: Instant) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < until {
        let start = Instant::now();
        // Bounded, so a hung open shows as an error, not a stuck run.
        let r = match tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = Conn::new(opts.clone()).await.map_err(|e| e.to_string())?;
            let id: Option<u64> = conn
                .query_first("SELECT @@server_id")
                .await
                .map_err(|e| e.to_string())?;
            let took = start.elapsed();
            let _ = conn.disconnect().await;
            Ok::<_, String>((id.unwrap_or(0), took))
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err("no answer within 5 s".to_string()),
        };
        match r {
            Ok((id, took)) => {
                t.micros.push(took.as_micros() as u64);
                *t.servers.entry(id).or_default() += 1;
            }
            Err(e) => {
                t.errors += 1;
                if t.first_error.is_none() {
                    t.first_error = Some(e);
                }
                // A refusing port should not turn into a busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    t
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        fail("usage: db-connect ADDR:PORT USER PASSWORD SECONDS CONCURRENCY".into());
    }
    let addr: SocketAddr = a[1]
        .parse()
        .unwrap_or_else(|_| fail(format!("bad address {}", a[1])));
    let secs: f64 = a[4].parse().unwrap_or_else(|_| fail("bad SECONDS".into()));
    let conc: usize = a[5]
        .parse()
        .unwrap_or_else(|_| fail("bad CONCURRENCY".into()));
    let opts = OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(a[2].clone()))
        .pass(Some(a[3].clone()))
        // The address given, never a unix socket the server names.
        .prefer_socket(false)
        .tcp_nodelay(true)
        .stmt_cache_size(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e.to_string()));
    let total = rt.block_on(async {
        // One connection first: a port that does not work fails the run at once.
        if let Err(e) = one(opts.clone()).await {
            fail(format!("{addr}: {e}"));
        }
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for _ in 0..conc.max(1) {
            tasks.push(tokio::spawn(run_loop(opts.clone(), until)));
        }
        let mut all = Tally::default();
        for t in tasks {
            let t = t.await.unwrap_or_else(|e| fail(e.to_string()));
            all.micros.extend(t.micros);
            for (k, v) in t.servers {
                *all.servers.entry(k).or_default() += v;
            }
            all.errors += t.errors;
            if all.first_error.is_none() {
                all.first_error = t.first_error;
            }
        }
        (all, started.elapsed())
    });
    let (mut t, elapsed) = total;
    t.micros.sort_unstable();
    let servers: Vec<String> = t
        .servers
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    let err = t
        .first_error
        .map(|e| format!(",\"first_error\":{:?}", e))
        .unwrap_or_default();
    println!(
        "{{\"connections_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"connections\":{},\"errors\":{},\"servers\":{{{}}}{}}}",
        t.micros.len() as f64 / elapsed.as_secs_f64(),
        pct(&t.micros, 0.50),
        pct(&t.micros, 0.99),
        t.micros.len(),
        t.errors,
        servers.join(","),
        err
    );
}
