//! The console's HTML, as maud templates: every interpolation is escaped by
//! maud, none is written by hand. No inline script or style (the CSP forbids
//! both); forms work without JavaScript.

use std::time::Duration;

use axum::response::Html;
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::handlers::{Failure, Visitor, id_of};
use crate::{
    api::pb::{ListAuditEventsResponse, ListTenantsResponse, Token, token::State},
    cli::output::time,
};

pub use token::{
    Blocker, Conflict, DetailView, Draft, RemovalView, RemoveError, RenameAttempt, confirm_state,
    detail, new_form, remove, removed, replacement,
};

mod token;

/// What a path segment or query value keeps unencoded: RFC 3986's unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One path segment (or query value), percent-encoded for an `href`.
pub fn seg(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// What every page of a logged-in visitor shows around its content.
pub struct Page<'a> {
    visitor: &'a Visitor,
    tenant: Option<&'a str>,
    title: &'a str,
    flash: Option<Flash>,
}

/// A one-line notice after a redirect (`?done=…`): fixed texts only.
#[derive(Clone, Copy)]
pub enum Flash {
    /// A token was created.
    Created,
    /// A token was renamed.
    Renamed,
    /// A rename changed nothing.
    Unchanged,
    /// A token was disabled.
    Disabled,
    /// A token was enabled.
    Enabled,
}

impl Flash {
    /// The notice named by `?done=`, if any.
    pub fn parse(done: &str) -> Option<Self> {
        match done {
            "created" => Some(Self::Created),
            "renamed" => Some(Self::Renamed),
            "unchanged" => Some(Self::Unchanged),
            "disabled" => Some(Self::Disabled),
            "enabled" => Some(Self::Enabled),
            _ => None,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Created => "Created. The value was sent once and is not shown anywhere.",
            Self::Renamed => "Renamed.",
            Self::Unchanged => "Nothing to change: the id and name are as they were.",
            Self::Disabled => "Disabled: every resolve of this token now fails.",
            Self::Enabled => "Enabled: the token resolves again.",
        }
    }
}

impl<'a> Page<'a> {
    /// A page titled `title`, in `tenant` if any.
    pub fn new(visitor: &'a Visitor, tenant: Option<&'a str>, title: &'a str) -> Self {
        Self {
            visitor,
            tenant,
            title,
            flash: None,
        }
    }

    /// With a notice on top.
    pub fn flash(mut self, flash: Option<Flash>) -> Self {
        self.flash = flash;
        self
    }

    fn tenant(&self) -> &str {
        self.tenant.unwrap_or_default()
    }

    /// The tenant's path prefix, `/tenants/{tenant}`.
    fn base(&self) -> String {
        format!("/tenants/{}", seg(self.tenant()))
    }

    fn token_href(&self, id: &str) -> String {
        format!("{}/tokens/{}", self.base(), seg(id))
    }

    /// The hidden CSRF field every form carries.
    fn csrf(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.visitor.session.csrf); }
    }

    fn render(&self, content: Markup) -> Html<String> {
        Html(
            html! {
                (DOCTYPE)
                html lang="en" {
                    head {
                        meta charset="utf-8";
                        meta name="viewport" content="width=device-width, initial-scale=1";
                        title { (self.title) " · aitokens console" }
                        link rel="stylesheet" href="/static/console.css";
                        link rel="icon" href="/static/favicon.svg";
                        script src="/static/console.js" defer {}
                    }
                    body {
                        header.top {
                            a.brand href="/" { "aitokens console" }
                            @if let Some(tenant) = self.tenant {
                                nav aria-label="Tenant" {
                                    span.tenant { "tenant " strong { (tenant) } }
                                    a href={ (self.base()) "/tokens" } { "AI Tokens" }
                                    a href={ (self.base()) "/new" } { "Add new token" }
                                    a href={ (self.base()) "/audit" } { "Audit trail" }
                                }
                            }
                        }
                        main {
                            @if let Some(flash) = self.flash {
                                p.flash role="status" { (flash.text()) }
                            }
                            h1 { (self.title) }
                            (content)
                        }
                    }
                }
            }
            .into_string(),
        )
    }
}

