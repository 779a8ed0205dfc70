//! `repo list | show | add | rm | promote | freeze | thaw | auto-failover`.

use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use super::{field, table, CliError, Client};

#[derive(Debug, Subcommand)]
pub enum RepoCmd {
    /// Every repository with its master, replicas and versions.
    List,
    /// One repository: versions per host, readers, recorded losses.
    Show { repo: String },
    /// Add a repository.
    Add {
        repo: String,
        #[arg(long)]
        master: String,
        #[arg(long, value_delimiter = ',')]
        replicas: Vec<String>,
        /// How many versions a reader may be behind the master (0: read-after-write).
        #[arg(long, default_value_t = 0)]
        max_lag: u64,
        /// Let the directory promote an up-to-date replica when the master is down.
        #[arg(long)]
        auto_failover: bool,
    },
    /// Turn the directory's automatic failover of REPO on or off (off by default:
    /// checks alert, an admin promotes).
    AutoFailover {
        repo: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Remove a repository from the directory (its data on the hosts is untouched).
    Rm { repo: String },
    /// Make HOST the master of REPO. Refused if HOST is behind the master unless --force.
    Promote {
        repo: String,
        host: String,
        /// Promote even if versions may be lost; the loss is recorded.
        #[arg(long)]
        force: bool,
    },
    /// Refuse writes to REPO with MESSAGE, which git shows the user (a
    /// maintenance lock; reads go on, a push already under way finishes).
    Freeze {
        repo: String,
        #[arg(long)]
        message: String,
    },
    /// Take writes to REPO again.
    Thaw { repo: String },
}

pub async fn run(c: &Client, cmd: RepoCmd) -> Result<(), CliError> {
    match cmd {
        RepoCmd::List => {
            let v = c.get("/v1/repos").await?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| {
                                vec![
                                    field(r, "name"),
                                    field(r, "master"),
                                    field(r, "replicas"),
                                    field(r, "version"),
                                    field(r, "max_lag"),
                                    field(r, "readers"),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{}",
                    table(
                        &["REPO", "MASTER", "REPLICAS", "VERSION", "MAX_LAG", "READERS"],
                        &rows
                    )
                );
            });
        }
        RepoCmd::Show { repo } => {
            let v = c.get(&format!("/v1/repos/{repo}")).await?;
            c.show(&v, |v| {
                for k in [
                    "name",
                    "master",
                    "replicas",
                    "version",
                    "max_lag",
                    "readonly",
                    "frozen",
                    "auto_failover",
                    "readers",
                ] {
                    println!("{k:<10} {}", field(v, k));
                }
                let versions = v
                    .get("versions")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let rows: Vec<Vec<String>> = versions
                    .iter()
                    .map(|(h, n)| vec![h.clone(), n.to_string()])
                    .collect();
                println!();
                println!("{}", table(&["HOST", "VERSION"], &rows));
                if let Some(lost) = v
                    .get("lost")
                    .and_then(Value::as_array)
                    .filter(|l| !l.is_empty())
                {
                    println!();
                    println!("versions that may have been lost by forced promotions:");
                    for l in lost {
                        let at = l
                            .get("at")
                            .and_then(Value::as_u64)
                            .map(|s| crate::state::clock(s.saturating_mul(1000)))
                            .unwrap_or_else(|| field(l, "at"));
                        println!(
                            "  {}..={} written on {}, promoted {} at {at}",
                            field(l, "from"),
                            field(l, "to"),
                            field(l, "old_master"),
                            field(l, "new_master"),
                        );
                    }
                }
            });
        }
        RepoCmd::Add {
            repo,
            master,
            replicas,
            max_lag,
            auto_failover,
        } => {
            let body = json!({"name": repo, "master": master, "replicas": replicas, "max_lag": max_lag, "auto_failover": auto_failover});
            c.change(
                Method::POST,
                "/v1/repos",
                Some(body),
                &format!("added repository {repo}"),
            )
            .await?;
        }
        RepoCmd::AutoFailover { repo, state } => {
            c.change(
                Method::POST,
                &format!("/v1/repos/{repo}/auto-failover"),
                Some(json!({"on": state == "on"})),
                &format!("automatic failover of {repo} is {state}"),
            )
            .await?;
        }
        RepoCmd::Rm { repo } => {
            c.change(
                Method::DELETE,
                &format!("/v1/repos/{repo}"),
                None,
                &format!("removed repository {repo}"),
            )
            .await?;
        }
        RepoCmd::Promote { repo, host, force } => {
            let body = json!({"host": host, "force": force});
            c.change(
                Method::POST,
                &format!("/v1/repos/{repo}/promote"),
                Some(body),
                &format!("{host} is now the master of {repo}"),
            )
            .await?;
        }
        RepoCmd::Freeze { repo, message } => {
            c.change(
                Method::POST,
                &format!("/v1/repos/{repo}/freeze"),
                Some(json!({"message": message})),
                &format!("repository {repo} is frozen: writes are refused, reads go on"),
            )
            .await?;
        }
        RepoCmd::Thaw { repo } => {
            c.change(
                Method::POST,
                &format!("/v1/repos/{repo}/thaw"),
                None,
                &format!("repository {repo} takes writes again"),
            )
            .await?;
        }
    }
    Ok(())
}
