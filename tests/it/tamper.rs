//! Tampering with stored ciphertexts: random bit flips across every stored
//! encrypted field (the envelope's format byte, nonce, ciphertext and tag of
//! both the value and the wrapped data key, and the key version), and swaps
//! of encrypted fields between tokens, within a tenant and across tenants.
//! Every resolve must fail with DATA_LOSS: never a value, never a panic.
//!
//! CI: 100 tokens x 8 flips and 100 swaps; `AITOKENS_LONG_TESTS=1`: 1,000
//! tokens x 100 flips (100,000 mutations) and 1,000 swaps.

use aitokens::api::pb::ResolveTokenRequest;
use tonic::Code;

use crate::{
    backend::{self, BackDoor},
    common::{TestServer, create_request},
    process::long_tests,
};

const NONCE: std::ops::Range<usize> = 1..25;
const TAG_LEN: usize = 16;

struct Row {
    tenant: String,
    id: String,
    value: String,
    kek_version: i64,
    dek: Vec<u8>,
    ct: Vec<u8>,
}

async fn rows(door: &BackDoor) -> Vec<Row> {
    door.query(
        "SELECT tenant, token_id, kek_version, wrapped_data_key, value_ciphertext
         FROM tokens ORDER BY seq",
        &[],
    )
    .await
    .into_iter()
    .map(|r| Row {
        tenant: r[0].text(),
        id: r[1].text(),
        value: String::new(),
        kek_version: r[2].int(),
        dek: r[3].bytes(),
        ct: r[4].bytes(),
    })
    .collect()
}

async fn write(door: &BackDoor, row: &Row, kek_version: i64, dek: &[u8], ct: &[u8]) {
    let changed = door
        .execute(
            "UPDATE tokens SET kek_version = $3, wrapped_data_key = $4, value_ciphertext = $5
             WHERE tenant = $1 AND token_id = $2",
            &[
                row.tenant.as_str().into(),
                row.id.as_str().into(),
                kek_version.into(),
                dek.into(),
                ct.into(),
            ],
        )
        .await;
    assert_eq!(changed, 1);
}

/// Flips one random bit in a random region (format byte, nonce, body, tag).
fn flip(rng: &mut fastrand::Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let body = NONCE.end..bytes.len() - TAG_LEN;
    let region = match rng.u8(0..4) {
        0 => 0..1,
        1 => NONCE,
        2 if !body.is_empty() => body,
        _ => bytes.len() - TAG_LEN..bytes.len(),
    };
    let at = rng.usize(region);
    out[at] ^= 1 << rng.u8(0..8);
    out
}

async fn expect_data_loss(
    resolver: &mut aitokens::api::pb::token_resolver_client::TokenResolverClient<
        tonic::transport::Channel,
    >,
    row: &Row,
    values: &[String],
    what: &str,
) {
    let result = resolver
        .resolve_token(ResolveTokenRequest {
            name: format!("tenants/{}/tokens/{}", row.tenant, row.id),
        })
        .await;
    let status = match result {
        Ok(reply) => {
            let leaked = values.contains(&reply.get_ref().value);
            panic!(
                "{what} on {}: resolved to a value (one of the stored values: {leaked})",
                row.id
            );
        }
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        Code::DataLoss,
        "{what} on {}: {status:?}",
        row.id
    );
    assert!(
        !values.iter().any(|v| status.message().contains(v.as_str())),
        "{what}: a value in the status"
    );
}

#[tokio::test]
async fn random_bit_flips_and_swaps_are_data_loss_never_a_value() {
    let (tokens, flips, swaps) = if long_tests() {
        (1_000, 100, 1_000)
    } else {
        (100, 8, 100)
    };
    let seed = fastrand::u64(..);
    eprintln!("tamper test seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut resolver = server.resolver().await;
    let values: Vec<String> = (0..tokens)
        .map(|i| format!("sk-tamper-{i:05}-{:016x}", rng.u64(..)))
        .collect();
    for (i, value) in values.iter().enumerate() {
        let tenant = ["acme", "globex"][i % 2];
        admin
            .create_token(create_request(tenant, &format!("t{i}"), value))
            .await
            .expect("create");
    }
    let door = server.back_door().await;
    door.ignore_guards().await;
    let mut rows = rows(&door).await;
    // The widest key version the column holds (SQLite: 64 bits; PostgreSQL: INTEGER).
    let version_bits = if backend::postgres() { 31 } else { 63 };
    for row in &mut rows {
        let i: usize = row.id[1..].parse().expect("index");
        row.value = values[i].clone();
    }
    assert_eq!(rows.len(), tokens);

    for row in &rows {
        for _ in 0..flips {
            let (kek_version, dek, ct, what) = match rng.u8(0..3) {
                0 => (
                    row.kek_version,
                    row.dek.clone(),
                    flip(&mut rng, &row.ct),
                    "value bit flip",
                ),
                1 => (
                    row.kek_version,
                    flip(&mut rng, &row.dek),
                    row.ct.clone(),
                    "data key bit flip",
                ),
                _ => (
                    row.kek_version ^ (1 << rng.u8(0..version_bits)),
                    row.dek.clone(),
                    row.ct.clone(),
                    "key version bit flip",
                ),
            };
            write(&door, row, kek_version, &dek, &ct).await;
            expect_data_loss(&mut resolver, row, &values, what).await;
        }
        write(&door, row, row.kek_version, &row.dek, &row.ct).await;
    }

    for _ in 0..swaps {
        let (a, b) = (rng.usize(0..rows.len()), rng.usize(0..rows.len()));
        if a == b {
            continue;
        }
        let (from, to) = (&rows[a], &rows[b]);
        let what = if from.tenant == to.tenant {
            "swap within a tenant"
        } else {
            "swap across tenants"
        };
        for (dek, ct) in [
            (&from.dek, &from.ct),
            (&to.dek, &from.ct),
            (&from.dek, &to.ct),
        ] {
            write(&door, to, from.kek_version, dek, ct).await;
            expect_data_loss(&mut resolver, to, &values, what).await;
        }
        write(&door, to, to.kek_version, &to.dek, &to.ct).await;
    }

    // Restored rows resolve again: the failures above came from the tampering.
    for row in rows.iter().step_by(7) {
        let reply = resolver
            .resolve_token(ResolveTokenRequest {
                name: format!("tenants/{}/tokens/{}", row.tenant, row.id),
            })
            .await
            .expect("restored row resolves");
        assert!(reply.get_ref().value == row.value, "restored value differs");
    }
}
