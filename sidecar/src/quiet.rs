//! Warnings a stranger can cause, at a bounded rate.
//!
//! A refused call, a refused TLS certificate or a failed handshake each
//! deserve a line in the log, but anyone who can reach the cluster listener
//! can make thousands a second, and each line costs disk and an operator's
//! attention. Each such warning goes through a [`Budget`]: a few lines a
//! second, then silence for the rest of that second; the next line logged
//! says how many were left out (`skipped=N`). The metrics still count every
//! refusal.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines a second per kind of warning.
pub const LINES_PER_SEC: u32 = 10;

/// One kind of warning's allowance for the current second.
pub struct Budget {
    state: Mutex<State>,
}

struct State {
    second: u64,
    used: u32,
    skipped: u64,
}

impl Budget {
    pub const fn new() -> Self {
        Budget {
            state: Mutex::new(State {
                second: 0,
                used: 0,
                skipped: 0,
            }),
        }
    }

    /// `Some(n)` when this warning may be logged, `n` being how many of its
    /// kind were left out since the last one logged; `None` to leave it out.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.admit_at(now)
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.second != now {
            s.second = now;
            s.used = 0;
        }
        if s.used < LINES_PER_SEC {
            s.used += 1;
            Some(std::mem::take(&mut s.skipped))
        } else {
            s.skipped += 1;
            None
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_a_few_lines_and_the_next_says_how_many_were_left_out() {
        let b = Budget::new();
        let admitted: Vec<u64> = (0..100).filter_map(|_| b.admit_at(7)).collect();
        assert_eq!(admitted, vec![0; LINES_PER_SEC as usize]);
        assert_eq!(b.admit_at(8), Some(90));
        assert_eq!(b.admit_at(8), Some(0));
    }
}
