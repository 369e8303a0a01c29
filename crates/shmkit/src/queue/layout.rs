//! Where everything of a queue lives in its segment, and what a record
//! looks like: the one place that knows the layout, for the queue itself
//! and for [`describe`], which decodes a copied prefix for the `shmkit`
//! command.
//!
//! The segment starts with the [`object`](crate::object) header
//! (`Kind::Queue`), then the control block (offsets from its start; each
//! side's words share a cache line with that side's lock, and the two
//! sides' lines are apart):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | ring capacity in bytes (a multiple of 8) |
//! | 8 | 8 | most items the queue holds (0: only the ring bounds it) |
//! | 64 | 72 | producers' robust lock |
//! | 144 | 8 | tail: items ever pushed mod 2^32 (high half), ring offset of the next record (low half) |
//! | 152 | 8 | pending: tail + 1 while a producer holds a record with buffers unpublished, else 0 |
//! | 192 | 4 | not-empty wake word (count, bit 31: a consumer may sleep) |
//! | 256 | 72 | consumers' robust lock |
//! | 336 | 8 | head: items ever popped mod 2^32 (high half), ring offset of the next record (low half) |
//! | 344 | 8 | taking: head + 1 while a consumer takes a record with buffers, else 0 |
//! | 384 | 4 | not-full wake word (count, bit 31: a producer may sleep) |
//! | 448 | 4 | tasks done mod 2^32 (for `task_done`/`join`) |
//! | 452 | 4 | done wake word (count, bit 31: a joiner may sleep) |
//! | 456 | 8 | sequence number of the next buffer segment's name |
//!
//! The ring follows at [`CONTROL_SIZE`]. A record is `[length u32][flags
//! u32][payload][padding to 8]`, written whole where it fits; when the
//! tail has too little room before the ring's end, a record of flags
//! [`WRAP`] there sends readers back to offset 0. A record with
//! [`BUFFERS`] starts its payload with a table of segment names: `[count
//! u32]` then, per buffer, `[name length u8][name]`.
//!
//! Head and tail each pack the item count with the offset into one
//! 64-bit word, so that a producer publishes a record, and a consumer
//! frees one, with one atomic store: no death between two stores can
//! leave the count and the offset disagreeing.

use crate::object::{self, Kind, HEADER_SIZE};

/// Ring capacity (u64).
pub(crate) const CAPACITY_AT: usize = 0;
/// Item bound (u64, 0 = none).
pub(crate) const MAX_ITEMS_AT: usize = 8;
/// Producers' lock (`sync::LockState`, 72 bytes).
pub(crate) const PRODUCER_LOCK_AT: usize = 64;
/// Tail word (u64).
pub(crate) const TAIL_AT: usize = 144;
/// Pending word (u64).
pub(crate) const PENDING_AT: usize = 152;
/// Not-empty wake word (u32).
pub(crate) const NOT_EMPTY_AT: usize = 192;
/// Consumers' lock (72 bytes).
pub(crate) const CONSUMER_LOCK_AT: usize = 256;
/// Head word (u64).
pub(crate) const HEAD_AT: usize = 336;
/// Taking word (u64).
pub(crate) const TAKING_AT: usize = 344;
/// Not-full wake word (u32).
pub(crate) const NOT_FULL_AT: usize = 384;
/// Tasks done (u32).
pub(crate) const DONE_AT: usize = 448;
/// Done wake word (u32).
pub(crate) const DONE_WAKE_AT: usize = 452;
/// Next buffer segment's sequence number (u64).
pub(crate) const BUFFER_SEQ_AT: usize = 456;
/// Bytes of the control block; the ring starts here.
pub const CONTROL_SIZE: usize = 512;

/// The robust locks, as offsets from the control block.
pub(crate) const MUTEXES: &[usize] = &[PRODUCER_LOCK_AT, CONSUMER_LOCK_AT];

/// Bytes of a record's header.
pub const RECORD_HEADER: usize = 8;
/// Flag: the payload is a pickle (written by Python); raw bytes otherwise.
pub const PICKLED: u32 = 1;
/// Flag: the payload starts with a table of buffer segment names.
pub const BUFFERS: u32 = 2;
/// Flag: the pickle itself is the first buffer (it was too large for the
/// ring); the payload after the table is empty.
pub const INDIRECT: u32 = 4;
/// Flag of the record that sends readers back to the ring's start.
pub const WRAP: u32 = 0x8000_0000;

/// The smallest ring.
pub const MIN_CAPACITY: usize = 64;
/// The largest ring: offsets must fit 31 bits.
pub const MAX_CAPACITY: usize = 1 << 30;
/// The ring a queue gets unless told otherwise: room for tens of
/// thousands of small pickled items, so that a producer rarely waits for
/// a slower consumer, while the memory it pins stays small next to a
/// process's own; payloads too large for it go through buffer segments.
pub const DEFAULT_CAPACITY: usize = 4 << 20;
/// The most items a queue may be bounded to (counts are compared mod 2^32).
pub const MAX_ITEMS: u64 = 1 << 30;
/// The longest buffer segment name a table holds.
pub const MAX_NAME: usize = 255;

