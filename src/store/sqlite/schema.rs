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
    // 2: usage, bindings, replacement, kill switch, audit trail.
    "ALTER TABLE tokens ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE tokens ADD COLUMN replaces_uid BLOB;
     ALTER TABLE tokens ADD COLUMN replaced_by_uid BLOB;
     CREATE TABLE token_usage (
         token_uid          BLOB    NOT NULL REFERENCES tokens (uid) ON DELETE CASCADE,
         identity           TEXT    NOT NULL,
         first_resolve_us   INTEGER,
         last_resolve_us    INTEGER,
         resolve_count      INTEGER NOT NULL,
         denied_count       INTEGER NOT NULL,
         last_denied_us     INTEGER,
         superseded_count   INTEGER NOT NULL,
         last_superseded_us INTEGER,
         PRIMARY KEY (token_uid, identity)
     ) WITHOUT ROWID;
     CREATE TABLE bindings (
         token_uid       BLOB    NOT NULL REFERENCES tokens (uid) ON DELETE CASCADE,
         binding_id      TEXT    NOT NULL,
         caller_identity TEXT,
         purpose         TEXT    NOT NULL,
         create_us       INTEGER NOT NULL,
         PRIMARY KEY (token_uid, binding_id)
     ) WITHOUT ROWID;
     CREATE TABLE audit (
         seq       INTEGER PRIMARY KEY,
         time_us   INTEGER NOT NULL,
         actor     TEXT    NOT NULL,
         peer      TEXT    NOT NULL,
         method    TEXT    NOT NULL,
         tenant    TEXT,
         resource  TEXT    NOT NULL,
         outcome   TEXT    NOT NULL,
         reason    TEXT    NOT NULL,
         prev_hash BLOB    NOT NULL,
         hash      BLOB    NOT NULL
     );
     CREATE INDEX audit_by_tenant ON audit (tenant, seq);
     CREATE TABLE audit_head (
         id   INTEGER PRIMARY KEY CHECK (id = 1),
         seq  INTEGER NOT NULL,
         hash BLOB    NOT NULL
     );
     CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
     CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    // 3: passphrase-derived root keys (Argon2id parameters beside the keyring).
    "ALTER TABLE keyring ADD COLUMN kdf_salt BLOB;
     ALTER TABLE keyring ADD COLUMN kdf_m_kib INTEGER;
     ALTER TABLE keyring ADD COLUMN kdf_t INTEGER;
     ALTER TABLE keyring ADD COLUMN kdf_p INTEGER;",
    // 4: a generation counter that moves with every change to a row the
    // resolve path may have cached (inserts change none: misses are not
    // cached), so a server notices changes made by other processes (CLI,
    // restore tooling, sqlite3 by hand) and drops its cached rows.
    "CREATE TABLE token_changes (
         id         INTEGER PRIMARY KEY CHECK (id = 1),
         generation INTEGER NOT NULL
     );
     INSERT INTO token_changes (id, generation) VALUES (1, 0);
     CREATE TRIGGER token_changes_on_update
         AFTER UPDATE OF uid, tenant, token_id, kek_version, wrapped_data_key,
                         value_ciphertext, disabled, replaced_by_uid ON tokens
         BEGIN UPDATE token_changes SET generation = generation + 1 WHERE id = 1; END;
     CREATE TRIGGER token_changes_on_delete AFTER DELETE ON tokens
         BEGIN UPDATE token_changes SET generation = generation + 1 WHERE id = 1; END;
     CREATE TRIGGER binding_changes_on_insert AFTER INSERT ON bindings
         BEGIN UPDATE token_changes SET generation = generation + 1 WHERE id = 1; END;
     CREATE TRIGGER binding_changes_on_update AFTER UPDATE ON bindings
         BEGIN UPDATE token_changes SET generation = generation + 1 WHERE id = 1; END;
     CREATE TRIGGER binding_changes_on_delete AFTER DELETE ON bindings
         BEGIN UPDATE token_changes SET generation = generation + 1 WHERE id = 1; END;",
    // 5: keyed audit chains. The keyring keeps the audit key (sealed under
    // the root key); records carry how many events they account for and the
    // first time they cover; after a prune, audit_base holds the record the
    // remaining chain starts after, with a MAC under the chain's checkpoint
    // key. Links written before this migration are unkeyed until a server
    // holding the root key re-links them.
    "ALTER TABLE keyring ADD COLUMN audit_key BLOB;
     ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE audit ADD COLUMN first_us INTEGER;
     CREATE TABLE audit_base (
         id      INTEGER PRIMARY KEY CHECK (id = 1),
         seq     INTEGER NOT NULL,
         hash    BLOB    NOT NULL,
         time_us INTEGER NOT NULL,
         mac     BLOB    NOT NULL
     );",
];
