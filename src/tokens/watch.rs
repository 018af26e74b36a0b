//! The change feed behind WatchTokens: the store records an event in the
//! same transaction as each change a cache must know about (disable,
//! enable, remove, rename, replace); one hub per server reads the new ones
//! and hands them to every open stream.
//!
//! What wakes the hub: this process's own changes (the lifecycle pokes it
//! once a change has committed, before it is acknowledged), the store's
//! change feed (PostgreSQL's NOTIFY: other replicas' changes), and a poll
//! (changes the CLI made beside a SQLite server, or a lost notification).
//! One store read per wake-up, however many streams are open.
//!
//! Streams never miss an event: a stream subscribes to the hub before it
//! reads what it must catch up on from the store, and reads the store again
//! whenever it may have fallen behind (the hub's buffer overflowed, or a
//! batch does not continue where the stream stands). Sequences are written
//! in commit order without gaps (a counter row on PostgreSQL, AUTOINCREMENT
//! under SQLite's single writer). Events are kept for a bounded window (a
//! count and an age); a stream resuming from before it gets a resync.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, watch},
    time::Instant,
};

use crate::{
    error::{Error, Result},
    model::{TokenEvent, micros_ago},
    store::{StoreChange, TokenStore},
};

/// Events per store read.
const READ_BATCH: usize = 500;
/// Batches the hub buffers for a stream that has not taken them yet; a
/// stream further behind reads the store instead.
const LIVE_BUFFER: usize = 1024;
/// How often the hub prunes by age (by count: as soon as the window is full).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Tunables of the change feed.
#[derive(Clone, Copy, Debug)]
pub struct WatchSettings {
    /// A stream that had nothing to send for this long sends a heartbeat.
    pub heartbeat: Duration,
    /// Streams open at once, across callers; more are refused.
    pub max_streams: usize,
    /// Events retained: the newest this many ...
    pub retain_events: u64,
    /// ... and none older than this.
    pub retain_age: Duration,
    /// How often the hub looks for events nobody told it about.
    pub poll: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            max_streams: 10_000,
            retain_events: 100_000,
            retain_age: Duration::from_secs(24 * 60 * 60),
            poll: Duration::from_secs(1),
        }
    }
}

/// The change feed: one per server, shared by every stream.
#[derive(Clone)]
pub struct Watch {
    inner: Arc<Hub>,
}

struct Hub {
    store: Arc<dyn TokenStore>,
    settings: WatchSettings,
    live: broadcast::Sender<Arc<[TokenEvent]>>,
    /// The last sequence handed to the streams.
    head: AtomicI64,
    /// The last pruned sequence, as last seen.
    floor: AtomicI64,
    wake: Notify,
    streams: Arc<Semaphore>,
}

impl Watch {
    /// The feed over `store`'s events, starting after the last one written.
    pub(super) async fn new(store: Arc<dyn TokenStore>, settings: WatchSettings) -> Result<Self> {
        let window = store.event_window().await?;
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Ok(Self {
            inner: Arc::new(Hub {
                store,
                settings,
                live,
                head: window.head.into(),
                floor: window.floor.into(),
                wake: Notify::new(),
                streams: Arc::new(Semaphore::new(settings.max_streams)),
            }),
        })
    }

    /// The feed's settings.
    pub fn settings(&self) -> &WatchSettings {
        &self.inner.settings
    }

    /// Says that a change was committed: the hub reads the store now.
    pub(super) fn poke(&self) {
        self.inner.wake.notify_one();
    }

