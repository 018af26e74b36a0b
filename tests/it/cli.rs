//! The `aitokens token ...` client against a real server: profile, flags
//! and environment; table and JSON output; values only from stdin, a file or
//! a prompt; errors with code, field and hint; shell completions.

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use aitokens::cli::{DEV_PROFILE, Profile};
use serde_json::Value;

use crate::{binary, common::TestServer};

/// Every environment variable the client reads, removed so that the
/// developer's own settings cannot change a test.
pub const CLIENT_ENV: [&str; 12] = [
    "AITOKENS_PROFILE",
    "AITOKENS_ADMIN_ADDR",
    "AITOKENS_INTERNAL_ADDR",
    "AITOKENS_CA",
    "AITOKENS_CERT",
    "AITOKENS_KEY",
    "AITOKENS_SERVER_NAME",
    "AITOKENS_TIMEOUT",
    "AITOKENS_TENANT",
    "AITOKENS_OUTPUT",
    "AITOKENS_LOG_FORMAT",
    "RUST_LOG",
];

/// An `aitokens` command run in `cwd` with a clean client environment.
pub fn aitokens(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aitokens"));
    command.current_dir(cwd).args(args);
    for var in CLIENT_ENV {
        command.env_remove(var);
    }
    command
}

/// Runs `command` off the async executor (the server runs on it), feeding
/// `stdin`, and returns its output.
pub async fn run(mut command: Command, stdin: &[u8]) -> Output {
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aitokens");
        let mut pipe = child.stdin.take().expect("stdin");
        match pipe.write_all(&stdin) {
            // A command that does not read its stdin may exit first.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.expect("write stdin"),
        }
        drop(pipe);
        child.wait_with_output().expect("wait")
    })
    .await
    .expect("command task")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A server plus a profile for it, written where `--profile` can name it.
async fn server_with_profile() -> (TestServer, String) {
    let server = TestServer::start().await;
    let path = server.path(DEV_PROFILE);
    Profile::for_dev(server.admin_addr, server.internal_addr)
        .write(&path)
        .expect("write profile");
    (server, path.display().to_string())
}

/// `aitokens token ARGS --profile PROFILE` in an empty directory.
fn token(cwd: &Path, profile: &str, args: &[&str]) -> Command {
    let mut command = aitokens(cwd, &["token"]);
    command.args(args).args(["--profile", profile]);
    command
}

