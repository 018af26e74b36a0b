//! `aitokens console` against a real `aitokens dev`: the flows of issue 16 in
//! headless Chromium (tests/browser/console.js), the refusals of the login,
//! CSRF and origin checks over plain HTTP, the loopback-only `--addr`, and
//! the cards page at 10,000 tokens.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aitokens::api::pb::{
    CreateTokenBindingRequest, GetTokenRequest, TokenBinding, token_admin_client::TokenAdminClient,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tonic::Code;

use crate::{
    binary::{self, Dev, start_dev},
    common::create_request,
};

/// The CSP every response must carry.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// A running `aitokens console`, killed when dropped.
struct Console {
    child: Child,
    addr: SocketAddr,
    login_url: String,
    /// Drains stdout and stderr (returned at [`Console::stop`]).
    output: Vec<std::thread::JoinHandle<String>>,
}

impl Console {
    fn start(dev_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aitokens"))
            .args(["console", "--addr", "127.0.0.1:0", "--profile"])
            .arg(dev_dir.join("profile.toml"))
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aitokens console");
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut printed = String::new();
        let login_url = loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).expect("console stdout");
            assert!(n > 0, "the console exited before printing its login URL");
            printed.push_str(&line);
            if let Some(url) = line.trim().strip_prefix("login    ") {
                break url.to_owned();
            }
        };
        let stdout = std::thread::spawn(move || {
            let mut text = printed;
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let addr = login_url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .expect("the login URL names 127.0.0.1:PORT");
        Self {
            child,
            addr,
            login_url,
            output: vec![stdout, stderr],
        }
    }

    /// Stops the console; returns everything it printed.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.output)
            .into_iter()
            .map(|reader| reader.join().expect("output reader"))
            .collect()
    }

    fn code(&self) -> &str {
        self.login_url
            .split_once("code=")
            .map(|(_, code)| code)
            .expect("code")
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dev server killed if the test fails before stopping it.
struct DevGuard(Option<Dev>);

impl DevGuard {
    fn dev(&self) -> &Dev {
        self.0.as_ref().expect("dev running")
    }

    async fn stop(mut self) -> String {
        binary::stop(self.0.take().expect("dev running")).await
    }
}

impl Drop for DevGuard {
    fn drop(&mut self) {
        if let Some(dev) = &mut self.0 {
            let _ = dev.child.kill();
            let _ = dev.child.wait();
        }
    }
}

/// A post that must be refused: what it is, its headers and body, the
/// status and the reason expected.
type RefusedPost<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);

/// One HTTP/1.1 exchange with the console.
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

/// Sends `method path` with `headers` (Host is added unless given) and a
/// form `body`; plain HTTP/1.1 over a fresh connection.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let mut request = hyper::Request::builder().method(method).uri(path);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request = request.header("host", addr.to_string());
    }
    if method == "POST" {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The value of `name="csrf"` in a page.
fn csrf_of(page: &str) -> String {
    let start = page
        .find("name=\"csrf\" value=\"")
        .expect("the page has a form with a CSRF token")
        + "name=\"csrf\" value=\"".len();
    page[start..].split('"').next().expect("csrf").to_owned()
}

/// Logs in with the code; returns the `Cookie` header and the CSRF token.
async fn log_in(console: &Console) -> (String, String) {
    let reply = http(
        console.addr,
        "GET",
        &format!("/login?code={}", console.code()),
        &[],
        "",
    )
    .await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let set_cookie = reply.headers["set-cookie"].to_str().expect("ascii");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().expect("cookie").to_owned();
    let page = http(
        console.addr,
        "GET",
        "/tenants/acme/new",
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    (cookie.clone(), csrf_of(&page.body))
}

/// Asserts a refusal: its status and the reason on its page.
fn assert_refused(reply: &Reply, status: u16, reason: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    assert!(
        reply.body.contains(reason),
        "{what}: expected {reason:?} in {}",
        reply.body
    );
}

async fn token_exists(dir: &Path, dev: &Dev, id: &str) -> bool {
    let mut admin = TokenAdminClient::new(binary::channel(dir, dev.admin, "admin").await);
    match admin
        .get_token(GetTokenRequest {
            name: format!("tenants/acme/tokens/{id}"),
        })
        .await
    {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("GetToken {id}: {status:?}"),
    }
}

#[test]
fn console_refuses_a_non_loopback_addr() {
    for addr in ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:8080"] {
        let output = Command::new(env!("CARGO_BIN_EXE_aitokens"))
            .args(["console", "--addr", addr])
            .stdin(Stdio::null())
            .output()
            .expect("run aitokens console");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{addr}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "--addr {addr}: the console listens on 127.0.0.1 only"
            )),
            "{addr}: {stderr}"
        );
        assert!(
            stderr.contains("what to do: see `aitokens console --help`"),
            "{addr}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "nothing served: {addr}");
    }
}

