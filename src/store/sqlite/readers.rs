//! A few dedicated reader threads, each owning one read-only connection.
//!
//! The resolve path used to hand every read to tokio's blocking pool with
//! `spawn_blocking`: under load that meant one parked thread woken (a futex
//! wake and two context switches) per request, and up to one blocked thread
//! per request in flight, all contending for a few shared connections. The
//! benchmark showed that hand-off costing more server CPU than the read and
//! both decryptions together. Here each reader thread owns a connection and
//! a queue; a busy thread takes its next job without sleeping, so under load
//! a read costs no thread wake-up at all. Reads never run on the async
//! executor (a cold page read from disk blocks only a reader thread).

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce(&Connection) + Send>;

struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Jobs queued or running on this thread.
    load: Arc<AtomicUsize>,
}

/// Reader threads with a connection and a queue each; a job goes to the
/// least loaded one.
pub(super) struct ReadPool {
    workers: Vec<Worker>,
}

impl ReadPool {
    /// Starts one reader thread per connection. They exit when the pool is
    /// dropped (and close their connections).
    pub(super) fn new(connections: Vec<Connection>) -> Result<Self> {
        let workers = connections
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let (jobs, queue) = mpsc::channel::<Job>();
                let load = Arc::new(AtomicUsize::new(0));
                let done = load.clone();
                thread::Builder::new()
                    .name(format!("aitokens-read-{i}"))
                    .spawn(move || {
                        for job in queue {
                            // A panicking job loses only its own reply; a
                            // dropped transaction rolls back.
                            let _ = catch_unwind(AssertUnwindSafe(|| job(&conn)));
                            done.fetch_sub(1, Ordering::AcqRel);
                        }
                    })
                    .map_err(|e| Error::Internal(format!("starting a reader thread: {e}")))?;
                Ok(Worker { jobs, load })
            })
            .collect::<Result<Vec<_>>>()?;
        if workers.is_empty() {
            return Err(Error::Internal("a read pool needs a connection".into()));
        }
        Ok(Self { workers })
    }

    /// Runs `work` with a reader connection and waits for its result.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Acquire))
            .ok_or_else(|| Error::Internal("no reader thread".into()))?;
        let (reply, result) = oneshot::channel();
        worker.load.fetch_add(1, Ordering::AcqRel);
        // The caller's span (request id) follows the work to the thread.
        let span = tracing::Span::current();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(span.in_scope(|| work(conn)));
        });
        if worker.jobs.send(job).is_err() {
            worker.load.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Internal("a reader thread has stopped".into()));
        }
        result
            .await
            .map_err(|_| Error::Internal("a read failed without a result".into()))?
    }

    /// Runs `work` once on every reader connection (for checks in tests).
    #[cfg(test)]
    pub(super) async fn each<T: Send + 'static>(
        &self,
        work: impl Fn(&Connection) -> Result<T> + Send + Sync + 'static,
    ) -> Result<Vec<T>> {
        let work = Arc::new(work);
        let mut results = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (reply, result) = oneshot::channel();
            let work = work.clone();
            worker.load.fetch_add(1, Ordering::AcqRel);
            let job: Job = Box::new(move |conn| {
                let _ = reply.send(work(conn));
            });
            if worker.jobs.send(job).is_err() {
                return Err(Error::Internal("a reader thread has stopped".into()));
            }
            results.push(
                result
                    .await
                    .map_err(|_| Error::Internal("a read failed without a result".into()))??,
            );
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> ReadPool {
        let connections = (0..n)
            .map(|_| Connection::open_in_memory().expect("connection"))
            .collect();
        ReadPool::new(connections).expect("pool")
    }

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        let pool = pool(2);
        let answer = pool
            .run(|conn| Ok(conn.query_row("SELECT 41 + 1", [], |r| r.get::<_, i64>(0))?))
            .await;
        assert_eq!(answer.expect("ok"), 42);
        let err = pool
            .run(|_| -> Result<()> { panic!("boom") })
            .await
            .expect_err("panicked");
        assert!(matches!(err, Error::Internal(_)));
        // Many jobs in flight at once all get their own result.
        let pool = Arc::new(pool);
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move |_| Ok(i * 2)).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.expect("task").expect("ok"), i * 2);
        }
        assert_eq!(pool.each(|_| Ok(1)).await.expect("each").len(), 2);
    }
}
