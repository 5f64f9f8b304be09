//! The queue library's error type, which tells an unavailable Redis apart from everything else.

use fred::error::ErrorKind;

/// What went wrong in a queue operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis did not answer: connection refused or lost, timeout, or the client's buffer is full.
    /// Producers answer 503 on it; consumers wait and retry.
    #[error("redis unavailable: {0}")]
    Unavailable(fred::error::Error),
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Redis(fred::error::Error),
    /// A payload could not be encoded.
    #[error(transparent)]
    Encode(#[from] fleet_core::wire::EncodeError),
    /// Redis answered something this library does not expect.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// A caller passed an invalid argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// True when Redis could not be reached; the operation may succeed later unchanged.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    pub(crate) fn protocol(what: impl Into<String>) -> Self {
        Error::Protocol(what.into())
    }

    /// True when Redis lost the consumer group (for example after a restart without persistence).
    pub(crate) fn is_no_group(&self) -> bool {
        matches!(self, Error::Redis(e) if e.details().contains("NOGROUP"))
    }
}

/// Error replies that mean "this server cannot serve you right now, try again": a replica during
/// a failover (`READONLY`), a server loading its data after a restart (`LOADING`), a busy script
/// (`BUSY`), a cluster without a majority or a slot mid-migration (`CLUSTERDOWN`, `TRYAGAIN`,
/// `MASTERDOWN`). A worker waits them out like a lost connection instead of ending.
const TRANSIENT_REPLIES: [&str; 6] = [
    "LOADING",
    "BUSY",
    "READONLY",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MASTERDOWN",
];

impl From<fred::error::Error> for Error {
    fn from(e: fred::error::Error) -> Self {
        let details = e.details();
        match e.kind() {
            _ if details.contains("NOGROUP") => Error::Redis(e),
            ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Cluster => Error::Unavailable(e),
            _ if TRANSIENT_REPLIES
                .iter()
                .any(|reply| details.trim_start().starts_with(reply)) =>
            {
                Error::Unavailable(e)
            }
            // fred reports a connection closed under a command in flight in several kinds; its
            // text is the one stable mark.
            _ if is_connection_lost(details) => Error::Unavailable(e),
            _ => Error::Redis(e),
        }
    }
}

fn is_connection_lost(details: &str) -> bool {
    let details = details.to_ascii_lowercase();
    [
        "connection reset",
        "connection closed",
        "broken pipe",
        "connection refused",
        "too many failed write attempts",
        // A command caught between a dropped connection and its replacement (seen under load).
        "failed to route command",
    ]
    .iter()
    .any(|mark| details.contains(mark))
}

/// The queue library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: ErrorKind, text: &str) -> Error {
        fred::error::Error::new(kind, text.to_owned()).into()
    }

    #[test]
    fn failover_replies_are_unavailable_not_fatal() {
        for text in [
            "READONLY You can't write against a read only replica.",
            "LOADING Redis is loading the dataset in memory",
            "CLUSTERDOWN The cluster is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "BUSY Redis is busy running a script.",
        ] {
            assert!(reply(ErrorKind::Unknown, text).is_unavailable(), "{text}");
        }
        assert!(
            reply(
                ErrorKind::Unknown,
                "Connection reset by peer (os error 104)"
            )
            .is_unavailable()
        );
        assert!(reply(ErrorKind::IO, "anything").is_unavailable());
        assert!(reply(ErrorKind::Unknown, "Failed to route command.").is_unavailable());
    }

    #[test]
    fn real_errors_stay_errors() {
        assert!(!reply(ErrorKind::Unknown, "ERR wrong number of arguments").is_unavailable());
        assert!(!reply(ErrorKind::Unknown, "WRONGTYPE Operation against a key").is_unavailable());
        let no_group = reply(ErrorKind::IO, "NOGROUP No such key or consumer group");
        assert!(no_group.is_no_group() && !no_group.is_unavailable());
    }
}
