//! A few dedicated threads that run the store's reads (get, list, resolve).
//!
//! The hot path used to hand every read to tokio's blocking pool with
//! `spawn_blocking`: under load that meant one parked thread woken (a futex
//! wake and two context switches) per request, and up to one blocked thread
//! per request in flight, all contending for the store's few reader
//! connections. The benchmark showed that hand-off costing more server CPU
//! than the read and both decryptions together. Here each reader thread owns
//! a queue; a busy thread takes its next job without sleeping, so under load
//! a read costs no thread wake-up at all. Reads still never run on the async
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

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Jobs queued or running on this thread.
    load: Arc<AtomicUsize>,
}

/// Reader threads with a queue each; a job goes to the least loaded one.
pub(super) struct ReadPool {
    workers: Vec<Worker>,
}

impl ReadPool {
    /// Starts `threads` reader threads. They exit when the pool is dropped.
    pub(super) fn new(threads: usize) -> Result<Self> {
        let workers = (0..threads.max(1))
            .map(|i| {
                let (jobs, queue) = mpsc::channel::<Job>();
                let load = Arc::new(AtomicUsize::new(0));
                let done = load.clone();
                thread::Builder::new()
                    .name(format!("aitokens-read-{i}"))
                    .spawn(move || {
                        for job in queue {
                            // A panicking job loses only its own reply.
                            let _ = catch_unwind(AssertUnwindSafe(job));
                            done.fetch_sub(1, Ordering::AcqRel);
                        }
                    })
                    .map_err(|e| Error::Internal(format!("starting a reader thread: {e}")))?;
                Ok(Worker { jobs, load })
            })
            .collect::<Result<_>>()?;
        Ok(Self { workers })
    }

    /// Runs `work` on a reader thread and waits for its result.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
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
        let job: Job = Box::new(move || {
            let _ = reply.send(span.in_scope(work));
        });
        if worker.jobs.send(job).is_err() {
            worker.load.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Internal("a reader thread has stopped".into()));
        }
        result
            .await
            .map_err(|_| Error::Internal("a read failed without a result".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        let pool = ReadPool::new(2).expect("pool");
        assert_eq!(pool.run(|| Ok(41 + 1)).await.expect("ok"), 42);
        let err = pool
            .run(|| -> Result<()> { panic!("boom") })
            .await
            .expect_err("panicked");
        assert!(matches!(err, Error::Internal(_)));
        // Many jobs in flight at once all get their own result.
        let pool = Arc::new(pool);
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || Ok(i * 2)).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.expect("task").expect("ok"), i * 2);
        }
    }
}
