//! Helpers for `benches/run.sh`; the programs are in `src/bin`.
