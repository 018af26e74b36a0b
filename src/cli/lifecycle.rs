//! `aitokens token usage|disable|enable|replacement|bind|bindings|unbind`:
//! where a token is used, and the kill switch.

use serde_json::json;

use super::{
    output::{self, OutputFormat, fields, table, time},
    report::{self, CliError},
};
use crate::api::pb::{
    CreateTokenBindingRequest, DeleteTokenBindingRequest, DisableTokenRequest, EnableTokenRequest,
    GetReplacementStatusRequest, ListTokenBindingsRequest, ListTokenUsagesRequest, TokenBinding,
    token_admin_client::TokenAdminClient,
};

type Admin = TokenAdminClient<tonic::transport::Channel>;

/// Prints who resolved (or was refused) `name`, most recently active first.
pub async fn usage(
    client: &mut Admin,
    addr: &str,
    name: String,
    format: OutputFormat,
) -> Result<(), CliError> {
    let usages = client
        .list_token_usages(ListTokenUsagesRequest { name: name.clone() })
        .await
        .map_err(report::rpc(addr))?
        .into_inner()
        .usages;
    match format {
        OutputFormat::Json => {
            let rows: Vec<_> = usages
                .iter()
                .map(|u| {
                    json!({
                        "caller_identity": u.caller_identity,
                        "resolve_count": u.resolve_count,
                        "first_resolve_time": time(u.first_resolve_time.as_ref()),
                        "last_resolve_time": time(u.last_resolve_time.as_ref()),
                        "denied_count": u.denied_count,
                        "last_denied_time": time(u.last_denied_time.as_ref()),
                        "superseded_resolve_count": u.superseded_resolve_count,
                        "last_superseded_resolve_time": time(u.last_superseded_resolve_time.as_ref()),
                    })
                })
                .collect();
            println!("{}", json!({ "name": name, "usages": rows }));
        }
        OutputFormat::Table if usages.is_empty() => {
            println!("nobody resolved {}", super::printable::printable(&name));
        }
        OutputFormat::Table => {
            let rows: Vec<[String; 6]> = usages
                .iter()
                .map(|u| {
                    [
                        u.caller_identity.clone(),
                        u.resolve_count.to_string(),
                        time(u.last_resolve_time.as_ref()),
                        u.denied_count.to_string(),
                        u.superseded_resolve_count.to_string(),
                        time(u.first_resolve_time.as_ref()),
                    ]
                })
                .collect();
            table(
                [
                    "CALLER",
                    "RESOLVES",
                    "LAST",
                    "DENIED",
                    "SUPERSEDED",
                    "FIRST",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

/// Turns the kill switch on (`disable`) or off.
pub async fn set_disabled(
    client: &mut Admin,
    addr: &str,
    name: String,
    etag: Option<String>,
    disable: bool,
    format: OutputFormat,
) -> Result<(), CliError> {
    let token = if disable {
        client
            .disable_token(DisableTokenRequest { name, etag })
            .await
    } else {
        client.enable_token(EnableTokenRequest { name, etag }).await
    }
    .map_err(report::rpc(addr))?;
    output::token(format, token.get_ref());
    Ok(())
}

/// Whether a replaced token can go.
pub async fn replacement(
    client: &mut Admin,
    addr: &str,
    name: String,
    format: OutputFormat,
) -> Result<(), CliError> {
    let status = client
        .get_replacement_status(GetReplacementStatusRequest { name })
        .await
        .map_err(report::rpc(addr))?
        .into_inner();
    let window = status
        .window
        .map(|w| format!("{}s", w.seconds))
        .unwrap_or_default();
    match format {
        OutputFormat::Json => println!(
            "{}",
            json!({
                "name": status.name,
                "replaced_by": status.replaced_by,
                "ready_to_remove": status.ready_to_remove,
                "window": window,
                "last_superseded_resolve_time": time(status.last_superseded_resolve_time.as_ref()),
                "callers_not_switched": status.callers_not_switched,
            })
        ),
        OutputFormat::Table => fields(&[
            ("name", status.name.clone()),
            ("replaced_by", status.replaced_by.clone()),
            ("ready_to_remove", status.ready_to_remove.to_string()),
            ("window", window),
            (
                "last_superseded",
                time(status.last_superseded_resolve_time.as_ref()),
            ),
            ("not_switched", status.callers_not_switched.join(", ")),
        ]),
    }
    Ok(())
}

/// Declares that consumer `binding_id` uses token `parent`.
pub async fn bind(
    client: &mut Admin,
    addr: &str,
    parent: String,
    binding_id: String,
    purpose: String,
    caller_identity: Option<String>,
    format: OutputFormat,
) -> Result<(), CliError> {
    let binding = client
        .create_token_binding(CreateTokenBindingRequest {
            parent,
            binding_id,
            binding: Some(TokenBinding {
                purpose,
                caller_identity: caller_identity.unwrap_or_default(),
                ..TokenBinding::default()
            }),
        })
        .await
        .map_err(report::rpc(addr))?
        .into_inner();
    print_bindings(format, &[binding]);
    Ok(())
}

/// Lists a token's bindings.
pub async fn bindings(
    client: &mut Admin,
    addr: &str,
    parent: String,
    format: OutputFormat,
) -> Result<(), CliError> {
    let bindings = client
        .list_token_bindings(ListTokenBindingsRequest { parent })
        .await
        .map_err(report::rpc(addr))?
        .into_inner()
        .bindings;
    print_bindings(format, &bindings);
    Ok(())
}

/// Withdraws a binding.
pub async fn unbind(
    client: &mut Admin,
    addr: &str,
    name: String,
    format: OutputFormat,
) -> Result<(), CliError> {
    client
        .delete_token_binding(DeleteTokenBindingRequest { name: name.clone() })
        .await
        .map_err(report::rpc(addr))?;
    output::removed(format, &name);
    Ok(())
}

fn print_bindings(format: OutputFormat, bindings: &[TokenBinding]) {
    match format {
        OutputFormat::Json => {
            let rows: Vec<_> = bindings
                .iter()
                .map(|b| {
                    json!({
                        "name": b.name,
                        "binding_id": b.binding_id,
                        "caller_identity": b.caller_identity,
                        "purpose": b.purpose,
                        "create_time": time(b.create_time.as_ref()),
                    })
                })
                .collect();
            println!("{}", json!({ "bindings": rows }));
        }
        OutputFormat::Table if bindings.is_empty() => println!("no bindings"),
        OutputFormat::Table => {
            let rows: Vec<[String; 4]> = bindings
                .iter()
                .map(|b| {
                    [
                        b.binding_id.clone(),
                        b.caller_identity.clone(),
                        b.purpose.clone(),
                        time(b.create_time.as_ref()),
                    ]
                })
                .collect();
            table(["BINDING", "CALLER IDENTITY", "PURPOSE", "CREATED"], &rows);
        }
    }
}
