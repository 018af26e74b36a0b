//! `aitokens console`: a local web console for the admin API, in the manner
//! of `kubectl proxy`.
//!
//! It listens on 127.0.0.1 only and calls the admin listener with the admin
//! identity of the profile, so it can do exactly what that identity can do.
//! It never calls ResolveToken and never renders a token value: the Add form's
//! value goes into one CreateToken request and is dropped (zeroized) after it.
//!
//! Who may use it: whoever opens the one-time login URL it prints
//! ([`session`]). Every request must name this console in `Host` (no DNS
//! rebinding); every state-changing request must come from a page of the
//! console (`Origin`, `Sec-Fetch-Site`) and carry the session's CSRF token.
//! Every response carries a strict Content-Security-Policy and `no-store`.

mod form;
mod handlers;
mod pages;
mod session;

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::ExitCode,
    sync::Arc,
};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Args;
use tonic::transport::Channel;

use super::{
    connect::{ConnectArgs, Surface},
    output::OutputFormat,
    report::CliError,
};
use crate::api::pb::token_admin_client::TokenAdminClient;
use session::Sessions;

/// The Content-Security-Policy of every response: only this console's own
/// files, no inline script or style, no framing, forms post only here.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Options of `aitokens console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Where the console listens: 127.0.0.1 only (port 0 picks a free port,
    /// printed at start).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "127.0.0.1:PORT")]
    addr: SocketAddr,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// What every handler shares.
pub struct Console {
    /// The TokenAdmin client, with the profile's admin identity.
    admin: TokenAdminClient<Channel>,
    /// The admin listener's address (for error hints).
    admin_addr: String,
    sessions: Sessions,
    /// `127.0.0.1:PORT` and `localhost:PORT`: the only `Host`s accepted
    /// (and, after `http://`, the only `Origin` of a post to that host).
    hosts: [String; 2],
}

type Shared = Arc<Console>;

/// Runs the console until Ctrl-C or SIGTERM.
pub async fn run(args: ConsoleArgs) -> ExitCode {
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report_of(OutputFormat::Table, "console"),
    }
}

async fn serve(args: ConsoleArgs) -> Result<(), CliError> {
    check_addr(args.addr)?;
    let target = args.connect.target(Surface::Admin)?;
    let channel = target.connect().await?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| CliError::Local(format!("--addr {}: cannot listen: {e}", args.addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Local(format!("--addr {}: {e}", args.addr)))?;
    let (sessions, code) = Sessions::new();
    let console = Arc::new(Console {
        admin: TokenAdminClient::new(channel),
        admin_addr: target.addr.clone(),
        sessions,
        hosts: [local.to_string(), format!("localhost:{}", local.port())],
    });
    println!("aitokens console for the admin listener at {}", target.addr);
    println!("console  http://{local}/");
    println!("login    http://{local}/login?code={code}");
    println!("Open the login URL once (it works once); Ctrl-C stops the console.");
    axum::serve(listener, router(console))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|e| CliError::Local(format!("serving the console: {e}")))
}

/// The console listens on 127.0.0.1 only: anyone who reaches it acts with
/// the admin identity once logged in, and the login URL travels in clear.
fn check_addr(addr: SocketAddr) -> Result<(), CliError> {
    if addr.ip() == std::net::IpAddr::V4(Ipv4Addr::LOCALHOST) {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "--addr {addr}: the console listens on 127.0.0.1 only (it acts with the admin \
         identity and its login URL is plain HTTP); use --addr 127.0.0.1:PORT and, to reach \
         it from elsewhere, an SSH tunnel"
    )))
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/login", get(handlers::login))
        .route("/static/console.css", get(handlers::css))
        .route("/static/console.js", get(handlers::js))
        .route("/static/favicon.svg", get(handlers::favicon))
        .route("/", get(handlers::home))
        .route("/tenants", get(handlers::pick_tenant))
        .route("/tenants/{tenant}/tokens", get(handlers::cards))
        .route(
            "/tenants/{tenant}/new",
            get(handlers::new_form).post(handlers::create),
        )
        .route("/tenants/{tenant}/audit", get(handlers::audit))
        .route("/tenants/{tenant}/tokens/{id}", get(handlers::detail))
        .route(
            "/tenants/{tenant}/tokens/{id}/rename",
            axum::routing::post(handlers::rename),
        )
        .route(
            "/tenants/{tenant}/tokens/{id}/remove",
            get(handlers::remove_page).post(handlers::remove),
        )
        .route(
            "/tenants/{tenant}/tokens/{id}/state",
            get(handlers::state_page).post(handlers::set_state),
        )
        .route(
            "/tenants/{tenant}/tokens/{id}/replacement",
            get(handlers::replacement),
        )
        .fallback(handlers::not_found)
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .layer(middleware::from_fn(hygiene))
        .with_state(console)
}

