//! Repositories this host holds: the bare repositories and the git commands
//! run on them (`git`), serving a request from this host's copy over HTTP or
//! SSH (`local`), recording writes on the master (`hook`, and `journal` for
//! those the directory missed), and keeping replicas current (`replicate`).

pub mod git;
pub mod hook;
pub mod journal;
pub mod local;
pub mod replicate;
pub mod sync;
pub mod syncing;
