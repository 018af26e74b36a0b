//! One token's pages: its card with the edit form and actions, Add, Remove,
//! Disable/Enable, and the Replace flow.

use axum::response::Html;
use maud::html;

use super::{Page, card, failure_box, seg};
use crate::{
    api::pb::{ReplacementStatus, Token, TokenBinding, TokenUsage, token::State},
    cli::{
        console::handlers::{Failure, id_of},
        output::time,
    },
};

/// What the token page shows.
pub struct DetailView {
    /// The token.
    pub token: Token,
    /// Per caller.
    pub usages: Vec<TokenUsage>,
    /// Declared consumers.
    pub bindings: Vec<TokenBinding>,
}

/// A rename that failed, to show with the visitor's input kept.
pub struct RenameAttempt<'a> {
    /// The id typed.
    pub token_id: String,
    /// The name typed.
    pub display_name: String,
    /// Why it failed.
    pub failure: &'a Failure,
    /// Set when the token changed since the page was loaded (etag).
    pub conflict: Option<Conflict>,
}

/// What changed under a rename.
pub struct Conflict {
    /// The name the visitor saw.
    pub seen_display_name: String,
    /// The name now.
    pub now_display_name: String,
}

/// A token: its card, the edit form, the actions, usage and bindings.
pub fn detail(
    page: &Page<'_>,
    view: &DetailView,
    edit: Option<&RenameAttempt<'_>>,
) -> Html<String> {
    let token = &view.token;
    let href = page.token_href(&token.token_id);
    let disabled = token.state() == State::Disabled;
    let (id_value, name_value) = edit.map_or(
        (token.token_id.as_str(), token.display_name.as_str()),
        |e| (e.token_id.as_str(), e.display_name.as_str()),
    );
    page.render(html! {
        (card(page, token))
        section aria-labelledby="edit" {
            h2 #edit { "Edit" }
            @if let Some(edit) = edit {
                @if let Some(conflict) = &edit.conflict {
                    div.conflict role="alert" {
                        p { strong { "Someone changed this token since you opened it." } " Nothing was renamed." }
                        table {
                            tr { th { "" } th { "when you opened it" } th { "now" } }
                            tr {
                                th { "Token Name" }
                                td { (conflict.seen_display_name) }
                                td { (conflict.now_display_name) }
                            }
                        }
                        p { "Your input is kept below; submit again to apply it to the current token." }
                    }
                }
                (failure_box(edit.failure))
            }
            form.stacked method="post" action={ (href) "/rename" } {
                (page.csrf())
                input type="hidden" name="etag" value=(token.etag);
                input type="hidden" name="seen_display_name" value=(token.display_name);
                label for="token_id" { "Token ID" }
                input #token_id name="token_id" value=(id_value) required autocomplete="off"
                    pattern="[a-z][a-z0-9\\-]{0,62}";
                label for="display_name" { "Token Name" }
                input #display_name name="display_name" value=(name_value) required maxlength="256";
                p.note { "The value cannot be changed: to change it, replace the token." }
                button type="submit" { "Save" }
            }
        }
        section aria-labelledby="actions" {
            h2 #actions { "Actions" }
            ul.actions {
                @if disabled {
                    li { a.button href={ (href) "/state?to=enable" } { "Enable" } }
                } @else {
                    li { a.button href={ (href) "/state?to=disable" } { "Disable" } }
                }
                @if token.replaced_by.is_empty() {
                    li { a.button href={ (page.base()) "/new?replaces=" (seg(&token.token_id)) } { "Replace" } }
                } @else {
                    li { a.button href={ (href) "/replacement" } { "Replacement status" } }
                }
                li { a.button.danger href={ (href) "/remove" } { "Remove" } }
                li { a.button href={ (page.base()) "/audit?resource=" (seg(&token.name)) } { "Audit trail" } }
            }
        }
        section aria-labelledby="usage" {
            h2 #usage { "Usage per caller" }
            @if view.usages.is_empty() {
                p { "Nobody resolved this token yet." }
            } @else {
                div.scroll { table.usage {
                    tr { th { "Caller" } th { "Resolves" } th { "Last resolved" } th { "Denied" } th { "Superseded" } }
                    @for u in &view.usages {
                        tr {
                            td.caller { code { (u.caller_identity) } }
                            td { (u.resolve_count) }
                            td { (time(u.last_resolve_time.as_ref())) }
                            td { (u.denied_count) }
                            td { (u.superseded_resolve_count) }
                        }
                    }
                } }
            }
        }
        section aria-labelledby="bindings" {
            h2 #bindings { "Bindings" }
            @if view.bindings.is_empty() {
                p { "No declared consumers." }
            } @else {
                ul { @for b in &view.bindings {
                    li { code { (b.binding_id) } " — " (b.purpose)
                        @if !b.caller_identity.is_empty() { " (" code { (b.caller_identity) } ")" } }
                } }
            }
        }
    })
}

