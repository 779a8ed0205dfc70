//! `bind add | rm | list`.

use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use super::{field, table, CliError, Client};
use crate::model::Role;

#[derive(Debug, Subcommand)]
pub enum BindCmd {
    /// Bindings, optionally of one service.
    List { service: Option<String> },
    /// HOST provides SVC on PORT.
    Add {
        host: String,
        service: String,
        port: u16,
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["master", "replica"]))]
        role: Option<String>,
        #[arg(long)]
        readonly: bool,
        #[arg(long, default_value_t = 0)]
        weight: u16,
        /// SRV priority (default: 0 for masters and role-less, 10 for replicas).
        #[arg(long)]
        priority: Option<u16>,
        #[arg(long = "prop", value_parser = super::parse_prop)]
        props: Vec<(String, String)>,
        /// Have the directory check it: `tcp`, or `http:STATUS:PATH` (e.g. `http:200:/healthz`).
        #[arg(long)]
        check: Option<String>,
        /// Seconds between checks.
        #[arg(long, requires = "check")]
        check_interval: Option<u32>,
        /// Milliseconds one check may take.
        #[arg(long, requires = "check")]
        check_timeout_ms: Option<u32>,
        /// Failed checks in a row before the binding turns critical (leaves DNS).
        #[arg(long, requires = "check")]
        check_failures: Option<u32>,
        /// Passed checks in a row before a critical binding turns passing again.
        #[arg(long, requires = "check")]
        check_recoveries: Option<u32>,
    },
    /// HOST no longer provides SVC.
    Rm { host: String, service: String },
}

pub const HEADERS: &[&str] = &[
    "HOST",
    "SERVICE",
    "PORT",
    "ROLE",
    "READONLY",
    "AVAILABLE",
    "HEALTH",
];

pub fn row(b: &Value) -> Vec<String> {
    vec![
        field(b, "host"),
        field(b, "service"),
        field(b, "port"),
        field(b, "role"),
        field(b, "readonly"),
        field(b, "available"),
        field(b, "health"),
    ]
}

pub async fn run(c: &Client, cmd: BindCmd) -> Result<(), CliError> {
    match cmd {
        BindCmd::List { service } => {
            let path = match &service {
                Some(s) => format!("/v1/bindings?service={s}"),
                None => "/v1/bindings".to_string(),
            };
            let v = c.get(&path).await?;
            c.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| a.iter().map(row).collect())
                    .unwrap_or_default();
                println!("{}", table(HEADERS, &rows));
            });
        }
        BindCmd::Add {
            host,
            service,
            port,
            role,
            readonly,
            weight,
            priority,
            props,
            check,
            check_interval,
            check_timeout_ms,
            check_failures,
            check_recoveries,
        } => {
            let check = check
                .map(|probe| -> Result<crate::model::Check, CliError> {
                    let mut c = crate::model::Check::new(
                        probe
                            .parse()
                            .map_err(|e: crate::model::Invalid| CliError::new(e.0))?,
                    );
                    c.interval = check_interval.unwrap_or(c.interval);
                    c.timeout_ms = check_timeout_ms.unwrap_or(c.timeout_ms);
                    c.failures = check_failures.unwrap_or(c.failures);
                    c.recoveries = check_recoveries.unwrap_or(c.recoveries);
                    Ok(c)
                })
                .transpose()?;
            let role: Option<Role> = role
                .map(|r| r.parse())
                .transpose()
                .map_err(|e: crate::model::Invalid| CliError::new(e.0))?;
            let props: serde_json::Map<String, Value> = props
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let body = json!({
                "host": host, "service": service, "port": port, "role": role,
                "readonly": readonly, "weight": weight, "priority": priority, "props": props,
                "check": check,
            });
            c.change(
                Method::POST,
                "/v1/bindings",
                Some(body),
                &format!("{host} now provides {service} on port {port}"),
            )
            .await?;
        }
        BindCmd::Rm { host, service } => {
            c.change(
                Method::DELETE,
                &format!("/v1/bindings/{host}/{service}"),
                None,
                &format!("{host} no longer provides {service}"),
            )
            .await?;
        }
    }
    Ok(())
}
