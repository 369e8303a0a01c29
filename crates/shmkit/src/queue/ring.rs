//! The ring of records and the two locks around it.
//!
//! Producers take turns on the producers' lock, consumers on the
//! consumers' lock; between the sides only the head and tail words pass
//! (release/acquire), so one producer and one consumer never wait for
//! each other's lock. A producer writes its record past the tail, then
//! publishes the new tail; a consumer copies the record at the head out,
//! then publishes the new head. Each publication is one atomic store, so
//! whoever dies, at whatever moment, leaves a ring that is whole: a
//! record is either published or not, freed or not.
//!
//! Sleeping: each side has a wake word with a "someone may sleep" bit. A
//! sleeper sets the bit, then looks at the ring once more, then sleeps
//! while the word is unchanged; a publisher, after its store, looks at
//! the bit and only when it is set bumps the word and wakes. A full fence
//! on each side of that exchange makes sure that at least one of the two
//! sees the other. A sleeper that dies leaves the bit set, which costs one
//! wake that finds nobody.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use super::layout::*;
use crate::sync::{block_on, Acquired, LockState, Step, Wait};
use crate::sys::futex;
use crate::{Error, Options, Region, Result, SharedMemory};

/// A record found at the head.
struct Record {
    /// Offset of its header in the ring.
    start: u32,
    len: usize,
    flags: u32,
    /// Ring offset after it.
    next: u32,
}

/// Where a record goes.
struct Slot {
    /// Offset of a wrap record to write first, if the record does not fit
    /// before the end.
    wrap_at: Option<u32>,
    start: u32,
    next: u32,
}

/// Releases a lock when dropped, so that an error on the way out never
/// leaves it held.
struct Held<'a, 'r>(&'a LockState<'r>);

impl Drop for Held<'_, '_> {
    fn drop(&mut self) {
        // This thread holds it: release cannot fail.
        let _ = self.0.release();
    }
}

/// A view of one queue's control block and ring, made per operation.
pub(crate) struct Ring<'a> {
    region: &'a Region,
    name: &'a str,
    /// Absolute offset of the ring's first byte.
    data: usize,
    cap: u32,
    max_items: u32,
    tail: &'a AtomicU64,
    head: &'a AtomicU64,
    pending: &'a AtomicU64,
    taking: &'a AtomicU64,
    not_empty: &'a AtomicU32,
    not_full: &'a AtomicU32,
    done: &'a AtomicU32,
    done_wake: &'a AtomicU32,
    seq: &'a AtomicU64,
    producer: LockState<'a>,
    consumer: LockState<'a>,
}

/// Writes a fresh queue's control block at `at` of `region`.
pub(crate) fn init(region: &Region, at: usize, capacity: usize, max_items: u64) -> Result<()> {
    region
        .atomic_u64(at + CAPACITY_AT)?
        .store(capacity as u64, Ordering::Relaxed);
    region
        .atomic_u64(at + MAX_ITEMS_AT)?
        .store(max_items, Ordering::Relaxed);
    LockState::init(region, at + PRODUCER_LOCK_AT)?;
    LockState::init(region, at + CONSUMER_LOCK_AT)?;
    for word in [TAIL_AT, PENDING_AT, HEAD_AT, TAKING_AT, BUFFER_SEQ_AT] {
        region.atomic_u64(at + word)?.store(0, Ordering::Relaxed);
    }
    for word in [NOT_EMPTY_AT, NOT_FULL_AT, DONE_AT, DONE_WAKE_AT] {
        region.atomic_u32(at + word)?.store(0, Ordering::Relaxed);
    }
    Ok(())
}

/// Wakes whoever may sleep on `word`, if anyone announced it.
fn notify(word: &AtomicU32) {
    fence(Ordering::SeqCst);
    let mut v = word.load(Ordering::Relaxed);
    if v & SLEEPERS == 0 {
        return;
    }
    loop {
        let new = v.wrapping_add(1) & !SLEEPERS;
        match word.compare_exchange_weak(v, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break,
            Err(now) => v = now,
        }
    }
    futex::wake(word, u32::MAX);
}

/// How long a queue wait keeps looking, with CPU pauses in between,
/// before it goes to the sync helper's short spin and sleep. A producer
/// and a consumer that keep pace hand items over more often than that,
/// and each sleep costs its waker a system call; much longer, and a
/// waiter takes the CPU from the process it waits for, where processes
/// outnumber CPUs.
const QUEUE_SPIN: std::time::Duration = std::time::Duration::from_micros(10);

