//! Arbitrary bytes as the head of an array segment: the descriptor's
//! decoder. See `common/array_decode.rs`.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run array_decode -- -max_total_time=60`
#![no_main]

#[path = "../common/array_decode.rs"]
mod array_decode;

/// Counts allocations, so the target can assert the decoder's budget.
#[global_allocator]
static ALLOC: array_decode::Counting = array_decode::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| array_decode::run(data));
