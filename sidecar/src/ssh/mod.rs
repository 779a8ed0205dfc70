//! SSH: what OpenSSH runs for the git account. `command` is the grammar of
//! what a session may ask for; `exec` serves it, here or through a tunnel.

pub mod command;
pub mod exec;

pub use command::SshCommand;
