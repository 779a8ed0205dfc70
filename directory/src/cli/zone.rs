//! `zone import FILE | export ZONE | list`, and a zone's transfer settings:
//! `zone tsig add|list|rm`, `zone secondary add|list|rm`.

use std::path::PathBuf;

use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::{field, table, CliError, Client};

#[derive(Debug, Subcommand)]
pub enum ZoneCmd {
    /// Zones with their serials.
    List,
    /// Replace a zone with the contents of a zone file (the zone is named by the file's SOA owner).
    Import {
        file: PathBuf,
        /// The zone's origin, if the file has no $ORIGIN and its name is not ORIGIN.zone.
        #[arg(long)]
        origin: Option<String>,
    },
    /// Print a zone file that imports back to the same state.
    Export {
        zone: String,
        /// Every record served, derived ones included (for a secondary such as BIND, Knot or NSD).
        #[arg(long)]
        flat: bool,
    },
    /// TSIG keys that may transfer the zone (AXFR/IXFR) and sign its NOTIFYs.
    Tsig {
        #[command(subcommand)]
        cmd: TsigCmd,
    },
    /// Standard secondaries (BIND, NSD, Knot) sent a NOTIFY on every change.
    Secondary {
        #[command(subcommand)]
        cmd: SecondaryCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum TsigCmd {
    /// Make a new hmac-sha256 key and print it as BIND, NSD and Knot `key` clauses.
    Add {
        zone: String,
        name: String,
        /// Adopt this secret (base64) instead of making one, e.g. a key your secondaries already hold.
        #[arg(long)]
        secret: Option<String>,
    },
    /// The zone's key names (secrets are never shown again).
    List { zone: String },
    /// Remove a key (no secondary may still use it).
    Rm { zone: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum SecondaryCmd {
    /// Send NOTIFY to ADDR:PORT on every change, signed with the TSIG key NAME.
    Add {
        zone: String,
        addr: std::net::SocketAddr,
        #[arg(long)]
        tsig: String,
    },
    List {
        zone: String,
    },
    Rm {
        zone: String,
        addr: std::net::SocketAddr,
    },
}

/// A new key as the `key` clause of each secondary's configuration.
fn key_clauses(name: &str, algorithm: &str, secret: &str) -> String {
    format!(
        "# BIND (named.conf)\nkey \"{name}\" {{\n    algorithm {algorithm};\n    secret \"{secret}\";\n}};\n\n\
         # NSD (nsd.conf)\nkey:\n    name: \"{name}\"\n    algorithm: {algorithm}\n    secret: \"{secret}\"\n\n\
         # Knot (knot.conf)\nkey:\n  - id: {name}\n    algorithm: {algorithm}\n    secret: {secret}\n"
    )
}

fn zone_query(zone: &str) -> String {
    format!("zone={}", zone.trim_end_matches('.'))
}

async fn tsig(c: &Client, cmd: TsigCmd) -> Result<(), CliError> {
    match cmd {
        TsigCmd::Add { zone, name, secret } => {
            let body = serde_json::json!({"name": name, "secret": secret});
            let b = c
                .call(
                    Method::POST,
                    &format!("/v1/tsig?{}", zone_query(&zone)),
                    body.to_string().into_bytes(),
                    true,
                )
                .await?;
            let v: Value = serde_json::from_slice(&b)
                .map_err(|e| CliError::new(format!("the directory sent bad JSON: {e}")))?;
            if c.json {
                println!("{v}");
            } else {
                print!(
                    "{}",
                    key_clauses(
                        &field(&v, "name"),
                        &field(&v, "algorithm"),
                        &field(&v, "secret")
                    )
                );
            }
        }
        TsigCmd::List { zone } => {
            let v = c.get(&format!("/v1/tsig?{}", zone_query(&zone))).await?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|k| vec![field(k, "name"), field(k, "algorithm")])
                            .collect()
                    })
                    .unwrap_or_default();
                println!("{}", table(&["KEY", "ALGORITHM"], &rows));
            });
        }
        TsigCmd::Rm { zone, name } => {
            c.change(
                Method::DELETE,
                &format!("/v1/tsig/{name}?{}", zone_query(&zone)),
                None,
                &format!("removed TSIG key {name}"),
            )
            .await?;
        }
    }
    Ok(())
}

async fn secondary(c: &Client, cmd: SecondaryCmd) -> Result<(), CliError> {
    match cmd {
        SecondaryCmd::Add { zone, addr, tsig } => {
            c.change(
                Method::POST,
                &format!("/v1/secondaries?{}", zone_query(&zone)),
                Some(serde_json::json!({"addr": addr, "tsig": tsig})),
                &format!("added secondary {addr} (NOTIFY signed with {tsig})"),
            )
            .await?;
        }
        SecondaryCmd::List { zone } => {
            let v = c
                .get(&format!("/v1/secondaries?{}", zone_query(&zone)))
                .await?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| vec![field(s, "addr"), field(s, "tsig")])
                            .collect()
                    })
                    .unwrap_or_default();
                println!("{}", table(&["SECONDARY", "TSIG"], &rows));
            });
        }
        SecondaryCmd::Rm { zone, addr } => {
            c.change(
                Method::DELETE,
                &format!("/v1/secondaries/{addr}?{}", zone_query(&zone)),
                None,
                &format!("removed secondary {addr}"),
            )
            .await?;
        }
    }
    Ok(())
}

pub async fn run(c: &Client, cmd: ZoneCmd) -> Result<(), CliError> {
    match cmd {
        ZoneCmd::List => {
            let v = c.get("/v1/zones").await?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|z| {
                                vec![
                                    field(z, "zone"),
                                    field(z, "serial"),
                                    field(z, "hosts"),
                                    field(z, "repos"),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!("{}", table(&["ZONE", "SERIAL", "HOSTS", "REPOS"], &rows));
            });
        }
        ZoneCmd::Import { file, origin } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::new(format!("cannot read {}: {e}", file.display())))?;
            let hint = origin.or_else(|| crate::zonefile::origin_from_file_name(&file));
            // Check locally first so errors name the file and line.
            let zone = crate::zonefile::parse(&text, &file.display().to_string(), hint.as_deref())
                .map_err(|e| CliError::new(e.to_string()))?;
            let origin = zone.origin().to_string();
            let b = c
                .call(
                    Method::PUT,
                    &format!("/v1/zones/{origin}"),
                    text.into_bytes(),
                    true,
                )
                .await?;
            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
            if c.json {
                println!("{v}");
            } else {
                println!(
                    "imported {origin} from {} (zone serial {})",
                    file.display(),
                    field(&v, "serial")
                );
            }
        }
        ZoneCmd::Export { zone, flat } => {
            let path = if flat {
                format!("/v1/zones/{zone}?flat=1")
            } else {
                format!("/v1/zones/{zone}")
            };
            let b = c.call(Method::GET, &path, vec![], false).await?;
            print!("{}", String::from_utf8_lossy(&b));
        }
        ZoneCmd::Tsig { cmd } => tsig(c, cmd).await?,
        ZoneCmd::Secondary { cmd } => secondary(c, cmd).await?,
    }
    Ok(())
}
