//! The body of the `manager_decode` fuzz target, shared with the plain test
//! that runs it under proptest (`crates/shmkit/tests/manager.rs`), so that
//! it is exercised on stable Rust too.
//!
//! The input is read as a stream of `multiprocessing.connection` frames,
//! each payload as a pickle, and the whole input as one pickle too. Beyond
//! "no panic, no huge allocation" it checks that the decoder agrees with
//! itself: the in-memory frame decoder with the streaming reader, and every
//! pickle that loads survives a dump and a load unchanged. Where the
//! program installs [`Counting`] as its global allocator (the fuzz target
//! and the test both do), it also checks that no pickle makes the decoder
//! allocate more than [`PEAK_PER_BYTE`] bytes per byte of input plus
//! [`PEAK_BASE`], whether it loads or not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;

use shmkit::manager::{frame, pickle, ManagerError};

/// The most the decoder may allocate at once per byte of pickle: twice its
/// budget, since a growing vector briefly holds its old and new buffers.
pub const PEAK_PER_BYTE: usize = 2 * pickle::BUDGET_PER_BYTE;

/// ... plus this much, for any pickle.
pub const PEAK_BASE: usize = 2 * pickle::BUDGET_BASE;

thread_local! {
    /// Bytes allocated and not yet freed by this thread, and their peak.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// A global allocator that counts, per thread, the bytes live and their
/// peak, so that a check can measure what one call allocated.
pub struct Counting;

fn count(delta: isize) {
    // `try_with`: a thread being torn down may still allocate.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
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

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the new block arriving before the old one leaves, the
        // worst a moving reallocation holds at once.
        count(new_size as isize);
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            count(-(new_size as isize));
        } else {
            count(-(layout.size() as isize));
        }
        p
    }
}

/// Runs `f` and returns its result with the most bytes this thread had
/// allocated at once beyond what it held before (0 without [`Counting`]).
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}

/// Frames longer than this are refused, as a server refuses long requests.
const MAX_LEN: usize = 1 << 16;

pub fn run(data: &[u8]) {
    for max in [frame::AUTH_MAX_LEN, MAX_LEN] {
        frames(data, max);
    }
    let _ = check_pickle(data);
}

fn frames(data: &[u8], max: usize) {
    let mut rest = data;
    loop {
        let decoded = frame::decode(rest, max);
        let read = frame::read(&mut Cursor::new(rest), max);
        match (decoded, read) {
            (Ok(Some((payload, used))), Ok(got)) => {
                assert_eq!(payload, &got[..], "decode and read disagree on a payload");
                assert!(payload.len() <= max && used > payload.len());
                let _ = check_pickle(payload);
                rest = &rest[used..];
            }
            // Not enough bytes for the frame: the reader hits end of file.
            (Ok(None), Err(ManagerError::Eof)) => {
                assert!(rest.is_empty());
                return;
            }
            (Ok(None), Err(ManagerError::Truncated)) => return,
            (
                Err(ManagerError::TooLong { len: a, .. }),
                Err(ManagerError::TooLong { len: b, .. }),
            ) => {
                assert_eq!(a, b);
                return;
            }
            (Err(ManagerError::BadLength(a)), Err(ManagerError::BadLength(b))) => {
                assert_eq!(a, b);
                return;
            }
            (d, r) => panic!("decode gave {d:?}, read gave {r:?}"),
        }
    }
}

/// Loads `bytes` as a pickle, checking the decoder's peak allocation and,
/// if it loads, that it round-trips. Returns the peak.
pub fn check_pickle(bytes: &[u8]) -> usize {
    let (loaded, peak) = peak_during(|| pickle::loads(bytes));
    let bound = bytes
        .len()
        .saturating_mul(PEAK_PER_BYTE)
        .saturating_add(PEAK_BASE);
    assert!(
        peak <= bound,
        "decoding {} bytes allocated {peak} at once (bound {bound})",
        bytes.len()
    );
    let Ok(value) = loaded else {
        return peak;
    };
    let dumped = pickle::dumps(&value);
    // The dump is not held to its own length's budget: it may be denser
    // than the input (a value the input shared through the memo is written
    // out in full, often in fewer bytes than the reference), and it memoizes
    // every container as CPython's pickler does, where the input need not
    // have, and each memo entry is charged. Twice the budget the value was
    // first accepted under covers both.
    let budget = 2 * pickle::decode_budget(bytes.len().max(dumped.len()));
    let back = pickle::loads_within(&dumped, budget).expect("a pickle shmkit wrote loads again");
    // Compared as bytes, so that NaN equals itself.
    assert_eq!(
        pickle::dumps(&back),
        dumped,
        "dump, load, dump is not stable"
    );
    let _ = value.repr();
    peak
}
