//! The forced command's grammar: what `SSH_ORIGINAL_COMMAND` may ask for. Only
//! git's three commands on one repository, in any form git sends the path, and
//! `conduit METHOD`; anything else is refused with a message saying what is
//! served.

use crate::route::{self, GitVerb, RouteError};

/// Why an SSH command is refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("conduit needs one method name (letters, digits, '.', '_'), not {0:?}")]
    BadMethod(String),
    #[error("{0:?} is not served here: only git-upload-pack, git-receive-pack, git-upload-archive and conduit METHOD")]
    NotServed(String),
    #[error("the repository must be one quoted path, as git sends it ('REPO'), not {0:?}")]
    Unquoted(String),
    #[error(transparent)]
    Repository(#[from] RouteError),
}

/// What an SSH session asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshCommand {
    Git { verb: GitVerb, repo: String },
    Conduit { method: String },
}

impl SshCommand {
    /// Parses `SSH_ORIGINAL_COMMAND`: `git-upload-pack 'REPO'` (also `'/REPO'`,
    /// `'REPO.git'`, `'/source/REPO.git'`), `git-receive-pack ...`,
    /// `git-upload-archive ...`, or `conduit METHOD`. Anything else is refused.
    pub fn parse(cmd: &str) -> Result<Self, CommandError> {
        let cmd = cmd.trim();
        let (word, arg) = cmd
            .split_once(' ')
            .map(|(w, a)| (w, a.trim()))
            .unwrap_or((cmd, ""));
        if word == "conduit" {
            let ok = !arg.is_empty()
                && arg.len() <= 128
                && arg.split('.').all(|part| {
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
            if !ok {
                return Err(CommandError::BadMethod(arg.to_string()));
            }
            return Ok(SshCommand::Conduit {
                method: arg.to_string(),
            });
        }
        let verb = match word {
            "git-upload-pack" => GitVerb::UploadPack,
            "git-receive-pack" => GitVerb::ReceivePack,
            "git-upload-archive" => GitVerb::UploadArchive,
            _ => return Err(CommandError::NotServed(word.to_string())),
        };
        let path = arg
            .strip_prefix('\'')
            .and_then(|a| a.strip_suffix('\''))
            .filter(|p| !p.contains('\''))
            .ok_or_else(|| CommandError::Unquoted(arg.to_string()))?;
        let path = path.strip_prefix('/').unwrap_or(path);
        let path = path.strip_prefix("source/").unwrap_or(path);
        let repo = route::repo_name(path)?;
        Ok(SshCommand::Git { verb, repo })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_git_sends() {
        for arg in [
            "'r1'",
            "'/r1'",
            "'r1.git'",
            "'/r1.git'",
            "'/source/r1.git'",
            "'source/r1.git'",
        ] {
            assert_eq!(
                SshCommand::parse(&format!("git-upload-pack {arg}")).ok(),
                Some(SshCommand::Git {
                    verb: GitVerb::UploadPack,
                    repo: "r1".into()
                }),
                "{arg}"
            );
        }
        assert_eq!(
            SshCommand::parse("git-receive-pack 'r2'").ok(),
            Some(SshCommand::Git {
                verb: GitVerb::ReceivePack,
                repo: "r2".into()
            })
        );
        assert_eq!(
            SshCommand::parse("conduit diffusion.querycommits").ok(),
            Some(SshCommand::Conduit {
                method: "diffusion.querycommits".into()
            })
        );
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "",
            "bash",
            "git-upload-pack",
            "git-upload-pack r1",
            "git-upload-pack '../etc'",
            "git-upload-pack '/etc/passwd'",
            "git-upload-pack 'r1'; rm -rf /",
            "git-upload-pack 'a'\\''b'",
            "git-upload-pack '/source/../../r1.git'",
            "git-upload-pack 'a/b'",
            "scp -t /tmp",
            "conduit",
            "conduit a;b",
            "conduit $(id)",
            "conduit ..",
            "conduit .a",
        ] {
            assert!(SshCommand::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
