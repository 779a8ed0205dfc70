//! Everything the sidecar exchanges with the directory: its DNS answers, cached
//! and served stale when it is down (`answers`), where its admin API is and
//! which of its servers answer (`apis`), its change feed (`feed`), and
//! the heartbeat that says this sidecar is alive and when it served stale
//! answers (`heartbeat`).

pub mod answers;
pub mod apis;
pub mod feed;
pub mod heartbeat;
