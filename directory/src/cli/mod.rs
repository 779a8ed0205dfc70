//! The admin CLI: commands that talk to a running directory's admin API.
//!
//! Each family lives in its own file (`host`, `bind`, `repo`, `db`, `zone`, `admin`,
//! `status`, `events`, `console`). Changes are signed with `--key`. Output is a human table by
//! default and the API's JSON with `--json`. Every failure is one line on stderr
//! and a non-zero exit.

pub mod admin;
pub mod bind;
pub mod console;
pub mod db;
pub mod events;
pub mod host;
pub mod repo;
pub mod status;
pub mod zone;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use switchboard_proto::api::{ApiError, Client as ApiClient};

use crate::keys;

/// A CLI failure: the one line to print (and, from the API, its status).
pub type CliError = ApiError;

/// A `--prop` that is not `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not KEY=VALUE")]
pub struct PropError(pub String);

/// A `--prop KEY=VALUE` (of a host or a binding), split.
pub fn parse_prop(s: &str) -> Result<(String, String), PropError> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| PropError(s.to_string()))
}

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub server: String,
    pub key: Option<PathBuf>,
    pub json: bool,
    pub zone: Option<String>,
}

/// The admin API's client, and how the CLI shows what it answers.
pub struct Client {
    api: ApiClient,
    pub json: bool,
}

impl Client {
    pub fn new(g: &Global) -> Result<Self, CliError> {
        Ok(Client {
            api: ApiClient::new(&g.server, g.key.as_deref(), g.zone.clone())?,
            json: g.json,
        })
    }

    /// `http://HOST:PORT` of the directory this client talks to.
    pub fn base(&self) -> String {
        self.api.base()
    }

    /// Sends a request; signs it when `sign` is set. Returns the body of a 2xx.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        sign: bool,
    ) -> Result<Bytes, CliError> {
        self.api.call(method, path, body, sign).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let b = self.call(Method::GET, path, vec![], false).await?;
        serde_json::from_slice(&b)
            .map_err(|e| CliError::new(format!("the directory sent bad JSON: {e}")))
    }

    /// A signed change with a JSON body; prints the outcome.
    pub async fn change(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        done: &str,
    ) -> Result<(), CliError> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let b = self.call(method, path, body, true).await?;
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        if self.json {
            println!("{v}");
        } else {
            let serial = v.get("serial").and_then(Value::as_u64).unwrap_or(0);
            println!("{done} (zone serial {serial})");
        }
        Ok(())
    }

    /// Prints `v` as JSON when `--json`, else runs `human`.
    pub fn show(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v)
        }
    }
}

/// Formats rows as aligned columns under a header.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A JSON field as display text.
pub fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_string(),
        Some(Value::Null) | None => "-".to_string(),
        Some(x) => x.to_string(),
    }
}

/// `keygen --out FILE`: writes a new admin or host key and prints its public half.
pub fn keygen(out: &Path, json: bool) -> Result<(), CliError> {
    keys::keygen(out, json).map_err(|e| CliError::new(e.to_string()))
}
