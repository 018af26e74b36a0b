//! Schema migrations, applied in order by `PRAGMA user_version`.

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: keyring and tokens.
    "CREATE TABLE keyring (
         id              INTEGER PRIMARY KEY CHECK (id = 1),
         deployment_id   BLOB    NOT NULL,
         key_check       BLOB    NOT NULL,
         current_version INTEGER NOT NULL
     );
     CREATE TABLE keks (
         version INTEGER PRIMARY KEY,
         sealed  BLOB    NOT NULL
     );
     CREATE TABLE tokens (
         seq              INTEGER PRIMARY KEY AUTOINCREMENT,
         uid              BLOB    NOT NULL UNIQUE,
         tenant           TEXT    NOT NULL,
         token_id         TEXT    NOT NULL,
         display_name     TEXT    NOT NULL,
         create_us        INTEGER NOT NULL,
         update_us        INTEGER NOT NULL,
         revision         INTEGER NOT NULL,
         kek_version      INTEGER NOT NULL REFERENCES keks (version),
         wrapped_data_key BLOB    NOT NULL,
         value_ciphertext BLOB    NOT NULL,
         UNIQUE (tenant, token_id)
     );
     CREATE INDEX tokens_by_tenant_seq ON tokens (tenant, seq);",
];