/// Why the guard refused a request: the status and a short reason, which
/// the refusal page shows (and tests assert).
#[derive(Clone, Copy, Debug)]
pub enum Refusal {
    /// `Host` is not this console (DNS rebinding, or a proxy).
    WrongHost,
    /// No session cookie, or an expired or unknown one.
    NoSession,
    /// A post whose `Origin` is another site.
    ForeignOrigin,
    /// A post that `Sec-Fetch-Site` says another site started.
    CrossSite,
    /// A post without the form's CSRF token.
    CsrfMissing,
    /// A post with a CSRF token that is not the session's.
    CsrfWrong,
    /// A login URL without a code.
    LoginCodeMissing,
    /// A login code that is not the printed one, expired, or was used already.
    LoginCodeStale,
    /// A method the console does not serve.
    Method,
    /// A form body over the limit, or not a form.
    BadForm,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Self::WrongHost | Self::BadForm => StatusCode::BAD_REQUEST,
            Self::NoSession | Self::LoginCodeMissing | Self::LoginCodeStale => {
                StatusCode::UNAUTHORIZED
            }
            Self::ForeignOrigin | Self::CrossSite | Self::CsrfMissing | Self::CsrfWrong => {
                StatusCode::FORBIDDEN
            }
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The reason, as shown on the page.
    pub fn reason(self) -> &'static str {
        match self {
            Self::WrongHost => "the Host header does not name this console",
            Self::NoSession => "not logged in: open the login URL that `aitokens console` printed",
            Self::ForeignOrigin => "the request comes from another origin",
            Self::CrossSite => "the request was started by another site (Sec-Fetch-Site)",
            Self::CsrfMissing => "the form has no CSRF token",
            Self::CsrfWrong => "the form's CSRF token is not this session's: reload the page",
            Self::LoginCodeMissing => "the login URL has no code",
            Self::LoginCodeStale => {
                "the login code is unknown, expired or was used already: it works once, \
                 within 10 minutes; restart `aitokens console` for a new one"
            }
            Self::Method => "method not allowed",
            Self::BadForm => "the form could not be read",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status(), pages::refusal(self.reason())).into_response()
    }
}

/// Host, session and (on posts) origin checks, before any handler runs.
async fn guard(State(console): State<Shared>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let Some(host) = host.filter(|host| console.hosts.iter().any(|ours| ours == host)) else {
        return Refusal::WrongHost.into_response();
    };
    // A page served as http://HOST posts with that origin.
    let origin = format!("http://{host}");
    let path = request.uri().path();
    let public = path == "/login" || path.starts_with("/static/");
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        return Refusal::Method.into_response();
    }
    if public && method == Method::GET {
        return next.run(request).await;
    }
    let cookie = headers.get(header::COOKIE).and_then(|h| h.to_str().ok());
    let Some((id, session)) = console.sessions.find(cookie) else {
        return Refusal::NoSession.into_response();
    };
    if method == Method::POST
        && let Err(refusal) = same_origin(headers, &origin)
    {
        return refusal.into_response();
    }
    request
        .extensions_mut()
        .insert(handlers::Visitor { id, session });
    next.run(request).await
}

/// A post must not come from another site. Browsers send `Origin` on every
/// POST and `Sec-Fetch-Site` with it; a client that sends neither (curl)
/// still needs the session cookie and the CSRF token.
fn same_origin(headers: &HeaderMap, origin: &str) -> Result<(), Refusal> {
    if let Some(given) = headers.get(header::ORIGIN)
        && given.as_bytes() != origin.as_bytes()
    {
        return Err(Refusal::ForeignOrigin);
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(Refusal::CrossSite);
    }
    Ok(())
}

/// The headers every response carries.
async fn hygiene(request: Request, next: Next) -> Response {
    // The login URL carries the code: nothing is ever sent a referrer from
    // it (on success it is only a redirect, never a page). Elsewhere not
    // `no-referrer`: under it browsers send `Origin: null` on form posts, and
    // the origin check could not tell the console's own forms from a
    // sandboxed frame's; `same-origin` sends no referrer to any other site.
    let referrer = if request.uri().path() == "/login" {
        "no-referrer"
    } else {
        "same-origin"
    };
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, referrer),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_127_0_0_1_is_accepted() {
        for ok in ["127.0.0.1:8080", "127.0.0.1:0"] {
            assert!(check_addr(ok.parse().expect("addr")).is_ok(), "{ok}");
        }
        for refused in ["0.0.0.0:8080", "10.0.0.1:80", "[::]:8080", "127.0.0.2:8080"] {
            match check_addr(refused.parse().expect("addr")) {
                Err(CliError::Usage(message)) => {
                    assert!(message.starts_with("--addr "), "{message}");
                }
                other => panic!("{refused}: {other:?}"),
            }
        }
    }
}