/// Waits on `word` until `ready()` within the wait's limits; whether it
/// became ready.
fn wait_for(word: &AtomicU32, wait: &mut Wait<'_>, ready: impl Fn() -> bool) -> Result<bool> {
    if ready() {
        return Ok(true);
    }
    if wait.blocks() {
        let start = std::time::Instant::now();
        'spin: loop {
            for _ in 0..32 {
                std::hint::spin_loop();
                if ready() {
                    return Ok(true);
                }
            }
            if start.elapsed() >= QUEUE_SPIN {
                break 'spin;
            }
        }
    }
    let got = block_on(word, wait, |sleeping| {
        if ready() {
            return Step::Done(());
        }
        if !sleeping {
            return Step::Retry;
        }
        let v = word.load(Ordering::Relaxed);
        if v & SLEEPERS == 0
            && word
                .compare_exchange(v, v | SLEEPERS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Step::Retry;
        }
        fence(Ordering::SeqCst);
        if ready() {
            Step::Done(())
        } else {
            Step::Sleep(v | SLEEPERS)
        }
    })?;
    Ok(got.is_some())
}

/// What a consumer hands a record's reader: the payload's place and
/// length, its flags, and its buffer segments (already unlinked), or the
/// error that made one unavailable.
pub type Buffers = Result<Vec<SharedMemory>>;

impl<'a> Ring<'a> {
    /// The queue whose control block is at `at` of `region`, with the
    /// capacity and bound read (and checked) when it was opened.
    pub(crate) fn new(
        region: &'a Region,
        name: &'a str,
        at: usize,
        cap: u32,
        max_items: u32,
    ) -> Result<Self> {
        Ok(Ring {
            region,
            name,
            data: at + CONTROL_SIZE,
            cap,
            max_items,
            tail: region.atomic_u64(at + TAIL_AT)?,
            head: region.atomic_u64(at + HEAD_AT)?,
            pending: region.atomic_u64(at + PENDING_AT)?,
            taking: region.atomic_u64(at + TAKING_AT)?,
            not_empty: region.atomic_u32(at + NOT_EMPTY_AT)?,
            not_full: region.atomic_u32(at + NOT_FULL_AT)?,
            done: region.atomic_u32(at + DONE_AT)?,
            done_wake: region.atomic_u32(at + DONE_WAKE_AT)?,
            seq: region.atomic_u64(at + BUFFER_SEQ_AT)?,
            producer: LockState::new(region, at + PRODUCER_LOCK_AT, false)?,
            consumer: LockState::new(region, at + CONSUMER_LOCK_AT, false)?,
        })
    }

    fn corrupt(&self, what: &'static str) -> Error {
        Error::Corrupt {
            name: self.name.to_owned(),
            what,
        }
    }

    /// A head or tail word, checked.
    fn word(&self, word: &AtomicU64, order: Ordering) -> Result<u64> {
        let w = word.load(order);
        let off = split(w).1;
        if off >= self.cap || off % 8 != 0 {
            return Err(self.corrupt("head or tail offset out of range"));
        }
        Ok(w)
    }

    /// Items and bytes in use, from a look at both words.
    pub(crate) fn usage(&self) -> (u32, u32) {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        let (items, bytes) = used(head, tail, self.cap);
        (items, bytes.min(self.cap))
    }

    pub(crate) fn max_message(&self) -> usize {
        max_message(self.cap as usize)
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.max_message() {
            return Err(Error::MessageTooLarge {
                size: len,
                max: self.max_message(),
            });
        }
        Ok(())
    }

    /// Where a record of `len` bytes goes after `tail`, or `None` if the
    /// queue is full for it.
    fn reserve(&self, head: u64, tail: u64, len: usize) -> Option<Slot> {
        let (items, used) = used(head, tail, self.cap);
        if (self.max_items != 0 && items >= self.max_items) || items >= u32::MAX / 2 {
            return None;
        }
        let free = self.cap.checked_sub(used)? as usize;
        let need = record_size(len);
        let to = split(tail).1 as usize;
        let to_end = self.cap as usize - to;
        if need <= to_end {
            (need <= free).then(|| Slot {
                wrap_at: None,
                start: to as u32,
                next: ((to + need) % self.cap as usize) as u32,
            })
        } else {
            (to_end + need <= free).then(|| Slot {
                wrap_at: Some(to as u32),
                start: 0,
                next: (need % self.cap as usize) as u32,
            })
        }
    }

