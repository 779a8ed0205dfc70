//! SSH: what OpenSSH runs for the git account. `command` is the grammar of
//! what a session may ask for; `exec` serves it, here or through a tunnel;
//! `users` asks the web application who holds a key and what that user may use.

pub mod command;
pub mod exec;
pub mod users;

pub use command::SshCommand;
