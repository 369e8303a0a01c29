//! A queue of byte messages in shared memory, for many producers and many
//! consumers in any processes, Rust or Python (`shmkit.queues` uses the
//! same segment: Rust pushes arrive in Python as `bytes`).
//!
//! A queue is a segment of its own, named like any
//! [`SharedMemory`] and marked `Kind::Queue` by the
//! [`object`](crate::object) header: a control block and a ring of
//! records (the `layout` module describes them).
//! Its memory is bounded twice: the ring's byte capacity, and optionally
//! a number of items.
//!
//! ```
//! use shmkit::queue::Queue;
//!
//! let q = Queue::create(1 << 16, 0)?;               // 64 KiB ring, no item bound
//! let other = Queue::open(q.name())?;                // another process would
//! q.push(b"hello")?;
//! q.push_many(&[b"a".as_slice(), b"b"])?;
//! assert_eq!(other.len(), 3);
//! assert_eq!(other.pop()?, b"hello");
//! assert_eq!(other.pop_many(10, None)?, [b"a".to_vec(), b"b".to_vec()]);
//! assert_eq!(other.try_pop()?, None);
//! q.unlink()?;
//! # Ok::<(), shmkit::Error>(())
//! ```
//!
//! # Robustness
//!
//! Producers take turns on one robust lock, consumers on another; each
//! publishes its work with one atomic store. So a process killed at any
//! moment never corrupts the queue nor blocks the others:
//!
//! - a producer killed before it publishes its record: the record is not
//!   there (the next producer writes over it); after: it is delivered;
//! - a consumer killed before it frees the record at the head: the record
//!   stays for the next consumer; after: that one record is lost;
//! - records that carry buffer segments (Python's large buffers) are
//!   marked while a producer makes them or a consumer takes them, so that
//!   the next one on that side removes whatever the dead one left: no
//!   segment leaks, and the record is dropped if its buffers were half
//!   taken.
//!
//! At most the one message in the killed process's hands is lost.
//!
//! # Waiting
//!
//! Blocking calls spin briefly, then sleep on a futex; a publisher makes
//! the wake call only when someone announced a sleep. The `_wait` calls
//! take a [`Wait`] (deadline, interruption hook).

mod layout;
mod ring;

use std::sync::atomic::Ordering;
use std::time::Duration;

pub use layout::{
    describe, max_message, State, BUFFERS, CONTROL_SIZE, DEFAULT_CAPACITY, DESCRIBE_PREFIX,
    INDIRECT, MAX_CAPACITY, MAX_ITEMS, MIN_CAPACITY, PICKLED,
};
pub use ring::Buffers;

use crate::object::{Kind, HEADER_SIZE};
use crate::sync::{Handle, Wait};
use crate::{Error, Options, Region, Result, SharedMemory};
use layout::{CAPACITY_AT, MAX_ITEMS_AT, MUTEXES};
use ring::Ring;

/// A queue of byte messages that processes share by name.
///
/// `Send + Sync`: threads may share one handle. See the [module
/// docs](self) for what happens when a process dies.
#[derive(Debug)]
pub struct Queue {
    handle: Handle<'static>,
    cap: u32,
    max_items: u32,
}

/// A message as a consumer took it: its flags ([`PICKLED`],
/// [`BUFFERS`]…), payload and buffer segments (already unlinked: each
/// lives as long as its mapping).
#[derive(Debug)]
pub struct Message {
    /// The record's flags.
    pub flags: u32,
    /// The payload (after the buffer table, if any).
    pub data: Vec<u8>,
    /// The buffer segments, for a record with [`BUFFERS`].
    pub buffers: Vec<SharedMemory>,
}

fn wait_of(timeout: Option<Duration>) -> Wait<'static> {
    match timeout {
        Some(t) => Wait::timeout(t),
        None => Wait::forever(),
    }
}

impl Queue {
    /// Creates a queue with a ring of `capacity` bytes (rounded up to a
    /// multiple of 8; see [`MIN_CAPACITY`], [`MAX_CAPACITY`] and
    /// [`DEFAULT_CAPACITY`]) holding at most `max_items` messages (0: only
    /// the ring bounds it), under a fresh `psm_` name.
    pub fn create(capacity: usize, max_items: u64) -> Result<Self> {
        Self::create_with(&Options::new(), None, capacity, max_items)
    }

