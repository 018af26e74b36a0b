//! The crate's one error type and its one mapping to `tonic::Status`.
//!
//! Domain, crypto and store code return [`Error`]; only the gRPC handlers turn
//! it into a [`tonic::Status`], through the single `From` impl below. Client
//! messages are fixed strings or name a field; they never carry a value, a
//! ciphertext, a key or SQL parameters. Detail for operators goes to the log.

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
    /// The named token does not exist (or the caller may not know it does).
    #[error("token not found")]
    NotFound,
    /// A token with this id already exists in the tenant.
    #[error("a token with this id already exists")]
    AlreadyExists,
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

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::InvalidArgument { field, reason }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        // rusqlite errors name SQL and constraint text, never bound parameters.
        Self::Storage(e.to_string())
    }
}

/// The one place where domain errors become gRPC statuses (AIP-193).
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidArgument { field, reason } => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(*field, *reason);
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("{field}: {reason}"),
                    details,
                )
            }
            Error::NotFound => Status::not_found("token not found"),
            Error::AlreadyExists => Status::already_exists("a token with this id already exists"),
            Error::Aborted => Status::aborted(
                "etag mismatch: the token changed since it was read; get it again and retry",
            ),
            Error::Unauthenticated(why) => Status::unauthenticated(*why),
            Error::PermissionDenied => Status::permission_denied("permission denied"),
            Error::DataLoss => {
                tracing::error!("a stored ciphertext failed authentication");
                Status::data_loss("stored token data failed its integrity check")
            }
            Error::Storage(_) => {
                tracing::error!(error = %e, "store failure");
                Status::unavailable("the token store is unavailable")
            }
            Error::Startup(_) | Error::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                Status::internal("internal error")
            }
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
    }

    #[test]
    fn storage_detail_stays_out_of_the_status() {
        let status = Status::from(Error::Storage("disk I/O error at /secret/path".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("/secret/path"));
    }
}
