//! `zone import FILE | export ZONE | list`.

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
    }
    Ok(())
}
