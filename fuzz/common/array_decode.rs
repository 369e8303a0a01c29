//! The body of the `array_decode` fuzz target, shared with the plain tests
//! that run it on stable Rust (`crates/shmkit/tests/array.rs`).
//!
//! Arbitrary bytes as the head of an array segment, checked against
//! arbitrary segment sizes. Beyond "no panic" it checks that whatever the
//! decoder accepts is an array that fits its segment and encodes back to
//! itself, and that decoding allocates no more than [`PEAK`] bytes, whatever
//! the input claims. The program installs [`Counting`] as its global
//! allocator (the fuzz target and the test alike).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use shmkit::array::{Descriptor, DATA_OFFSET, DESCRIPTOR_END, MAX_NDIM};
use shmkit::object::HEADER_SIZE;

/// The most one decode may hold at once: the shape, the dtype string and
/// an error message, with room to spare; nothing that grows with a size
/// the bytes claim.
pub const PEAK: isize = 4096;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static HIGH: Cell<isize> = const { Cell::new(0) };
}

/// A global allocator that counts, per thread, the bytes live and their
/// peak.
pub struct Counting;

fn count(delta: isize) {
    // `try_with`: a thread being torn down may still allocate.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = HIGH.try_with(|high| high.set(high.get().max(now)));
    });
}

// SAFETY: every call goes to the system allocator with the caller's own
// arguments; the counting touches only thread-local integers, which neither
// allocate nor unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from `System` via `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }
}

/// The peak of bytes allocated while `f` ran, above what was live before.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, isize) {
    let base = LIVE.with(Cell::get);
    HIGH.with(|h| h.set(base));
    let r = f();
    (r, HIGH.with(Cell::get) - base)
}

/// Input: 8 bytes of segment size, then the segment's first bytes (from
/// the object header on), zero-padded to [`DESCRIPTOR_END`].
pub fn run(data: &[u8]) {
    let Some((size, head)) = data.split_first_chunk::<8>() else {
        return;
    };
    let size = u64::from_le_bytes(*size);
    let mut bytes = head.to_vec();
    if bytes.len() < DESCRIPTOR_END {
        bytes.resize(DESCRIPTOR_END, 0);
    }
    let (decoded, peak) = peak_during(|| Descriptor::decode(&bytes, size));
    assert!(peak <= PEAK, "decoding allocated {peak} bytes");
    let Ok(d) = decoded else {
        return;
    };
    assert!(d.shape.len() <= MAX_NDIM);
    assert_eq!(d.data_offset, DATA_OFFSET);
    assert!(d.data_offset as u64 + d.data_len as u64 <= size);
    assert_eq!(d.data_len, d.len() * d.dtype.itemsize());
    // The last element of every dimension lies inside the data.
    if !d.is_empty() {
        for (stride, dim) in d.strides().iter().zip(&d.shape) {
            assert!(stride * (dim - 1) < d.data_len);
        }
    }
    let mut again = bytes[..HEADER_SIZE].to_vec();
    again.extend(d.encode());
    assert_eq!(Descriptor::decode(&again, size).as_ref(), Ok(&d));
}