/// The Add form's text fields (never the value).
#[derive(Default)]
pub struct Draft {
    /// Token ID.
    pub token_id: String,
    /// Token Name.
    pub display_name: String,
    /// The id of the token this one replaces, if any.
    pub replaces: String,
}

/// The Add form; after a failure its value field is empty.
pub fn new_form(page: &Page<'_>, draft: &Draft, failure: Option<&Failure>) -> Html<String> {
    let wrong = |field: &str| {
        failure.is_some_and(|f| {
            f.report
                .fields
                .iter()
                .any(|(name, _)| name.ends_with(field))
        })
    };
    page.render(html! {
        @if !draft.replaces.is_empty() {
            p.note {
                "Replace " strong { (draft.replaces) } ": create the new token here; then move its \
                 callers over and remove the old one (the next page follows who has switched)."
            }
        }
        @if let Some(failure) = failure { (failure_box(failure)) }
        form.stacked method="post" action={ (page.base()) "/new" } autocomplete="off" {
            (page.csrf())
            label for="token_id" { "Token ID" }
            input #token_id name="token_id" value=(draft.token_id) required
                pattern="[a-z][a-z0-9\\-]{0,62}" aria-invalid=(wrong("token_id"))
                aria-describedby="token_id_help";
            small #token_id_help { "A lowercase letter, then up to 62 lowercase letters, digits or -." }
            label for="display_name" { "Token Name" }
            input #display_name name="display_name" value=(draft.display_name) maxlength="256"
                aria-invalid=(wrong("display_name"));
            label for="value" { "Token Value" }
            input #value type="password" name="value" required autocomplete="off"
                aria-invalid=(wrong("value")) aria-describedby="value_help";
            small #value_help { "Sent once to the server; never shown again, here or anywhere." }
            label for="replaces" { "Replaces (optional)" }
            input #replaces name="replaces" value=(draft.replaces) aria-invalid=(wrong("replaces"));
            button type="submit" { "Add token" }
        }
    })
}

/// One thing that blocks a removal.
pub struct Blocker {
    /// `BINDING` or `RECENT_CALLER`.
    pub kind: String,
    /// The binding or caller.
    pub subject: String,
    /// Why it blocks.
    pub description: String,
}

/// The Remove page's content.
pub struct RemovalView {
    /// The token.
    pub token: Token,
    /// What blocks its removal.
    pub blockers: Vec<Blocker>,
}

/// Why the Remove page is shown again.
pub enum RemoveError<'a> {
    /// "Remove anyway" without the token id typed.
    NotConfirmed,
    /// The server's guard refused.
    Refused(&'a Failure),
}

