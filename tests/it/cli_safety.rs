//! What the `token` client trusts: a profile picked up from the current
//! directory only when it is the user's own, named on stderr.

use std::{os::unix::fs::PermissionsExt, path::Path};

use aitokens::cli::{ClientIdentity, DEV_PROFILE, Profile};

use crate::{
    cli::{aitokens, run},
    common::TestServer,
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
