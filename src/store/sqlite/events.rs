//! Token events (WatchTokens): read in sequence order, pruned to a window.

use rusqlite::{Connection, Transaction, params};

use crate::{
    error::Result,
    model::{EventWindow, TokenEvent},
};

pub(super) fn after(conn: &Connection, after_seq: i64, limit: usize) -> Result<Vec<TokenEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, time_us, tenant, kind, token_id, other_id FROM token_events
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    rows.map(|row| {
        let (seq, time_us, tenant, kind, token_id, other_id) = row?;
        super::super::decode_event(seq, time_us, &tenant, &kind, &token_id, other_id.as_deref())
    })
    .collect()
}

pub(super) fn window(conn: &Connection) -> Result<EventWindow> {
    Ok(conn
        .prepare_cached(
            "SELECT (SELECT seq FROM token_events_floor WHERE id = 1),
                    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'token_events'), 0)",
        )?
        .query_row([], |r| {
            Ok(EventWindow {
                floor: r.get(0)?,
                head: r.get(1)?,
            })
        })?)
}

pub(super) fn prune(tx: &Transaction<'_>, keep: u64, older_than_us: i64) -> Result<EventWindow> {
    let current = window(tx)?;
    let by_count = current
        .head
        .saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX));
    let by_age: i64 = tx.query_row(
        "SELECT coalesce(max(seq), 0) FROM token_events WHERE time_us < ?1",
        params![older_than_us],
        |r| r.get(0),
    )?;
    let cut = by_count.max(by_age);
    if cut <= current.floor {
        return Ok(current);
    }
    tx.execute("DELETE FROM token_events WHERE seq <= ?1", params![cut])?;
    tx.execute(
        "UPDATE token_events_floor SET seq = max(seq, ?1) WHERE id = 1",
        params![cut],
    )?;
    Ok(EventWindow {
        floor: cut,
        head: current.head,
    })
}
