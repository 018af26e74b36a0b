//! WatchTokens: what a stream asks for, which events its caller may see,
//! and the task that feeds one stream.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tonic::Status;

use super::convert::timestamp;
use crate::{
    auth::{Authorizer, PeerIdentity},
    error::Error,
    model::{TenantId, TokenEvent, TokenEventKind, TokenName, micros},
    proto::{WatchTokensRequest, WatchTokensResponse, watch_tokens_response::EventType},
    tokens::{Subscription, WatchItem},
};

/// Names one stream may list.
pub(super) const MAX_WATCH_NAMES: usize = 100;

/// Messages buffered for a client that reads slowly; when full, the stream
/// waits (and reads the store to catch up once the client takes them).
const STREAM_BUFFER: usize = 64;

/// The tokens a stream is about.
pub(super) enum Selection {
    /// These names (as the old or the new name of a rename).
    Names(HashSet<TokenName>),
    /// Every token of this tenant.
    Tenant(TenantId),
}

impl Selection {
    /// Exactly one of `names` and `parent`, each well-formed.
    pub(super) fn parse(request: &WatchTokensRequest) -> Result<Self, Error> {
        match (request.names.is_empty(), request.parent.is_empty()) {
            (true, true) => Err(Error::invalid(
                "names",
                "name the tokens to watch, or set parent to watch a tenant",
            )),
            (false, false) => Err(Error::invalid("parent", "set names or parent, not both")),
            (false, true) => {
                if request.names.len() > MAX_WATCH_NAMES {
                    return Err(Error::invalid(
                        "names",
                        "at most 100 names per stream; watch the tenant instead",
                    ));
                }
                let names = request
                    .names
                    .iter()
                    .map(|name| TokenName::parse(name, "names"))
                    .collect::<Result<_, _>>()?;
                Ok(Self::Names(names))
            }
            (true, false) => Ok(Self::Tenant(TenantId::from_parent(
                &request.parent,
                "parent",
            )?)),
        }
    }

    fn covers(&self, name: &TokenName) -> bool {
        match self {
            Self::Names(names) => names.contains(name),
            Self::Tenant(tenant) => name.tenant == *tenant,
        }
    }
}

/// What one caller sees of the feed: events of the tokens it selected and
/// may resolve under the live policy, nothing else (not even a name).
pub(super) struct Audience {
    pub(super) selection: Selection,
    pub(super) identity: Arc<PeerIdentity>,
    pub(super) auth: Authorizer,
}

impl Audience {
    /// Whether the caller may resolve `name`; a grant that turned
    /// bindings-only meanwhile ends the stream.
    fn may_resolve(&self, name: &TokenName) -> Result<bool, Error> {
        match self.auth.may_resolve(&self.identity, name) {
            None => Ok(false),
            Some(false) => Ok(true),
            Some(true) => Err(bindings_only()),
        }
    }

    /// The message this caller gets for `event`, if any.
    fn message(&self, event: &TokenEvent) -> Result<Option<WatchTokensResponse>, Error> {
        let (kind, name, other) = (event.kind, &event.name, event.other.as_ref());
        if !self.selection.covers(name) || !self.may_resolve(name)? {
            // A rename to a name the caller selected is news of a token it
            // could not have cached under that name: nothing to drop.
            return Ok(None);
        }
        let visible_other = match other {
            Some(other) if self.may_resolve(other)? => Some(other),
            _ => None,
        };
        let (kind, new_name) = match (kind, visible_other) {
            (TokenEventKind::Disabled, _) => (EventType::Disabled, None),
            (TokenEventKind::Enabled, _) => (EventType::Enabled, None),
            (TokenEventKind::Removed, _) => (EventType::Removed, None),
            (TokenEventKind::Renamed, Some(new)) => (EventType::Renamed, Some(new)),
            // Renamed to a name the caller may not resolve: to it, the
            // token is gone, and the new name stays unknown.
            (TokenEventKind::Renamed, None) => (EventType::Removed, None),
            (TokenEventKind::Replaced, new) => (EventType::Replaced, new),
        };
        Ok(Some(WatchTokensResponse {
            r#type: kind.into(),
            sequence: event.seq,
            name: name.to_string(),
            new_name: new_name.map(ToString::to_string).unwrap_or_default(),
            event_time: Some(timestamp(micros(event.time))),
        }))
    }
}

/// The refusal of a bindings-only grant (watching cannot tell which tokens
/// a binding names the caller for without reading each one).
pub(super) fn bindings_only() -> Error {
    Error::FailedPrecondition {
        reason: "WATCH_BINDINGS_ONLY",
        message: "the caller's grant is bindings-only, which WatchTokens does not support yet; resolve without watching",
        violations: Vec::new(),
    }
}

/// A message that carries only the stream's position.
fn marker(kind: EventType, sequence: i64) -> WatchTokensResponse {
    WatchTokensResponse {
        r#type: kind.into(),
        sequence,
        name: String::new(),
        new_name: String::new(),
        event_time: Some(timestamp(micros(std::time::SystemTime::now()))),
    }
}

/// What the task of one stream hands to the transport, boxed: the channel
/// allocates its slots in blocks, and a slot the size of a `Status` made an
/// idle stream cost kilobytes.
pub(super) type Outgoing = Box<Result<WatchTokensResponse, Status>>;

/// Starts the task that feeds one stream; returns its receiving end.
pub(super) fn spawn(
    subscription: Subscription,
    audience: Audience,
    heartbeat: Duration,
    stop: watch::Receiver<bool>,
) -> mpsc::Receiver<Outgoing> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(pump(subscription, audience, heartbeat, stop, tx));
    rx
}

/// Sends what the stream learns, a heartbeat whenever it had nothing to
/// say for `heartbeat`, until the client goes, the server stops or the
/// feed fails.
async fn pump(
    mut subscription: Subscription,
    audience: Audience,
    heartbeat: Duration,
    mut stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Outgoing>,
) {
    // At once: the client knows the stream stands, and where.
    if tx
        .send(Box::new(Ok(marker(
            EventType::Heartbeat,
            subscription.cursor(),
        ))))
        .await
        .is_err()
    {
        return;
    }
    let mut deadline = Instant::now() + heartbeat;
    loop {
        if Instant::now() >= deadline {
            // Due even while other callers' events keep the feed busy.
            let beat = marker(EventType::Heartbeat, subscription.cursor());
            if tx.send(Box::new(Ok(beat))).await.is_err() {
                return;
            }
            deadline = Instant::now() + heartbeat;
        }
        let next = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => Err(Error::Unavailable {
                reason: "SERVER_STOPPING",
                message: "the server is stopping; reconnect and resume",
            }),
            () = tx.closed() => return,
            next = subscription.next(deadline) => next,
        };
        let messages = next.and_then(|items| match items {
            None => Ok(vec![marker(EventType::Heartbeat, subscription.cursor())]),
            Some(items) => items
                .iter()
                .filter_map(|item| match item {
                    WatchItem::Resync(seq) => Some(Ok(marker(EventType::Resync, *seq))),
                    WatchItem::Event(event) => audience.message(event).transpose(),
                })
                .collect(),
        });
        match messages {
            Ok(messages) => {
                if !messages.is_empty() {
                    deadline = Instant::now() + heartbeat;
                }
                for message in messages {
                    if tx.send(Box::new(Ok(message))).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Box::new(Err(e.into()))).await;
                return;
            }
        }
    }
}