/// A refusal page (no session, wrong CSRF token, …): the reason, nothing else.
pub fn refusal(reason: &str) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { "Refused · aitokens console" }
                    link rel="stylesheet" href="/static/console.css";
                    link rel="icon" href="/static/favicon.svg";
                }
                body { main { h1 { "Refused" } p.refusal { (reason) } } }
            }
        }
        .into_string(),
    )
}

/// An admin call's failure: what happened, which field, what to do, the
/// request id.
fn failure_box(failure: &Failure) -> Markup {
    let report = &failure.report;
    html! {
        div.error role="alert" {
            p {
                strong { (report.code.map(|c| format!("{c:?}")).unwrap_or_default()) }
                @if let Some(reason) = &report.reason { " (" (reason) ")" }
                ": " (report.message)
            }
            @if !report.fields.is_empty() {
                ul.fields {
                    @for (field, description) in &report.fields {
                        li { "Field " code { (field) } ": " (description) }
                    }
                }
            }
            @if !report.blockers.is_empty() {
                ul.blockers {
                    @for (kind, subject, description) in &report.blockers {
                        li { (kind) " " code { (subject) } " — " (description) }
                    }
                }
            }
            p { "What to do: " (hint(failure)) }
            p.request-id { "Request id: " code { (failure.request_id) } }
        }
    }
}

/// What to do, in the console's terms where the CLI's hint names a flag or
/// a command; else the CLI's own hint.
fn hint(failure: &Failure) -> &str {
    let report = &failure.report;
    match (report.code, report.reason.as_deref()) {
        (Some(tonic::Code::FailedPrecondition), Some("TOKEN_IN_USE")) => {
            "the token is still in use (see the blockers): move its users to another token and \
             delete its bindings, or remove it anyway by typing its id"
        }
        (Some(tonic::Code::Aborted), _) => {
            "the token changed since this page was loaded: reload it, check the change, retry"
        }
        (Some(tonic::Code::NotFound), _) => {
            "check the tenant and the token id (the token cards list the ids); it may have been \
             renamed or removed meanwhile"
        }
        _ => &report.hint,
    }
}

/// A page that is only a failure.
pub fn error_page(page: &Page<'_>, failure: &Failure) -> Html<String> {
    page.render(html! {
        (failure_box(failure))
        p { a href="/" { "Back to the tenants" } }
    })
}

/// The tenant picker: the tenants the admin identity may administer
/// (`managed`, from ListTenants). A grant of every tenant, or a failed call,
/// also offers a tenant typed by id.
pub fn home(page: &Page<'_>, managed: &Result<ListTenantsResponse, Failure>) -> Html<String> {
    let typed = managed.as_ref().map_or(true, |m| m.every_tenant);
    page.render(html! {
        p { "The console acts with the admin identity of its profile." }
        @match managed {
            Ok(managed) => {
                h2 { "Tenants you administer" }
                @if managed.tenants.is_empty() {
                    p #no-tenants { "No tenant holds a token yet." }
                } @else {
                    ul.tenants #managed-tenants {
                        @for tenant in &managed.tenants {
                            li { a href={ "/tenants/" (seg(tenant)) "/tokens" } { (tenant) } }
                        }
                    }
                }
                @if managed.every_tenant {
                    p {
                        "Your grant covers every tenant; the list shows those that hold a \
                         token. Open another by its id:"
                    }
                }
            }
            Err(failure) => { (failure_box(failure)) }
        }
        @if typed {
            form.inline method="get" action="/tenants" {
                label for="tenant" { "Tenant" }
                input #tenant name="tenant" required autocomplete="off" autofocus;
                button type="submit" { "Open" }
            }
        }
        @if !page.visitor.session.tenants.is_empty() {
            h2 { "Recently opened" }
            ul.tenants {
                @for tenant in &page.visitor.session.tenants {
                    li { a href={ "/tenants/" (seg(tenant)) "/tokens" } { (tenant) } }
                }
            }
        }
    })
}

/// One page of cards.
#[derive(Default)]
pub struct Listing {
    /// The search text (lowercase), empty for none.
    pub search: String,
    /// The page token this page started from.
    pub page_token: String,
    /// The cards.
    pub tokens: Vec<Token>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
    /// ListTokens calls made.
    pub scanned_pages: usize,
    /// Time spent in them.
    pub elapsed: Duration,
}