/// Bit 31 of a wake word: someone may sleep on it.
pub(crate) const SLEEPERS: u32 = 0x8000_0000;

/// A record's size in the ring: header, payload, padding to 8.
pub(crate) fn record_size(len: usize) -> usize {
    RECORD_HEADER + len.div_ceil(8) * 8
}

/// The largest payload a ring of `capacity` bytes takes. Half the ring, so
/// that a record always fits once the ring is empty, whichever offset the
/// tail has then (it fits before the end or after wrapping).
pub fn max_message(capacity: usize) -> usize {
    (capacity / 2).saturating_sub(RECORD_HEADER)
}

/// Splits a head or tail word into (item count, ring offset).
pub(crate) fn split(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// Joins an item count and a ring offset into a head or tail word.
pub(crate) fn join(count: u32, offset: u32) -> u64 {
    (u64::from(count) << 32) | u64::from(offset)
}

/// Items and bytes in use between `head` and `tail` of a ring of
/// `capacity` bytes (a record that wraps counts the space it skipped).
pub(crate) fn used(head: u64, tail: u64, capacity: u32) -> (u32, u32) {
    let (hc, ho) = split(head);
    let (tc, to) = split(tail);
    let items = tc.wrapping_sub(hc);
    let bytes = if items == 0 {
        0
    } else if to > ho {
        to - ho
    } else {
        capacity - ho + to
    };
    (items, bytes)
}

/// Encodes a buffer table.
pub(crate) fn encode_table(names: &[String], out: &mut Vec<u8>) {
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for name in names {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
}

/// Bytes a table of `names` takes.
pub(crate) fn table_size(names: &[String]) -> usize {
    4 + names.iter().map(|n| 1 + n.len()).sum::<usize>()
}

/// Decodes the buffer table at the start of `payload`: the names and the
/// table's length. `None` if it is malformed (a count the payload cannot
/// hold, a name past its end, a name that is not UTF-8).
pub(crate) fn decode_table(payload: &[u8]) -> Option<(Vec<String>, usize)> {
    let count = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    // Each entry takes at least 2 bytes: the count cannot make us allocate
    // more than the payload's own size.
    if count > payload.len() / 2 {
        return None;
    }
    let mut names = Vec::with_capacity(count);
    let mut at = 4;
    for _ in 0..count {
        let len = usize::from(*payload.get(at)?);
        let name = payload.get(at + 1..at + 1 + len)?;
        names.push(std::str::from_utf8(name).ok()?.to_owned());
        at += 1 + len;
    }
    Some((names, at))
}

/// A queue's state as [`describe`] decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Ring capacity in bytes.
    pub capacity: u64,
    /// Most items it holds (0: only the ring bounds it).
    pub max_items: u64,
    /// Items in it.
    pub len: u32,
    /// Ring bytes in use.
    pub used: u32,
    /// Items ever pushed, mod 2^32.
    pub pushed: u32,
    /// Items ever popped, mod 2^32.
    pub popped: u32,
    /// Tasks marked done, mod 2^32 (`task_done`).
    pub done: u32,
    /// Thread id holding the producers' lock, if any.
    pub producer: Option<u32>,
    /// Thread id holding the consumers' lock, if any.
    pub consumer: Option<u32>,
    /// Whether a producer may sleep waiting for room.
    pub producers_waiting: bool,
    /// Whether a consumer may sleep waiting for an item.
    pub consumers_waiting: bool,
    /// Whether a producer was interrupted (or died) publishing a record
    /// with buffers; the next producer cleans up after it.
    pub pending: bool,
    /// Whether a consumer was interrupted (or died) taking a record with
    /// buffers; the next consumer cleans up after it.
    pub taking: bool,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Bytes of a segment's start that [`describe`] reads.
pub const DESCRIBE_PREFIX: usize = HEADER_SIZE + CONTROL_SIZE;

/// Decodes a queue's state from a copy of its segment's first
/// [`DESCRIBE_PREFIX`] bytes (or more), checking every field; `Err` says
/// what is wrong. The copy is a snapshot of words that move: the numbers
/// are each true at some moment, not necessarily the same one.
///
/// ```
/// use shmkit::queue::{self, Queue};
/// let q = Queue::create(4096, 0)?;
/// q.push(b"hi")?;
/// let bytes = q.shared_memory().read_vec(0, queue::DESCRIBE_PREFIX)?;
/// let state = queue::describe(&bytes).unwrap();
/// assert_eq!((state.capacity, state.len, state.used), (4096, 1, 16));
/// # q.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn describe(bytes: &[u8]) -> Result<State, &'static str> {
    match object::parse(bytes) {
        Some((Kind::Queue, crate::sync::OBJECT_VERSION)) => {}
        Some((Kind::Queue, _)) => return Err("a queue layout version this shmkit cannot read"),
        _ => return Err("not a queue"),
    }
    let c = |at: usize| HEADER_SIZE + at;
    let short = "truncated control block";
    let capacity = u64_at(bytes, c(CAPACITY_AT)).ok_or(short)?;
    if capacity % 8 != 0 || !(MIN_CAPACITY as u64..=MAX_CAPACITY as u64).contains(&capacity) {
        return Err("ring capacity out of range");
    }
    let max_items = u64_at(bytes, c(MAX_ITEMS_AT)).ok_or(short)?;
    if max_items > MAX_ITEMS {
        return Err("item bound out of range");
    }
    let head = u64_at(bytes, c(HEAD_AT)).ok_or(short)?;
    let tail = u64_at(bytes, c(TAIL_AT)).ok_or(short)?;
    for word in [head, tail] {
        let off = u64::from(split(word).1);
        if off >= capacity || off % 8 != 0 {
            return Err("head or tail offset out of range");
        }
    }
    let (len, used) = used(head, tail, capacity as u32);
    if u64::from(used) > capacity {
        return Err("head and tail disagree");
    }
    let owner = |at| -> Result<Option<u32>, &'static str> {
        let word = u32_at(bytes, c(at)).ok_or(short)?;
        Ok(Some(word & crate::sys::robust_mutex::TID_MASK).filter(|&t| t != 0))
    };
    let wake = |at| -> Result<bool, &'static str> {
        Ok(u32_at(bytes, c(at)).ok_or(short)? & SLEEPERS != 0)
    };
    Ok(State {
        capacity,
        max_items,
        len,
        used,
        pushed: split(tail).0,
        popped: split(head).0,
        done: u32_at(bytes, c(DONE_AT)).ok_or(short)?,
        producer: owner(PRODUCER_LOCK_AT)?,
        consumer: owner(CONSUMER_LOCK_AT)?,
        producers_waiting: wake(NOT_FULL_AT)?,
        consumers_waiting: wake(NOT_EMPTY_AT)?,
        pending: u64_at(bytes, c(PENDING_AT)).ok_or(short)? != 0,
        taking: u64_at(bytes, c(TAKING_AT)).ok_or(short)? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_pack_and_unpack() {
        assert_eq!(split(join(7, 4088)), (7, 4088));
        assert_eq!(used(join(3, 100), join(3, 100), 4096), (0, 0));
        assert_eq!(used(join(3, 100), join(5, 164), 4096), (2, 64));
        assert_eq!(used(join(u32::MAX, 4000), join(1, 64), 4096), (2, 160));
        assert_eq!(used(join(3, 64), join(4, 64), 4096), (1, 4096));
    }

    #[test]
    fn tables_round_trip_and_reject_garbage() {
        let names = vec!["psm_a_1".to_owned(), "psm_a_2".to_owned()];
        let mut buf = Vec::new();
        encode_table(&names, &mut buf);
        assert_eq!(buf.len(), table_size(&names));
        buf.extend_from_slice(b"rest");
        assert_eq!(decode_table(&buf), Some((names, buf.len() - 4)));
        assert_eq!(decode_table(&[0xff, 0xff, 0xff, 0xff, 1, b'a']), None);
        assert_eq!(decode_table(&[1, 0, 0, 0, 9, b'a']), None);
        assert_eq!(decode_table(&[1, 0, 0, 0, 1, 0xff]), None);
        assert_eq!(decode_table(&[1, 0]), None);
    }

    #[test]
    fn describe_rejects_every_bad_field() {
        let mut bytes = vec![0u8; DESCRIBE_PREFIX];
        assert_eq!(describe(&bytes), Err("not a queue"));
        bytes[..8].copy_from_slice(&object::MAGIC.to_le_bytes());
        bytes[8..12].copy_from_slice(&Kind::Queue.code().to_le_bytes());
        bytes[12..16].copy_from_slice(&crate::sync::OBJECT_VERSION.to_le_bytes());
        assert_eq!(describe(&bytes), Err("ring capacity out of range"));
        let c = |at: usize| HEADER_SIZE + at;
        bytes[c(0)..c(8)].copy_from_slice(&4096u64.to_le_bytes());
        assert!(describe(&bytes).is_ok());
        assert_eq!(describe(&bytes[..100]), Err("truncated control block"));
        bytes[c(TAIL_AT)..c(TAIL_AT) + 8].copy_from_slice(&join(1, 4096).to_le_bytes());
        assert_eq!(describe(&bytes), Err("head or tail offset out of range"));
        bytes[c(TAIL_AT)..c(TAIL_AT) + 8].copy_from_slice(&join(1, 12).to_le_bytes());
        assert_eq!(describe(&bytes), Err("head or tail offset out of range"));
        bytes[c(MAX_ITEMS_AT)..c(MAX_ITEMS_AT) + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(describe(&bytes), Err("item bound out of range"));
    }

    #[test]
    fn the_largest_message_fits_an_empty_ring_at_any_offset() {
        for cap in [64usize, 72, 4096] {
            let need = record_size(max_message(cap));
            for off in (0..cap).step_by(8) {
                let to_end = cap - off;
                assert!(need <= to_end || need <= cap - to_end, "{cap} {off}");
            }
        }
    }
}
