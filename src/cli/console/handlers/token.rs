//! One token's changes: Add (and Replace's first step), Edit, Remove, the
//! kill switch, and the Replace flow's live status.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use tonic::Code;

use super::{Failure, Visitor, detail_view, failed, id_of, param, see_other, token_name};
use crate::{
    api::pb::{
        CreateTokenRequest, DisableTokenRequest, EnableTokenRequest, GetReplacementStatusRequest,
        GetTokenRequest, ListTokenBindingsRequest, ListTokenUsagesRequest, RemoveTokenRequest,
        RenameTokenRequest, Token,
    },
    cli::console::{
        Shared,
        form::PostForm,
        pages::{self, Page},
    },
};

/// `GET /tenants/{tenant}/new?replaces=…`: the Add form.
pub async fn new_form(
    visitor: Visitor,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let draft = pages::Draft {
        replaces: param(&query, "replaces"),
        ..pages::Draft::default()
    };
    let page = Page::new(&visitor, Some(&tenant), "Add new token");
    pages::new_form(&page, &draft, None).into_response()
}

/// `POST /tenants/{tenant}/new`: CreateToken. The value is moved into the
/// request (which zeroizes it when dropped) and never rendered back.
pub async fn create(
    State(console): State<Shared>,
    Path(tenant): Path<String>,
    mut form: PostForm,
) -> Response {
    let mut value = form.take("value");
    let draft = pages::Draft {
        token_id: form.trimmed("token_id"),
        display_name: form.trimmed("display_name"),
        replaces: form.trimmed("replaces"),
    };
    let parent = format!("tenants/{tenant}");
    let request = CreateTokenRequest {
        parent: parent.clone(),
        token_id: draft.token_id.clone(),
        token: Some(Token {
            display_name: if draft.display_name.is_empty() {
                draft.token_id.clone()
            } else {
                draft.display_name.clone()
            },
            ..Token::default()
        }),
        value: std::mem::take(&mut *value),
        replaces: match draft.replaces.as_str() {
            "" => String::new(),
            old => format!("{parent}/tokens/{old}"),
        },
    };
    drop(value);
    match admin!(console, create_token, request) {
        Ok(created) if !draft.replaces.is_empty() => see_other(&format!(
            "/tenants/{}/tokens/{}/replacement",
            pages::seg(&tenant),
            pages::seg(id_of(&created.replaces)),
        )),
        Ok(created) => see_other(&format!(
            "/tenants/{}/tokens/{}?done=created",
            pages::seg(&tenant),
            pages::seg(&created.token_id)
        )),
        Err(failure) => {
            let page = Page::new(&form.visitor, Some(&tenant), "Add new token");
            (
                failure.status(),
                pages::new_form(&page, &draft, Some(&failure)),
            )
                .into_response()
        }
    }
}

/// `POST /tenants/{tenant}/tokens/{id}/rename`: RenameToken with the etag
/// the page was rendered with; a conflict shows what changed meanwhile.
pub async fn rename(
    State(console): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    form: PostForm,
) -> Response {
    let (new_id, new_name) = (form.trimmed("token_id"), form.trimmed("display_name"));
    let (seen_id, seen_name) = (id.clone(), form.get("seen_display_name").to_owned());
    let request = RenameTokenRequest {
        name: token_name(&tenant, &id),
        display_name: (new_name != seen_name).then(|| new_name.clone()),
        new_token_id: (new_id != seen_id).then(|| new_id.clone()),
        etag: Some(form.get("etag").to_owned()).filter(|e| !e.is_empty()),
    };
    let visitor = &form.visitor;
    if request.display_name.is_none() && request.new_token_id.is_none() {
        return see_other(&format!(
            "/tenants/{}/tokens/{}?done=unchanged",
            pages::seg(&tenant),
            pages::seg(&id)
        ));
    }
    let failure = match admin!(console, rename_token, request) {
        Ok(renamed) => {
            return see_other(&format!(
                "/tenants/{}/tokens/{}?done=renamed",
                pages::seg(&tenant),
                pages::seg(&renamed.token_id)
            ));
        }
        Err(failure) => failure,
    };
    // Show the token as it is now, the visitor's input kept in the form.
    let view = match detail_view(&console, &tenant, &id).await {
        Ok(view) => view,
        Err(_) => return failed(visitor, Some(&tenant), &failure),
    };
    let conflict = failure.is(Code::Aborted, None).then(|| pages::Conflict {
        seen_display_name: seen_name,
        now_display_name: view.token.display_name.clone(),
    });
    let edit = pages::RenameAttempt {
        token_id: new_id,
        display_name: new_name,
        failure: &failure,
        conflict,
    };
    let page = Page::new(visitor, Some(&tenant), &id);
    (failure.status(), pages::detail(&page, &view, Some(&edit))).into_response()
}

/// `GET /tenants/{tenant}/tokens/{id}/remove`: what blocks removal, before
/// anything happens.
pub async fn remove_page(
    State(console): State<Shared>,
    visitor: Visitor,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    match removal_view(&console, &tenant, &id, None).await {
        Ok(view) => {
            let page = Page::new(&visitor, Some(&tenant), "Remove");
            pages::remove(&page, &view, None).into_response()
        }
        Err(failure) => failed(&visitor, Some(&tenant), &failure),
    }
}