#[tokio::test]
async fn console_refuses_requests_without_login_csrf_or_own_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevGuard(Some(start_dev(dir.path())));
    let console = Console::start(dir.path());
    let addr = console.addr;
    let origin = format!("http://{addr}");
    let value = "sk-console-refusal-3f9a1c";
    let form = |id: &str, csrf: &str| {
        format!("csrf={csrf}&token_id={id}&display_name=x&value={value}&replaces=")
    };

    // No session: no page, no post.
    let reply = http(addr, "GET", "/", &[], "").await;
    assert_refused(&reply, 401, "not logged in", "GET / without a session");
    assert_eq!(reply.headers["content-security-policy"], CSP);
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    assert_eq!(reply.headers["referrer-policy"], "same-origin");
    assert_eq!(reply.headers["x-frame-options"], "DENY");
    let reply = http(
        addr,
        "POST",
        "/tenants/acme/new",
        &[],
        &form("no-login", "x"),
    )
    .await;
    assert_refused(&reply, 401, "not logged in", "POST without a session");
    let reply = http(
        addr,
        "GET",
        "/",
        &[("cookie", "aitokens_console=forged")],
        "",
    )
    .await;
    assert_refused(&reply, 401, "not logged in", "a forged session cookie");

    // The login code: missing, wrong, then used once and stale.
    let reply = http(addr, "GET", "/login", &[], "").await;
    assert_refused(&reply, 401, "the login URL has no code", "no code");
    let reply = http(addr, "GET", "/login?code=0123abcd", &[], "").await;
    assert_refused(
        &reply,
        401,
        "unknown, expired or was used already",
        "a wrong code",
    );
    let (cookie, csrf) = log_in(&console).await;
    let reply = http(addr, "GET", "/login?code=x", &[], "").await;
    assert_eq!(reply.headers["referrer-policy"], "no-referrer");
    let reply = http(
        addr,
        "GET",
        &format!("/login?code={}", console.code()),
        &[],
        "",
    )
    .await;
    assert_refused(
        &reply,
        401,
        "unknown, expired or was used already",
        "a reused code",
    );
    assert!(reply.headers.get("set-cookie").is_none());

    // Another Host (DNS rebinding) is refused even with the session.
    let reply = http(
        addr,
        "GET",
        "/",
        &[("host", "evil.example:80"), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_refused(
        &reply,
        400,
        "Host header does not name this console",
        "Host",
    );
    let localhost = format!("localhost:{}", addr.port());
    let reply = http(
        addr,
        "GET",
        "/",
        &[("host", &localhost), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "localhost:PORT is this console too");

    // Posts: CSRF token and origin.
    let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1).max(1));
    let cases: [RefusedPost<'_>; 7] = [
        (
            "no CSRF token",
            vec![("cookie", &cookie), ("origin", &origin)],
            form("no-csrf", ""),
            403,
            "the form has no CSRF token",
        ),
        (
            "a wrong CSRF token",
            vec![("cookie", &cookie), ("origin", &origin)],
            form("wrong-csrf", "0000"),
            403,
            "CSRF token is not this session's",
        ),
        (
            "a foreign Origin",
            vec![("cookie", &cookie), ("origin", "http://evil.example")],
            form("foreign-origin", &csrf),
            403,
            "the request comes from another origin",
        ),
        (
            "a cross-site Sec-Fetch-Site",
            vec![("cookie", &cookie), ("sec-fetch-site", "cross-site")],
            form("cross-site", &csrf),
            403,
            "started by another site",
        ),
        (
            "an Origin on another port of this machine (same site, not same origin)",
            vec![("cookie", &cookie), ("origin", &other_port)],
            form("other-port", &csrf),
            403,
            "the request comes from another origin",
        ),
        (
            "a same-site Sec-Fetch-Site (another port)",
            vec![("cookie", &cookie), ("sec-fetch-site", "same-site")],
            form("same-site", &csrf),
            403,
            "started by another site",
        ),
        (
            "a null Origin (sandboxed frame)",
            vec![("cookie", &cookie), ("origin", "null")],
            form("null-origin", &csrf),
            403,
            "the request comes from another origin",
        ),
    ];
    for (what, headers, body, status, reason) in &cases {
        let reply = http(addr, "POST", "/tenants/acme/new", headers, body).await;
        assert_refused(&reply, *status, reason, what);
        assert!(!reply.body.contains(value), "{what}: the value came back");
    }
    for id in [
        "no-login",
        "no-csrf",
        "wrong-csrf",
        "foreign-origin",
        "cross-site",
        "other-port",
        "same-site",
        "null-origin",
    ] {
        assert!(
            !token_exists(dir.path(), dev.dev(), id).await,
            "{id} was created by a refused request"
        );
    }

    // The same post from the console's own page goes through.
    let reply = http(
        addr,
        "POST",
        "/tenants/acme/new",
        &[
            ("cookie", &cookie),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
        ],
        &form("accepted", &csrf),
    )
    .await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert_eq!(
        reply.headers["location"],
        "/tenants/acme/tokens/accepted?done=created"
    );
    assert!(token_exists(dir.path(), dev.dev(), "accepted").await);
    // And from the same page opened as http://localhost:PORT.
    let reply = http(
        addr,
        "POST",
        "/tenants/acme/new",
        &[
            ("host", &localhost),
            ("cookie", &cookie),
            ("origin", &format!("http://{localhost}")),
            ("sec-fetch-site", "same-origin"),
        ],
        &form("via-localhost", &csrf),
    )
    .await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert!(token_exists(dir.path(), dev.dev(), "via-localhost").await);

    let printed = console.stop();
    let logs = dev.stop().await;
    assert!(!printed.contains(value) && !logs.contains(value));
}

