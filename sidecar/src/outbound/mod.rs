//! Traffic going out: signed calls to other hosts and plain calls to local
//! backends (`forward`, over the keep-alive connections of `client`), bodies
//! spooled for signing (`spool`), SSH sessions carried to another host
//! (`tunnel`), and the signing proxy local git processes fetch through
//! (`loopback`); and the same calls as bytes, for the listeners' short way
//! (`raw`).

pub mod client;
pub mod forward;
pub mod loopback;
pub mod pool;
pub mod raw;
pub mod spool;
pub mod tunnel;