    /// Whether a record of `len` bytes would fit now (a look without the
    /// lock, to decide whether to try again).
    pub(crate) fn has_room(&self, len: usize) -> bool {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        split(tail).1 < self.cap && self.reserve(head, tail, len).is_some()
    }

    pub(crate) fn has_items(&self) -> bool {
        self.usage().0 > 0
    }

    fn write_header(&self, at: u32, len: usize, flags: u32) -> Result<()> {
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&(len as u32).to_le_bytes());
        header[4..].copy_from_slice(&flags.to_le_bytes());
        self.region.write_at(self.data + at as usize, &header)
    }

    fn read_header(&self, at: u32) -> Result<(usize, u32)> {
        let mut header = [0u8; RECORD_HEADER];
        self.region.read_at(self.data + at as usize, &mut header)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let flags = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        Ok((len as usize, flags))
    }

    /// The record starting at offset `at` (following a wrap record there),
    /// checked to lie inside the ring.
    fn record_at(&self, mut at: u32) -> Result<Record> {
        let (mut len, mut flags) = self.read_header(at)?;
        if flags & WRAP != 0 {
            at = 0;
            (len, flags) = self.read_header(0)?;
            if flags & WRAP != 0 {
                return Err(self.corrupt("a wrap record at the ring's start"));
            }
        }
        if len > self.max_message() {
            return Err(self.corrupt("a record longer than the ring allows"));
        }
        let end = at as usize + record_size(len);
        if end > self.cap as usize {
            return Err(self.corrupt("a record running past the ring's end"));
        }
        Ok(Record {
            start: at,
            len,
            flags,
            next: (end % self.cap as usize) as u32,
        })
    }

    /// The first published record after `head`, if any.
    fn peek(&self, head: u64, tail: u64) -> Result<Option<Record>> {
        if used(head, tail, self.cap).0 == 0 {
            return Ok(None);
        }
        self.record_at(split(head).1).map(Some)
    }

    /// The buffer names of a record with buffers.
    fn names_of(&self, rec: &Record) -> Result<(Vec<String>, usize)> {
        let bytes = self
            .region
            .read_vec(self.data + rec.start as usize + RECORD_HEADER, rec.len)?;
        decode_table(&bytes).ok_or_else(|| self.corrupt("a malformed buffer table"))
    }

    /// Takes the producers' lock within the wait's limits, cleaning up
    /// after a producer that died holding it.
    fn lock_producers(&self, wait: &mut Wait<'_>) -> Result<Option<Held<'_, 'a>>> {
        let Some(got) = self.producer.acquire(wait)? else {
            return Ok(None);
        };
        let held = Held(&self.producer);
        if got == Acquired::OwnerDied {
            self.repair_producers()?;
            self.producer.mark_repaired();
        }
        Ok(Some(held))
    }

    /// A producer died holding the lock. Its record, if unpublished, is
    /// simply overwritten by the next; only buffer segments it made for
    /// that record need removing.
    fn repair_producers(&self) -> Result<()> {
        let pending = self.pending.load(Ordering::Relaxed);
        if pending == 0 {
            return Ok(());
        }
        let tail = self.word(self.tail, Ordering::Relaxed)?;
        if pending == tail.wrapping_add(1) {
            // Written whole before `pending` was set.
            let rec = self.record_at(split(tail).1)?;
            if rec.flags & BUFFERS != 0 {
                let (names, _) = self.names_of(&rec)?;
                for name in names {
                    let _ = crate::unlink(&name);
                }
            }
        }
        self.pending.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn lock_consumers(&self, wait: &mut Wait<'_>) -> Result<Option<Held<'_, 'a>>> {
        let Some(got) = self.consumer.acquire(wait)? else {
            return Ok(None);
        };
        let held = Held(&self.consumer);
        if got == Acquired::OwnerDied {
            self.repair_consumers()?;
            self.consumer.mark_repaired();
        }
        Ok(Some(held))
    }

    /// A consumer died holding the lock. Before it published the head, the
    /// record stays for the next; but if it had begun taking a record's
    /// buffers (unlinking their names), the record is dropped and the
    /// names it had not reached are removed.
    fn repair_consumers(&self) -> Result<()> {
        let taking = self.taking.load(Ordering::Relaxed);
        if taking == 0 {
            return Ok(());
        }
        let head = self.word(self.head, Ordering::Relaxed)?;
        let tail = self.word(self.tail, Ordering::Acquire)?;
        if taking == head.wrapping_add(1) {
            if let Some(rec) = self.peek(head, tail)? {
                if rec.flags & BUFFERS != 0 {
                    let (names, _) = self.names_of(&rec)?;
                    for name in names {
                        let _ = crate::unlink(&name);
                    }
                }
                let (hc, _) = split(head);
                self.head
                    .store(join(hc.wrapping_add(1), rec.next), Ordering::Release);
                notify(self.not_full);
            }
        }
        self.taking.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Pushes records of `lens[i]` bytes and `flags[i]` (or `flags[0]` for
    /// all), each written by `write(i, region, offset)`, in order; waits
    /// for room within the wait's limits. How many were pushed.
    pub(crate) fn push(
        &self,
        lens: &[usize],
        flags: &[u32],
        wait: &mut Wait<'_>,
        mut write: impl FnMut(usize, &Region, usize) -> Result<()>,
    ) -> Result<usize> {
        for &len in lens {
            self.check_len(len)?;
        }
        let flag = |i: usize| flags.get(i).or(flags.first()).copied().unwrap_or(0) & !WRAP;
        let mut i = 0;
        while i < lens.len() {
            let Some(held) = self.lock_producers(wait)? else {
                return Ok(i);
            };
            let head = self.word(self.head, Ordering::Acquire)?;
            let published = self.word(self.tail, Ordering::Relaxed)?;
            let mut tail = published;
            while i < lens.len() {
                let Some(slot) = self.reserve(head, tail, lens[i]) else {
                    break;
                };
                if let Some(at) = slot.wrap_at {
                    self.write_header(at, 0, WRAP)?;
                }
                self.write_header(slot.start, lens[i], flag(i))?;
                let at = self.data + slot.start as usize + RECORD_HEADER;
                if let Err(e) = write(i, self.region, at) {
                    // What was written before stays; this one is dropped.
                    if tail != published {
                        self.tail.store(tail, Ordering::Release);
                        drop(held);
                        notify(self.not_empty);
                    }
                    return Err(e);
                }
                tail = join(split(tail).0.wrapping_add(1), slot.next);
                i += 1;
            }
            if tail != published {
                self.tail.store(tail, Ordering::Release);
            }
            drop(held);
            if tail != published {
                notify(self.not_empty);
            }
            if i < lens.len() && !wait_for(self.not_full, wait, || self.has_room(lens[i]))? {
                return Ok(i);
            }
        }
        Ok(i)
    }

    /// Pushes one record whose payload is `payload` after a table naming
    /// one new segment per entry of `sizes`, each filled by `fill(i,
    /// region)` before the record is published. The segments are named
    /// `{prefix}_{n}` (n from a counter in the queue) and untracked: the
    /// queue's own protocol removes them (see the module docs).
    pub(crate) fn push_buffers(
        &self,
        prefix: &str,
        payload: &[u8],
        flags: u32,
        sizes: &[usize],
        wait: &mut Wait<'_>,
        mut fill: impl FnMut(usize, &Region) -> Result<()>,
    ) -> Result<bool> {
        let names: Vec<String> = sizes
            .iter()
            .map(|_| {
                let n = self.seq.fetch_add(1, Ordering::Relaxed);
                format!("{prefix}_{n:x}")
            })
            .collect();
        if names.iter().any(|n| n.len() > MAX_NAME) {
            return Err(Error::InvalidFlags(
                "the queue's name is too long to name its buffer segments",
            ));
        }
        let mut record = Vec::with_capacity(table_size(&names) + payload.len());
        encode_table(&names, &mut record);
        record.extend_from_slice(payload);
        self.check_len(record.len())?;
        loop {
            let Some(held) = self.lock_producers(wait)? else {
                return Ok(false);
            };
            let head = self.word(self.head, Ordering::Acquire)?;
            let tail = self.word(self.tail, Ordering::Relaxed)?;
            if let Some(slot) = self.reserve(head, tail, record.len()) {
                if let Some(at) = slot.wrap_at {
                    self.write_header(at, 0, WRAP)?;
                }
                self.write_header(slot.start, record.len(), (flags | BUFFERS) & !WRAP)?;
                self.region
                    .write_at(self.data + slot.start as usize + RECORD_HEADER, &record)?;
                // From here a death leaves the names for the next producer
                // to remove.
                self.pending.store(tail.wrapping_add(1), Ordering::Relaxed);
                let made = self.make_buffers(&names, sizes, &mut fill);
                if let Err(e) = made {
                    for name in &names {
                        let _ = crate::unlink(name);
                    }
                    self.pending.store(0, Ordering::Relaxed);
                    return Err(e);
                }
                self.tail.store(
                    join(split(tail).0.wrapping_add(1), slot.next),
                    Ordering::Release,
                );
                self.pending.store(0, Ordering::Relaxed);
                drop(held);
                notify(self.not_empty);
                return Ok(true);
            }
            drop(held);
            if !wait_for(self.not_full, wait, || self.has_room(record.len()))? {
                return Ok(false);
            }
        }
    }

    fn make_buffers(
        &self,
        names: &[String],
        sizes: &[usize],
        fill: &mut impl FnMut(usize, &Region) -> Result<()>,
    ) -> Result<()> {
        let opts = Options::new().track(false);
        for (i, (name, &size)) in names.iter().zip(sizes).enumerate() {
            let shm = opts.create_named(name, size)?;
            fill(i, shm.region())?;
        }
        Ok(())
    }

    /// Pops up to `max` records (at least one, waiting within the wait's
    /// limits), each handed to `read(region, offset, len, flags,
    /// buffers)`; how many (0 when the wait ended first).
    pub(crate) fn pop(
        &self,
        max: usize,
        wait: &mut Wait<'_>,
        mut read: impl FnMut(&Region, usize, usize, u32, Buffers),
    ) -> Result<usize> {
        let mut count = 0;
        if max == 0 {
            return Ok(0);
        }
        loop {
            let Some(held) = self.lock_consumers(wait)? else {
                return Ok(count);
            };
            let tail = self.word(self.tail, Ordering::Acquire)?;
            let mut published = self.word(self.head, Ordering::Relaxed)?;
            let mut head = published;
            while count < max {
                let Some(rec) = self.peek(head, tail)? else {
                    break;
                };
                let mut at = self.data + rec.start as usize + RECORD_HEADER;
                let mut len = rec.len;
                let buffers = if rec.flags & BUFFERS != 0 {
                    if head != published {
                        self.head.store(head, Ordering::Release);
                        published = head;
                    }
                    // From here a death drops the record, and the next
                    // consumer removes the names this one had not reached.
                    self.taking.store(head.wrapping_add(1), Ordering::Relaxed);
                    let (names, table) = self.names_of(&rec)?;
                    at += table;
                    len -= table;
                    Some(self.take_buffers(&names))
                } else {
                    None
                };
                let has_buffers = buffers.is_some();
                read(
                    self.region,
                    at,
                    len,
                    rec.flags,
                    buffers.unwrap_or(Ok(Vec::new())),
                );
                count += 1;
                head = join(split(head).0.wrapping_add(1), rec.next);
                if has_buffers {
                    self.head.store(head, Ordering::Release);
                    published = head;
                    self.taking.store(0, Ordering::Relaxed);
                }
            }
            if head != published {
                self.head.store(head, Ordering::Release);
            }
            drop(held);
            if count > 0 {
                notify(self.not_full);
                return Ok(count);
            }
            if !wait_for(self.not_empty, wait, || self.has_items())? {
                return Ok(0);
            }
        }
    }

    /// Attaches each named buffer segment and unlinks its name: from now
    /// on it lives only as long as the mapping.
    fn take_buffers(&self, names: &[String]) -> Buffers {
        let opts = Options::new().track(false);
        let mut out = Vec::with_capacity(names.len());
        let mut failed = None;
        for name in names {
            match opts.open(name) {
                Ok(shm) => {
                    let _ = shm.unlink();
                    out.push(shm);
                }
                Err(e) => {
                    let _ = crate::unlink(name);
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            None => Ok(out),
            Some(e) => Err(e),
        }
    }

    /// Tasks pushed but not yet marked done.
    pub(crate) fn unfinished(&self) -> u32 {
        let pushed = split(self.tail.load(Ordering::Acquire)).0;
        pushed.wrapping_sub(self.done.load(Ordering::Acquire))
    }

    /// Marks one task done; `false` if none is unfinished.
    pub(crate) fn task_done(&self) -> bool {
        let mut done = self.done.load(Ordering::Relaxed);
        loop {
            let pushed = split(self.tail.load(Ordering::Acquire)).0;
            let unfinished = pushed.wrapping_sub(done);
            if unfinished == 0 || unfinished > u32::MAX / 2 {
                return false;
            }
            match self.done.compare_exchange_weak(
                done,
                done.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => done = now,
            }
        }
        notify(self.done_wake);
        true
    }

    /// Waits until every task pushed is marked done.
    pub(crate) fn join(&self, wait: &mut Wait<'_>) -> Result<bool> {
        wait_for(self.done_wake, wait, || self.unfinished() == 0)
    }
}
