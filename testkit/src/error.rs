use std::io;
use std::time::Duration;

/// What can go wrong while starting, using or stopping a test server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A server binary is not installed.
    #[error(
        "`{binary}` was not found (looked in {searched}): install the Debian package \
         `{package}` (apt-get update && apt-get install -y {package})"
    )]
    MissingBinary {
        /// The program that was looked for.
        binary: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// Where it was looked for.
        searched: String,
    },
    /// A server did not answer in time.
    #[error("{server} did not become ready within {waited:?}; its log says: {log}")]
    NotReady {
        /// Which server.
        server: String,
        /// How long the testkit waited.
        waited: Duration,
        /// The tail of the server's log, to show why.
        log: String,
    },
    /// A helper command (`initdb`, `pg_ctl`, `redis-cli`, `psql`) failed.
    #[error("`{command}` failed with {status}: {output}")]
    CommandFailed {
        /// The command line, without secrets (the testkit uses none).
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// A server answered with an error or something the testkit does not understand.
    #[error("unexpected reply from {server}: {reply}")]
    UnexpectedReply {
        /// Which server.
        server: String,
        /// The reply, as text.
        reply: String,
    },
    /// An I/O error while spawning or talking to a server.
    #[error("I/O error while {action}: {source}")]
    Io {
        /// What the testkit was doing.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl TestkitError {
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }
}

/// `Result` with [`TestkitError`] as its default error.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;