/// The Remove page: blockers first; removing anyway needs the token id typed.
pub fn remove(page: &Page<'_>, view: &RemovalView, error: Option<RemoveError<'_>>) -> Html<String> {
    let token = &view.token;
    let href = page.token_href(&token.token_id);
    let blocked = !view.blockers.is_empty();
    page.render(html! {
        (card(page, token))
        @match error {
            Some(RemoveError::NotConfirmed) => div.error role="alert" {
                p { "Type the token id " code { (token.token_id) } " to remove it anyway." }
            },
            Some(RemoveError::Refused(failure)) => (failure_box(failure)),
            None => {},
        }
        @if blocked {
            h2 { "In use: removing it may break these" }
            ul.blockers {
                @for b in &view.blockers {
                    li { strong { (b.kind) } " " code { (b.subject) } " — " (b.description) }
                }
            }
        } @else {
            p.ok { "No bindings name this token and no caller resolved it recently." }
        }
        form.stacked method="post" action={ (href) "/remove" } {
            (page.csrf())
            input type="hidden" name="etag" value=(token.etag);
            @if blocked {
                input type="hidden" name="force" value="1";
                input type="hidden" name="blockers" value=(view.blockers.len());
                label for="confirm" { "Type the token id (" (token.token_id) ") to remove it anyway" }
                input #confirm name="confirm" required autocomplete="off" data-must-equal=(token.token_id);
                button.danger type="submit" { "Remove anyway" }
            } @else {
                button.danger type="submit" { "Remove" }
            }
        }
        p { a href=(href) { "Cancel" } }
    })
}

/// After a removal.
pub fn removed(page: &Page<'_>, tenant: &str, id: &str, forced: Option<usize>) -> Html<String> {
    page.render(html! {
        p.flash role="status" {
            "Removed " code { "tenants/" (tenant) "/tokens/" (id) } " and its encrypted value"
            @if let Some(n) = forced { ", with force despite " (n) " blocker(s); its bindings were deleted too" }
            ". The removal is in the audit trail."
        }
        p { a href={ (page.base()) "/tokens" } { "Back to the tokens" } }
    })
}

/// Disable / Enable confirmation.
pub fn confirm_state(page: &Page<'_>, token: &Token, disable: bool) -> Html<String> {
    let href = page.token_href(&token.token_id);
    page.render(html! {
        (card(page, token))
        p {
            @if disable {
                "Disable " strong { (token.token_id) } "? Every resolve of it fails until it is enabled again."
            } @else {
                "Enable " strong { (token.token_id) } "? Callers can resolve it again."
            }
        }
        form.inline method="post" action={ (href) "/state" } {
            (page.csrf())
            input type="hidden" name="etag" value=(token.etag);
            input type="hidden" name="to" value=(if disable { "disable" } else { "enable" });
            button.danger[disable] type="submit" { (if disable { "Disable" } else { "Enable" }) }
            a href=(href) { "Cancel" }
        }
    })
}

/// The Replace flow's live view of the old token.
pub fn replacement(page: &Page<'_>, token: &Token, status: &ReplacementStatus) -> Html<String> {
    let href = page.token_href(&token.token_id);
    let window_h = status.window.as_ref().map_or(24, |w| w.seconds / 3600);
    page.render(html! {
        section #live data-live-refresh="2000" aria-live="polite" {
            ol.steps {
                li.done { "Create the new token with \"replaces\"" }
                li.current[!status.ready_to_remove] { "Move every caller to the new token" }
                li.current[status.ready_to_remove] { "Remove the old token" }
            }
            @if status.replaced_by.is_empty() {
                p { (token.token_id) " is not replaced. " a href={ (page.base()) "/new?replaces=" (seg(&token.token_id)) } { "Replace it" } }
            } @else {
                p {
                    a href=(href) { (token.token_id) } " is replaced by "
                    a href=(page.token_href(id_of(&status.replaced_by))) { (id_of(&status.replaced_by)) } "."
                }
                @if status.callers_not_switched.is_empty() {
                    p.ok { "No caller resolved the old token since it was replaced (within " (window_h) " h)." }
                } @else {
                    h2 { "Callers not switched yet" }
                    ul.not-switched {
                        @for caller in &status.callers_not_switched { li { code { (caller) } } }
                    }
                    p { "Last resolve of the old token: " (time(status.last_superseded_resolve_time.as_ref())) }
                }
                form.inline method="post" action={ (href) "/remove" } {
                    (page.csrf())
                    input type="hidden" name="etag" value=(token.etag);
                    button.danger type="submit" disabled[!status.ready_to_remove] { "Remove old token" }
                }
                @if !status.ready_to_remove {
                    p.note {
                        "Enabled once no caller resolved the old token for " (window_h) " h. "
                        a href={ (href) "/remove" } { "Remove anyway…" }
                    }
                }
            }
        }
    })
}
