//! The body of the `manager_decode` fuzz target, shared with the plain test
//! that runs it under proptest (`crates/shmkit/tests/manager.rs`), so that
//! it is exercised on stable Rust too.
//!
//! The input is read as a stream of `multiprocessing.connection` frames,
//! each payload as a pickle, and the whole input as one pickle too. Beyond
//! "no panic, no huge allocation" it checks that the decoder agrees with
//! itself: the in-memory frame decoder with the streaming reader, and every
//! pickle that loads survives a dump and a load unchanged.

use std::io::Cursor;

use shmkit::manager::{frame, pickle, ManagerError};

/// Frames longer than this are refused, as a server refuses long requests.
const MAX_LEN: usize = 1 << 16;

pub fn run(data: &[u8]) {
    for max in [frame::AUTH_MAX_LEN, MAX_LEN] {
        frames(data, max);
    }
    check_pickle(data);
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
                check_pickle(payload);
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

fn check_pickle(bytes: &[u8]) {
    let Ok(value) = pickle::loads(bytes) else {
        return;
    };
    let dumped = pickle::dumps(&value);
    let back = pickle::loads(&dumped).expect("a pickle shmkit wrote loads again");
    // Compared as bytes, so that NaN equals itself.
    assert_eq!(
        pickle::dumps(&back),
        dumped,
        "dump, load, dump is not stable"
    );
    let _ = value.repr();
}