/// The delete guard through the console: a removal without force that the
/// server refuses shows its blockers, with the status, reason and request id;
/// removing anyway without the token id typed is refused before any call.
#[tokio::test]
async fn the_tenant_picker_lists_the_tenants_the_admin_identity_manages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevGuard(Some(start_dev(dir.path())));
    let mut admin =
        TokenAdminClient::new(binary::channel(dir.path(), dev.dev().admin, "admin").await);
    for tenant in ["globex", "acme"] {
        admin
            .create_token(create_request(tenant, "picker", "sk-console-picker-7c2a"))
            .await
            .expect("create");
    }
    let console = Console::start(dir.path());
    let (cookie, _) = log_in(&console).await;
    let page = http(console.addr, "GET", "/", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    // The dev admin's grant covers every tenant: both tenants that hold a
    // token, in order, and the form for one that holds none yet.
    let acme = page
        .body
        .find(r#"<a href="/tenants/acme/tokens">acme</a>"#)
        .expect("acme is listed");
    let globex = page
        .body
        .find(r#"<a href="/tenants/globex/tokens">globex</a>"#)
        .expect("globex is listed");
    assert!(acme < globex, "in order: {}", page.body);
    assert!(
        page.body.contains("Your grant covers every tenant"),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"action="/tenants""#), "{}", page.body);
}

#[tokio::test]
async fn console_remove_shows_the_guards_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevGuard(Some(start_dev(dir.path())));
    let mut admin =
        TokenAdminClient::new(binary::channel(dir.path(), dev.dev().admin, "admin").await);
    admin
        .create_token(create_request("acme", "bound", "sk-console-guard-5e1d"))
        .await
        .expect("create");
    admin
        .create_token_binding(CreateTokenBindingRequest {
            parent: "tenants/acme/tokens/bound".into(),
            binding_id: "billing".into(),
            binding: Some(TokenBinding {
                purpose: "monthly invoices".into(),
                ..TokenBinding::default()
            }),
        })
        .await
        .expect("bind");
    let console = Console::start(dir.path());
    let (cookie, csrf) = log_in(&console).await;
    let origin = format!("http://{}", console.addr);
    let headers = [("cookie", cookie.as_str()), ("origin", origin.as_str())];
    let path = "/tenants/acme/tokens/bound/remove";

    let reply = http(
        console.addr,
        "POST",
        path,
        &headers,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    for expected in [
        "FailedPrecondition",
        "TOKEN_IN_USE",
        "BINDING",
        "tenants/acme/tokens/bound/bindings/billing",
        "monthly invoices",
        "remove it anyway by typing its id",
        "Request id: <code>console-",
        "Remove anyway",
    ] {
        assert!(reply.body.contains(expected), "{expected}: {}", reply.body);
    }
    let reply = http(
        console.addr,
        "POST",
        path,
        &headers,
        &format!("csrf={csrf}&force=1&confirm=not-the-id"),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("to remove it anyway"), "{}", reply.body);
    assert!(token_exists(dir.path(), dev.dev(), "bound").await);

    let reply = http(
        console.addr,
        "POST",
        path,
        &headers,
        &format!("csrf={csrf}&force=1&confirm=bound&blockers=1"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("with force despite 1 blocker(s)"),
        "{}",
        reply.body
    );
    assert!(!token_exists(dir.path(), dev.dev(), "bound").await);
    drop(console);
    dev.stop().await;
}

#[tokio::test]
async fn console_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevGuard(Some(start_dev(dir.path())));
    let console = Console::start(dir.path());
    let values: Vec<String> = (0..4)
        .map(|i| format!("sk-console-{i}-{:016x}", fastrand::u64(..)))
        .collect();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let screenshots = screenshot_dir();
    let node_modules = browser_dir.join("node_modules/playwright-core");
    assert!(
        node_modules.exists(),
        "run `npm ci --prefix tests/browser` first (.ci/run does)"
    );
    let output = tokio::task::spawn_blocking({
        let (login, values, shots) = (
            console.login_url.clone(),
            values.join(","),
            screenshots.clone(),
        );
        let profile = dir.path().join("profile.toml");
        move || {
            Command::new("node")
                .arg(browser_dir.join("console.js"))
                .env("CONSOLE_LOGIN_URL", login)
                .env("CONSOLE_VALUES", values)
                .env("AITOKENS_BIN", env!("CARGO_BIN_EXE_aitokens"))
                .env("AITOKENS_PROFILE", profile)
                .env("SCREENSHOT_DIR", shots)
                .stdin(Stdio::null())
                .output()
                .expect("run node tests/browser/console.js")
        }
    })
    .await
    .expect("node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let results: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no results from the browser\n{stdout}\n{stderr}"));
    assert!(
        output.status.success() && results["failure"].is_null(),
        "browser flow failed: {}\n{stderr}",
        results["failure"]
    );
    let steps = results["steps"].as_array().expect("steps");
    // Every flow of tests/browser/console.js ran (it stops at the first failure).
    assert_eq!(steps.len(), 21, "steps: {steps:?}");
    assert!(results["responses"].as_u64().expect("responses") > 50);
    assert_eq!(
        results["value_hits"],
        serde_json::json!([]),
        "a token value came back in a response"
    );
    assert_eq!(results["dialogs"], serde_json::json!([]), "a script ran");
    assert_eq!(
        results["console_errors"],
        serde_json::json!([]),
        "errors in the browser console (a CSP violation?)"
    );
    for shot in ["cards", "replace-flow", "cards-360px"] {
        let file = screenshots.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&file).is_ok_and(|m| m.len() > 1000),
            "{file:?}"
        );
    }

    let printed = console.stop();
    let logs = dev.stop().await;
    for value in &values {
        assert!(
            !printed.contains(value.as_str()),
            "the console printed a value"
        );
        assert!(!logs.contains(value.as_str()), "the server logged a value");
    }
}

