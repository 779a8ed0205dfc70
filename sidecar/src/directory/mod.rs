//! Everything the sidecar exchanges with the directory: its DNS answers, cached
//! and served stale when it is down (`answers`), its change feed (`feed`), and
//! the heartbeat that says this sidecar is alive and when it served stale
//! answers (`heartbeat`).

pub mod answers;
pub mod feed;
pub mod heartbeat;
