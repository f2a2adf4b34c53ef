//! Group commit: concurrent `record` calls are coalesced into one store transaction per
//! round trip.
//!
//! Requests wait in a bounded queue. Each of a fixed number of writer tasks takes every
//! request waiting (up to `GROUP_COMMIT_BATCH_LEN_MAX`) and applies them as one batch, in
//! arrival order, in one transaction; while it waits on the store, new requests queue up
//! for the next free writer. There is no artificial delay: under light load a batch holds
//! one request, under heavy load batches grow with the queue. Each caller gets its own
//! answer only after its batch committed. A store error that is not an outage is retried
//! request by request, so one bad request cannot fail its neighbours.

use std::sync::Arc;

use tally_domain::{Timestamp, UsageOutcome, UsageRequest};
use tally_store::{Store, StoreError};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::clock::Clock;
use crate::error::ServiceError;

/// Most requests one group-commit transaction holds.
pub const GROUP_COMMIT_BATCH_LEN_MAX: usize = 512;
/// Requests that may wait for a writer; beyond it callers wait to enqueue (backpressure).
pub const GROUP_COMMIT_QUEUE_LEN_MAX: usize = 16_384;
/// Writers when the store takes concurrent transactions (PostgreSQL).
pub const GROUP_COMMIT_WRITERS_DEFAULT: usize = 2;

type Reply = oneshot::Sender<Result<UsageOutcome, ServiceError>>;

struct Job {
    req: UsageRequest,
    reply: Reply,
}

/// The queue in front of the writers.
pub struct GroupCommitter {
    tx: mpsc::Sender<Job>,
}

impl GroupCommitter {
    /// Starts `writers` writer tasks on the current tokio runtime.
    pub fn start<S: Store>(store: S, clock: Arc<dyn Clock>, writers: usize) -> GroupCommitter {
        let (tx, rx) = mpsc::channel::<Job>(GROUP_COMMIT_QUEUE_LEN_MAX);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (store, clock, rx) = (store.clone(), clock.clone(), rx.clone());
            tokio::spawn(async move { writer(store, clock, rx).await });
        }
        GroupCommitter { tx }
    }

    /// Queues one request and waits for its committed answer.
    pub async fn submit(&self, req: UsageRequest) -> Result<UsageOutcome, ServiceError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { req, reply })
            .await
            .map_err(|_| ServiceError::Unavailable("the writers have stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| ServiceError::Unavailable("the writer stopped before answering".to_owned()))?
    }
}

async fn writer<S: Store>(store: S, clock: Arc<dyn Clock>, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(GROUP_COMMIT_BATCH_LEN_MAX);
    loop {
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < GROUP_COMMIT_BATCH_LEN_MAX {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics_batch(jobs.len());
        apply(&store, clock.now(), &mut jobs).await;
    }
}

/// Group-commit batch sizes, in requests.
fn metrics_batch(n: usize) {
    metrics::histogram!("tally_group_commit_size").record(n as f64);
}

/// Applies `jobs` as one batch and answers each; empties `jobs`.
async fn apply<S: Store>(store: &S, now: Timestamp, jobs: &mut Vec<Job>) {
    let reqs: Vec<UsageRequest> = jobs.iter().map(|j| j.req.clone()).collect();
    match store.apply_usage(&reqs, now).await {
        Ok(results) if results.len() == jobs.len() => {
            for (job, result) in jobs.drain(..).zip(results) {
                let _ = job.reply.send(result.map_err(ServiceError::from));
            }
        }
        Ok(_) => {
            for job in jobs.drain(..) {
                let _ =
                    job.reply.send(Err(ServiceError::Internal("store answered a batch short".to_owned())));
            }
        }
        Err(e @ StoreError::Unavailable(_)) => {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(ServiceError::from(e.clone())));
            }
        }
        Err(e) if jobs.len() == 1 => {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(ServiceError::from(e.clone())));
            }
        }
        Err(e) => {
            // Isolate the failure: apply each request on its own.
            tracing::warn!(error = %e, n_events = jobs.len(), "group commit failed; applying one by one");
            for job in jobs.drain(..) {
                let result = match store.apply_usage(std::slice::from_ref(&job.req), now).await {
                    Ok(mut r) => r.pop().map_or_else(
                        || Err(ServiceError::Internal("store answered no result".to_owned())),
                        |x| x.map_err(ServiceError::from),
                    ),
                    Err(e) => Err(ServiceError::from(e)),
                };
                let _ = job.reply.send(result);
            }
        }
    }
}