#[tokio::test]
async fn cli_round_trip_table_and_json() {
    let (_server, profile) = server_with_profile().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path();
    let value = "sk-cli-canary-5d1e0b7a";

    // Create, the value on stdin (with the newline `echo` would add).
    let out = run(
        token(
            cwd,
            &profile,
            &[
                "create",
                "--tenant",
                "acme",
                "openai-prod",
                "--display-name",
                "OpenAI production",
            ],
        ),
        format!("{value}\n").as_bytes(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created = text(&out.stdout);
    assert!(
        created.contains("tenants/acme/tokens/openai-prod"),
        "{created}"
    );
    assert!(created.contains("OpenAI production"), "{created}");

    // Create from a file, JSON output.
    let file = cwd.join("value.txt");
    std::fs::write(&file, "sk-from-file-9c4d\n").expect("write value file");
    let out = run(
        token(
            cwd,
            &profile,
            &[
                "create",
                "--tenant",
                "acme",
                "anthropic",
                "--value-file",
                "value.txt",
                "-o",
                "json",
            ],
        ),
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).expect("create JSON");
    assert_eq!(created["name"], "tenants/acme/tokens/anthropic");
    assert_eq!(
        created["display_name"], "anthropic",
        "display name defaults to the id"
    );
    let etag = created["etag"].as_str().expect("etag").to_owned();

    // List: a table for people, JSON for scripts.
    let out = run(token(cwd, &profile, &["list", "--tenant", "acme"]), b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "header and two rows: {table}");
    assert!(
        lines[0].starts_with("TOKEN ID") && lines[0].contains("ETAG"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("openai-prod ") && lines[2].starts_with("anthropic "),
        "{table}"
    );
    let out = run(
        token(
            cwd,
            &profile,
            &[
                "list",
                "--tenant",
                "acme",
                "--output",
                "json",
                "--page-size",
                "1",
            ],
        ),
        b"",
    )
    .await;
    let listed: Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    let ids: Vec<&str> = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["token_id"].as_str().expect("token_id"))
        .collect();
    assert_eq!(ids, ["openai-prod", "anthropic"], "every page, in order");

    // Resolve: the bare value (and a newline), or JSON.
    let out = run(
        token(
            cwd,
            &profile,
            &["resolve", "--tenant", "acme", "openai-prod"],
        ),
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{value}\n"));
    let out = run(
        token(
            cwd,
            &profile,
            &["resolve", "tenants/acme/tokens/anthropic", "-o", "json"],
        ),
        b"",
    )
    .await;
    let resolved: Value = serde_json::from_slice(&out.stdout).expect("resolve JSON");
    assert_eq!(resolved["value"], "sk-from-file-9c4d");
    assert_eq!(resolved["name"], "tenants/acme/tokens/anthropic");

    // Get, rename with the etag, remove.
    let out = run(
        token(
            cwd,
            &profile,
            &["get", "--tenant", "acme", "anthropic", "-o", "json"],
        ),
        b"",
    )
    .await;
    let got: Value = serde_json::from_slice(&out.stdout).expect("get JSON");
    assert_eq!(got["etag"], etag.as_str());
    let out = run(
        token(
            cwd,
            &profile,
            &[
                "rename",
                "--tenant",
                "acme",
                "anthropic",
                "--new-id",
                "claude",
                "--display-name",
                "Claude",
                "--etag",
                &etag,
            ],
        ),
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("tenants/acme/tokens/claude"));
    // It was resolved above: removal is refused with the blockers listed.
    let out = run(
        token(cwd, &profile, &["remove", "--tenant", "acme", "claude"]),
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("blocked by: RECENT_CALLER"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        token(
            cwd,
            &profile,
            &["remove", "--tenant", "acme", "claude", "--force"],
        ),
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "removed tenants/acme/tokens/claude\n");
    let out = run(
        token(cwd, &profile, &["list", "--tenant", "acme", "-o", "json"]),
        b"",
    )
    .await;
    let listed: Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    assert_eq!(listed["tokens"].as_array().map(Vec::len), Some(1));
}

/// Runs a failing command and returns (exit code, stderr).
async fn fails(command: Command, stdin: &[u8]) -> (i32, String) {
    let out = run(command, stdin).await;
    assert!(!out.status.success(), "expected a failure");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
    (out.status.code().expect("exit code"), text(&out.stderr))
}

#[tokio::test]
async fn cli_errors_name_the_code_the_field_and_what_to_do() {
    let (server, profile) = server_with_profile().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path();
    let value = "sk-error-canary-0a9b8c";

    let (code, err) = fails(
        token(cwd, &profile, &["create", "--tenant", "acme", "Bad_Id"]),
        value.as_bytes(),
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("InvalidArgument (INVALID_FIELD): token_id: must match"),
        "{err}"
    );
    assert!(err.contains("field: token_id"), "{err}");
    assert!(err.contains("what to do:"), "{err}");
    assert!(!err.contains(value), "the value reached an error message");

    // The same as JSON, for scripts.
    let (code, err) = fails(
        token(
            cwd,
            &profile,
            &[
                "create",
                "--tenant",
                "acme",
                "x",
                "--display-name",
                "",
                "-o",
                "json",
            ],
        ),
        value.as_bytes(),
    )
    .await;
    assert_eq!(code, 1);
    let error: Value = serde_json::from_str(&err).expect("JSON error");
    assert_eq!(error["error"]["code"], "InvalidArgument");
    assert_eq!(error["error"]["reason"], "INVALID_FIELD");
    assert_eq!(
        error["error"]["field_violations"][0]["field"],
        "token.display_name"
    );

    let out = run(
        token(cwd, &profile, &["create", "--tenant", "acme", "dup"]),
        value.as_bytes(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, err) = fails(
        token(cwd, &profile, &["create", "--tenant", "acme", "dup"]),
        value.as_bytes(),
    )
    .await;
    assert!(err.contains("AlreadyExists"), "{err}");
    let (_, err) = fails(
        token(cwd, &profile, &["get", "--tenant", "acme", "nope"]),
        b"",
    )
    .await;
    assert!(
        err.contains("NotFound") && err.contains("token list"),
        "{err}"
    );
    let (_, err) = fails(
        token(
            cwd,
            &profile,
            &["remove", "--tenant", "acme", "dup", "--etag", "0-0"],
        ),
        b"",
    )
    .await;
    assert!(err.contains("Aborted (ETAG_MISMATCH)"), "{err}");

    // The admin certificate is no resolver identity.
    let (admin_cert, admin_key) = (server.path("admin.pem"), server.path("admin.key"));
    let mut denied = token(cwd, &profile, &["resolve", "--tenant", "acme", "dup"]);
    denied
        .arg("--cert")
        .arg(&admin_cert)
        .arg("--key")
        .arg(&admin_key);
    let (code, err) = fails(denied, b"").await;
    assert_eq!(code, 1);
    assert!(
        err.contains("PermissionDenied") && err.contains("policy"),
        "{err}"
    );

    // Local problems: empty value, no tenant, unreadable value file.
    let (code, err) = fails(
        token(cwd, &profile, &["create", "--tenant", "acme", "empty"]),
        b"\n",
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("value: empty"), "{err}");
    let (code, err) = fails(token(cwd, &profile, &["get", "dup"]), b"").await;
    assert_eq!(code, 2);
    assert!(err.contains("--tenant"), "{err}");
    let (code, err) = fails(
        token(
            cwd,
            &profile,
            &[
                "create",
                "--tenant",
                "acme",
                "f",
                "--value-file",
                "missing.txt",
            ],
        ),
        b"",
    )
    .await;
    assert_eq!(code, 3);
    assert!(err.contains("missing.txt"), "{err}");

    // Nothing configured at all: say what to set.
    let (code, err) = fails(aitokens(cwd, &["token", "list", "--tenant", "acme"]), b"").await;
    assert_eq!(code, 2);
    assert!(
        err.contains("AITOKENS_ADMIN_ADDR") && err.contains("aitokens dev"),
        "{err}"
    );
}

#[tokio::test]
async fn flags_beat_environment_which_beats_the_profile() {
    let (server, profile) = server_with_profile().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path();
    let closed = "127.0.0.1:1";

    // The environment overrides the profile's address...
    let mut command = token(cwd, &profile, &["list", "--tenant", "acme"]);
    command.env("AITOKENS_ADMIN_ADDR", closed);
    let (code, err) = fails(command, b"").await;
    assert_eq!(code, 3);
    assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");

    // ...and a flag overrides the environment.
    let mut command = token(cwd, &profile, &["list", "--tenant", "acme"]);
    command
        .env("AITOKENS_ADMIN_ADDR", closed)
        .args(["--admin-addr", &server.admin_addr.to_string()]);
    let out = run(command, b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Environment only, no profile.
    let mut command = aitokens(cwd, &["token", "list", "--tenant", "acme"]);
    command
        .env("AITOKENS_ADMIN_ADDR", server.admin_addr.to_string())
        .env("AITOKENS_CA", server.path("ca.pem"))
        .env("AITOKENS_CERT", server.path("admin.pem"))
        .env("AITOKENS_KEY", server.path("admin.key"));
    let out = run(command, b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no tokens in tenants/acme\n");
}

#[tokio::test]
async fn dev_writes_a_profile_that_the_cli_finds_on_its_own() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dev = binary::start_dev(&cwd.path().join("aitokens-dev"));
    let written =
        Profile::load(&cwd.path().join("aitokens-dev").join(DEV_PROFILE)).expect("profile");
    assert_eq!(written.admin_addr, Some(dev.admin.to_string()));
    assert_eq!(written.internal_addr, Some(dev.internal.to_string()));

    let value = "sk-dev-profile-canary-77e1";
    let out = run(
        aitokens(
            cwd.path(),
            &["token", "create", "--tenant", "acme", "openai-prod"],
        ),
        value.as_bytes(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        aitokens(cwd.path(), &["token", "list", "--tenant", "acme"]),
        b"",
    )
    .await;
    assert!(
        text(&out.stdout).contains("openai-prod"),
        "{}",
        text(&out.stdout)
    );
    let out = run(
        aitokens(
            cwd.path(),
            &["token", "resolve", "--tenant", "acme", "openai-prod"],
        ),
        b"",
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        format!("{value}\n"),
        "{}",
        text(&out.stderr)
    );
    binary::stop(dev).await;
}

#[tokio::test]
async fn completions_cover_every_token_command() {
    let cwd = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let out = run(aitokens(cwd.path(), &["completions", shell]), b"").await;
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["create", "resolve", "rename", "value-file", "admin-addr"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
}

#[tokio::test]
async fn create_prompts_for_the_value_without_echo_on_a_terminal() {
    let (_server, profile) = server_with_profile().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let value = "sk-tty-canary-6f0c2a";
    let words = [
        "token",
        "create",
        "--tenant",
        "acme",
        "typed",
        "--profile",
        profile.as_str(),
    ];
    let args: Vec<&std::ffi::OsStr> = words.iter().map(std::ffi::OsStr::new).collect();
    let typing = crate::common::Typing {
        prompt: "(input hidden): ",
        typed: value,
        until: "etag",
        stop_after: None,
    };
    let mut command =
        crate::common::on_a_terminal(Path::new(env!("CARGO_BIN_EXE_aitokens")), &args, &typing);
    command.current_dir(cwd.path());
    for var in CLIENT_ENV {
        command.env_remove(var);
    }
    let out = run(command, b"").await;
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}{}", text(&out.stderr));
    assert!(
        screen.contains("Value of tenants/acme/tokens/typed (input hidden): "),
        "{screen}"
    );
    assert!(screen.contains("tenants/acme/tokens/typed"), "{screen}");
    assert!(
        !screen.contains(value),
        "the typed value was echoed: {screen}"
    );
    let out = run(
        token(
            cwd.path(),
            &profile,
            &["resolve", "--tenant", "acme", "typed"],
        ),
        b"",
    )
    .await;
    assert_eq!(text(&out.stdout), format!("{value}\n"));
}

#[tokio::test]
async fn cli_usage_bindings_kill_switch_and_replacement() {
    let (_server, profile) = server_with_profile().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path();
    let step = |args: &'static [&'static str], stdin: &'static [u8]| {
        let command = token(cwd, &profile, args);
        async move { run(command, stdin).await }
    };
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    ok(&step(&["create", "--tenant", "acme", "old"], b"sk-old\n").await);
    ok(&step(&["resolve", "--tenant", "acme", "old"], b"").await);

    let usage = ok(&step(&["usage", "--tenant", "acme", "old"], b"").await);
    assert!(
        usage.contains("CALLER") && usage.contains("spiffe://aitokens.dev/agent"),
        "{usage}"
    );
    let json: Value = serde_json::from_str(&ok(&step(
        &["usage", "--tenant", "acme", "old", "-o", "json"],
        b"",
    )
    .await))
    .expect("usage JSON");
    assert_eq!(json["usages"][0]["resolve_count"], 1);

    let bound = ok(&step(
        &[
            "bind",
            "--tenant",
            "acme",
            "old",
            "--id",
            "support-bot",
            "--purpose",
            "tickets",
        ],
        b"",
    )
    .await);
    assert!(
        bound.contains("support-bot") && bound.contains("tickets"),
        "{bound}"
    );
    let listed = ok(&step(&["bindings", "--tenant", "acme", "old"], b"").await);
    assert!(listed.contains("support-bot"), "{listed}");
    let refused = step(&["remove", "--tenant", "acme", "old"], b"").await;
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(
        err.contains("blocked by: BINDING tenants/acme/tokens/old/bindings/support-bot")
            && err.contains("blocked by: RECENT_CALLER")
            && err.contains("--force"),
        "{err}"
    );
    ok(&step(
        &["unbind", "--tenant", "acme", "old", "--id", "support-bot"],
        b"",
    )
    .await);
    assert!(ok(&step(&["bindings", "--tenant", "acme", "old"], b"").await).contains("no bindings"));

    let disabled = ok(&step(&["disable", "--tenant", "acme", "old"], b"").await);
    assert!(disabled.contains("disabled"), "{disabled}");
    let refused = step(&["resolve", "--tenant", "acme", "old"], b"").await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("TOKEN_DISABLED"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!text(&refused.stdout).contains("sk-old"));
    ok(&step(&["enable", "--tenant", "acme", "old"], b"").await);
    assert_eq!(
        ok(&step(&["resolve", "--tenant", "acme", "old"], b"").await),
        "sk-old\n"
    );

    ok(&step(
        &["create", "--tenant", "acme", "new", "--replaces", "old"],
        b"sk-new\n",
    )
    .await);
    let status = ok(&step(&["replacement", "--tenant", "acme", "old"], b"").await);
    assert!(
        status.contains("tenants/acme/tokens/new") && status.contains("ready_to_remove"),
        "{status}"
    );
    let got = ok(&step(&["get", "--tenant", "acme", "old"], b"").await);
    assert!(
        got.contains("replaced_by") && got.contains("resolve_count"),
        "{got}"
    );
}
