//! PostgreSQL schema migrations, applied in order by `aitokens migrate`
//! (or `aitokens dev`), each in one transaction under an advisory lock so
//! that two replicas never migrate at once. A server refuses to start on a
//! schema older or newer than it knows.

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite schema holds after its migration 5: keyring,
    // tokens, usage, bindings, the keyed audit chain, and the change
    // generation. Triggers keep the audit trail append-only (unless a prune
    // or an upgrade sets aitokens.audit_maintenance for its transaction),
    // bump the generation on every change a cached row may depend on, and
    // NOTIFY every replica of the names it touched.
    r#"
    CREATE TABLE keyring (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        deployment_id   BYTEA   NOT NULL,
        key_check       BYTEA   NOT NULL,
        current_version INTEGER NOT NULL,
        kdf_salt        BYTEA,
        kdf_m_kib       INTEGER,
        kdf_t           INTEGER,
        kdf_p           INTEGER,
        audit_key       BYTEA
    );
    CREATE TABLE keks (
        version INTEGER PRIMARY KEY,
        sealed  BYTEA   NOT NULL
    );
    CREATE TABLE tokens (
        seq              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        uid              BYTEA   NOT NULL UNIQUE,
        tenant           TEXT    NOT NULL,
        token_id         TEXT    NOT NULL,
        display_name     TEXT    NOT NULL,
        create_us        BIGINT  NOT NULL,
        update_us        BIGINT  NOT NULL,
        revision         BIGINT  NOT NULL,
        kek_version      INTEGER NOT NULL REFERENCES keks (version),
        wrapped_data_key BYTEA   NOT NULL,
        value_ciphertext BYTEA   NOT NULL,
        disabled         BOOLEAN NOT NULL DEFAULT FALSE,
        replaces_uid     BYTEA,
        replaced_by_uid  BYTEA,
        UNIQUE (tenant, token_id)
    );
    -- No column statistics of sealed material: ANALYZE would copy sample
    -- values into pg_statistic, where a removed token's ciphertext would
    -- outlive its row.
    ALTER TABLE tokens ALTER COLUMN wrapped_data_key SET STATISTICS 0,
                       ALTER COLUMN value_ciphertext SET STATISTICS 0;
    CREATE INDEX tokens_by_tenant_seq ON tokens (tenant, seq);
    CREATE INDEX tokens_by_kek ON tokens (kek_version, seq);
    CREATE TABLE token_usage (
        token_uid          BYTEA  NOT NULL REFERENCES tokens (uid) ON DELETE CASCADE,
        identity           TEXT   NOT NULL,
        first_resolve_us   BIGINT,
        last_resolve_us    BIGINT,
        resolve_count      BIGINT NOT NULL,
        denied_count       BIGINT NOT NULL,
        last_denied_us     BIGINT,
        superseded_count   BIGINT NOT NULL,
        last_superseded_us BIGINT,
        PRIMARY KEY (token_uid, identity)
    );
    CREATE TABLE bindings (
        token_uid       BYTEA  NOT NULL REFERENCES tokens (uid) ON DELETE CASCADE,
        binding_id      TEXT   NOT NULL,
        caller_identity TEXT,
        purpose         TEXT   NOT NULL,
        create_us       BIGINT NOT NULL,
        PRIMARY KEY (token_uid, binding_id)
    );
    CREATE TABLE audit (
        seq       BIGINT PRIMARY KEY,
        time_us   BIGINT NOT NULL,
        actor     TEXT   NOT NULL,
        peer      TEXT   NOT NULL,
        method    TEXT   NOT NULL,
        tenant    TEXT,
        resource  TEXT   NOT NULL,
        outcome   TEXT   NOT NULL,
        reason    TEXT   NOT NULL,
        count     BIGINT NOT NULL DEFAULT 1,
        first_us  BIGINT,
        prev_hash BYTEA  NOT NULL,
        hash      BYTEA  NOT NULL
    );
    CREATE INDEX audit_by_tenant ON audit (tenant, seq);
    CREATE TABLE audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  BIGINT  NOT NULL,
        hash BYTEA   NOT NULL
    );
    INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');
    CREATE TABLE audit_base (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        seq     BIGINT  NOT NULL,
        hash    BYTEA   NOT NULL,
        time_us BIGINT  NOT NULL,
        mac     BYTEA   NOT NULL
    );
    CREATE FUNCTION aitokens_audit_append_only() RETURNS trigger AS $$
    BEGIN
        IF coalesce(current_setting('aitokens.audit_maintenance', true), '') <> 'on' THEN
            RAISE EXCEPTION 'the audit log is append-only';
        END IF;
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION aitokens_audit_append_only();
    CREATE TABLE token_changes (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        generation BIGINT  NOT NULL
    );
    INSERT INTO token_changes (id, generation) VALUES (1, 0);
    CREATE FUNCTION aitokens_changed(names TEXT[]) RETURNS void AS $$
    DECLARE
        g BIGINT;
        n TEXT;
    BEGIN
        UPDATE token_changes SET generation = generation + 1 WHERE id = 1 RETURNING generation INTO g;
        IF array_length(names, 1) IS NULL THEN
            PERFORM pg_notify('aitokens_changes', g::text);
        END IF;
        FOREACH n IN ARRAY coalesce(names, ARRAY[]::TEXT[]) LOOP
            PERFORM pg_notify('aitokens_changes', g::text || ' ' || n);
        END LOOP;
    END $$ LANGUAGE plpgsql;
    CREATE FUNCTION aitokens_token_changed() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM aitokens_changed(ARRAY[OLD.tenant || '/' || OLD.token_id]);
        ELSIF (NEW.tenant, NEW.token_id) IS DISTINCT FROM (OLD.tenant, OLD.token_id) THEN
            PERFORM aitokens_changed(ARRAY[OLD.tenant || '/' || OLD.token_id,
                                           NEW.tenant || '/' || NEW.token_id]);
        ELSE
            PERFORM aitokens_changed(ARRAY[NEW.tenant || '/' || NEW.token_id]);
        END IF;
        RETURN NULL;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER tokens_changed AFTER UPDATE OR DELETE ON tokens
        FOR EACH ROW EXECUTE FUNCTION aitokens_token_changed();
    CREATE FUNCTION aitokens_binding_changed() RETURNS trigger AS $$
    DECLARE
        owner BYTEA := CASE WHEN TG_OP = 'DELETE' THEN OLD.token_uid ELSE NEW.token_uid END;
    BEGIN
        PERFORM aitokens_changed(ARRAY(SELECT tenant || '/' || token_id FROM tokens WHERE tokens.uid = owner));
        RETURN NULL;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER bindings_changed AFTER INSERT OR UPDATE OR DELETE ON bindings
        FOR EACH ROW EXECUTE FUNCTION aitokens_binding_changed();
    "#,
    // 2: token events for WatchTokens, written by a trigger in the same
    // transaction as the change. Their sequence comes from a counter row,
    // not a SEQUENCE: the row lock serializes the writers of events until
    // they commit, so sequence order is commit order and a reader that saw
    // sequence N never later finds a smaller one committed. `floor` is the
    // last pruned sequence: resuming from before it means resync.
    r#"
    CREATE TABLE token_events (
        seq      BIGINT PRIMARY KEY,
        time_us  BIGINT NOT NULL,
        tenant   TEXT   NOT NULL,
        kind     TEXT   NOT NULL,
        token_id TEXT   NOT NULL,
        other_id TEXT
    );
    CREATE TABLE token_events_head (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        seq   BIGINT  NOT NULL,
        floor BIGINT  NOT NULL
    );
    INSERT INTO token_events_head (id, seq, floor) VALUES (1, 0, 0);
    CREATE FUNCTION aitokens_token_event(p_tenant TEXT, p_kind TEXT, p_token_id TEXT, p_other TEXT)
    RETURNS void AS $$
    DECLARE
        s BIGINT;
    BEGIN
        UPDATE token_events_head SET seq = seq + 1 WHERE id = 1 RETURNING seq INTO s;
        INSERT INTO token_events (seq, time_us, tenant, kind, token_id, other_id)
        VALUES (s, (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT,
                p_tenant, p_kind, p_token_id, p_other);
    END $$ LANGUAGE plpgsql;
    CREATE FUNCTION aitokens_token_events() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM aitokens_token_event(OLD.tenant, 'REMOVED', OLD.token_id, NULL);
            RETURN NULL;
        END IF;
        IF NEW.token_id IS DISTINCT FROM OLD.token_id THEN
            PERFORM aitokens_token_event(NEW.tenant, 'RENAMED', OLD.token_id, NEW.token_id);
        END IF;
        IF NEW.disabled IS DISTINCT FROM OLD.disabled THEN
            PERFORM aitokens_token_event(NEW.tenant,
                CASE WHEN NEW.disabled THEN 'DISABLED' ELSE 'ENABLED' END, NEW.token_id, NULL);
        END IF;
        IF NEW.replaced_by_uid IS NOT NULL
           AND NEW.replaced_by_uid IS DISTINCT FROM OLD.replaced_by_uid THEN
            PERFORM aitokens_token_event(NEW.tenant, 'REPLACED', NEW.token_id,
                (SELECT token_id FROM tokens WHERE uid = NEW.replaced_by_uid));
        END IF;
        RETURN NULL;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER tokens_events AFTER UPDATE OR DELETE ON tokens
        FOR EACH ROW EXECUTE FUNCTION aitokens_token_events();
    "#,
];

