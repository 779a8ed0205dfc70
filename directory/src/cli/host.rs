//! `host list | show | add | rm | enable | disable`.

use std::net::IpAddr;

use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use super::{field, table, CliError, Client};
use crate::model::PublicKey;

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Every host with its state.
    List,
    /// One host, its bindings and repositories.
    Show { host: String },
    /// Add a host.
    Add {
        host: String,
        /// Its addresses (repeat or separate with commas).
        #[arg(long = "addr", value_delimiter = ',', num_args = 1..)]
        addrs: Vec<IpAddr>,
        /// Its ed25519 public key, base64 of the raw 32 bytes (`ed25519:` prefix optional).
        #[arg(long)]
        pubkey: Option<PublicKey>,
        /// Roles, comma-separated (web, daemon, repo, db, build, ...).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Properties as KEY=VALUE.
        #[arg(long = "prop", value_parser = super::parse_prop)]
        props: Vec<(String, String)>,
    },
    /// Remove a host (it must have no bindings and no repositories).
    Rm { host: String },
    /// Take a host out of service: it keeps its node records and leaves every service, read and write answer.
    Disable { host: String },
    /// Put a host back in service.
    Enable { host: String },
}

pub async fn run(c: &Client, cmd: HostCmd) -> Result<(), CliError> {
    match cmd {
        HostCmd::List => {
            let v = c.get("/v1/hosts").await?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| a.iter().map(row).collect())
                    .unwrap_or_default();
                println!(
                    "{}",
                    table(
                        &[
                            "HOST",
                            "ADDRESSES",
                            "ROLES",
                            "AVAILABLE",
                            "HEALTH",
                            "FINGERPRINT"
                        ],
                        &rows
                    )
                );
            });
        }
        HostCmd::Show { host } => {
            let v = c.get(&format!("/v1/hosts/{host}")).await?;
            c.show(&v, |v| {
                for k in [
                    "name",
                    "addrs",
                    "roles",
                    "available",
                    "health",
                    "key",
                    "fingerprint",
                    "repos",
                    "dbs",
                ] {
                    println!("{k:<12} {}", field(v, k));
                }
                if let Some(props) = v.get("props").and_then(Value::as_object) {
                    for (k, val) in props {
                        println!(
                            "{:<12} {}",
                            format!("{k}:"),
                            val.as_str().unwrap_or_default()
                        );
                    }
                }
                let rows: Vec<Vec<String>> = v
                    .get("bindings")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(super::bind::row).collect())
                    .unwrap_or_default();
                if !rows.is_empty() {
                    println!();
                    println!("{}", table(super::bind::HEADERS, &rows));
                }
            });
        }
        HostCmd::Add {
            host,
            addrs,
            pubkey,
            roles,
            props,
        } => {
            let props: serde_json::Map<String, Value> = props
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let body = json!({"name": host, "addrs": addrs, "key": pubkey, "roles": roles, "props": props});
            c.change(
                Method::POST,
                "/v1/hosts",
                Some(body),
                &format!("added host {host}"),
            )
            .await?;
        }
        HostCmd::Rm { host } => {
            c.change(
                Method::DELETE,
                &format!("/v1/hosts/{host}"),
                None,
                &format!("removed host {host}"),
            )
            .await?;
        }
        HostCmd::Disable { host } => {
            c.change(
                Method::POST,
                &format!("/v1/hosts/{host}/disable"),
                None,
                &format!("host {host} is now unavailable"),
            )
            .await?;
        }
        HostCmd::Enable { host } => {
            c.change(
                Method::POST,
                &format!("/v1/hosts/{host}/enable"),
                None,
                &format!("host {host} is now available"),
            )
            .await?;
        }
    }
    Ok(())
}

fn row(h: &Value) -> Vec<String> {
    vec![
        field(h, "name"),
        field(h, "addrs"),
        field(h, "roles"),
        field(h, "available"),
        field(h, "health"),
        field(h, "fingerprint"),
    ]
}
