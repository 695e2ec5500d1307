//! The command line's one error type, and the exit code each kind of error ends with.

use std::fmt;

use kagzi_proto::{Problem, RunId, RunStatus};

/// The exit codes, as `kagzi --help` and docs/cli.md list them.
pub(crate) mod exit {
    /// Everything went as asked.
    pub(crate) const OK: u8 = 0;
    /// Any other error: the server refused the request (400, 401, 413, 422, 5xx), a file
    /// could not be read, the server could not start.
    pub(crate) const ERROR: u8 = 1;
    /// The command line was wrong: an unknown flag, a bad value, a missing confirmation.
    pub(crate) const USAGE: u8 = 2;
    /// The server answered 404: no such run, schedule or route.
    pub(crate) const NOT_FOUND: u8 = 3;
    /// The server answered 409: the run already ended, the name is taken.
    pub(crate) const CONFLICT: u8 = 4;
    /// The server could not be reached, or did not answer in time.
    pub(crate) const UNREACHABLE: u8 = 5;
    /// The run waited for (`run result`, `run watch`, `run start --wait`) failed or was
    /// cancelled.
    pub(crate) const RUN_FAILED: u8 = 6;
    /// The wait (`run result --timeout`) ended before the run did.
    pub(crate) const TIMED_OUT: u8 = 7;
}

/// The result type of every command.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can make a command fail.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The command line asks for something that cannot be done as written.
    #[error("{0}")]
    Usage(String),
    /// The server refused the request with this problem document.
    #[error("{}", ProblemLine(.0))]
    Api(Problem),
    /// No connection to the server, or no answer in time.
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable {
        /// The server URL the command used.
        url: String,
        /// What the transport said.
        reason: String,
    },
    /// The server's answer could not be read (a broken connection, an unexpected body).
    #[error("cannot read the server's answer to {what}: {reason}")]
    Answer {
        /// Which request it answered.
        what: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The run that was waited for ended, but not as completed.
    #[error("run {id} {status}{}", .error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    RunEnded {
        /// The run.
        id: RunId,
        /// How it ended: failed or cancelled.
        status: RunStatus,
        /// Its error, if it recorded one.
        error: Option<String>,
    },
    /// The wait ran out before the run ended.
    #[error("run {id} has not ended after {waited}: it is {status}")]
    TimedOut {
        /// The run.
        id: RunId,
        /// Its status when the wait ran out.
        status: RunStatus,
        /// How long the command waited, for people.
        waited: String,
    },
    /// A file or the terminal could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The in-process server (`kagzi dev`, `kagzi server`) could not start or stopped with
    /// an error.
    #[error(transparent)]
    Serve(#[from] kagzi_server::ServeError),
    /// The user answered no when asked to confirm.
    #[error("{0}")]
    Declined(String),
    /// A `--check` found what it checks for not true yet.
    #[error("{0}")]
    CheckFailed(String),
}

impl Error {
    /// The process exit code for this error (see [`exit`]).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Api(problem) => match problem.status {
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                _ => exit::ERROR,
            },
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::RunEnded { .. } => exit::RUN_FAILED,
            Error::TimedOut { .. } => exit::TIMED_OUT,
            Error::Answer { .. }
            | Error::Io { .. }
            | Error::Serve(_)
            | Error::Declined(_)
            | Error::CheckFailed(_) => exit::ERROR,
        }
    }

    /// A failure to read or write `what`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether this is a write to a closed pipe (`kagzi run list | head`), which ends the
    /// command quietly.
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// A problem document in one line: `Not found (404): run 0190… not found`.
struct ProblemLine<'a>(&'a Problem);

impl fmt::Display for ProblemLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problem = self.0;
        write!(f, "{} ({})", problem.title, problem.status)?;
        let detail = problem.detail.trim();
        if !detail.is_empty() {
            // A detail over several lines still prints as one.
            let detail: Vec<&str> = detail.lines().map(str::trim).collect();
            write!(f, ": {}", detail.join(" "))?;
        }
        if problem.status == 401 {
            f.write_str(" (pass --api-key or set KAGZI_API_KEY)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_prints_in_one_line_and_picks_its_exit_code() {
        let problem = Problem::new(404, "not-found", "Not found", "run 7 not found\n  at all");
        let error = Error::Api(problem);
        assert_eq!(error.to_string(), "Not found (404): run 7 not found at all");
        assert_eq!(error.exit_code(), exit::NOT_FOUND);
        let conflict = Error::Api(Problem::new(409, "conflict", "Conflict", "ended"));
        assert_eq!(conflict.exit_code(), exit::CONFLICT);
        let invalid = Error::Api(Problem::new(
            422,
            "invalid-body",
            "Invalid request body",
            "",
        ));
        assert_eq!(invalid.to_string(), "Invalid request body (422)");
        assert_eq!(invalid.exit_code(), exit::ERROR);
    }

    #[test]
    fn an_unauthorized_answer_says_how_to_pass_a_key() {
        let error = Error::Api(Problem::new(401, "unauthorized", "Unauthorized", "no key"));
        assert!(
            error
                .to_string()
                .ends_with("(pass --api-key or set KAGZI_API_KEY)")
        );
    }

    #[test]
    fn every_kind_has_its_own_exit_code() {
        let id = RunId::new();
        let codes = [
            Error::Usage(String::new()).exit_code(),
            Error::Unreachable {
                url: String::new(),
                reason: String::new(),
            }
            .exit_code(),
            Error::RunEnded {
                id,
                status: RunStatus::Failed,
                error: None,
            }
            .exit_code(),
            Error::TimedOut {
                id,
                status: RunStatus::Running,
                waited: String::new(),
            }
            .exit_code(),
        ];
        assert_eq!(
            codes,
            [
                exit::USAGE,
                exit::UNREACHABLE,
                exit::RUN_FAILED,
                exit::TIMED_OUT
            ]
        );
    }
}
