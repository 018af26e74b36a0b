//! `aitokens token ...`: the gRPC client commands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::{
    connect::{ConnectArgs, Surface},
    lifecycle,
    output::{self, OutputFormat},
    report::{self, CliError},
    value,
};
use crate::{
    api::pb::{
        CreateTokenRequest, GetTokenRequest, ListTokensRequest, RemoveTokenRequest,
        RenameTokenRequest, ResolveTokenRequest, Token, token_admin_client::TokenAdminClient,
        token_resolver_client::TokenResolverClient,
    },
    model::{ID_RULE, TenantId},
};

/// Pages fetched by one `list` at most (at the server's largest page size,
/// a million tokens): a guard against a server that never ends a listing.
const MAX_PAGES: usize = 1000;

/// What `aitokens token --help` says after the options: where connection
/// settings come from, the profile file's keys with an example, and the
/// exit statuses.
const TOKEN_LONG_HELP: &str = "\
Connection settings come from flags, then the environment (AITOKENS_ADMIN_ADDR,
AITOKENS_INTERNAL_ADDR, AITOKENS_CA, AITOKENS_CERT, AITOKENS_KEY, AITOKENS_SERVER_NAME,
AITOKENS_PROFILE), then the profile file.

Profile file: --profile FILE or AITOKENS_PROFILE, else ./aitokens-dev/profile.toml
(which `aitokens dev` writes) when it exists. It is TOML; every key is optional,
unknown keys are refused, and relative paths are relative to the file. It names
files only, never a key or a value:

    admin_addr = \"127.0.0.1:50051\"     # admin listener (create, get, list, rename, remove, ...)
    internal_addr = \"127.0.0.1:50052\"  # internal listener (resolve)
    ca = \"ca.pem\"                      # CA the server certificate must chain to
    server_name = \"localhost\"          # name to verify in it [default: the address's host]

    [admin]                            # client certificate for the admin commands
    cert = \"admin.pem\"
    key = \"admin.key\"

    [resolver]                         # client certificate for resolve
    cert = \"agent.pem\"
    key = \"agent.key\"

Exit status: 0 success; 1 the server refused the request; 2 bad usage or missing
settings; 3 no connection or an unreadable local file.";

/// Options of `aitokens token`.
#[derive(Debug, Args)]
#[command(after_long_help = TOKEN_LONG_HELP)]
pub struct TokenArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output: table (for people) or json (for scripts; errors too, on stderr).
    #[arg(
        long,
        short,
        value_enum,
        global = true,
        hide_possible_values = true,
        default_value_t = OutputFormat::Table,
        env = "AITOKENS_OUTPUT",
        help_heading = "Global options"
    )]
    output: OutputFormat,
    #[command(subcommand)]
    command: TokenCommand,
}

