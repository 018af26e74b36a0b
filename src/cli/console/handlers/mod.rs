//! The console's pages: each handler reads its input, makes the admin calls
//! and renders a page (or redirects after a change, so that a reload does not
//! post again).

use std::time::Instant;

use axum::{
    extract::{FromRequestParts, Path, RawQuery, State},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use tonic::Code;

use super::{
    Refusal, Shared,
    pages::{self, Flash, Page},
    session::{self, LoginRefusal, Session},
};
use crate::{
    api::pb::{
        GetTokenRequest, ListAuditEventsRequest, ListTenantsRequest, ListTokenBindingsRequest,
        ListTokenUsagesRequest, ListTokensRequest,
    },
    cli::report::Report,
};

/// Tokens per page of cards.
const CARDS_PER_PAGE: i32 = 50;
/// Page size when searching: the server's largest.
const SEARCH_PAGE_SIZE: i32 = 1000;
/// Pages one search reads at most (a million tokens).
const MAX_SEARCH_PAGES: usize = 1000;

/// The logged-in visitor of a request (put there by the guard).
#[derive(Clone)]
pub struct Visitor {
    /// The session id.
    pub id: String,
    /// The session as of this request.
    pub session: Session,
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Visitor>()
            .cloned()
            .ok_or(Refusal::NoSession)
    }
}

/// A failed admin call, as a page shows it: the CLI's report (field, blockers,
/// what to do) plus the request id the console sent.
pub struct Failure {
    /// What the CLI would print.
    pub report: Report,
    /// The `x-request-id` of the call (in the server's log too).
    pub request_id: String,
}

impl Failure {
    /// The HTTP status of a page showing this failure.
    pub fn status(&self) -> StatusCode {
        match self.report.code {
            Some(Code::InvalidArgument) => StatusCode::BAD_REQUEST,
            Some(Code::NotFound) => StatusCode::NOT_FOUND,
            Some(Code::PermissionDenied | Code::Unauthenticated) => StatusCode::FORBIDDEN,
            Some(Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition) => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn is(&self, code: Code, reason: Option<&str>) -> bool {
        self.report.code == Some(code)
            && (reason.is_none() || self.report.reason.as_deref() == reason)
    }
}

/// Makes an admin call with a fresh request id; a failure becomes a [`Failure`].
macro_rules! admin {
    ($console:expr, $method:ident, $message:expr) => {{
        let request_id = format!(
            "console-{}",
            &crate::cli::console::session::random_hex()[..16]
        );
        let mut request = tonic::Request::new($message);
        if let Ok(value) = request_id.parse() {
            request.metadata_mut().insert("x-request-id", value);
        }
        $console
            .admin
            .clone()
            .$method(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| crate::cli::console::handlers::Failure {
                report: crate::cli::report::Report::of(&crate::cli::report::rpc(
                    &$console.admin_addr,
                )(status)),
                request_id,
            })
    }};
}

mod token;

pub use token::{
    create, new_form, remove, remove_page, rename, replacement, set_state, state_page,
};

/// A page that failed as a whole: the error page.
fn failed(visitor: &Visitor, tenant: Option<&str>, failure: &Failure) -> Response {
    let page = Page::new(visitor, tenant, "Error");
    (failure.status(), pages::error_page(&page, failure)).into_response()
}

/// `tenants/{tenant}/tokens/{id}`.
fn token_name(tenant: &str, id: &str) -> String {
    format!("tenants/{tenant}/tokens/{id}")
}

/// The last segment of a token name (its id).
pub fn id_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A query parameter, empty if absent.
fn param(query: &Option<String>, name: &str) -> String {
    query
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()))
        .and_then(|mut pairs| pairs.find(|(k, _)| k == name))
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// `GET /login?code=…`: the one-time code becomes a session cookie.
pub async fn login(State(console): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let code = param(&query, "code");
    match console
        .sessions
        .login(Some(code.as_str()).filter(|c| !c.is_empty()))
    {
        Ok(id) => (
            [(header::SET_COOKIE, session::set_cookie(&id))],
            Redirect::to("/"),
        )
            .into_response(),
        Err(LoginRefusal::Missing) => Refusal::LoginCodeMissing.into_response(),
        Err(LoginRefusal::Stale) => Refusal::LoginCodeStale.into_response(),
    }
}

/// The style sheet, embedded in the binary.
pub async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/console.css"),
    )
        .into_response()
}

/// The script (enhancement only), embedded in the binary.
pub async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/console.js"),
    )
        .into_response()
}

/// The icon (so that the browser's request for one is answered).
pub async fn favicon() -> Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        include_str!("../assets/favicon.svg"),
    )
        .into_response()
}

