//! The crate's one error type and its one mapping to `tonic::Status`.
//!
//! Domain, crypto and store code return [`Error`]; only the gRPC handlers turn
//! it into a [`tonic::Status`], through the single `From` impl below. Client
//! messages are fixed strings or name a field; they never carry a value, a
//! ciphertext, a key or SQL parameters. Detail for operators goes to the log.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Everything that can go wrong in aitokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed. Names the field and the rule it broke.
    #[error("invalid argument: {field}: {reason}")]
    InvalidArgument {
        /// The request field, as spelled in the proto (e.g. `token.display_name`).
        field: &'static str,
        /// The rule the field broke. Never contains the field's value.
        reason: &'static str,
    },
    /// The named resource (`"token"`, `"binding"`) does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A resource (`"token"`, `"binding"`) with this id already exists.
    #[error("a {0} with this id already exists")]
    AlreadyExists(&'static str),
    /// The request is valid but the resource's state forbids it. `reason` is
    /// a stable machine-readable code (ErrorInfo); `violations` say what blocks.
    #[error("failed precondition: {message}")]
    FailedPrecondition {
        /// Stable reason code, e.g. `TOKEN_DISABLED`.
        reason: &'static str,
        /// What a person should know.
        message: &'static str,
        /// What blocks the request (PreconditionFailure violations).
        violations: Vec<Violation>,
    },
    /// The etag in the request does not match the token's current etag.
    #[error("etag mismatch: the token changed since it was read")]
    Aborted,
    /// The caller presented no usable identity.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The caller's identity is not allowed to do this.
    #[error("permission denied")]
    PermissionDenied,
    /// A stored ciphertext failed authentication. Carries no detail on
    /// purpose: which byte or key failed is nothing a caller should learn.
    #[error("stored data failed integrity check")]
    DataLoss,
    /// The store could not be reached or failed (SQLite error, I/O error).
    #[error("storage error: {0}")]
    Storage(String),
    /// The server refuses to start: bad configuration, wrong master key,
    /// unreadable files. The message is written for the operator.
    #[error("{0}")]
    Startup(String),
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One thing that blocks a request (google.rpc.PreconditionFailure.Violation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Kind of blocker, e.g. `BINDING` or `RECENT_CALLER`.
    pub kind: &'static str,
    /// Which one (a binding name, a caller identity).
    pub subject: String,
    /// Why it blocks.
    pub description: String,
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::InvalidArgument { field, reason }
    }

    /// The token named by `replaces` already has a replacement.
    pub fn already_replaced() -> Self {
        Self::FailedPrecondition {
            reason: "TOKEN_ALREADY_REPLACED",
            message: "the token named by replaces already has a replacement",
            violations: Vec::new(),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        // rusqlite errors name SQL and constraint text, never bound parameters.
        Self::Storage(e.to_string())
    }
}

/// `ErrorInfo.domain` of every error aitokens returns.
pub const ERROR_DOMAIN: &str = "aitokens";

/// The one place where domain errors become gRPC statuses (AIP-193).
///
/// Every status carries a `google.rpc.ErrorInfo` with a stable
/// machine-readable reason (see [`Error::reason`]); INVALID_ARGUMENT adds a
/// `google.rpc.BadRequest` naming the field and ABORTED a
/// `google.rpc.PreconditionFailure` naming the etag.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        let (code, message) = match &e {
            Error::InvalidArgument { field, reason } => {
                details.add_bad_request_violation(*field, *reason);
                metadata.insert("field".to_owned(), (*field).to_owned());
                (Code::InvalidArgument, format!("{field}: {reason}"))
            }
            Error::NotFound(what) => (Code::NotFound, format!("{what} not found")),
            Error::AlreadyExists(what) => (
                Code::AlreadyExists,
                format!("a {what} with this id already exists"),
            ),
            Error::FailedPrecondition {
                message,
                violations,
                ..
            } => {
                for v in violations {
                    details.add_precondition_failure_violation(v.kind, &v.subject, &v.description);
                }
                (Code::FailedPrecondition, (*message).to_owned())
            }
            Error::Aborted => {
                details.add_precondition_failure_violation(
                    "ETAG",
                    "etag",
                    "the token changed since this etag was read",
                );
                (
                    Code::Aborted,
                    "etag mismatch: the token changed since it was read; get it again and retry"
                        .to_owned(),
                )
            }
            Error::Unauthenticated(why) => (Code::Unauthenticated, (*why).to_owned()),
            Error::PermissionDenied => (Code::PermissionDenied, "permission denied".to_owned()),
            Error::DataLoss => {
                tracing::error!("a stored ciphertext failed authentication");
                (
                    Code::DataLoss,
                    "stored token data failed its integrity check".to_owned(),
                )
            }
            Error::Storage(_) => {
                tracing::error!(error = %e, "store failure");
                (
                    Code::Unavailable,
                    "the token store is unavailable".to_owned(),
                )
            }
            Error::Startup(_) | Error::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                (Code::Internal, "internal error".to_owned())
            }
        };
        details.set_error_info(e.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}

impl Error {
    /// The stable, machine-readable `ErrorInfo.reason` of this error
    /// (UPPER_SNAKE_CASE, AIP-193). Clients may switch on it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_FIELD",
            Self::NotFound("binding") => "BINDING_NOT_FOUND",
            Self::NotFound(_) => "TOKEN_NOT_FOUND",
            Self::AlreadyExists("binding") => "BINDING_ALREADY_EXISTS",
            Self::AlreadyExists(_) => "TOKEN_ALREADY_EXISTS",
            Self::FailedPrecondition { reason, .. } => reason,
            Self::Aborted => "ETAG_MISMATCH",
            Self::Unauthenticated(_) => "NO_USABLE_IDENTITY",
            Self::PermissionDenied => "POLICY_DENIED",
            Self::DataLoss => "INTEGRITY_CHECK_FAILED",
            Self::Storage(_) => "STORE_UNAVAILABLE",
            Self::Startup(_) | Self::Internal(_) => "INTERNAL",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_in_message_and_details() {
        let status = Status::from(Error::invalid(
            "token_id",
            "must match [a-z][a-z0-9-]{0,62}",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("token_id: "));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest detail");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, "token_id");
        let info = details.error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, "INVALID_FIELD");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(
            info.metadata.get("field").map(String::as_str),
            Some("token_id")
        );
    }

    #[test]
    fn etag_mismatch_carries_a_precondition_failure() {
        let status = Status::from(Error::Aborted);
        assert_eq!(status.code(), Code::Aborted);
        let details = status.get_error_details();
        let failure = details.precondition_failure().expect("PreconditionFailure");
        assert_eq!(failure.violations[0].subject, "etag");
        assert_eq!(
            details.error_info().expect("ErrorInfo").reason,
            "ETAG_MISMATCH"
        );
    }

    #[test]
    fn storage_detail_stays_out_of_the_status() {
        let status = Status::from(Error::Storage("disk I/O error at /secret/path".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("/secret/path"));
    }
}