/// The token operations.
#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Store a new token; its value comes from stdin, a file or a hidden prompt.
    ///
    /// The value is read from --value-file, else from a prompt that does not
    /// echo when standard input is a terminal, else from standard input; never
    /// from an argument (argv is visible in `ps` and shell history).
    ///
    /// Examples:
    ///   aitokens token create --tenant acme openai-prod            (prompts)
    ///   pass show openai | aitokens token create --tenant acme openai-prod
    ///   aitokens token create --tenant acme openai-prod --value-file key.txt
    #[command(verbatim_doc_comment)]
    Create {
        #[command(flatten)]
        token: TokenRef,
        /// Human-readable label, 1 to 256 characters [default: the token id].
        #[arg(long)]
        display_name: Option<String>,
        /// Read the value from this file (`-` for standard input). One
        /// trailing newline is dropped.
        #[arg(long, value_name = "FILE")]
        value_file: Option<PathBuf>,
        /// Id of a token of the same tenant that this one replaces (rotation):
        /// resolves of the old one then count as superseded.
        #[arg(long, value_name = "TOKEN_ID")]
        replaces: Option<String>,
        /// Anything typed after the token id: a value, by the look of it,
        /// which is refused (see [`MisplacedValue`]).
        #[arg(hide = true, value_name = "VALUE")]
        misplaced: Vec<MisplacedValue>,
    },
    /// Show a token's metadata (never its value).
    Get {
        #[command(flatten)]
        token: TokenRef,
    },
    /// List a tenant's tokens, oldest first (all pages).
    List {
        /// The tenant.
        #[arg(long, env = "AITOKENS_TENANT")]
        tenant: String,
        /// Tokens per request (1 to 1000) [default: the server's, 50].
        #[arg(long)]
        page_size: Option<i32>,
        /// Only tokens unused for this many days: created more than DAYS days
        /// ago and not resolved since (or ever).
        #[arg(long, value_name = "DAYS")]
        unused_for_days: Option<u32>,
    },
    /// Change a token's display name and/or its id. The value never changes.
    Rename {
        #[command(flatten)]
        token: TokenRef,
        /// The new display name.
        #[arg(long)]
        display_name: Option<String>,
        /// The new token id.
        #[arg(long, value_name = "TOKEN_ID")]
        new_id: Option<String>,
        /// Rename only if the token's etag is still this one (from `get`).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Remove a token and its encrypted value.
    Remove {
        #[command(flatten)]
        token: TokenRef,
        /// Remove only if the token's etag is still this one (from `get`).
        #[arg(long)]
        etag: Option<String>,
        /// Remove even though bindings name it or callers used it recently.
        #[arg(long)]
        force: bool,
    },
    /// Who resolved the token (or was refused), per caller identity.
    Usage {
        #[command(flatten)]
        token: TokenRef,
    },
    /// Kill switch: make every resolve of the token fail until `enable`.
    Disable {
        #[command(flatten)]
        token: TokenRef,
        /// Only if the token's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Let a disabled token resolve again.
    Enable {
        #[command(flatten)]
        token: TokenRef,
        /// Only if the token's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Whether a replaced token can be removed (no caller still uses it).
    Replacement {
        #[command(flatten)]
        token: TokenRef,
    },
    /// Declare that a consumer uses the token (blocks removal; names the
    /// identity that may resolve it in bindings-only mode).
    Bind {
        #[command(flatten)]
        token: TokenRef,
        /// The consumer's stable id.
        #[arg(long = "id", value_name = "BINDING_ID")]
        binding_id: String,
        /// What the consumer uses it for.
        #[arg(long)]
        purpose: String,
        /// The certificate identity the consumer resolves with.
        #[arg(long, value_name = "IDENTITY")]
        caller_identity: Option<String>,
    },
    /// List the token's bindings.
    Bindings {
        #[command(flatten)]
        token: TokenRef,
    },
    /// Withdraw a binding.
    Unbind {
        #[command(flatten)]
        token: TokenRef,
        /// The binding's id.
        #[arg(long = "id", value_name = "BINDING_ID")]
        binding_id: String,
    },
    /// Print a token's value (internal listener, resolver identity).
    ///
    /// Table output is the bare value and a newline, so that
    /// `$(aitokens token resolve ...)` is exactly the value.
    Resolve {
        #[command(flatten)]
        token: TokenRef,
    },
}

/// An argument typed after `token create`'s token id: almost surely the
/// value, which never comes from the command line. Only its presence is
/// kept (to refuse it): the copy clap hands over is zeroized at once (the
/// process's argv, and clap's own copy of it, remain until exit).
#[derive(Clone)]
struct MisplacedValue;

/// Hand-written, so that a field added later cannot print what was typed.
impl std::fmt::Debug for MisplacedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MisplacedValue([REDACTED])")
    }
}

impl From<String> for MisplacedValue {
    fn from(text: String) -> Self {
        drop(Zeroizing::new(text));
        Self
    }
}

/// The refusal of a value typed as an argument. It never repeats the value.
const VALUE_AS_ARGUMENT: &str = "`token create` takes one argument, the token id, but more \
    was typed after it: a value, by the look of it. Values are never taken from the command \
    line; they come from standard input (`... | aitokens token create ...`), from \
    --value-file FILE, or from a prompt that does not echo. Nothing was sent to the server. \
    What you typed is now in your shell's history (and was visible to other users in `ps`): \
    consider that value exposed, revoke it where it was issued, and store a new one.";

