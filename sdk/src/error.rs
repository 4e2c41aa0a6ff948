//! The error every host call returns: the WIT variant `error`, with a readable `Display`.

use std::fmt;

use crate::bindings::sonde::plugin::types::Error as WitError;

/// Why the host refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The manifest does not grant the capability the call needs (`spec.capabilities`).
    NotGranted(String),
    /// The arguments are wrong: unknown handle, bad metric name, wrong label count, ...
    Invalid(String),
    /// A per-plugin limit is reached: series, events per second, ...
    Limit(String),
}

/// `Result` with the host's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The host's message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::NotGranted(m) | Error::Invalid(m) | Error::Limit(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotGranted(m) => write!(f, "not granted: {m}"),
            Error::Invalid(m) => write!(f, "invalid: {m}"),
            Error::Limit(m) => write!(f, "limit reached: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<WitError> for Error {
    fn from(e: WitError) -> Self {
        match e {
            WitError::NotGranted(m) => Error::NotGranted(m),
            WitError::Invalid(m) => Error::Invalid(m),
            WitError::Limit(m) => Error::Limit(m),
        }
    }
}

/// So that `?` works in [`Plugin::init`](crate::Plugin::init), which returns a `String` error.
impl From<Error> for String {
    fn from(e: Error) -> Self {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind() {
        let e = Error::from(WitError::NotGranted("metrics".into()));
        assert_eq!(e.to_string(), "not granted: metrics");
        assert_eq!(e.message(), "metrics");
        assert_eq!(
            Error::Limit("series".into()).to_string(),
            "limit reached: series"
        );
        let s: String = Error::Invalid("bad name".into()).into();
        assert_eq!(s, "invalid: bad name");
    }
}
