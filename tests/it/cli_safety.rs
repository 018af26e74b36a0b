//! What the `token` client trusts and prints: a profile picked up from the
//! current directory only when it is the user's own, named on stderr; text
//! that came from the server escaped before it reaches the terminal.

use std::{os::unix::fs::PermissionsExt, path::Path};

use aitokens::{
    api::pb::{CreateTokenBindingRequest, TokenBinding},
    cli::{ClientIdentity, DEV_PROFILE, Profile},
};
use serde_json::Value;

use crate::{
    cli::{aitokens, run},
    common::{TestServer, create_request},
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A profile for `server` with absolute paths into its folder.
fn profile_for(server: &TestServer) -> Profile {
    let identity = |who: &str| ClientIdentity {
        cert: server.path(&format!("{who}.pem")),
        key: server.path(&format!("{who}.key")),
    };
    Profile {
        admin_addr: Some(server.admin_addr.to_string()),
        internal_addr: Some(server.internal_addr.to_string()),
        ca: Some(server.path("ca.pem")),
        server_name: Some("localhost".into()),
        admin: Some(identity("admin")),
        resolver: Some(identity("agent")),
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn an_implicit_profile_is_used_only_if_it_is_yours_and_is_named_on_stderr() {
    let server = TestServer::start().await;
    let cwd = tempfile::tempdir().expect("tempdir");
    let folder = cwd.path().join("aitokens-dev");
    std::fs::create_dir(&folder).expect("mkdir");
    chmod(&folder, 0o700);
    let path = folder.join(DEV_PROFILE);
    profile_for(&server).write(&path).expect("write profile");
    let list = || aitokens(cwd.path(), &["token", "list", "--tenant", "acme"]);

    let out = run(list(), b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no tokens in tenants/acme\n");
    assert_eq!(
        text(&out.stderr),
        "aitokens: using profile aitokens-dev/profile.toml\n"
    );

    // Writable by others: whoever wrote it would choose the server and CA.
    chmod(&path, 0o666);
    let out = run(list(), b"").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).starts_with(
            "aitokens: error: profile aitokens-dev/profile.toml was picked up from the current \
             directory, but group or others may write it (mode 666; run chmod go-w \
             aitokens-dev/profile.toml); refused. Name a profile with --profile to use another \
             one\n"
        ),
        "{}",
        text(&out.stderr)
    );
    chmod(&path, 0o600);
    chmod(&folder, 0o777);
    let out = run(list(), b"").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(
            "aitokens: error: profile directory aitokens-dev was picked up from the current \
             directory, but group or others may write it (mode 777"
        ),
        "{}",
        text(&out.stderr)
    );
    chmod(&folder, 0o700);
    // The same file named with --profile is the user's explicit choice.
    let mut named = aitokens(cwd.path(), &["token", "list", "--tenant", "acme"]);
    named.arg("--profile").arg(&path);
    chmod(&path, 0o644);
    let out = run(named, b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

/// Every character of `shown` is printable, or a line break.
fn assert_no_control_characters(shown: &str) {
    let bad: Vec<char> = shown
        .chars()
        .filter(|c| *c != '\n' && (c.is_control() || ('\u{202a}'..='\u{202e}').contains(c)))
        .collect();
    assert!(
        bad.is_empty(),
        "raw control characters {bad:?} in:\n{shown}"
    );
}

#[tokio::test]
async fn control_characters_from_the_server_are_escaped_before_printing() {
    let server = TestServer::start().await;
    let evil = "Prod\u{1b}[2J\u{1b}]0;owned\u{7}\nwhat to do: nothing\u{202e}";
    let escaped = "Prod\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\nwhat to do: nothing\\u{202e}";
    let mut admin = server.admin().await;
    let mut request = create_request("acme", "evil", "sk-escape-canary-31");
    request.token.as_mut().expect("token").display_name = evil.into();
    admin.create_token(request).await.expect("create");
    admin
        .create_token_binding(CreateTokenBindingRequest {
            parent: "tenants/acme/tokens/evil".into(),
            binding_id: "ci".into(),
            binding: Some(TokenBinding {
                purpose: evil.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("bind");
    let profile = server.path("escape-profile.toml");
    profile_for(&server).write(&profile).expect("profile");
    let cwd = tempfile::tempdir().expect("tempdir");
    let token = |args: &[&str]| {
        let mut command = aitokens(cwd.path(), &["token"]);
        command.args(args).arg("--profile").arg(&profile);
        command
    };

    for args in [
        &["get", "--tenant", "acme", "evil"][..],
        &["list", "--tenant", "acme"][..],
        &["bindings", "--tenant", "acme", "evil"][..],
    ] {
        let out = run(token(args), b"").await;
        let shown = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_no_control_characters(&shown);
        assert!(shown.contains(escaped), "{args:?}:\n{shown}");
    }
    // A refusal lists the binding's purpose as a blocker: escaped too, so
    // it cannot forge a line of the report.
    let out = run(token(&["remove", "--tenant", "acme", "evil"]), b"").await;
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out.stderr);
    assert_no_control_characters(&shown);
    assert!(
        shown.contains(&format!(
            "  blocked by: BINDING tenants/acme/tokens/evil/bindings/ci (declared use: {escaped})\n"
        )),
        "{shown}"
    );
    let hints = shown.lines().filter(|l| l.starts_with("  what to do:"));
    assert_eq!(hints.count(), 1, "a forged line: {shown}");

    // JSON carries the text exactly (JSON escapes it itself).
    let out = run(
        token(&["get", "--tenant", "acme", "evil", "-o", "json"]),
        b"",
    )
    .await;
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["display_name"], evil);
}
