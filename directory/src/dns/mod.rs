//! The DNS front: where a query is answered.
//!
//! Two paths read the same pre-built `View` (`crate::view`), swapped whole on
//! change, so neither waits for a writer:
//! - `fast`: plain UDP queries, answered by copying pre-encoded answers, with
//!   no allocation, lock or lookup beyond one hash probe;
//! - `handler`: everything else, through hickory-server's decoding and our
//!   `DnsHandler`; UDP answers cut to the client's buffer by `truncate`.
//!
//! The listeners: `udp` (worker threads a batch of packets at a time, `mmsg`;
//! rate limited by `rrl`) and `tcp` (RFC 7766, with connection limits), which
//! hands zone transfers to `xfr` (AXFR/IXFR, signed with TSIG).

pub mod fast;
pub mod handler;
pub mod message;
pub mod mmsg;
pub mod pack;
pub mod rrl;
pub mod tcp;
pub mod truncate;
pub mod udp;
pub mod xfr;

pub use handler::{respond, DnsHandler};
pub use tcp::{serve_tcp, TcpLimits, TCP_TIMEOUT};
pub use udp::spawn_udp;
