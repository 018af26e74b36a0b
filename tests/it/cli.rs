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
    // The reason once: a headline, the blockers, one thing to do.
    assert!(
        err.starts_with(
            "aitokens: error: FailedPrecondition (TOKEN_IN_USE): the token is still in use\n"
        ),
        "{err}"
    );
    assert!(
        err.ends_with(
            "  what to do: move its users to another token and delete its bindings, or add --force\n"
        ),
        "{err}"
    );
    assert_eq!(err.matches("in use").count(), 1, "{err}");
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
    // Every value starts in one column, past the longest key shown, with
    // or without the long `last_superseded` line (which a resolve of the
    // replaced token adds).
    let value_column = |line: &str| {
        let key_end = line.find(' ').expect("key and value");
        key_end + line[key_end..].find(|c: char| c != ' ').expect("a value")
    };
    let columns: Vec<usize> = status.lines().map(value_column).collect();
    assert!(columns.len() >= 4, "{status}");
    assert!(
        columns.windows(2).all(|w| w[0] == w[1]),
        "misaligned:\n{status}"
    );
    ok(&step(&["resolve", "--tenant", "acme", "old"], b"").await);
    let status = ok(&step(&["replacement", "--tenant", "acme", "old"], b"").await);
    assert!(status.contains("last_superseded  "), "{status}");
    let columns: Vec<usize> = status.lines().map(value_column).collect();
    assert!(
        columns.windows(2).all(|w| w[0] == w[1]),
        "misaligned:\n{status}"
    );
    let got = ok(&step(&["get", "--tenant", "acme", "old"], b"").await);
    assert!(
        got.contains("replaced_by") && got.contains("resolve_count"),
        "{got}"
    );
}

/// A value typed as an argument is refused before anything is sent, with
/// where values come from and a warning that it is now exposed, and the
/// refusal never repeats it.
#[tokio::test]
async fn a_value_typed_as_an_argument_is_refused_without_repeating_it() {
    let (_server, profile) = server_with_profile().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path();
    let value = "sk-typed-in-argv-canary-7c3f";
    for args in [
        vec!["create", "--tenant", "acme", "new-key", value],
        vec!["create", "new-key", value, "--tenant", "acme", "-o", "json"],
    ] {
        let out = run(token(cwd, &profile, &args), b"").await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        for piece in [
            "`token create` takes one argument, the token id, but more was typed after it",
            "Values are never taken from the command line; they come from standard input",
            "from --value-file FILE, or from a prompt that does not echo",
            "Nothing was sent to the server",
            "is now in your shell's history",
            "consider that value exposed",
        ] {
            assert!(stderr.contains(piece), "no {piece:?} in {stderr}");
        }
        assert!(!stderr.contains(value) && !stdout.contains(value));
    }
    // Nothing was created.
    let out = run(token(cwd, &profile, &["list", "--tenant", "acme"]), b"").await;
    assert_eq!(text(&out.stdout), "no tokens in tenants/acme\n");
}

/// A bad `--tenant` is reported as the flag the user typed, with the rule,
/// not as a request field (`parent`, `name`) the user never saw.
#[tokio::test]
async fn a_bad_tenant_is_reported_as_the_flag_typed() {
    let (_server, profile) = server_with_profile().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path();
    for args in [
        &["list", "--tenant", "ACME"][..],
        &["get", "--tenant", "ACME", "openai"],
        &["remove", "--tenant", "ACME", "openai"],
        &["create", "--tenant", "ACME", "openai"],
    ] {
        let (code, err) = fails(token(cwd, &profile, args), b"sk-never-read\n").await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(
            err,
            "aitokens: error: --tenant ACME: a tenant id must match [a-z][a-z0-9-]{0,62} \
             (a lowercase letter, then lowercase letters, digits or '-'; at most 63 \
             characters)\n  what to do: see `aitokens token --help`\n",
            "{args:?}"
        );
    }
}

/// `token list --unused-for-days N` lists a token only once it was created
/// more than N days ago: not one created a moment ago. (Days passing are
/// tested with a clock the test moves, in the domain's unit tests.)
#[tokio::test]
async fn unused_for_days_does_not_list_a_token_created_a_moment_ago() {
    let (_server, profile) = server_with_profile().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path();
    let out = run(
        token(cwd, &profile, &["create", "--tenant", "acme", "fresh"]),
        b"sk-fresh\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unused = |days: &'static str| {
        let command = token(
            cwd,
            &profile,
            &[
                "list",
                "--tenant",
                "acme",
                "--unused-for-days",
                days,
                "-o",
                "json",
            ],
        );
        async move {
            let out = run(command, b"").await;
            assert!(out.status.success(), "{}", text(&out.stderr));
            let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            listed["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .map(|t| t["token_id"].as_str().expect("id").to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert!(unused("30").await.is_empty(), "created seconds ago");
    assert!(unused("1").await.is_empty(), "created seconds ago");
    // Control: unused for 0 days is every token not resolved since now.
    assert_eq!(unused("0").await, ["fresh"]);
}

/// `token --help` documents the profile file: every key, in an example
/// that loads as a profile.
#[test]
fn token_help_documents_the_profile_with_an_example_that_loads() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = aitokens(cwd.path(), &["token", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let help = text(&out.stdout);
    let start = help
        .find("\n    admin_addr = ")
        .expect("an example profile")
        + 1;
    let example: String = help[start..]
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .map(|line| format!("{}\n", line.trim_start()))
        .collect();
    let path = cwd.path().join("example.toml");
    std::fs::write(&path, &example).expect("write");
    let profile = Profile::load(&path).unwrap_or_else(|e| panic!("{e}\n{example}"));
    let dir = cwd.path();
    let expected = Profile {
        admin_addr: Some("127.0.0.1:50051".into()),
        internal_addr: Some("127.0.0.1:50052".into()),
        ca: Some(dir.join("ca.pem")),
        server_name: Some("localhost".into()),
        admin: Some(aitokens::cli::ClientIdentity {
            cert: dir.join("admin.pem"),
            key: dir.join("admin.key"),
        }),
        resolver: Some(aitokens::cli::ClientIdentity {
            cert: dir.join("agent.pem"),
            key: dir.join("agent.key"),
        }),
    };
    assert_eq!(profile, expected, "every key is in the example:\n{example}");
}

/// `token create --help` shows its own flags first, the connection flags
/// under their own heading, and the global options once, briefly.
#[test]
fn token_create_help_puts_its_own_flags_first() {
    let cwd = tempfile::tempdir().expect("tempdir");
    for flag in ["-h", "--help"] {
        let out = aitokens(cwd.path(), &["token", "create", flag])
            .output()
            .expect("run");
        assert!(out.status.success());
        let help = text(&out.stdout);
        let at = |piece: &str| {
            help.find(piece)
                .unwrap_or_else(|| panic!("{flag}: no {piece:?} in\n{help}"))
        };
        assert!(at("--display-name") < at("Connection options:"), "{help}");
        assert!(at("--value-file") < at("Connection options:"), "{help}");
        assert!(at("Connection options:") < at("--admin-addr"), "{help}");
        assert!(at("--timeout") < at("Global options:"), "{help}");
        assert!(at("Global options:") < at("--log-format"), "{help}");
        assert_eq!(help.matches("--log-format").count(), 1, "{help}");
        assert_eq!(help.matches("level from RUST_LOG").count(), 1, "{help}");
    }
}
