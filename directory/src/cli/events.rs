//! `events`: the audit log, and with `--follow` every new event as it happens.

use serde_json::Value;

use super::{field, CliError, Client};

#[derive(Debug, clap::Args)]
pub struct EventsCmd {
    /// Show the events after this id instead of the last ones.
    #[arg(long)]
    after: Option<u64>,
    /// How many of the last events to show first.
    #[arg(long, default_value_t = 20)]
    last: u64,
    /// Keep printing new events until interrupted (like `tail -f`).
    #[arg(long, short)]
    follow: bool,
}

pub async fn run(c: &Client, cmd: EventsCmd) -> Result<(), CliError> {
    let mut path = match cmd.after {
        Some(a) => format!("/v1/events?after={a}"),
        None => format!("/v1/events?last={}", cmd.last),
    };
    loop {
        let v = c.get(&path).await?;
        let events = v
            .get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for e in &events {
            print(c, e);
        }
        if !cmd.follow {
            return Ok(());
        }
        let next = v.get("last").and_then(Value::as_u64).unwrap_or(0);
        path = format!("/v1/events?after={next}&wait=20");
    }
}

/// One event per line: JSON with `--json`, else time, id, what, who and why.
fn print(c: &Client, e: &Value) {
    use std::io::Write;
    if c.json {
        println!("{e}");
    } else {
        let change = match (
            e.get("from").and_then(Value::as_str),
            e.get("to").and_then(Value::as_str),
        ) {
            (Some(f), Some(t)) => format!(" {f}->{t}"),
            _ => String::new(),
        };
        let time = e
            .get("time")
            .and_then(Value::as_u64)
            .map(crate::state::clock)
            .unwrap_or_default();
        println!(
            "{time}  #{}  {} {} {}{change}  by {}: {}",
            field(e, "id"),
            field(e, "kind"),
            field(e, "name"),
            field(e, "action"),
            field(e, "by"),
            field(e, "message"),
        );
    }
    let _ = std::io::stdout().flush();
}
