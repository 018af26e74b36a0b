//! The one mapping from domain errors to gRPC statuses (AIP-193), and the
//! one mapping from errors to the stable reason codes the audit trail and
//! `google.rpc.ErrorInfo` carry. Both are exhaustive matches without a
//! wildcard: a new error variant does not compile until it is mapped here.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, OperatorError};

/// `ErrorInfo.domain` of every error aitokens returns.
pub const ERROR_DOMAIN: &str = "aitokens";

/// The stable, machine-readable code of an error (UPPER_SNAKE_CASE,
/// AIP-193): `ErrorInfo.reason` for clients, and the reason recorded in the
/// audit trail for a refused or failed request. Never internal text.
pub fn audit_reason(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument { .. } => "INVALID_FIELD",
        Error::NotFound("binding") => "BINDING_NOT_FOUND",
        Error::NotFound(_) => "TOKEN_NOT_FOUND",
        Error::AlreadyExists("binding") => "BINDING_ALREADY_EXISTS",
        Error::AlreadyExists(_) => "TOKEN_ALREADY_EXISTS",
        Error::FailedPrecondition { reason, .. } => reason,
        Error::Aborted => "ETAG_MISMATCH",
        Error::Unauthenticated(_) => "NO_USABLE_IDENTITY",
        Error::PermissionDenied => "POLICY_DENIED",
        Error::DataLoss => "INTEGRITY_CHECK_FAILED",
        Error::Unavailable { reason, .. } | Error::ResourceExhausted { reason, .. } => reason,
        Error::Storage(_) => "STORE_UNAVAILABLE",
        Error::Operator(_) | Error::Internal(_) => "INTERNAL",
    }
}

/// Domain errors become gRPC statuses here and nowhere else.
///
/// Every status carries a `google.rpc.ErrorInfo` with [`audit_reason`];
/// INVALID_ARGUMENT adds a `google.rpc.BadRequest` naming the field,
/// FAILED_PRECONDITION the blockers and ABORTED the etag, as
/// `google.rpc.PreconditionFailure` violations.
impl From<Error> for Status {
    // One exhaustive match, kept whole on purpose: every variant's code,
    // message and details side by side, with no wildcard arm to hide a new one.
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
            Error::Unavailable { message, .. } => (Code::Unavailable, (*message).to_owned()),
            Error::ResourceExhausted { message, .. } => (Code::ResourceExhausted, message.clone()),
            Error::Storage(_) => {
                tracing::error!(error = %e, "store failure");
                (
                    Code::Unavailable,
                    "the token store is unavailable".to_owned(),
                )
            }
            Error::Operator(
                OperatorError::Config(_)
                | OperatorError::Policy(_)
                | OperatorError::Tls(_)
                | OperatorError::MasterKey(_)
                | OperatorError::Database(_)
                | OperatorError::File(_),
            )
            | Error::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                (Code::Internal, "internal error".to_owned())
            }
        };
        details.set_error_info(audit_reason(&e), ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
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
    fn internal_text_stays_out_of_the_status_and_the_audit_reason() {
        for e in [
            Error::Storage("disk I/O error at /secret/path".into()),
            Error::Internal("panic at /secret/path".into()),
            Error::database("database /secret/path is damaged"),
        ] {
            let reason = audit_reason(&e);
            let status = Status::from(e);
            assert!(!status.message().contains("/secret/path"));
            assert!(!reason.contains("/secret/path"));
            assert!(reason.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
    }
}