/// `GET /`: the tenant picker, from ListTenants.
pub async fn home(State(console): State<Shared>, visitor: Visitor) -> Response {
    let managed = admin!(console, list_tenants, ListTenantsRequest {});
    pages::home(&Page::new(&visitor, None, "Tenants"), &managed).into_response()
}

/// `GET /tenants?tenant=…`: the picker's form.
pub async fn pick_tenant(RawQuery(query): RawQuery) -> Response {
    let tenant = param(&query, "tenant");
    match tenant.trim() {
        "" => see_other("/"),
        tenant => see_other(&format!("/tenants/{}/tokens", pages::seg(tenant))),
    }
}

/// `GET /tenants/{tenant}/tokens?q=…&page_token=…`: the token cards.
pub async fn cards(
    State(console): State<Shared>,
    visitor: Visitor,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    console.sessions.visited(&visitor.id, &tenant);
    let search = param(&query, "q").trim().to_lowercase();
    let page_token = param(&query, "page_token");
    let started = Instant::now();
    let parent = format!("tenants/{tenant}");
    let mut listing = pages::Listing {
        search: search.clone(),
        page_token: page_token.clone(),
        ..pages::Listing::default()
    };
    let mut next = page_token;
    for _ in 0..MAX_SEARCH_PAGES {
        let request = ListTokensRequest {
            parent: parent.clone(),
            page_size: if search.is_empty() {
                CARDS_PER_PAGE
            } else {
                SEARCH_PAGE_SIZE
            },
            page_token: std::mem::take(&mut next),
            unused_for: None,
        };
        let page = match admin!(console, list_tokens, request) {
            Ok(page) => page,
            Err(failure) => return failed(&visitor, Some(&tenant), &failure),
        };
        listing.tokens.extend(page.tokens.into_iter().filter(|t| {
            search.is_empty()
                || t.token_id.contains(&search)
                || t.display_name.to_lowercase().contains(&search)
        }));
        listing.scanned_pages += 1;
        next = page.next_page_token;
        // A search stops at a page boundary once a page of cards is found.
        let enough = listing.tokens.len() >= CARDS_PER_PAGE as usize;
        if search.is_empty() || enough || next.is_empty() {
            break;
        }
    }
    listing.next_page_token = next;
    listing.elapsed = started.elapsed();
    let page = Page::new(&visitor, Some(&tenant), "AI Tokens");
    pages::cards(&page, &listing).into_response()
}

/// `GET /tenants/{tenant}/tokens/{id}`: one token, its usage and bindings.
pub async fn detail(
    State(console): State<Shared>,
    visitor: Visitor,
    Path((tenant, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let flash = Flash::parse(&param(&query, "done"));
    match detail_view(&console, &tenant, &id).await {
        Ok(view) => {
            let page = Page::new(&visitor, Some(&tenant), &id).flash(flash);
            pages::detail(&page, &view, None).into_response()
        }
        Err(failure) => failed(&visitor, Some(&tenant), &failure),
    }
}

async fn detail_view(
    console: &Shared,
    tenant: &str,
    id: &str,
) -> Result<pages::DetailView, Failure> {
    let name = token_name(tenant, id);
    let token = admin!(console, get_token, GetTokenRequest { name: name.clone() })?;
    let usages = admin!(
        console,
        list_token_usages,
        ListTokenUsagesRequest { name: name.clone() }
    )?
    .usages;
    let bindings = admin!(
        console,
        list_token_bindings,
        ListTokenBindingsRequest { parent: name }
    )?
    .bindings;
    Ok(pages::DetailView {
        token,
        usages,
        bindings,
    })
}

/// `GET /tenants/{tenant}/audit?resource=…&actor=…&method=…`: the trail.
pub async fn audit(
    State(console): State<Shared>,
    visitor: Visitor,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let filter = pages::AuditFilter {
        resource: param(&query, "resource"),
        actor: param(&query, "actor"),
        method: param(&query, "method"),
        page_token: param(&query, "page_token"),
    };
    let request = ListAuditEventsRequest {
        parent: format!("tenants/{tenant}"),
        page_size: 100,
        page_token: filter.page_token.clone(),
        resource: filter.resource.clone(),
        actor: filter.actor.clone(),
        method: filter.method.clone(),
        start_time: None,
        end_time: None,
    };
    match admin!(console, list_audit_events, request) {
        Ok(events) => {
            let page = Page::new(&visitor, Some(&tenant), "Audit trail");
            pages::audit(&page, &filter, &events).into_response()
        }
        Err(failure) => failed(&visitor, Some(&tenant), &failure),
    }
}

/// Anything else.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, pages::refusal("no such page")).into_response()
}
