//! Arbitrary bytes as manager traffic: frames, and pickles in them. See
//! `common/manager_decode.rs`.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run manager_decode -- -max_total_time=60`
#![no_main]

#[path = "../common/manager_decode.rs"]
mod manager_decode;

/// Counts allocations, so the target can assert the decoder's budget.
#[global_allocator]
static ALLOC: manager_decode::Counting = manager_decode::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| manager_decode::run(data));
