//! Client-side failures, printed for people (or as JSON for scripts) with
//! the gRPC code, the offending field and what to do next.

use std::process::ExitCode;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{output::OutputFormat, printable::printable};

/// Why a client command failed.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage or missing settings (exit 2).
    Usage(String),
    /// A local file or the terminal could not be read (exit 3).
    Local(String),
    /// No connection to the server (exit 3).
    Connect {
        /// The address dialed.
        addr: String,
        /// What went wrong, with its causes.
        detail: String,
    },
    /// The server answered with an error status (exit 1).
    Rpc {
        /// The address called.
        addr: String,
        /// The status, whose message never carries a value (the server's promise).
        status: Box<Status>,
    },
}

impl CliError {
    /// Prints the error of an `aitokens token` command on stderr and
    /// returns the exit code.
    pub fn report(&self, format: OutputFormat) -> ExitCode {
        self.report_of(format, "token")
    }

    /// Prints the error on stderr, a usage error pointing to `aitokens
    /// COMMAND --help` for the `command` that failed, and returns the exit
    /// code.
    pub(super) fn report_of(&self, format: OutputFormat, command: &str) -> ExitCode {
        let mut report = Report::of(self);
        if let Self::Usage(_) = self {
            report.hint = format!("see `aitokens {command} --help`");
        }
        match format {
            OutputFormat::Table => eprint!("{}", report.text()),
            OutputFormat::Json => eprintln!("{}", report.json()),
        }
        ExitCode::from(report.exit)
    }
}

/// What gets printed about a failure (and what the console shows).
pub(super) struct Report {
    /// The gRPC code, for a failure the server reported.
    pub(super) code: Option<Code>,
    /// The message (the server's, or ours).
    pub(super) message: String,
    /// `(field, description)` from a `google.rpc.BadRequest` detail.
    pub(super) fields: Vec<(String, String)>,
    /// `reason` from a `google.rpc.ErrorInfo` detail.
    pub(super) reason: Option<String>,
    /// `(type, subject, description)` from a `google.rpc.PreconditionFailure`.
    pub(super) blockers: Vec<(String, String, String)>,
    /// What to do, in one sentence.
    pub(super) hint: String,
    exit: u8,
}

