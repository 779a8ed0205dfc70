//! Traffic coming in: the user listener (`user`, with its short way for plain
//! web traffic, `passthrough`), the signed listener other hosts call
//! (`cluster`), and the accept loop they share (`listener`).

pub mod cluster;
pub mod listener;
pub mod passthrough;
pub mod user;
