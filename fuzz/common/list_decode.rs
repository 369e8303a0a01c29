//! The body of the `list_decode` fuzz target, shared with the plain test
//! that runs it under proptest (`crates/shmkit/tests/list.rs`), so that it
//! is exercised on stable Rust too.
//!
//! Beyond "no panic, no out-of-bounds access" it checks that the decoder
//! agrees with itself: the typed getters with `get`, and every write either
//! reads back as written or fails leaving the bytes unchanged.

use shmkit::list::raw::Layout;
use shmkit::list::{Value, ValueRef};

/// How many items get the (costlier) write checks.
const WRITTEN_ITEMS: usize = 8;

const WRITES: [ValueRef<'static>; 7] = [
    ValueRef::Int(-2),
    ValueRef::Float(0.5),
    ValueRef::Bool(true),
    ValueRef::None,
    ValueRef::Str("fuzz"),
    ValueRef::Str("déjà vu, for more than 8 bytes"),
    ValueRef::Bytes(b"\x00\x01"),
];

pub fn run(data: &[u8]) {
    let Ok(layout) = Layout::attach(data) else {
        return;
    };
    assert!(layout.size() <= data.len());
    let n = layout.len() as isize;
    let _ = layout.format(data);
    for i in -n..n {
        let got = layout.get(data, i);
        let _ = layout.item_format(data, i);
        // A str of bad UTF-8 has a type but no value; the reverse cannot be.
        assert!(got.is_err() || layout.item_type(data, i).is_ok());
        match (&got, layout.get_i64(data, i)) {
            (Ok(Value::Int(v)), Ok(w)) => assert_eq!(*v, w),
            (Ok(Value::Int(_)), Err(e)) => panic!("get_i64 failed on an int: {e}"),
            (_, r) => assert!(r.is_err()),
        }
        match (&got, layout.get_f64(data, i)) {
            (Ok(Value::Float(v)), Ok(w)) => assert_eq!(v.to_bits(), w.to_bits()),
            (Ok(Value::Float(_)), Err(e)) => panic!("get_f64 failed on a float: {e}"),
            (_, r) => assert!(r.is_err()),
        }
    }
    for i in [n, n + 1, -n - 1, isize::MIN, isize::MAX] {
        assert!(layout.get(data, i).is_err());
    }

    let mut bytes = data.to_vec();
    for i in 0..layout.len().min(WRITTEN_ITEMS) as isize {
        for value in WRITES {
            let before = bytes.clone();
            match layout.set(&mut bytes, i, value) {
                Ok(()) => {
                    let back = layout
                        .get(&bytes[..], i)
                        .expect("a written item reads back");
                    assert!(
                        back.as_ref() == value,
                        "item {i}: wrote {value:?}, read {back:?}"
                    );
                }
                Err(_) => assert_eq!(bytes, before, "a refused write changed the bytes"),
            }
        }
        if layout.set_i64(&mut bytes, i, 7).is_ok() {
            assert_eq!(layout.get_i64(&bytes[..], i).ok(), Some(7));
        }
    }
    // Writes never touch the header or the offsets.
    assert_eq!(Layout::attach(&bytes[..]).ok().as_ref(), Some(&layout));
}