/// The token and its blockers: the server's own list when it refused a
/// removal, else the bindings and the callers within the recent window.
async fn removal_view(
    console: &Shared,
    tenant: &str,
    id: &str,
    refused: Option<&Failure>,
) -> Result<pages::RemovalView, Failure> {
    let name = token_name(tenant, id);
    let token = admin!(console, get_token, GetTokenRequest { name: name.clone() })?;
    let blockers = match refused {
        Some(failure) => failure
            .report
            .blockers
            .iter()
            .map(|(kind, subject, description)| pages::Blocker {
                kind: kind.clone(),
                subject: subject.clone(),
                description: description.clone(),
            })
            .collect(),
        None => {
            let status = admin!(
                console,
                get_replacement_status,
                GetReplacementStatusRequest { name: name.clone() }
            )?;
            let window = status.window.map_or(24 * 3600, |w| w.seconds);
            let since = now_secs() - window;
            let bindings = admin!(
                console,
                list_token_bindings,
                ListTokenBindingsRequest {
                    parent: name.clone()
                }
            )?
            .bindings;
            let usages =
                admin!(console, list_token_usages, ListTokenUsagesRequest { name })?.usages;
            let bindings = bindings.into_iter().map(|b| pages::Blocker {
                kind: "BINDING".into(),
                subject: b.name,
                description: format!("declared use: {}", b.purpose),
            });
            let callers = usages.into_iter().filter_map(|u| {
                let last = u.last_resolve_time?.seconds;
                (last >= since).then(|| pages::Blocker {
                    kind: "RECENT_CALLER".into(),
                    subject: u.caller_identity,
                    description: format!("resolved the token {} s ago", now_secs() - last),
                })
            });
            bindings.chain(callers).collect()
        }
    };
    Ok(pages::RemovalView { token, blockers })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `POST /tenants/{tenant}/tokens/{id}/remove`: RemoveToken; with `force`
/// only when the token id was typed.
pub async fn remove(
    State(console): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    form: PostForm,
) -> Response {
    let force = form.get("force") == "1";
    let visitor = &form.visitor;
    let page = Page::new(visitor, Some(&tenant), "Remove");
    if force && form.trimmed("confirm") != id {
        return match removal_view(&console, &tenant, &id, None).await {
            Ok(view) => (
                StatusCode::BAD_REQUEST,
                pages::remove(&page, &view, Some(pages::RemoveError::NotConfirmed)),
            )
                .into_response(),
            Err(failure) => failed(visitor, Some(&tenant), &failure),
        };
    }
    let request = RemoveTokenRequest {
        name: token_name(&tenant, &id),
        etag: Some(form.get("etag").to_owned()).filter(|e| !e.is_empty()),
        force,
    };
    let failure = match admin!(console, remove_token, request) {
        Ok(_) => {
            let forced = form.get("blockers").parse().unwrap_or(0);
            return pages::removed(&page, &tenant, &id, force.then_some(forced)).into_response();
        }
        Err(failure) => failure,
    };
    if !failure.is(Code::FailedPrecondition, Some("TOKEN_IN_USE")) {
        return failed(visitor, Some(&tenant), &failure);
    }
    match removal_view(&console, &tenant, &id, Some(&failure)).await {
        Ok(view) => (
            failure.status(),
            pages::remove(&page, &view, Some(pages::RemoveError::Refused(&failure))),
        )
            .into_response(),
        Err(failure) => failed(visitor, Some(&tenant), &failure),
    }
}

/// `GET /tenants/{tenant}/tokens/{id}/state?to=disable|enable`: confirmation.
pub async fn state_page(
    State(console): State<Shared>,
    visitor: Visitor,
    Path((tenant, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let disable = param(&query, "to") != "enable";
    match admin!(
        console,
        get_token,
        GetTokenRequest {
            name: token_name(&tenant, &id)
        }
    ) {
        Ok(token) => {
            let title = if disable { "Disable" } else { "Enable" };
            let page = Page::new(&visitor, Some(&tenant), title);
            pages::confirm_state(&page, &token, disable).into_response()
        }
        Err(failure) => failed(&visitor, Some(&tenant), &failure),
    }
}

/// `POST /tenants/{tenant}/tokens/{id}/state`: the kill switch.
pub async fn set_state(
    State(console): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    form: PostForm,
) -> Response {
    let name = token_name(&tenant, &id);
    let etag = Some(form.get("etag").to_owned()).filter(|e| !e.is_empty());
    let (result, done) = match form.get("to") {
        "enable" => (
            admin!(console, enable_token, EnableTokenRequest { name, etag }),
            "enabled",
        ),
        _ => (
            admin!(console, disable_token, DisableTokenRequest { name, etag }),
            "disabled",
        ),
    };
    match result {
        Ok(_) => see_other(&format!(
            "/tenants/{}/tokens/{}?done={done}",
            pages::seg(&tenant),
            pages::seg(&id)
        )),
        Err(failure) => failed(&form.visitor, Some(&tenant), &failure),
    }
}

/// `GET /tenants/{tenant}/tokens/{id}/replacement`: the Replace flow's live
/// view of the old token: who has not switched, and whether it can go.
pub async fn replacement(
    State(console): State<Shared>,
    visitor: Visitor,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    let name = token_name(&tenant, &id);
    let status = admin!(
        console,
        get_replacement_status,
        GetReplacementStatusRequest { name: name.clone() }
    );
    let page = Page::new(&visitor, Some(&tenant), "Replace");
    match status {
        Ok(status) => match admin!(console, get_token, GetTokenRequest { name }) {
            Ok(token) => pages::replacement(&page, &token, &status).into_response(),
            Err(failure) => failed(&visitor, Some(&tenant), &failure),
        },
        Err(failure) => failed(&visitor, Some(&tenant), &failure),
    }
}