/// A tenant id as typed after `--tenant`, checked here so that a bad one is
/// reported as the flag the user typed, not as the request field it ends in.
fn tenant_arg(tenant: &str) -> Result<&str, CliError> {
    match TenantId::new(tenant, "tenant") {
        Ok(_) => Ok(tenant),
        Err(_) => Err(CliError::Usage(format!(
            "--tenant {tenant}: a tenant id {ID_RULE} (a lowercase letter, then lowercase \
             letters, digits or '-'; at most 63 characters)"
        ))),
    }
}

/// A token named by `--tenant` and an id, or by its full resource name.
#[derive(Debug, Args)]
struct TokenRef {
    /// The token id, or its full name `tenants/TENANT/tokens/TOKEN_ID`.
    #[arg(value_name = "TOKEN")]
    token: String,
    /// The tenant (not needed with a full name).
    #[arg(long, env = "AITOKENS_TENANT")]
    tenant: Option<String>,
}

impl TokenRef {
    /// The resource name. The server validates it and names the field if bad.
    fn name(&self) -> Result<String, CliError> {
        if self.token.starts_with("tenants/") {
            return Ok(self.token.clone());
        }
        match &self.tenant {
            Some(tenant) => Ok(format!(
                "tenants/{}/tokens/{}",
                tenant_arg(tenant)?,
                self.token
            )),
            None => Err(CliError::Usage(format!(
                "which tenant? pass --tenant TENANT (or AITOKENS_TENANT), or the full name \
                 tenants/TENANT/tokens/{}",
                self.token
            ))),
        }
    }
}

/// Runs a `token` subcommand and reports its failure, if any.
pub async fn run(args: TokenArgs) -> ExitCode {
    match execute(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(args.output),
    }
}

