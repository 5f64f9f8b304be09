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

impl From<fred::error::Error> for Error {
    fn from(e: fred::error::Error) -> Self {
        match e.kind() {
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure
                if !e.details().contains("NOGROUP") =>
            {
                Error::Unavailable(e)
            }
            _ if e.details().starts_with("LOADING") || e.details().starts_with("BUSY") => {
                Error::Unavailable(e)
            }
            _ => Error::Redis(e),
        }
    }
}

/// The queue library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
