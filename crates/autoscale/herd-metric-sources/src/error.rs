//! The one error type of every source: it says which source failed and what went wrong,
//! and it is built so that it can be shown to a user, logged and stored in autoscale history
//! without ever carrying a secret.

use std::fmt;
use std::time::Duration;

/// What kind of failure a [`SourceError`] is, for callers that report health or decide
/// whether to retry (the text of the error is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The spec is invalid (`validate` would have refused it).
    Config,
    /// The endpoint could not be reached: connection refused, no route, name not resolved.
    Unreachable,
    /// The sample did not finish within its timeout.
    Timeout,
    /// The server refused the credentials (or wanted some and got none).
    Auth,
    /// The server answered with something this client does not understand.
    Protocol,
    /// The server answered with an error (WRONGTYPE, HTTP 500, a SQL error, a JetStream error).
    Server,
    /// The thing to measure does not exist: a stream, group, consumer, database or JSON member.
    NotFound,
    /// The server answered, but the answer is not one usable number (text, several rows, ...).
    NotANumber,
}

/// A failed sample or build. `Display` is `"<what the source is>: <what failed>"`, for example
/// `redis 127.0.0.1:6379 list jobs: connection refused`. Neither `Display` nor `Debug` ever
/// contains a password, token, header value or DSN credential: the context is made from
/// public settings only, and every message that may echo a server's words is passed through
/// [`SourceError::redact`] with the source's secrets before it leaves the source.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceError {
    context: String,
    kind: ErrorKind,
    message: String,
}

impl SourceError {
    /// A new error. `context` names the source (its `describe()`, or the kind and endpoint).
    pub fn new(kind: ErrorKind, context: impl Into<String>, message: impl Into<String>) -> Self {
        Self { context: context.into(), kind, message: message.into() }
    }

    /// The sample's deadline passed.
    pub fn timeout(context: impl Into<String>, after: Duration) -> Self {
        Self::new(ErrorKind::Timeout, context, format!("timed out after {}", humantime::format_duration(after)))
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Which source failed, e.g. `redis 127.0.0.1:6379 list jobs`.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// What failed, e.g. `connection refused` or `HTTP 500 Internal Server Error`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, said of another source description (a client's error re-homed on the
    /// source that used the client).
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = context.into();
        self
    }

    /// The same error with every occurrence of each secret replaced by `***`. Sources call
    /// this on every error they return, as a second line of defence behind never putting a
    /// secret into a message in the first place.
    pub fn redact<S: AsRef<str>>(mut self, secrets: &[S]) -> Self {
        self.context = redact_text(&self.context, secrets);
        self.message = redact_text(&self.message, secrets);
        self
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.message)
    }
}

impl fmt::Debug for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceError")
            .field("kind", &self.kind)
            .field("context", &self.context)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for SourceError {}

/// Replaces every occurrence of each non-empty secret in `text` with `***`.
pub(crate) fn redact_text<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        let s = s.as_ref();
        if !s.is_empty() && out.contains(s) {
            out = out.replace(s, "***");
        }
    }
    out
}

/// An I/O error as a short phrase and a kind: "connection refused" rather than
/// "Connection refused (os error 111)", so messages read the same everywhere.
pub(crate) fn io_failure(e: &std::io::Error) -> (ErrorKind, String) {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => (ErrorKind::Unreachable, "connection refused".into()),
        K::ConnectionReset => (ErrorKind::Unreachable, "connection reset by the server".into()),
        K::ConnectionAborted => (ErrorKind::Unreachable, "connection aborted".into()),
        K::UnexpectedEof => (ErrorKind::Protocol, "the server closed the connection".into()),
        K::TimedOut => (ErrorKind::Timeout, "connection timed out".into()),
        K::AddrNotAvailable => (ErrorKind::Unreachable, "address not available".into()),
        _ => {
            let text = e.to_string();
            if text.contains("No route to host") || text.contains("Network is unreachable") {
                (ErrorKind::Unreachable, text)
            } else if text.contains("lookup address") || text.contains("Name or service not known") {
                (ErrorKind::Unreachable, format!("cannot resolve the host: {text}"))
            } else {
                (ErrorKind::Unreachable, text)
            }
        }
    }
}

/// Finds an I/O error anywhere in an error's source chain.
pub(crate) fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

pub(crate) use herd_model::error::chain_text;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_source_and_failure() {
        let e = SourceError::new(ErrorKind::Unreachable, "redis 127.0.0.1:1 list jobs", "connection refused");
        assert_eq!(e.to_string(), "redis 127.0.0.1:1 list jobs: connection refused");
        let t = SourceError::timeout("x", Duration::from_secs(2));
        assert_eq!(t.to_string(), "x: timed out after 2s");
        assert_eq!(t.kind(), ErrorKind::Timeout);
    }

    #[test]
    fn redact_replaces_every_secret() {
        let e =
            SourceError::new(ErrorKind::Server, "ctx hunter2", "said hunter2 and tok").redact(&["hunter2", "tok", ""]);
        assert_eq!(e.to_string(), "ctx ***: said *** and ***");
        assert!(!format!("{e:?}").contains("hunter2"));
    }
}
