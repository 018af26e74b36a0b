//! Leak scan: 300 unique canary values go through every RPC and error path
//! of the real `aitokens serve` with trace-level logging of every crate
//! (aitokens, tonic, h2, hyper, rustls, ...). Afterwards no canary may be
//! found, raw, hex, base64 (at every alignment) or as a decimal byte list,
//! in the logs, in any status message, status details or metadata, in the
//! Debug output of any request or response, or in any file of the data
//! folder (the database holds them only sealed).

use std::path::Path;

use aitokens::api::pb::{
    GetTokenRequest, ListTokensRequest, RemoveTokenRequest, RenameTokenRequest,
    ResolveTokenRequest, token_resolver_client::TokenResolverClient,
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use memchr::memmem;
use tonic::Status;

use crate::{
    backend,
    common::create_request,
    process::{DataDir, Serve, channel},
};

/// Every canary starts with this; searching for its encodings finds any
/// canary in any encoding at any offset.
pub const PREFIX: &str = "zqxcanary42-";
const CANARIES: usize = 300;

fn canary(i: usize, salt: u64) -> String {
    // 40 characters: the prefix, an index, and random hex.
    format!("{PREFIX}{i:03}-{salt:016x}{:08x}", fastrand::u32(..))
}

/// The forms to search for: the prefix raw, in hex, as a decimal byte list,
/// and in standard and URL-safe base64 at each of the three alignments.
fn needles() -> Vec<(String, Vec<u8>)> {
    let raw = PREFIX.as_bytes();
    let mut forms = vec![
        ("raw".to_owned(), raw.to_vec()),
        (
            "hex".to_owned(),
            raw.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "HEX".to_owned(),
            raw.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "decimal bytes".to_owned(),
            raw.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
                .into_bytes(),
        ),
    ];
    for skip in 0..3 {
        let part = &raw[skip..skip + 9];
        forms.push((format!("base64+{skip}"), STANDARD.encode(part).into_bytes()));
        forms.push((
            format!("base64url+{skip}"),
            URL_SAFE_NO_PAD.encode(part).into_bytes(),
        ));
    }
    forms
}

/// The first form in which a canary appears in `haystack`, if any.
fn find_canary(haystack: &[u8]) -> Option<String> {
    needles()
        .into_iter()
        .find(|(_, needle)| memmem::find(haystack, needle).is_some())
        .map(|(form, _)| form)
}

pub fn assert_clean(what: &str, haystack: &[u8]) {
    if let Some(form) = find_canary(haystack) {
        panic!("a canary ({form}) reached {what}");
    }
}

fn check_status(status: &Status, seen: &mut Vec<u8>) {
    seen.extend_from_slice(status.message().as_bytes());
    seen.extend_from_slice(status.details());
    seen.extend_from_slice(format!("{status:?}").as_bytes());
    seen.extend_from_slice(format!("{:?}", status.metadata()).as_bytes());
}

fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push((
                path.display().to_string(),
                std::fs::read(&path).expect("read file"),
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_reaches_logs_statuses_debug_output_or_files() {
    let _heavy = crate::common::HEAVY.lock().await;

    let data = DataDir::new();
    let mark = data.dir.store.mark().await;
    let server = Serve::start(&data, "trace", "trace.log");
    let mut admin = server.admin(&data).await;
    let mut resolver = server.resolver(&data).await;
    // The admin identity on the internal listener: every resolve is denied.
    let mut denied =
        TokenResolverClient::new(channel(data.dir.path(), server.internal, "admin").await);
    let salt = fastrand::u64(..);
    let canaries: Vec<String> = (0..CANARIES).map(|i| canary(i, salt)).collect();
    // Everything the client side saw that is not a resolved value.
    let mut seen = Vec::new();

    for (i, value) in canaries.iter().enumerate() {
        let tenant = ["acme", "globex"][i % 2];
        let id = format!("lk{i}");
        let request = create_request(tenant, &id, value);
        seen.extend_from_slice(format!("{request:?} {request:#?}").as_bytes());
        let token = admin
            .create_token(request)
            .await
            .expect("create")
            .into_inner();
        seen.extend_from_slice(format!("{token:?}").as_bytes());

        let name = format!("tenants/{tenant}/tokens/{id}");
        let reply = resolver
            .resolve_token(ResolveTokenRequest { name: name.clone() })
            .await
            .expect("resolve");
        assert!(
            &reply.get_ref().value == value,
            "resolve returned another value"
        );
        seen.extend_from_slice(format!("{reply:?} {:#?}", reply.get_ref()).as_bytes());

        // Error paths that carry the value: duplicate id, bad id, bad name.
        let status = admin
            .create_token(create_request(tenant, &id, value))
            .await
            .expect_err("duplicate");
        check_status(&status, &mut seen);
        let status = admin
            .create_token(create_request(tenant, "Bad_Id", value))
            .await
            .expect_err("bad id");
        check_status(&status, &mut seen);
        let mut no_name = create_request(tenant, "ok", value);
        no_name.token = None;
        let status = admin
            .create_token(no_name)
            .await
            .expect_err("no display name");
        check_status(&status, &mut seen);
        let status = denied
            .resolve_token(ResolveTokenRequest { name: name.clone() })
            .await
            .expect_err("denied");
        check_status(&status, &mut seen);

        let got = admin
            .get_token(GetTokenRequest { name: name.clone() })
            .await
            .expect("get");
        seen.extend_from_slice(format!("{got:?}").as_bytes());
        if i % 3 == 0 {
            let renamed = admin
                .rename_token(RenameTokenRequest {
                    name: name.clone(),
                    display_name: Some(format!("renamed {i}")),
                    new_token_id: Some(format!("lk{i}-r")),
                    etag: Some(token.etag.clone()),
                })
                .await
                .expect("rename")
                .into_inner();
            seen.extend_from_slice(format!("{renamed:?}").as_bytes());
            let reply = resolver
                .resolve_token(ResolveTokenRequest {
                    name: renamed.name.clone(),
                })
                .await
                .expect("resolve renamed");
            assert!(&reply.get_ref().value == value, "rename changed the value");
            let removed = admin
                .remove_token(RemoveTokenRequest {
                    name: renamed.name.clone(),
                    etag: None,
                    force: true,
                })
                .await
                .expect("remove");
            seen.extend_from_slice(format!("{removed:?}").as_bytes());
            let status = resolver
                .resolve_token(ResolveTokenRequest { name: renamed.name })
                .await
                .expect_err("removed");
            check_status(&status, &mut seen);
        }
    }
    for tenant in ["acme", "globex"] {
        let listed = admin
            .list_tokens(ListTokensRequest {
                parent: format!("tenants/{tenant}"),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list");
        seen.extend_from_slice(format!("{listed:?}").as_bytes());
    }
    drop((admin, resolver, denied));

    let log = server.terminate();
    // The capture is real: trace events of our crate and of the transport.
    for target in ["TRACE", "aitokens", "h2::", "rustls::"] {
        assert!(log.contains(target), "no {target} in the trace log");
    }
    // Control: the search finds what it is meant to find.
    let mut control = b"stderr: ".to_vec();
    control.extend_from_slice(STANDARD.encode(format!("xx{}", canaries[0])).as_bytes());
    assert!(
        find_canary(&control).is_some(),
        "the search missed a base64 canary"
    );
    assert_clean("the server's log (stdout and stderr)", log.as_bytes());
    assert_clean("statuses, metadata and Debug output", &seen);

    let mut all = Vec::new();
    files(data.dir.path(), &mut all);
    if backend::postgres() {
        all.extend(data.dir.store.at_rest(&mark).await);
        assert!(all.iter().any(|(path, _)| path.starts_with("base/")));
        assert!(all.iter().any(|(path, _)| path.starts_with("pg_wal/")));
    } else {
        assert!(all.iter().any(|(path, _)| path.ends_with("aitokens.db")));
    }
    for (path, bytes) in &all {
        assert_clean(path, bytes);
    }
}