impl Report {
    /// The report of `error`.
    pub(super) fn of(error: &CliError) -> Self {
        let plain = |message: &str, hint: &str, exit| Self {
            code: None,
            message: message.to_owned(),
            fields: Vec::new(),
            reason: None,
            blockers: Vec::new(),
            hint: hint.to_owned(),
            exit,
        };
        match error {
            CliError::Usage(message) => plain(message, "see `aitokens token --help`", 2),
            CliError::Local(message) => plain(message, "check the path and its permissions", 3),
            CliError::Connect { addr, detail } => plain(
                &format!("cannot connect to {addr}: {detail}"),
                "is the server running there? Check the address (--admin-addr, \
                 --internal-addr or the profile), the CA (--ca) and the client certificate",
                3,
            ),
            CliError::Rpc { addr, status } => {
                let details = status.get_error_details();
                let fields = details
                    .bad_request()
                    .map(|bad| {
                        bad.field_violations
                            .iter()
                            .map(|v| (v.field.clone(), v.description.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let blockers = details
                    .precondition_failure()
                    .map(|failure| {
                        failure
                            .violations
                            .iter()
                            .map(|v| (v.r#type.clone(), v.subject.clone(), v.description.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let reason = details.error_info().map(|info| info.reason.clone());
                // The blockers and the hint below say what the server's
                // sentence says; one headline is enough.
                let message = match reason.as_deref() {
                    Some("TOKEN_IN_USE") => "the token is still in use".to_owned(),
                    _ => status.message().to_owned(),
                };
                Self {
                    code: Some(status.code()),
                    message,
                    fields,
                    hint: hint(status.code(), reason.as_deref(), addr),
                    reason,
                    blockers,
                    exit: 1,
                }
            }
        }
    }

    /// The report for people; every piece that came from the server or the
    /// command line is escaped (see [`printable`]).
    fn text(&self) -> String {
        let p = |text: &str| printable(text).into_owned();
        let message = match self.code {
            // From the server: one line, whatever it holds.
            Some(_) => p(&self.message),
            // Ours, perhaps several lines (a TOML error's snippet): kept so.
            None => self
                .message
                .split('\n')
                .map(p)
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let mut text = match (self.code, &self.reason) {
            (Some(code), Some(reason)) => {
                format!("aitokens: error: {code:?} ({}): {message}\n", p(reason))
            }
            (Some(code), None) => format!("aitokens: error: {code:?}: {message}\n"),
            (None, _) => format!("aitokens: error: {message}\n"),
        };
        for (field, description) in &self.fields {
            text.push_str(&format!("  field: {}: {}\n", p(field), p(description)));
        }
        for (kind, subject, description) in &self.blockers {
            text.push_str(&format!(
                "  blocked by: {} {} ({})\n",
                p(kind),
                p(subject),
                p(description)
            ));
        }
        text.push_str(&format!("  what to do: {}\n", p(&self.hint)));
        text
    }

    fn json(&self) -> serde_json::Value {
        let fields: Vec<_> = self
            .fields
            .iter()
            .map(|(field, description)| {
                serde_json::json!({ "field": field, "description": description })
            })
            .collect();
        serde_json::json!({
            "error": {
                "code": self.code.map(|c| format!("{c:?}")),
                "message": self.message,
                "reason": self.reason,
                "field_violations": fields,
                "blockers": self.blockers.iter().map(|(kind, subject, description)| {
                    serde_json::json!({ "type": kind, "subject": subject, "description": description })
                }).collect::<Vec<_>>(),
                "hint": self.hint,
                "exit_code": self.exit,
            }
        })
    }
}

/// What to do about a status, in one sentence.
fn hint(code: Code, reason: Option<&str>, addr: &str) -> String {
    let text = match (code, reason) {
        (Code::FailedPrecondition, Some("TOKEN_IN_USE")) => {
            "move its users to another token and delete its bindings, or add --force"
        }
        (Code::FailedPrecondition, Some("TOKEN_DISABLED")) => {
            "`aitokens token enable` (as an admin) lifts the kill switch"
        }
        (code, _) => match code {
            Code::InvalidArgument => "correct the field named above and retry; nothing was changed",
            Code::NotFound => {
                "check the tenant and token id (`aitokens token list --tenant TENANT` shows the ids)"
            }
            Code::AlreadyExists => {
                "pick another token id, or remove the existing token first (values never change)"
            }
            Code::Aborted | Code::FailedPrecondition => {
                "the token changed since you read its etag: run `aitokens token get` and retry with the new etag"
            }
            Code::PermissionDenied => {
                "the server's policy does not allow your certificate's identity to do this; \
             use another identity (--cert/--key) or ask an operator to grant it in policy.toml"
            }
            Code::Unauthenticated => {
                "present a client certificate the server trusts (--cert/--key or the profile)"
            }
            Code::Unavailable => {
                return format!(
                    "the server at {addr} or its store is unavailable: check that it runs, then retry"
                );
            }
            Code::DeadlineExceeded => "the call timed out: retry, or raise --timeout",
            Code::DataLoss => {
                "the stored value failed its integrity check: tell an operator; do not retry"
            }
            Code::ResourceExhausted => {
                "the request is too large or the server is busy: retry later"
            }
            Code::Unimplemented => {
                "the server does not offer this call: check its version and address"
            }
            Code::Ok | Code::Cancelled | Code::Unknown | Code::OutOfRange | Code::Internal => {
                "the server failed; its log has the details (look for `request failed`)"
            }
        },
    };
    text.to_owned()
}

/// Wraps a status from a call to `addr`.
pub fn rpc(addr: &str) -> impl FnOnce(Status) -> CliError + '_ {
    move |status| CliError::Rpc {
        addr: addr.to_owned(),
        status: Box::new(status),
    }
}
