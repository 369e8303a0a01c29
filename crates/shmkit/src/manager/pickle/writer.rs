//! Writing: protocol 4, byte for byte as CPython writes it.

use super::opcodes::*;
use super::PyValue;

/// Pickles `value` with protocol 4, as `pickle.dumps(value, 4)` does in
/// CPython 3.8–3.13: one `FRAME` around the whole body (left out for bodies
/// under 4 bytes), and a `MEMOIZE` after every `str`, `bytes`, non-empty
/// `tuple`, `list` and `dict`.
///
/// ```
/// use shmkit::manager::pickle::{dumps, PyValue};
/// // ('#RETURN', None), byte for byte as CPython's manager sends it.
/// let reply = PyValue::Tuple(vec!["#RETURN".into(), PyValue::None]);
/// let hex: String = dumps(&reply).iter().map(|b| format!("{b:02x}")).collect();
/// assert_eq!(hex, "8004950e000000000000008c072352455455524e944e86942e");
/// ```
pub fn dumps(value: &PyValue) -> Vec<u8> {
    let mut out = vec![PROTO, 4, FRAME, 0, 0, 0, 0, 0, 0, 0, 0];
    write_value(&mut out, value);
    out.push(STOP);
    let body = out.len() - 11;
    if body < 4 {
        out.drain(2..11);
    } else {
        out[3..11].copy_from_slice(&(body as u64).to_le_bytes());
    }
    out
}

fn write_value(out: &mut Vec<u8>, value: &PyValue) {
    match value {
        PyValue::None => out.push(NONE),
        PyValue::Bool(true) => out.push(NEWTRUE),
        PyValue::Bool(false) => out.push(NEWFALSE),
        PyValue::Int(i) => write_int(out, *i),
        PyValue::Float(f) => {
            out.push(BINFLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        PyValue::Str(s) => {
            write_sized(out, s.as_bytes(), SHORT_BINUNICODE, BINUNICODE, BINUNICODE8);
            out.push(MEMOIZE);
        }
        PyValue::Bytes(b) => {
            write_sized(out, b, SHORT_BINBYTES, BINBYTES, BINBYTES8);
            out.push(MEMOIZE);
        }
        PyValue::Tuple(items) => {
            match items.len() {
                0 => {
                    out.push(EMPTY_TUPLE);
                    return;
                }
                n @ 1..=3 => {
                    items.iter().for_each(|item| write_value(out, item));
                    out.push([TUPLE1, TUPLE2, TUPLE3][n - 1]);
                }
                _ => {
                    out.push(MARK);
                    items.iter().for_each(|item| write_value(out, item));
                    out.push(TUPLE);
                }
            }
            out.push(MEMOIZE);
        }
        PyValue::List(items) => {
            out.extend_from_slice(&[EMPTY_LIST, MEMOIZE]);
            for batch in items.chunks(BATCH) {
                if let [item] = batch {
                    write_value(out, item);
                    out.push(APPEND);
                } else {
                    out.push(MARK);
                    batch.iter().for_each(|item| write_value(out, item));
                    out.push(APPENDS);
                }
            }
        }
        PyValue::Dict(pairs) => {
            out.extend_from_slice(&[EMPTY_DICT, MEMOIZE]);
            for batch in pairs.chunks(BATCH) {
                if let [(k, v)] = batch {
                    write_value(out, k);
                    write_value(out, v);
                    out.push(SETITEM);
                } else {
                    out.push(MARK);
                    for (k, v) in batch {
                        write_value(out, k);
                        write_value(out, v);
                    }
                    out.push(SETITEMS);
                }
            }
        }
    }
}

/// CPython appends and sets items in batches of this many.
const BATCH: usize = 1000;

fn write_int(out: &mut Vec<u8>, i: i64) {
    if (0..=0xff).contains(&i) {
        out.extend_from_slice(&[BININT1, i as u8]);
    } else if (0..=0xffff).contains(&i) {
        out.push(BININT2);
        out.extend_from_slice(&(i as u16).to_le_bytes());
    } else if let Ok(small) = i32::try_from(i) {
        out.push(BININT);
        out.extend_from_slice(&small.to_le_bytes());
    } else {
        // The shortest little-endian two's complement, as CPython's
        // `encode_long`: drop high bytes while the sign survives.
        let bytes = i.to_le_bytes();
        let mut n = 8;
        while n > 1 {
            let top = bytes[n - 1];
            let next_sign = bytes[n - 2] & 0x80;
            if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.extend_from_slice(&[LONG1, n as u8]);
        out.extend_from_slice(&bytes[..n]);
    }
}

fn write_sized(out: &mut Vec<u8>, data: &[u8], short: u8, long: u8, huge: u8) {
    if let Ok(n) = u8::try_from(data.len()) {
        out.extend_from_slice(&[short, n]);
    } else if let Ok(n) = u32::try_from(data.len()) {
        out.push(long);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(huge);
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(data);
}