    /// Reads new events and hands them to the streams whenever something
    /// may have changed, until `stop`; prunes the window as it goes.
    pub async fn run(
        &self,
        mut changes: Option<broadcast::Receiver<StoreChange>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let hub = &self.inner;
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                () = hub.wake.notified() => {}
                change = async {
                    match changes.as_mut() {
                        Some(changes) => changes.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                        changes = None;
                    }
                }
                () = tokio::time::sleep(hub.settings.poll) => {}
            }
            if let Err(e) = self.read_new().await {
                tracing::warn!(error = %e, "reading token events failed; retrying at the next poll");
                continue;
            }
            let full = hub.head.load(Ordering::Acquire) - hub.floor.load(Ordering::Acquire)
                > i64::try_from(hub.settings.retain_events).unwrap_or(i64::MAX);
            if full || last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                match hub
                    .store
                    .prune_events(
                        hub.settings.retain_events,
                        micros_ago(hub.settings.retain_age),
                    )
                    .await
                {
                    Ok(window) => hub.floor.fetch_max(window.floor, Ordering::AcqRel),
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning token events failed");
                        0
                    }
                };
            }
        }
    }

    /// Hands every event after the hub's head to the streams.
    async fn read_new(&self) -> Result<()> {
        let hub = &self.inner;
        loop {
            let head = hub.head.load(Ordering::Acquire);
            let events = hub.store.events_after(head, READ_BATCH).await?;
            let Some(last) = events.last() else {
                return Ok(());
            };
            hub.head.store(last.seq, Ordering::Release);
            let full = events.len() == READ_BATCH;
            // No stream open: nobody to tell.
            let _ = hub.live.send(events.into());
            if !full {
                return Ok(());
            }
        }
    }

    /// Opens a stream that resumes after sequence `resume_after` (0: from
    /// now). RESOURCE_EXHAUSTED when the server holds its maximum.
    pub fn subscribe(&self, resume_after: i64) -> Result<Subscription> {
        let hub = &self.inner;
        let permit = hub.streams.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted {
                reason: "WATCH_STREAMS_EXHAUSTED",
                message: format!(
                    "this server holds its maximum of {} watch streams ([watch] max_streams); retry later or on another replica",
                    hub.settings.max_streams
                ),
            }
        })?;
        // Subscribed before anything is read: nothing falls in between.
        let live = hub.live.subscribe();
        let (cursor, behind) = if resume_after > 0 {
            (resume_after, true)
        } else {
            (hub.head.load(Ordering::Acquire), false)
        };
        Ok(Subscription {
            watch: self.clone(),
            live,
            cursor,
            behind,
            _permit: permit,
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.settings.max_streams - self.inner.streams.available_permits()
    }
}

/// What a stream learns next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    /// A change, in sequence order.
    Event(TokenEvent),
    /// Events the stream should have seen are gone: drop everything cached;
    /// the stream continues after this sequence.
    Resync(i64),
}

/// One open stream's place in the feed. Holds one of the server's stream
/// slots until dropped.
pub struct Subscription {
    watch: Watch,
    live: broadcast::Receiver<Arc<[TokenEvent]>>,
    /// Every event up to here was handed out (or the stream resynced).
    cursor: i64,
    /// Whether the store must be read before the live events.
    behind: bool,
    _permit: OwnedSemaphorePermit,
}

impl Subscription {
    /// Every event up to this sequence has been handed out.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The next items, or none if nothing came before `deadline`. An error
    /// is the store's (reading what the stream must catch up on) or the
    /// feed's end (the server is stopping).
    pub async fn next(&mut self, deadline: Instant) -> Result<Option<Vec<WatchItem>>> {
        loop {
            if self.behind {
                let items = self.catch_up().await?;
                if !items.is_empty() {
                    return Ok(Some(items));
                }
                continue;
            }
            let batch = match tokio::time::timeout_at(deadline, self.live.recv()).await {
                Err(_) => return Ok(None),
                Ok(Ok(batch)) => batch,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    self.behind = true;
                    continue;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(Error::Unavailable {
                        reason: "SERVER_STOPPING",
                        message: "the server is stopping; reconnect and resume",
                    });
                }
            };
            let fresh: Vec<_> = batch.iter().filter(|e| e.seq > self.cursor).collect();
            let Some(first) = fresh.first() else {
                continue;
            };
            if first.seq != self.cursor + 1 {
                // Not where this stream stands: read the store, which knows.
                self.behind = true;
                continue;
            }
            self.cursor = fresh.last().map_or(self.cursor, |e| e.seq);
            return Ok(Some(
                fresh.into_iter().cloned().map(WatchItem::Event).collect(),
            ));
        }
    }

    /// Reads from the store what comes after the cursor; a cursor outside
    /// the retained window resyncs. Clears `behind` once caught up.
    async fn catch_up(&mut self) -> Result<Vec<WatchItem>> {
        let hub = &self.watch.inner;
        let events = hub.store.events_after(self.cursor, READ_BATCH).await?;
        // Read after the events: a prune that removed some of them between
        // the two reads shows here.
        let window = hub.store.event_window().await?;
        let retained_from = window
            .floor
            .max(window.head - i64::try_from(hub.settings.retain_events).unwrap_or(i64::MAX));
        // A cursor beyond the head came from elsewhere (another deployment,
        // a restored database): resync too.
        if self.cursor < retained_from || self.cursor > window.head {
            self.cursor = window.head;
            // Whatever the live buffer holds up to the new cursor is skipped.
            self.behind = false;
            return Ok(vec![WatchItem::Resync(self.cursor)]);
        }
        if events.len() < READ_BATCH {
            self.behind = false;
        }
        if let Some(last) = events.last() {
            self.cursor = last.seq;
        }
        Ok(events.into_iter().map(WatchItem::Event).collect())
    }
}
