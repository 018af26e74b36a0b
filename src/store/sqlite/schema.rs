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
    // 6: token events for WatchTokens, written by triggers in the same
    // transaction as the change (whoever makes it: a server, the CLI), in
    // commit order (one writer at a time). AUTOINCREMENT: a sequence is never
    // reused, even after a prune deleted every row. token_events_floor holds
    // the last pruned sequence: resuming from before it means resync.
    "CREATE TABLE token_events (
         seq      INTEGER PRIMARY KEY AUTOINCREMENT,
         time_us  INTEGER NOT NULL,
         tenant   TEXT    NOT NULL,
         kind     TEXT    NOT NULL,
         token_id TEXT    NOT NULL,
         other_id TEXT
     );
     CREATE TABLE token_events_floor (
         id  INTEGER PRIMARY KEY CHECK (id = 1),
         seq INTEGER NOT NULL
     );
     INSERT INTO token_events_floor (id, seq) VALUES (1, 0);
     CREATE TRIGGER token_events_on_disabled AFTER UPDATE OF disabled ON tokens
         WHEN old.disabled IS NOT new.disabled
         BEGIN INSERT INTO token_events (time_us, tenant, kind, token_id)
               VALUES (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER), new.tenant,
                       CASE WHEN new.disabled THEN 'DISABLED' ELSE 'ENABLED' END, new.token_id); END;
     CREATE TRIGGER token_events_on_renamed AFTER UPDATE OF token_id ON tokens
         WHEN old.token_id IS NOT new.token_id
         BEGIN INSERT INTO token_events (time_us, tenant, kind, token_id, other_id)
               VALUES (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER), new.tenant,
                       'RENAMED', old.token_id, new.token_id); END;
     CREATE TRIGGER token_events_on_replaced AFTER UPDATE OF replaced_by_uid ON tokens
         WHEN new.replaced_by_uid IS NOT NULL AND old.replaced_by_uid IS NOT new.replaced_by_uid
         BEGIN INSERT INTO token_events (time_us, tenant, kind, token_id, other_id)
               VALUES (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER), new.tenant,
                       'REPLACED', new.token_id,
                       (SELECT token_id FROM tokens WHERE uid = new.replaced_by_uid)); END;
     CREATE TRIGGER token_events_on_removed AFTER DELETE ON tokens
         BEGIN INSERT INTO token_events (time_us, tenant, kind, token_id)
               VALUES (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER), old.tenant,
                       'REMOVED', old.token_id); END;",
];
