//! SSH: what OpenSSH runs for the git account (`exec`, the forced command).

pub mod exec;

pub use exec::{parse, GitVerb, SshCommand};