/// The token cards of a tenant.
pub fn cards(page: &Page<'_>, listing: &Listing) -> Html<String> {
    let list = format!("{}/tokens", page.base());
    page.render(html! {
        div.toolbar {
            form.inline role="search" method="get" action=(list) {
                label for="q" { "Search by id or name" }
                input #q type="search" name="q" value=(listing.search);
                button type="submit" { "Search" }
            }
            a.button href={ (page.base()) "/new" } { "Add new token" }
        }
        @if listing.tokens.is_empty() {
            p.empty { "No tokens" @if !listing.search.is_empty() { " match this search" } "." }
        }
        ul.cards {
            @for token in &listing.tokens { li { (card(page, token)) } }
        }
        nav.pager aria-label="Pages" {
            @if !listing.page_token.is_empty() {
                a href={ (list) "?q=" (seg(&listing.search)) } { "First page" }
            }
            @if !listing.next_page_token.is_empty() {
                a rel="next" href={ (list) "?q=" (seg(&listing.search)) "&page_token=" (seg(&listing.next_page_token)) } {
                    "Next page"
                }
            }
        }
        p.timing {
            (listing.tokens.len()) " shown; " (listing.scanned_pages) " ListTokens call(s) in "
            span #list-ms { (listing.elapsed.as_millis()) } " ms"
        }
    })
}

fn card(page: &Page<'_>, token: &Token) -> Markup {
    let disabled = token.state() == State::Disabled;
    html! {
        article.card data-token-id=(token.token_id) {
            h2 {
                a href=(page.token_href(&token.token_id)) { (token.token_id) }
                @if disabled { " " span.badge.disabled { "Disabled" } }
            }
            p.display-name { (token.display_name) }
            dl {
                dt { "Created" } dd { (time(token.create_time.as_ref())) }
                dt { "Updated" } dd { (time(token.update_time.as_ref())) }
                dt { "Last resolved" }
                dd.last-resolved {
                    @match &token.last_resolve_time {
                        Some(t) => (time(Some(t))),
                        None => "never",
                    }
                }
                dt { "Resolves" } dd.resolve-count { (token.resolve_count) }
                @if !token.replaces.is_empty() {
                    dt { "Replaces" }
                    dd { a href=(page.token_href(id_of(&token.replaces))) { (id_of(&token.replaces)) } }
                }
                @if !token.replaced_by.is_empty() {
                    dt { "Replaced by" }
                    dd { a href=(page.token_href(id_of(&token.replaced_by))) { (id_of(&token.replaced_by)) } }
                }
            }
        }
    }
}

/// The audit trail's filters.
pub struct AuditFilter {
    /// A token name.
    pub resource: String,
    /// An actor identity.
    pub actor: String,
    /// A full method name.
    pub method: String,
    /// Where this page starts.
    pub page_token: String,
}

/// The audit trail.
pub fn audit(
    page: &Page<'_>,
    filter: &AuditFilter,
    events: &ListAuditEventsResponse,
) -> Html<String> {
    let list = format!("{}/audit", page.base());
    page.render(html! {
        form.filters method="get" action=(list) {
            label for="resource" { "Resource" }
            input #resource name="resource" value=(filter.resource);
            label for="actor" { "Actor" }
            input #actor name="actor" value=(filter.actor);
            label for="method" { "Method" }
            input #method name="method" value=(filter.method) placeholder="aitokens.v1.TokenAdmin/RemoveToken";
            button type="submit" { "Filter" }
        }
        div.scroll { table.audit {
            tr { th { "#" } th { "Time" } th { "Actor" } th { "Method" } th { "Resource" } th { "Outcome" } th { "Reason" } }
            @for e in &events.events {
                tr {
                    td { (e.sequence) }
                    td { (time(e.time.as_ref())) }
                    td { code { (e.actor) } }
                    td { (e.method.rsplit('/').next().unwrap_or_default()) }
                    td { code { (e.resource) } }
                    td { (e.outcome) }
                    td { (e.reason) @if e.count > 1 { " ×" (e.count) } }
                }
            }
        } }
        @if !events.next_page_token.is_empty() {
            nav.pager { a rel="next" href={ (list) "?resource=" (seg(&filter.resource)) "&actor=" (seg(&filter.actor))
                "&method=" (seg(&filter.method)) "&page_token=" (seg(&events.next_page_token)) } { "Next page" } }
        }
    })
}