/// The key of the advisory lock migrations hold.
const MIGRATION_LOCK: i64 = 0x6169_746f_6b31;

/// The schema version of the database `client` is connected to (0: none).
pub async fn version(client: &Client) -> Result<usize> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables
                            WHERE schemaname = current_schema() AND tablename = 'aitokens_schema')",
            &[],
        )
        .await
        .map_err(super::pg_error)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: i32 = client
        .query_one("SELECT version FROM aitokens_schema WHERE id = 1", &[])
        .await
        .map_err(super::pg_error)?
        .get(0);
    Ok(usize::try_from(version).unwrap_or(0))
}

/// Applies every migration the database lacks; returns how many.
pub async fn migrate(client: &mut Client) -> Result<usize> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(super::pg_error)?;
    let applied = apply(client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    applied
}

async fn apply(client: &mut Client) -> Result<usize> {
    let from = version(client).await?;
    check_known(from)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        let tx = client.transaction().await.map_err(super::pg_error)?;
        if i == 0 {
            tx.batch_execute(
                "CREATE TABLE aitokens_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
                 INSERT INTO aitokens_schema (id, version) VALUES (1, 0);",
            )
            .await
            .map_err(super::pg_error)?;
        }
        tx.batch_execute(sql).await.map_err(super::pg_error)?;
        let next = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "UPDATE aitokens_schema SET version = $1 WHERE id = 1",
            &[&next],
        )
        .await
        .map_err(super::pg_error)?;
        tx.commit().await.map_err(super::pg_error)?;
        tracing::info!(version = i + 1, "applied PostgreSQL schema migration");
    }
    Ok(MIGRATIONS.len() - from)
}

/// Refuses a schema newer than this build.
pub fn check_known(version: usize) -> Result<()> {
    if version > MIGRATIONS.len() {
        return Err(Error::database(format!(
            "the PostgreSQL schema is version {version}, newer than this build knows ({}); \
             upgrade aitokens",
            MIGRATIONS.len()
        )));
    }
    Ok(())
}