    /// As [`create`](Self::create), under `name` (fails if taken).
    pub fn create_named(name: &str, capacity: usize, max_items: u64) -> Result<Self> {
        Self::create_with(&Options::new(), Some(name), capacity, max_items)
    }

    /// As [`create`](Self::create), with `options` (mode, `track`…), under
    /// `name` or a fresh one.
    pub fn create_with(
        options: &Options,
        name: Option<&str>,
        capacity: usize,
        max_items: u64,
    ) -> Result<Self> {
        let capacity = capacity.div_ceil(8) * 8;
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(Error::InvalidSize {
                size: capacity as u64,
                reason: "a queue's ring takes 64 bytes to 1 GiB",
            });
        }
        if max_items > MAX_ITEMS {
            return Err(Error::InvalidFlags("a queue holds at most 2^30 items"));
        }
        let handle = Handle::create(
            options,
            name,
            Kind::Queue,
            CONTROL_SIZE + capacity,
            MUTEXES,
            |region, at| ring::init(region, at, capacity, max_items),
        )?;
        Ok(Queue {
            handle,
            cap: capacity as u32,
            max_items: max_items as u32,
        })
    }

    /// Attaches to the queue called `name`.
    pub fn open(name: &str) -> Result<Self> {
        Self::open_with(&Options::new(), name)
    }

    /// Attaches to the queue called `name` with `options` (`track`).
    pub fn open_with(options: &Options, name: &str) -> Result<Self> {
        let handle = Handle::open(options, name, Kind::Queue, CONTROL_SIZE, MUTEXES)?;
        let region = handle.region();
        let at = handle.at();
        let cap = region.atomic_u64(at + CAPACITY_AT)?.load(Ordering::Relaxed);
        let max_items = region
            .atomic_u64(at + MAX_ITEMS_AT)?
            .load(Ordering::Relaxed);
        let fits = (cap as usize)
            .checked_add(HEADER_SIZE + CONTROL_SIZE)
            .is_some_and(|end| end <= region.len());
        let what = if cap % 8 != 0 || !(MIN_CAPACITY as u64..=MAX_CAPACITY as u64).contains(&cap) {
            Some("ring capacity out of range")
        } else if !fits {
            Some("ring larger than its segment")
        } else if max_items > MAX_ITEMS {
            Some("item bound out of range")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(Error::Corrupt {
                name: name.to_owned(),
                what,
            });
        }
        Ok(Queue {
            handle,
            cap: cap as u32,
            max_items: max_items as u32,
        })
    }

    fn ring(&self) -> Ring<'_> {
        Ring::new(
            self.handle.region(),
            self.name(),
            self.handle.at(),
            self.cap,
            self.max_items,
        )
        .expect("the control block was checked at create or open")
    }

    /// The queue's segment name.
    pub fn name(&self) -> &str {
        self.handle
            .name()
            .expect("a queue has a segment of its own")
    }

    /// The segment it lives in.
    pub fn shared_memory(&self) -> &SharedMemory {
        self.handle
            .shared_memory()
            .expect("a queue has a segment of its own")
    }

    /// Removes the queue's name (attached handles keep working), and any
    /// buffer segments of messages still in it.
    pub fn unlink(&self) -> Result<()> {
        self.handle.unlink()?;
        let prefix = format!("{}_", self.name());
        if let Ok(entries) = crate::sys::shm_entries() {
            for entry in entries {
                if let Some(n) = entry.to_str() {
                    let rest = n.strip_prefix(&prefix).unwrap_or("");
                    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                        let _ = crate::unlink(n);
                    }
                }
            }
        }
        Ok(())
    }

    /// The ring's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// The most messages it holds (0: only the ring bounds it).
    pub fn max_items(&self) -> u64 {
        u64::from(self.max_items)
    }

    /// The longest message it takes: half the ring, less a header.
    pub fn max_message(&self) -> usize {
        max_message(self.cap as usize)
    }

    /// Messages in it now (others may change it at any time).
    pub fn len(&self) -> usize {
        self.ring().usage().0 as usize
    }

    /// Ring bytes in use now, headers and padding included.
    pub fn used_bytes(&self) -> usize {
        self.ring().usage().1 as usize
    }

    /// Whether it holds no message now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it holds `max_items` messages now, or a small message would
    /// not fit the ring.
    pub fn is_full(&self) -> bool {
        !self.ring().has_room(0)
    }

    /// Pushes a message, waiting as long as it takes for room.
    /// [`Error::MessageTooLarge`] for one longer than
    /// [`max_message`](Self::max_message).
    pub fn push(&self, msg: &[u8]) -> Result<()> {
        self.push_wait(msg, &mut Wait::forever()).map(|_| ())
    }

    /// Pushes a message, waiting at most `timeout`; whether it did.
    pub fn push_timeout(&self, msg: &[u8], timeout: Duration) -> Result<bool> {
        self.push_wait(msg, &mut Wait::timeout(timeout))
    }

    /// Pushes a message if there is room now; whether it did.
    pub fn try_push(&self, msg: &[u8]) -> Result<bool> {
        self.push_wait(msg, &mut Wait::no_wait())
    }

    /// Pushes a message within the wait's limits; whether it did
    /// ([`Error::Interrupted`] when the wait's hook asked to stop).
    pub fn push_wait(&self, msg: &[u8], wait: &mut Wait<'_>) -> Result<bool> {
        let n = self.push_records(&[msg.len()], &[0], wait, |_, region, at| {
            region.write_at(at, msg)
        })?;
        Ok(n == 1)
    }

    /// Pushes messages in order, publishing as many at once as fit, waiting
    /// as long as it takes for room.
    pub fn push_many<M: AsRef<[u8]>>(&self, msgs: &[M]) -> Result<()> {
        self.push_many_wait(msgs, &mut Wait::forever()).map(|_| ())
    }

    /// Pushes messages in order within the wait's limits; how many were
    /// pushed (the first ones) when the wait ended.
    pub fn push_many_wait<M: AsRef<[u8]>>(&self, msgs: &[M], wait: &mut Wait<'_>) -> Result<usize> {
        let lens: Vec<usize> = msgs.iter().map(|m| m.as_ref().len()).collect();
        self.push_records(&lens, &[0], wait, |i, region, at| {
            region.write_at(at, msgs[i].as_ref())
        })
    }

    /// Pops the oldest message, waiting as long as it takes.
    pub fn pop(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.pop_into(&mut out)?;
        Ok(out)
    }

    /// Pops the oldest message into `buf` (replacing its contents, reusing
    /// its allocation), waiting as long as it takes.
    pub fn pop_into(&self, buf: &mut Vec<u8>) -> Result<()> {
        self.pop_into_wait(buf, &mut Wait::forever()).map(|_| ())
    }

    /// Pops the oldest message into `buf` within the wait's limits; whether
    /// it did.
    pub fn pop_into_wait(&self, buf: &mut Vec<u8>, wait: &mut Wait<'_>) -> Result<bool> {
        let got = self.pop_records(1, wait, |region, at, len, _, _| {
            buf.clear();
            buf.resize(len, 0);
            region.read_at(at, buf)
        })?;
        match got.into_iter().next() {
            Some(r) => r.map(|()| true),
            None => Ok(false),
        }
    }

    /// Pops the oldest message, waiting at most `timeout`.
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        self.pop_wait(&mut Wait::timeout(timeout))
    }

    /// Pops the oldest message if there is one now.
    pub fn try_pop(&self) -> Result<Option<Vec<u8>>> {
        self.pop_wait(&mut Wait::no_wait())
    }

    /// Pops the oldest message within the wait's limits.
    pub fn pop_wait(&self, wait: &mut Wait<'_>) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self.pop_into_wait(&mut out, wait)?.then_some(out))
    }

    /// Pops up to `max` messages: those there once the first arrives,
    /// waiting for it at most `timeout` (`None`: as long as it takes).
    /// Empty if the timeout passed first.
    pub fn pop_many(&self, max: usize, timeout: Option<Duration>) -> Result<Vec<Vec<u8>>> {
        self.pop_records(max, &mut wait_of(timeout), |region, at, len, _, _| {
            region.read_vec(at, len)
        })?
        .into_iter()
        .collect()
    }

    /// Pops the oldest message with its flags and buffer segments, within
    /// the wait's limits.
    pub fn pop_message(&self, wait: &mut Wait<'_>) -> Result<Option<Message>> {
        let got = self.pop_records(1, wait, |region, at, len, flags, buffers| {
            Ok(Message {
                flags,
                data: region.read_vec(at, len)?,
                buffers: buffers?,
            })
        })?;
        got.into_iter().next().transpose()
    }

    /// The general push: records of `lens[i]` bytes with flags `flags[i]`
    /// (or `flags[0]` for all; [`PICKLED`] and [`INDIRECT`] are for
    /// Python's use), each written by `write(i, region, offset)` into the
    /// ring in place, pushed in order within the wait's limits, as many at
    /// once as fit. How many were pushed. `write` runs with the producers'
    /// lock held: it must not wait for anything another producer does.
    pub fn push_records(
        &self,
        lens: &[usize],
        flags: &[u32],
        wait: &mut Wait<'_>,
        write: impl FnMut(usize, &Region, usize) -> Result<()>,
    ) -> Result<usize> {
        self.ring().push(lens, flags, wait, write)
    }

    /// Pushes one record whose large parts travel in segments of their own:
    /// one new segment per entry of `sizes`, filled by `fill(i, region)`,
    /// named after the queue, and taken (attached, unlinked) by the
    /// consumer; `payload` goes through the ring. Whether it was pushed
    /// within the wait's limits.
    pub fn push_with_buffers(
        &self,
        payload: &[u8],
        flags: u32,
        sizes: &[usize],
        wait: &mut Wait<'_>,
        fill: impl FnMut(usize, &Region) -> Result<()>,
    ) -> Result<bool> {
        let name = self.name().to_owned();
        self.ring()
            .push_buffers(&name, payload, flags, sizes, wait, fill)
    }

    /// The general pop: up to `max` records (at least one, waiting within
    /// the wait's limits; none when it ended), each handed to `read(region,
    /// offset, len, flags, buffers)` in place in the ring, with the
    /// consumers' lock held.
    pub fn pop_records<R>(
        &self,
        max: usize,
        wait: &mut Wait<'_>,
        mut read: impl FnMut(&Region, usize, usize, u32, Buffers) -> R,
    ) -> Result<Vec<R>> {
        let mut out = Vec::new();
        self.ring()
            .pop(max, wait, |region, at, len, flags, buffers| {
                out.push(read(region, at, len, flags, buffers))
            })?;
        Ok(out)
    }

    /// As [`pop_records`](Self::pop_records), with `read` keeping what it
    /// reads: how many records it was handed.
    pub fn pop_each(
        &self,
        max: usize,
        wait: &mut Wait<'_>,
        read: impl FnMut(&Region, usize, usize, u32, Buffers),
    ) -> Result<usize> {
        self.ring().pop(max, wait, read)
    }

    /// Whether a message of `len` bytes would fit now.
    pub fn has_room(&self, len: usize) -> bool {
        self.ring().has_room(len)
    }

    /// Messages pushed but not yet marked done with
    /// [`task_done`](Self::task_done).
    pub fn unfinished_tasks(&self) -> u64 {
        u64::from(self.ring().unfinished())
    }

    /// Marks one pushed message's task done (as
    /// `multiprocessing.JoinableQueue.task_done`); `false` if every task is
    /// done already.
    pub fn task_done(&self) -> bool {
        self.ring().task_done()
    }

    /// Waits, within the wait's limits, until every message pushed has
    /// been marked done; whether that happened.
    pub fn join_wait(&self, wait: &mut Wait<'_>) -> Result<bool> {
        self.ring().join(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_around_and_keeps_order() {
        let q = Queue::create(256, 0).unwrap();
        let mut next = 0u32;
        let mut expect = 0u32;
        for round in 0..200 {
            let len = (round * 7) % 60;
            let msg: Vec<u8> = vec![next as u8; len];
            if q.try_push(&msg).unwrap() {
                next += 1;
            } else {
                let got = q.try_pop().unwrap().unwrap();
                assert!(got.iter().all(|&b| b == expect as u8));
                expect += 1;
            }
        }
        while let Some(got) = q.try_pop().unwrap() {
            assert!(got.iter().all(|&b| b == expect as u8));
            expect += 1;
        }
        assert_eq!(expect, next);
        assert!(q.is_empty());
        q.unlink().unwrap();
    }

    #[test]
    fn bounds_by_items_and_bytes() {
        let q = Queue::create(128, 2).unwrap();
        assert!(q.try_push(b"a").unwrap());
        assert!(q.try_push(b"b").unwrap());
        assert!(q.is_full());
        assert!(!q.try_push(b"c").unwrap());
        assert_eq!(q.pop().unwrap(), b"a");
        assert!(q.try_push(b"c").unwrap());
        let err = q.push(&[0u8; 57]).unwrap_err();
        assert!(
            matches!(err, Error::MessageTooLarge { size: 57, max: 56 }),
            "{err}"
        );
        let q2 = Queue::create(128, 0).unwrap();
        assert!(q2.try_push(&[1u8; 56]).unwrap());
        assert!(!q2.try_push(&[1u8; 56]).unwrap() || q2.len() == 2);
        q.unlink().unwrap();
        q2.unlink().unwrap();
    }

    #[test]
    fn timeouts_end_waits_on_both_sides() {
        let q = Queue::create(64, 1).unwrap();
        assert_eq!(q.pop_timeout(Duration::from_millis(20)).unwrap(), None);
        q.push(b"x").unwrap();
        assert!(!q.push_timeout(b"y", Duration::from_millis(20)).unwrap());
        assert!(q.pop_many(5, Some(Duration::ZERO)).unwrap().len() == 1);
        q.unlink().unwrap();
    }

    #[test]
    fn threads_hand_over_every_message_once() {
        let q = std::sync::Arc::new(Queue::create(1024, 0).unwrap());
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u32 {
                        q.push(&(p * 1_000_000 + i).to_le_bytes()).unwrap();
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let batch = q.pop_many(16, Some(Duration::from_millis(300))).unwrap();
                        if batch.is_empty() {
                            return got;
                        }
                        got.extend(
                            batch
                                .into_iter()
                                .map(|m| u32::from_le_bytes(m.try_into().unwrap())),
                        );
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<u32> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        let want: Vec<u32> = (0..3u32)
            .flat_map(|p| (0..2000).map(move |i| p * 1_000_000 + i))
            .collect();
        assert_eq!(all, want);
        q.unlink().unwrap();
    }

    #[test]
    fn buffers_travel_by_segment_and_leave_nothing() {
        let q = Queue::create(4096, 0).unwrap();
        let big = vec![7u8; 100_000];
        assert!(q
            .push_with_buffers(
                b"head",
                PICKLED,
                &[big.len(), 3],
                &mut Wait::forever(),
                |i, r| { r.write_at(0, if i == 0 { &big } else { b"abc" }) }
            )
            .unwrap());
        let m = q.pop_message(&mut Wait::forever()).unwrap().unwrap();
        assert_eq!(m.flags & (PICKLED | BUFFERS), PICKLED | BUFFERS);
        assert_eq!(m.data, b"head");
        assert_eq!(m.buffers.len(), 2);
        assert_eq!(m.buffers[0].read_vec(0, 100_000).unwrap(), big);
        assert_eq!(m.buffers[1].read_vec(0, 3).unwrap(), b"abc");
        for b in &m.buffers {
            assert!(!crate::exists(b.name()));
        }
        // One left in the queue is removed with it.
        assert!(q
            .push_with_buffers(b"", 0, &[10], &mut Wait::forever(), |_, _| Ok(()))
            .unwrap());
        let left = format!("{}_2", q.name());
        assert!(crate::exists(&left), "{left}");
        q.unlink().unwrap();
        assert!(!crate::exists(&left));
    }

    #[test]
    fn task_done_counts_against_pushes() {
        let q = Queue::create(256, 0).unwrap();
        assert!(!q.task_done());
        q.push(b"a").unwrap();
        q.push(b"b").unwrap();
        assert_eq!(q.unfinished_tasks(), 2);
        assert!(!q
            .join_wait(&mut Wait::timeout(Duration::from_millis(5)))
            .unwrap());
        assert!(q.task_done() && q.task_done() && !q.task_done());
        assert!(q.join_wait(&mut Wait::no_wait()).unwrap());
        q.unlink().unwrap();
    }
}