/// `target/console-screenshots/`: the CI artifact folder of the browser test.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("console-screenshots")
}

/// Page loads of the cards at 10,000 tokens: first page, next page, and a
/// search that reads every page. Prints the figures. `scripts/test` runs it on
/// the SQLite pass only (it names the skip on the PostgreSQL pass):
/// creating the tokens through the API takes a minute in a debug build, and
/// the console adds the same cost on top of either store's ListTokens.
#[tokio::test]
async fn console_cards_at_10000_tokens() {
    const TOKENS: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = DevGuard(Some(start_dev(dir.path())));
    let channel = binary::channel(dir.path(), dev.dev().admin, "admin").await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut admin = TokenAdminClient::new(channel.clone());
        tasks.spawn(async move {
            for i in (worker..TOKENS).step_by(8) {
                admin
                    .create_token(create_request("bulk", &format!("t{i:05}"), "sk-bulk-value"))
                    .await
                    .expect("create");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("creator");
    }
    eprintln!("created {TOKENS} tokens in {:?}", started.elapsed());
    let console = Console::start(dir.path());
    let (cookie, _) = log_in(&console).await;
    let load = |path: String| {
        let cookie = cookie.clone();
        async move {
            let started = Instant::now();
            let reply = http(console.addr, "GET", &path, &[("cookie", &cookie)], "").await;
            let elapsed = started.elapsed();
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            (reply.body, elapsed)
        }
    };
    // Warm up the connection to the admin listener.
    load("/tenants/bulk/tokens".into()).await;
    let (first, first_ms) = load("/tenants/bulk/tokens".into()).await;
    assert_eq!(first.matches("<article class=\"card\"").count(), 50);
    let next = first
        .split("rel=\"next\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a next page link")
        .replace("&amp;", "&");
    let (second, next_ms) = load(next).await;
    let ids = |page: &str| -> Vec<String> {
        page.split("data-token-id=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_owned))
            .collect()
    };
    let (page_1, page_2) = (ids(&first), ids(&second));
    assert_eq!(page_2.len(), 50, "a full second page");
    assert!(
        page_2.iter().all(|id| !page_1.contains(id)),
        "page 2 repeats page 1: {page_1:?} {page_2:?}"
    );
    let (found, last_ms) = load("/tenants/bulk/tokens?q=t09999".into()).await;
    assert_eq!(found.matches("<article class=\"card\"").count(), 1);
    let (none, none_ms) = load("/tenants/bulk/tokens?q=no-such-token".into()).await;
    assert!(none.contains("No tokens match this search"));
    drop(console);

    // The same pages in Chromium: request start to the load event.
    let console = Console::start(dir.path());
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let login = console.login_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(browser_dir.join("timing.js"))
            .env("CONSOLE_LOGIN_URL", login)
            .env("CONSOLE_TENANT", "bulk")
            .stdin(Stdio::null())
            .output()
            .expect("run node tests/browser/timing.js")
    })
    .await
    .expect("node");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let browser: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("timings from the browser");
    assert_eq!(browser["cards"], 50, "{browser}");
    let report = format!(
        "console cards at {TOKENS} tokens, whole HTTP response: first page {first_ms:?}, \
         next page {next_ms:?}, search finding the last token {last_ms:?}, search finding none \
         {none_ms:?}; in Chromium, request to load event: first page {} ms, next page {} ms, \
         search finding the last token {} ms, search finding none {} ms",
        browser["first_page_ms"],
        browser["next_page_ms"],
        browser["search_last_ms"],
        browser["search_none_ms"]
    );
    eprintln!("{report}");
    // Kept with the screenshots (CI's artifacts).
    let figures = screenshot_dir();
    std::fs::create_dir_all(&figures).expect("artifact folder");
    std::fs::write(
        figures.join("cards-at-10000-tokens.txt"),
        format!("{report}\n"),
    )
    .expect("write the figures");
    for (what, time) in [("first page", first_ms), ("next page", next_ms)] {
        assert!(time < Duration::from_secs(1), "{what} took {time:?}");
    }
    for (what, time) in [("search", last_ms), ("empty search", none_ms)] {
        assert!(time < Duration::from_secs(5), "{what} took {time:?}");
    }
    drop(console);
    dev.stop().await;
}
