//! The database flags of `run`: `--db DB=write@ADDR:PORT`, `--db DB=read@ADDR:PORT`,
//! `--db-local DB[=ADDR:PORT]`, the monitoring account and the causal-read settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchboard_proto::model::validate_label;

/// Which port: writes go to the master, reads to an up-to-date replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Write,
    Read,
}

impl PortKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Write => "write",
            PortKind::Read => "read",
        }
    }
}

/// One `--db DB=KIND@ADDR:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbPort {
    pub db: String,
    pub kind: PortKind,
    pub addr: SocketAddr,
}

impl std::str::FromStr for DbPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--db {s:?}: expected DB=write@ADDR:PORT or DB=read@ADDR:PORT");
        let (db, rest) = s.split_once('=').ok_or_else(bad)?;
        let (kind, addr) = rest.split_once('@').ok_or_else(bad)?;
        let kind = match kind {
            "write" => PortKind::Write,
            "read" => PortKind::Read,
            _ => return Err(bad()),
        };
        validate_label("database", db).map_err(|e| format!("--db {s:?}: {e}"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("--db {s:?}: {addr:?} is not ADDR:PORT"))?;
        Ok(DbPort {
            db: db.to_string(),
            kind,
            addr,
        })
    }
}

/// One `--db-local DB[=ADDR:PORT]`: this host runs a server of `DB`, at
/// `addr`, or at its own address in the directory and the database's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbLocal {
    pub db: String,
    pub addr: Option<SocketAddr>,
}

impl std::str::FromStr for DbLocal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (db, addr) = match s.split_once('=') {
            Some((db, a)) => (
                db,
                Some(
                    a.parse()
                        .map_err(|_| format!("--db-local {s:?}: {a:?} is not ADDR:PORT"))?,
                ),
            ),
            None => (s, None),
        };
        validate_label("database", db).map_err(|e| format!("--db-local {s:?}: {e}"))?;
        Ok(DbLocal {
            db: db.to_string(),
            addr,
        })
    }
}

/// The account the sidecar reads positions with and, on database hosts,
/// promotes and fences with.
#[derive(Clone)]
pub struct Account {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Everything the database flags say.
#[derive(Debug, Clone, Default)]
pub struct DbConfig {
    pub ports: Vec<DbPort>,
    pub local: Vec<DbLocal>,
    pub account: Option<Account>,
    /// Read-after-write on the read port (`--db-causal on`, the default).
    pub causal: bool,
    /// How long a read connection may wait for a replica to apply the master's position.
    pub causal_wait: Duration,
}

impl DbConfig {
    /// Checks the flags together and reads the password file.
    pub fn new(
        ports: Vec<DbPort>,
        local: Vec<DbLocal>,
        user: Option<String>,
        password_file: Option<&Path>,
        causal: bool,
        causal_wait: Duration,
    ) -> Result<Self, String> {
        let mut seen = BTreeMap::new();
        for p in &ports {
            if let Some(other) = seen.insert((p.db.as_str(), p.kind.as_str()), p.addr) {
                return Err(format!(
                    "--db {}={}@: given twice ({other} and {})",
                    p.db,
                    p.kind.as_str(),
                    p.addr
                ));
            }
        }
        let mut dbs = std::collections::BTreeSet::new();
        for l in &local {
            if !dbs.insert(l.db.as_str()) {
                return Err(format!("--db-local {}: given twice", l.db));
            }
        }
        let password = match password_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("--db-password-file {}: {e}", f.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        let account = match (user, password) {
            (Some(user), password) => Some(Account {
                user,
                password: password.unwrap_or_default(),
            }),
            (None, Some(_)) => return Err("--db-password-file needs --db-user".into()),
            (None, None) => None,
        };
        if account.is_none()
            && (!local.is_empty() || (causal && ports.iter().any(|p| p.kind == PortKind::Read)))
        {
            return Err(
                "--db-user and --db-password-file are needed for --db-local and for read ports with --db-causal on: the sidecar reads positions with that account"
                    .into(),
            );
        }
        Ok(DbConfig {
            ports,
            local,
            account,
            causal,
            causal_wait,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.local.is_empty()
    }

    /// The databases this sidecar follows.
    pub fn databases(&self) -> std::collections::BTreeSet<String> {
        self.ports
            .iter()
            .map(|p| p.db.clone())
            .chain(self.local.iter().map(|l| l.db.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_and_refuse() {
        let p: DbPort = "main=write@127.0.0.1:3307".parse().expect("parses");
        assert_eq!(p.kind, PortKind::Write);
        assert_eq!(p.addr.port(), 3307);
        for bad in [
            "main",
            "main=write",
            "main=both@127.0.0.1:1",
            "Main=read@127.0.0.1:1",
            "main=read@nowhere",
        ] {
            assert!(bad.parse::<DbPort>().is_err(), "{bad}");
        }
        let l: DbLocal = "main".parse().expect("parses");
        assert_eq!(l.addr, None);
        assert!("main=x".parse::<DbLocal>().is_err());
    }

    #[test]
    fn read_ports_need_the_account() {
        let read: DbPort = "main=read@127.0.0.1:3307".parse().expect("parses");
        let e = DbConfig::new(vec![read.clone()], vec![], None, None, true, Duration::ZERO);
        assert!(e.is_err());
        let ok = DbConfig::new(vec![read], vec![], None, None, false, Duration::ZERO);
        assert!(ok.is_ok());
    }
}
