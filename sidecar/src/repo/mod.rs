//! Repositories this host holds: serving them with git (`git`), recording
//! writes on the master (`hook`), and keeping replicas current (`replicate`).

pub mod git;
pub mod hook;
pub mod local;
pub mod replicate;
