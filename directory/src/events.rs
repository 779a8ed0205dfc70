//! The audit log's entry: every transition an operator should hear about,
//! kept in the store, tailed by `switchboard-directory events` and sent to
//! webhooks. Only the type lives here, below the store that keeps it; which
//! change makes which event, and the numbering, are `state::audit`'s.
//!
//! An event is written in the same atomic batch as the change it describes
//! (so a change is never acknowledged without its event, nor the reverse), or
//! on its own for what is not a change of the model: a replica behind its
//! `max_lag` for too long, a sidecar that served stale answers. Ids grow by one
//! per event across all zones and are never reused, so a reader keeps its place
//! with one number (`GET /v1/events?after=ID`).
//!
//! What hosts write ([`Event::by_host`]) is bounded apart from what admins and
//! the directory do: the store drops each kind's oldest only for one of its
//! own (`store::sled::HOST_EVENTS_KEPT`), and each host's heartbeats have an
//! allowance of events (`state::EVENT_BURST`). The older part of the log may
//! so have gaps where host events were; the recent part has none.
//!
//! Routine records are not events: a repository's version moving on every
//! push, a database host's reported position, or a health or availability
//! set to the value it already had.

use serde::{Deserialize, Serialize};

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing by one per event, never reused.
    pub id: u64,
    /// Unix time in milliseconds.
    pub time: u64,
    pub zone: String,
    /// `host`, `binding`, `repo`, `db`, `admin`, `zone` or `sidecar`.
    pub kind: String,
    /// The host, `HOST/SERVICE`, repository, database (`DB/HOST` for a
    /// replica's lag), admin or zone.
    pub name: String,
    /// `add`, `remove`, `disable`, `enable`, `health`, `promote`, `freeze`,
    /// `thaw`, `lagging`,
    /// `caught-up`, `stale`, `fresh`, `import`, `seed`.
    pub action: String,
    /// The state before, for transitions (`passing`, `available`, a master, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The state after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Who made it: `admin NAME`, `host NAME`, `check`, `directory`.
    pub by: String,
    /// One sentence for people.
    pub message: String,
    /// For an episode (a sidecar's stale answers): when it began and, once
    /// over, ended (unix ms), so a restarted directory knows which one it has
    /// logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<Span>,
}

impl Event {
    /// Whether a host made it (a sidecar's report, a change signed with a
    /// host's own key) rather than an admin or the directory: the audit log
    /// keeps the two apart, so hosts never push out what admins did.
    pub fn by_host(&self) -> bool {
        self.by.starts_with("host ")
    }
}

/// When an episode began and ended (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub from: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// An event before it has an id and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub kind: &'static str,
    pub name: String,
    pub action: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub message: String,
    pub span: Option<Span>,
}

impl Draft {
    pub fn new(kind: &'static str, name: impl Into<String>, action: &'static str) -> Self {
        Draft {
            kind,
            name: name.into(),
            action,
            from: None,
            to: None,
            message: String::new(),
            span: None,
        }
    }

    pub fn span(mut self, from: u64, to: Option<u64>) -> Self {
        self.span = Some(Span { from, to });
        self
    }

    pub fn transition(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.from = Some(from.into());
        self.to = Some(to.into());
        self
    }

    pub fn message(mut self, m: impl Into<String>) -> Self {
        self.message = m.into();
        self
    }

    /// The event, numbered and stamped.
    pub fn finish(self, id: u64, time: u64, zone: &str, by: &str) -> Event {
        Event {
            id,
            time,
            zone: zone.to_string(),
            kind: self.kind.to_string(),
            name: self.name,
            action: self.action.to_string(),
            from: self.from,
            to: self.to,
            by: by.to_string(),
            message: self.message,
            span: self.span,
        }
    }
}