// One arm per subcommand, each a few lines: the dispatch table of `token`.
async fn execute(args: &TokenArgs) -> Result<(), CliError> {
    let format = args.output;
    match &args.command {
        TokenCommand::Create {
            token,
            display_name,
            value_file,
            replaces,
            misplaced,
        } => {
            if !misplaced.is_empty() {
                return Err(CliError::Usage(VALUE_AS_ARGUMENT.to_owned()));
            }
            let name = token.name()?;
            let (parent, token_id) = name
                .rsplit_once("/tokens/")
                .ok_or_else(|| CliError::Usage(format!("not a token name: {name}")))?;
            // Read the value before connecting: a wrong path costs no call.
            let mut value = value::read(value_file.as_deref(), &name)?;
            let (mut client, addr) = admin(&args.connect).await?;
            let request = CreateTokenRequest {
                parent: parent.to_owned(),
                token_id: token_id.to_owned(),
                token: Some(Token {
                    display_name: display_name.clone().unwrap_or_else(|| token_id.to_owned()),
                    ..Token::default()
                }),
                // Moved, not copied; the request zeroizes it when dropped.
                value: std::mem::take(&mut *value),
                replaces: replaces
                    .as_ref()
                    .map(|old| format!("{parent}/tokens/{old}"))
                    .unwrap_or_default(),
            };
            let created = client
                .create_token(request)
                .await
                .map_err(report::rpc(&addr))?;
            output::token(format, created.get_ref());
        }
        TokenCommand::Get { token } => {
            let name = token.name()?;
            let (mut client, addr) = admin(&args.connect).await?;
            let got = client
                .get_token(GetTokenRequest { name })
                .await
                .map_err(report::rpc(&addr))?;
            output::token(format, got.get_ref());
        }
        TokenCommand::List {
            tenant,
            page_size,
            unused_for_days,
        } => {
            let parent = format!("tenants/{}", tenant_arg(tenant)?);
            let (mut client, addr) = admin(&args.connect).await?;
            let mut tokens = Vec::new();
            let mut page_token = String::new();
            for _ in 0..MAX_PAGES {
                let page = client
                    .list_tokens(ListTokensRequest {
                        parent: parent.clone(),
                        page_size: page_size.unwrap_or(0),
                        page_token: std::mem::take(&mut page_token),
                        unused_for: unused_for_days.map(|days| prost_types::Duration {
                            seconds: i64::from(days) * 24 * 60 * 60,
                            nanos: 0,
                        }),
                    })
                    .await
                    .map_err(report::rpc(&addr))?
                    .into_inner();
                tokens.extend(page.tokens);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            output::tokens(format, &parent, &tokens);
        }
        TokenCommand::Rename {
            token,
            display_name,
            new_id,
            etag,
        } => {
            let name = token.name()?;
            let (mut client, addr) = admin(&args.connect).await?;
            let renamed = client
                .rename_token(RenameTokenRequest {
                    name,
                    display_name: display_name.clone(),
                    new_token_id: new_id.clone(),
                    etag: etag.clone(),
                })
                .await
                .map_err(report::rpc(&addr))?;
            output::token(format, renamed.get_ref());
        }
        TokenCommand::Remove { token, etag, force } => {
            let name = token.name()?;
            let (mut client, addr) = admin(&args.connect).await?;
            client
                .remove_token(RemoveTokenRequest {
                    name: name.clone(),
                    etag: etag.clone(),
                    force: *force,
                })
                .await
                .map_err(report::rpc(&addr))?;
            output::removed(format, &name);
        }
        TokenCommand::Usage { token } => {
            let (mut client, addr) = admin(&args.connect).await?;
            lifecycle::usage(&mut client, &addr, token.name()?, format).await?;
        }
        TokenCommand::Disable { token, etag } | TokenCommand::Enable { token, etag } => {
            let disable = matches!(args.command, TokenCommand::Disable { .. });
            let (mut client, addr) = admin(&args.connect).await?;
            lifecycle::set_disabled(
                &mut client,
                &addr,
                token.name()?,
                etag.clone(),
                disable,
                format,
            )
            .await?;
        }
        TokenCommand::Replacement { token } => {
            let (mut client, addr) = admin(&args.connect).await?;
            lifecycle::replacement(&mut client, &addr, token.name()?, format).await?;
        }
        TokenCommand::Bind {
            token,
            binding_id,
            purpose,
            caller_identity,
        } => {
            let (mut client, addr) = admin(&args.connect).await?;
            let (parent, id, purpose) = (token.name()?, binding_id.clone(), purpose.clone());
            lifecycle::bind(
                &mut client,
                &addr,
                parent,
                id,
                purpose,
                caller_identity.clone(),
                format,
            )
            .await?;
        }
        TokenCommand::Bindings { token } => {
            let (mut client, addr) = admin(&args.connect).await?;
            lifecycle::bindings(&mut client, &addr, token.name()?, format).await?;
        }
        TokenCommand::Unbind { token, binding_id } => {
            let (mut client, addr) = admin(&args.connect).await?;
            let name = format!("{}/bindings/{binding_id}", token.name()?);
            lifecycle::unbind(&mut client, &addr, name, format).await?;
        }
        TokenCommand::Resolve { token } => {
            let name = token.name()?;
            let target = args.connect.target(Surface::Internal)?;
            let mut client = TokenResolverClient::new(target.connect().await?);
            let response = client
                .resolve_token(ResolveTokenRequest { name })
                .await
                .map_err(report::rpc(&target.addr))?
                .into_inner();
            output::value(format, &response.name, &response.value)
                .map_err(|e| CliError::Local(format!("writing to stdout: {e}")))?;
        }
    }
    Ok(())
}

/// A TokenAdmin client on the admin listener, and the address it dialed.
async fn admin(connect: &ConnectArgs) -> Result<(TokenAdminClient<Channel>, String), CliError> {
    let target = connect.target(Surface::Admin)?;
    let channel = target.connect().await?;
    Ok((TokenAdminClient::new(channel), target.addr))
}

#[cfg(test)]
mod tests {
    use super::MisplacedValue;

    #[test]
    fn a_misplaced_value_prints_redacted() {
        let typed = MisplacedValue::from("sk-typed-as-argument-4f2a".to_owned());
        let shown = format!("{typed:?} {typed:#?}");
        assert_eq!(
            shown,
            "MisplacedValue([REDACTED]) MisplacedValue([REDACTED])"
        );
    }
}
