//! One connection per replica that LISTENs on `aitokens_changes`: every
//! change a replica commits to a token or a binding (this one's included)
//! arrives as the new change generation and the names it touched, within
//! milliseconds, so each replica drops exactly those cached rows. If the
//! connection drops, the listener reconnects and, once subscribed again,
//! says `Resync` (whatever came meanwhile is unknown). Losing the
//! connection drops nothing by itself: while the database answers, the
//! generation poll sees what the listener missed (it is the safety net for
//! a notification lost any other way), and while it does not, the outage
//! grace decides how long cached rows keep serving.

use std::time::Duration;

use futures_util::{StreamExt, stream};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{broadcast, mpsc},
};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, tls::TlsStream};

use super::{PgTarget, pg_error};
use crate::{error::Result, model::TokenName, store::StoreChange};

/// The channel the schema's triggers notify.
const CHANNEL: &str = "aitokens_changes";

/// Parses a notification payload: `GENERATION[ TENANT/TOKEN_ID]`.
fn parse(payload: &str) -> Option<StoreChange> {
    let (generation, name) = match payload.split_once(' ') {
        Some((g, name)) => (g, Some(name)),
        None => (payload, None),
    };
    let token = name.and_then(|name| {
        let (tenant, id) = name.split_once('/')?;
        TokenName::parse(&format!("tenants/{tenant}/tokens/{id}"), "name").ok()
    });
    Some(StoreChange::Changed {
        generation: generation.parse().ok()?,
        token,
    })
}

/// Starts the listener of `target`, publishing on `changes`, until the
/// returned task is aborted (when the store is dropped).
pub(super) fn spawn(
    target: PgTarget,
    changes: broadcast::Sender<StoreChange>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let started = tokio::time::Instant::now();
            let outcome = listen(&target, &changes, first).await;
            first = false;
            // A connection that lasted was a good one: the next drop is a
            // new outage, retried soon again.
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "the PostgreSQL change listener lost its connection; reconnecting");
            }
            // No Resync here: it would empty the resolve cache at the
            // first moment of a database outage, defeating the outage
            // grace. The Resync comes once subscribed again.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    })
}

async fn listen(
    target: &PgTarget,
    changes: &broadcast::Sender<StoreChange>,
    first: bool,
) -> Result<()> {
    match target.tls() {
        Some(tls) => {
            let (client, conn) = target
                .config()
                .connect(tls.clone())
                .await
                .map_err(pg_error)?;
            relay(client, conn, changes, first).await
        }
        None => {
            let (client, conn) = target.config().connect(NoTls).await.map_err(pg_error)?;
            relay(client, conn, changes, first).await
        }
    }
}

/// Subscribes, then forwards notifications until the connection ends.
async fn relay<S, T>(
    client: Client,
    mut conn: Connection<S, T>,
    changes: &broadcast::Sender<StoreChange>,
    first: bool,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: TlsStream + Unpin + Send + 'static,
{
    let (notes, mut received) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    if notes.send(note.payload().to_owned()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg_error)?;
    if !first {
        // Subscribed again: what came while the connection was down is lost.
        let _ = changes.send(StoreChange::Resync);
    }
    while let Some(payload) = received.recv().await {
        if let Some(change) = parse(&payload) {
            let _ = changes.send(change);
        }
    }
    drop(client);
    match driver.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(pg_error(e)),
        Err(e) => Err(crate::Error::Internal(format!("listener task: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse("42 acme/openai"),
            Some(StoreChange::Changed {
                generation: 42,
                token: TokenName::parse("tenants/acme/tokens/openai", "n").ok(),
            })
        );
        assert_eq!(
            parse("7"),
            Some(StoreChange::Changed {
                generation: 7,
                token: None
            })
        );
        assert_eq!(parse("x acme/a"), None);
    }
}
