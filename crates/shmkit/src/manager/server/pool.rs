//! The memory that requests being read may take, shared by all connections.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::manager::pickle;

/// What requests being received and decoded may hold together, at least:
/// see [`Pool`].
const REQUEST_MEMORY: usize = 256 << 20;

/// Memory shared by all connections' requests. Before a request's payload
/// is read, its connection sets aside the payload's length plus what the
/// decoder may spend on it ([`request_budget`]), and waits while the
/// pool cannot give that much. The connection cap alone would not bound
/// memory ([`MAX_CONNECTIONS`](super::MAX_CONNECTIONS) connections each sending a longest request
/// would each be paid in full), and this pool alone would not bound threads:
/// hence both. The pool is never smaller than one longest request needs,
/// so every request the server accepts can be served.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) used: Mutex<usize>,
    freed: Condvar,
    pub(super) size: usize,
}

/// Decoder memory per byte of a request. Every request a manager serves is
/// a function name and a segment name or two, a few hundred bytes at most,
/// which the fixed [`pickle::BUDGET_BASE`] covers many times over; so
/// requests get a quarter of [`pickle::decode_budget`]'s allowance, and a
/// long pickle of cheap opcodes is refused after a few times its size.
const REQUEST_BUDGET_PER_BYTE: usize = 4;

/// The decoder's budget for a request of `len` bytes.
pub(super) fn request_budget(len: usize) -> usize {
    len.saturating_mul(REQUEST_BUDGET_PER_BYTE)
        .saturating_add(pickle::BUDGET_BASE)
}

/// What one request costs the [`Pool`]: its payload and the decoder's
/// budget for it.
pub(super) fn request_cost(len: usize) -> usize {
    len.saturating_add(request_budget(len))
}

impl Pool {
    pub(super) fn for_requests_up_to(max_len: usize) -> Pool {
        Pool {
            used: Mutex::new(0),
            freed: Condvar::new(),
            size: REQUEST_MEMORY.max(request_cost(max_len)),
        }
    }

    /// Sets `cost` bytes aside, waiting at most `timeout` (forever with
    /// `None`) for other requests to give them back.
    pub(super) fn take(&self, cost: usize, timeout: Option<Duration>) -> Option<Taken<'_>> {
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let short = |used: &mut usize| used.saturating_add(cost) > self.size;
        let mut used = match timeout {
            Some(t) => {
                let (guard, waited) = self
                    .freed
                    .wait_timeout_while(used, t, short)
                    .unwrap_or_else(PoisonError::into_inner);
                if waited.timed_out() && guard.saturating_add(cost) > self.size {
                    return None;
                }
                guard
            }
            None => self
                .freed
                .wait_while(used, short)
                .unwrap_or_else(PoisonError::into_inner),
        };
        *used += cost;
        Some(Taken { pool: self, cost })
    }
}

/// Bytes set aside in a [`Pool`], given back when dropped.
pub(super) struct Taken<'a> {
    pool: &'a Pool,
    cost: usize,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        *self
            .pool
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) -= self.cost;
        self.pool.freed.notify_all();
    }
}
