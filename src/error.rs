//! The crate's one error type.
//!
//! Domain, crypto and store code return [`Error`]. Only the gRPC layer turns
//! it into a `tonic::Status` (in `api::status`, the one mapping, beside the
//! one mapping to audit reasons). Client-facing parts are fixed strings or
//! name a field; they never carry a value, a ciphertext, a key or SQL
//! parameters. Detail for operators goes to the log.
//!
//! Problems an operator must fix before anything can serve (a bad config, a
//! wrong master key, an unreadable certificate) are an [`OperatorError`],
//! whose message says what is wrong and where.

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
    /// The service cannot do this now and says why with a stable reason
    /// (e.g. `AUDIT_UNAVAILABLE`: values do not leave while the audit trail
    /// cannot account for them). Retrying later may succeed.
    #[error("unavailable: {message}")]
    Unavailable {
        /// Stable reason code (ErrorInfo).
        reason: &'static str,
        /// What a person should know.
        message: &'static str,
    },
    /// A server-wide limit is reached (such as its watch streams). The
    /// message names the limit and the setting that raises it.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        /// Stable reason code (ErrorInfo).
        reason: &'static str,
        /// What a person should know: which limit, how large.
        message: String,
    },
    /// The store could not be reached or failed (SQLite error, I/O error).
    /// The text is for the operator's log only.
    #[error("storage error: {0}")]
    Storage(String),
    /// Something an operator must fix; see [`OperatorError`].
    #[error(transparent)]
    Operator(#[from] OperatorError),
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A problem an operator must fix, by where it lies. The message is written
/// for that person: what is wrong, which file or setting, what to do.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The config file, a command-line setting or the command's usage.
    #[error("{0}")]
    Config(String),
    /// The policy file.
    #[error("policy: {0}")]
    Policy(String),
    /// A certificate, private key, client CA or CRL.
    #[error("{0}")]
    Tls(String),
    /// The master key or passphrase: missing, unreadable, open to others,
    /// or not the one this database was created with.
    #[error("{0}")]
    MasterKey(String),
    /// The database: cannot be opened, is damaged, has a keyring that does
    /// not open, or comes from a newer version.
    #[error("{0}")]
    Database(String),
    /// Another file the command reads or writes.
    #[error("{0}")]
    File(String),
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

    /// A [`OperatorError::Config`].
    pub fn config(message: impl Into<String>) -> Self {
        Self::Operator(OperatorError::Config(message.into()))
    }

    /// A [`OperatorError::Policy`].
    pub fn policy(message: impl Into<String>) -> Self {
        Self::Operator(OperatorError::Policy(message.into()))
    }

    /// A [`OperatorError::Tls`].
    pub fn tls(message: impl Into<String>) -> Self {
        Self::Operator(OperatorError::Tls(message.into()))
    }

    /// A [`OperatorError::MasterKey`].
    pub fn master_key(message: impl Into<String>) -> Self {
        Self::Operator(OperatorError::MasterKey(message.into()))
    }

    /// A [`OperatorError::Database`].
    pub fn database(message: impl Into<String>) -> Self {
        Self::Operator(OperatorError::Database(message.into()))
    }

    /// A [`OperatorError::File`].
    pub fn file(message: impl Into<String>) -> Self {
        Self::Operator(OperatorError::File(message.into()))
    }

    /// Values do not leave while the audit trail cannot account for them.
    pub fn audit_unavailable() -> Self {
        Self::Unavailable {
            reason: "AUDIT_UNAVAILABLE",
            message: "the audit trail cannot be written, so no value is handed out; retry shortly",
        }
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
