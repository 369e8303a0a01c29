//! Arbitrary bytes as a ShareableList segment: attach validation, then
//! every read and a few writes on each item. See `common/list_decode.rs`.
//!
//! `cargo +nightly fuzz run list_decode -- -max_total_time=60`
#![no_main]

#[path = "../common/list_decode.rs"]
mod list_decode;

libfuzzer_sys::fuzz_target!(|data: &[u8]| list_decode::run(data));
