//! `console`: a one-time login link for the web console, minted by a call
//! signed with the admin key (the key itself never goes to the server).

use serde_json::Value;

use super::{field, CliError, Client};

#[derive(Debug, clap::Args)]
pub struct ConsoleCmd {
    /// How long the console session lasts once the link is opened (at most 720).
    #[arg(long, default_value_t = 60)]
    minutes: u64,
}

pub async fn run(c: &Client, cmd: ConsoleCmd) -> Result<(), CliError> {
    let body = serde_json::json!({"ttl_minutes": cmd.minutes}).to_string();
    let bytes = c
        .call(http::Method::POST, "/v1/sessions", body.into_bytes(), true)
        .await?;
    let mut v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| CliError::new(format!("the directory sent bad JSON: {e}")))?;
    let url = format!("{}{}", c.base(), field(&v, "login_path"));
    if let Some(o) = v.as_object_mut() {
        o.insert("url".into(), url.clone().into());
    }
    c.show(&v, |v| {
        println!("{url}");
        println!(
            "Open it within 5 minutes (it works once) to sign in to the console as {} for {}; the session lasts {} minutes.",
            field(v, "admin"),
            field(v, "zone"),
            field(v, "session_minutes")
        );
    });
    Ok(())
}
