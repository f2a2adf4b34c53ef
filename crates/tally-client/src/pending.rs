//! The fail-open queue: usage that was allowed while Tally could not be reached, waiting to
//! be replayed with its idempotency key.
//!
//! It lives in memory only: **what it holds is lost if the process dies** (or the
//! [`Client`](crate::Client) and all its clones are dropped) before
//! [`Client::replay_pending`](crate::Client::replay_pending) succeeded.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Problem};
use crate::types::UsageRequest;

/// How many usage events the fail-open queue holds by default (a batch counts its events).
/// Beyond it, a fail-open call still answers "allowed" but its usage is dropped
/// ([`Recorded::Dropped`](crate::Recorded::Dropped)).
pub const PENDING_USAGE_MAX: usize = 10_000;

/// How many queued events one replay request carries (one `POST .../usage/batch`). Below the
/// API's 1000 per batch, so that events with large metadata stay under the 4 MiB body limit.
pub const REPLAY_BATCH_LEN: usize = 250;

/// A usage event waiting in the fail-open queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PendingUsage {
    /// The tenant.
    pub tenant_id: String,
    /// The request, exactly as first sent: with its idempotency key, so that a replay of a
    /// request that did reach Tally is answered `replayed: true` and counted once.
    pub request: UsageRequest,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// Why: the error of the last attempt.
    pub cause: String,
}

/// A queued event that Tally refused on replay (a 4xx for the item: over a HARD limit by
/// now, out of the event-time window, ...). It left the queue: a retry would get the same
/// answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RejectedUsage {
    /// The event.
    pub usage: PendingUsage,
    /// Tally's answer.
    pub problem: Problem,
}

/// What [`Client::replay_pending`](crate::Client::replay_pending) did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Events recorded now.
    pub recorded: usize,
    /// Events Tally had already recorded (the first attempt reached it; answered
    /// `replayed: true`, counted once).
    pub already_recorded: usize,
    /// Events Tally refused; they left the queue.
    pub rejected: Vec<RejectedUsage>,
    /// Events still queued when the replay ended (queued meanwhile, or not sent because
    /// Tally could not be reached).
    pub remaining: usize,
}

/// A replay that stopped before the queue was empty because Tally could not be reached (or
/// refused the key itself: 401, 403). What it did before stopping is in `report`; the events
/// not replayed stay queued, in order.
#[derive(Debug, thiserror::Error)]
#[error("replay of queued usage stopped ({} left): {cause}", .report.remaining)]
#[non_exhaustive]
pub struct ReplayError {
    /// What was done before it stopped.
    pub report: ReplayReport,
    /// Why it stopped.
    #[source]
    pub cause: Error,
}

struct Entry {
    seq: u64,
    usage: PendingUsage,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    entries: VecDeque<Entry>,
    dropped: u64,
}

/// The bounded queue, shared by a client and its clones. Its lock is never held across an
/// await.
pub(crate) struct PendingQueue {
    capacity: usize,
    state: Mutex<State>,
}

impl PendingQueue {
    pub(crate) fn new(capacity: usize) -> PendingQueue {
        PendingQueue { capacity, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock cannot leave the queue half-changed: every
        // change below is one push, one removal or a counter.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues all of `usages` or none: false (and counted as dropped) when they do not fit.
    pub(crate) fn push_all(&self, usages: Vec<PendingUsage>) -> bool {
        let mut state = self.lock();
        if state.entries.len().saturating_add(usages.len()) > self.capacity {
            state.dropped = state.dropped.saturating_add(usages.len() as u64);
            return false;
        }
        for usage in usages {
            let seq = state.next_seq;
            state.next_seq += 1;
            state.entries.push_back(Entry { seq, usage });
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    pub(crate) fn snapshot(&self) -> Vec<PendingUsage> {
        self.lock().entries.iter().map(|e| e.usage.clone()).collect()
    }

    /// The oldest events of the oldest event's tenant, in order, up to `max`: they stay queued
    /// until [`PendingQueue::remove`].
    pub(crate) fn front_chunk(&self, max: usize) -> Vec<(u64, PendingUsage)> {
        let state = self.lock();
        let Some(first) = state.entries.front() else {
            return Vec::new();
        };
        let tenant = first.usage.tenant_id.clone();
        state
            .entries
            .iter()
            .take_while(|e| e.usage.tenant_id == tenant)
            .take(max)
            .map(|e| (e.seq, e.usage.clone()))
            .collect()
    }

    /// Removes the events with these sequence numbers.
    pub(crate) fn remove(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        self.lock().entries.retain(|e| !seqs.contains(&e.seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(tenant: &str, key: &str) -> PendingUsage {
        PendingUsage {
            tenant_id: tenant.to_owned(),
            request: UsageRequest::new("api_calls", 1).with_idempotency_key(key),
            queued_at: Utc::now(),
            cause: "test".to_owned(),
        }
    }

    #[test]
    fn the_queue_is_bounded_all_or_nothing() {
        let q = PendingQueue::new(3);
        assert!(q.push_all(vec![usage("a", "1"), usage("a", "2")]));
        assert!(!q.push_all(vec![usage("a", "3"), usage("a", "4")]), "two more do not fit in 3");
        assert_eq!((q.len(), q.dropped()), (2, 2));
        assert!(q.push_all(vec![usage("a", "3")]));
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn chunks_take_one_tenant_in_order_and_removal_is_by_sequence() {
        let q = PendingQueue::new(10);
        assert!(q.push_all(vec![usage("a", "1"), usage("a", "2"), usage("b", "3"), usage("a", "4")]));
        let chunk = q.front_chunk(10);
        let keys: Vec<_> = chunk.iter().filter_map(|(_, u)| u.request.idempotency_key.clone()).collect();
        assert_eq!(keys, ["1", "2"]);
        assert_eq!(q.front_chunk(1).len(), 1);
        q.remove(&chunk.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        let left: Vec<_> = q.snapshot().into_iter().filter_map(|u| u.request.idempotency_key).collect();
        assert_eq!(left, ["3", "4"]);
    }
}
