//! `admin list | add | rm`: the keys allowed to change a zone.

use clap::Subcommand;
use http::Method;
use serde_json::json;

use super::{field, table, CliError, Client};
use crate::model::PublicKey;

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    List,
    /// Allow another key to change the zone.
    Add {
        name: String,
        #[arg(long)]
        pubkey: PublicKey,
    },
    /// Revoke an admin key (the last one cannot be removed).
    Rm {
        name: String,
    },
}

pub async fn run(c: &Client, cmd: AdminCmd) -> Result<(), CliError> {
    match cmd {
        AdminCmd::List => {
            let v = c.get("/v1/admins").await?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| vec![field(x, "name"), field(x, "fingerprint")])
                            .collect()
                    })
                    .unwrap_or_default();
                println!("{}", table(&["ADMIN", "FINGERPRINT"], &rows));
            });
        }
        AdminCmd::Add { name, pubkey } => {
            c.change(
                Method::POST,
                "/v1/admins",
                Some(json!({"name": name, "key": pubkey})),
                &format!("added admin {name}"),
            )
            .await?;
        }
        AdminCmd::Rm { name } => {
            c.change(
                Method::DELETE,
                &format!("/v1/admins/{name}"),
                None,
                &format!("removed admin {name}"),
            )
            .await?;
        }
    }
    Ok(())
}
