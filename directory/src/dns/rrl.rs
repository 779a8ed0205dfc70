//! Response rate limiting, as BIND and Knot do it: a flood from one network
//! (an IPv4 /24 or an IPv6 /56) gets at most `rate` answers a second; past
//! that most answers are dropped and every `slip`-th is sent truncated (TC, no
//! records), so a real client behind a spoofed flood retries over TCP and
//! still gets its answer. Off unless `serve --rrl-rate N` is given.
//!
//! One token bucket per network, holding a second's worth of answers and
//! refilled continuously; buckets idle for a while are swept so a flood of
//! random sources cannot grow the table without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send a truncated answer instead (TC set, no records).
    Slip,
    Drop,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Answers refused since the bucket last had tokens.
    refused: u32,
}

/// The limiter shared by the UDP workers.
#[derive(Debug)]
pub struct Rrl {
    rate: f64,
    slip: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    buckets: HashMap<u128, Bucket>,
    last_sweep: Instant,
    /// Answers dropped or slipped since the last log line.
    limited: u64,
    last_log: Instant,
}

/// Buckets untouched this long are full again and can go.
const IDLE: Duration = Duration::from_secs(2);
/// At most this many networks are tracked; past it, idle ones are swept first
/// and, if the table is still full, new networks are limited as one.
const MAX_BUCKETS: usize = 100_000;

/// One client, for per-client limits: its IPv4 address, or its IPv6 /64 (one
/// host may hold a whole /64), with IPv4-mapped addresses seen as IPv4.
pub fn client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// The network a client is limited as: its /24 (IPv4) or /56 (IPv6).
fn network(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
        IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 72) - 1)) | 1,
    }
}

impl Rrl {
    /// `rate` answers per second per network; every `slip`-th refused answer is
    /// sent truncated (0: never).
    pub fn new(rate: u32, slip: u32) -> Self {
        let now = Instant::now();
        Rrl {
            rate: f64::from(rate.max(1)),
            slip,
            state: Mutex::new(State {
                buckets: HashMap::new(),
                last_sweep: now,
                limited: 0,
                last_log: now,
            }),
        }
    }

    /// The verdict for one answer to `client` at `now`.
    pub fn check(&self, client: IpAddr, now: Instant) -> Verdict {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A full table is swept at most every 100 ms: under a flood from many
        // networks, sweeping on every packet would cost more than the flood.
        let since = now.saturating_duration_since(st.last_sweep);
        if since >= IDLE || (st.buckets.len() >= MAX_BUCKETS && since >= Duration::from_millis(100))
        {
            st.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
            st.last_sweep = now;
        }
        let key = if st.buckets.len() >= MAX_BUCKETS && !st.buckets.contains_key(&network(client)) {
            0 // every network beyond the table shares one bucket
        } else {
            network(client)
        };
        let rate = self.rate;
        let b = st.buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            last: now,
            refused: 0,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.refused = 0;
            return Verdict::Send;
        }
        b.refused = b.refused.wrapping_add(1);
        let verdict = if self.slip > 0 && b.refused.is_multiple_of(self.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        };
        st.limited += 1;
        if now.duration_since(st.last_log) >= Duration::from_secs(10) {
            tracing::warn!(
                limited = st.limited,
                networks = st.buckets.len(),
                "rate limiting answers (--rrl-rate)"
            );
            st.limited = 0;
            st.last_log = now;
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_gets_its_rate_and_slips_every_second_refusal() {
        let rrl = Rrl::new(10, 2);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().expect("ip");
        let same_net: IpAddr = "192.0.2.200".parse().expect("ip");
        let other: IpAddr = "198.51.100.1".parse().expect("ip");
        let verdicts: Vec<Verdict> = (0..30)
            .map(|i| rrl.check(if i % 2 == 0 { a } else { same_net }, t0))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 10);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Slip).count(), 10);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Drop).count(), 10);
        // Another network is not starved by the first one's flood.
        assert_eq!(rrl.check(other, t0), Verdict::Send);
        // Half a second later, half a second's worth of answers again.
        let later = t0 + Duration::from_millis(500);
        let sent = (0..20)
            .filter(|_| rrl.check(a, later) == Verdict::Send)
            .count();
        assert_eq!(sent, 5);
    }

    #[test]
    fn mapped_ipv4_is_ipv4_and_a_v6_client_is_its_64() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(client(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(network(mapped), network("192.0.2.99".parse().expect("ip")));
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        assert_eq!(client(a), client(b));
        assert_ne!(client(a), client("2001:db8:1:3::1".parse().expect("ip")));
        // A full table is not swept on every answer.
        let rrl = Rrl::new(1, 0);
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i << 8));
            rrl.check(ip, t0);
        }
        let st = rrl.state.lock().expect("state");
        assert!(st.buckets.len() <= MAX_BUCKETS + 1);
    }

    #[test]
    fn ipv6_clients_are_limited_per_56() {
        let rrl = Rrl::new(1, 0);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:0:1::1".parse().expect("ip");
        let same: IpAddr = "2001:db8:0:ff::2".parse().expect("ip");
        let other: IpAddr = "2001:db8:0:100::1".parse().expect("ip");
        assert_eq!(rrl.check(a, t0), Verdict::Send);
        assert_eq!(rrl.check(same, t0), Verdict::Drop);
        assert_eq!(rrl.check(other, t0), Verdict::Send);
    }
}
