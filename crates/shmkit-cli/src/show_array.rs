//! Array segments (`shmkit.numpy`, `shmkit::array`) as `ls` and `show`
//! describe them: dtype and shape, and a summary of the values decoded
//! from bounded copies of the first and last few elements.

use serde::Serialize;
use shmkit::array::{ByteOrder, DType, Descriptor, Order, ScalarKind, DESCRIPTOR_END};
use shmkit::object::{self, Kind};
use shmkit::pyrepr;
use shmkit::usage::ReadOnly;

use crate::out::{self, Out, Quoted};

/// Elements shown from each end.
const EDGE: usize = 5;
/// The most bytes of one `S`/`U` element copied and shown.
const MAX_ITEM: usize = 256;

/// The descriptor of the array segment `file`, if it is one: `Err` says
/// what is wrong with a segment marked as an array whose descriptor does
/// not hold up.
fn descriptor(file: &ReadOnly) -> Option<Result<Descriptor, String>> {
    let size = file.info().size;
    let head = file
        .copy(0, DESCRIPTOR_END.min(usize::try_from(size).ok()?))
        .ok()?;
    match object::parse(&head) {
        Some((Kind::Array, _)) => Some(Descriptor::decode(&head, size)),
        _ => None,
    }
}

/// `<f8 (1000, 3)`: the dtype and shape as numpy writes them.
fn dtype_and_shape(d: &Descriptor) -> String {
    let dims: Vec<String> = d.shape.iter().map(usize::to_string).collect();
    let comma = if dims.len() == 1 { "," } else { "" };
    format!("{} ({}{comma})", d.dtype, dims.join(", "))
}

/// What `ls` shows in its HOLDS column for the segment `name`, if it is an
/// array: `array <f8 (1000, 3)`, or `array (invalid)`.
pub fn holds(name: &str) -> Option<String> {
    let file = ReadOnly::open(name).ok()?;
    Some(match descriptor(&file)? {
        Ok(d) => format!("array {}", dtype_and_shape(&d)),
        Err(_) => "array (invalid)".to_owned(),
    })
}

#[derive(Serialize)]
struct ArrayJson<'a> {
    name: &'a str,
    size: u64,
    kind: &'static str,
    dtype: String,
    shape: &'a [usize],
    order: &'static str,
    readonly: bool,
    /// The first and last elements in memory order, as text.
    first: Vec<String>,
    last: Vec<String>,
}

/// `show` for an array segment: `None` if `name` is no array, else the
/// exit status.
pub fn show(name: &str, json: bool) -> Option<i32> {
    let file = ReadOnly::open(name).ok()?;
    let desc = match descriptor(&file)? {
        Ok(d) => d,
        Err(reason) => {
            return Some(out::fail(&format!(
                "{}: not a valid array: {reason}",
                Quoted::str(name)
            )))
        }
    };
    let n = desc.len();
    let head = n.min(EDGE);
    let tail = n.saturating_sub(head).min(EDGE);
    let (first, last) = match (
        values(&file, &desc, 0, head),
        values(&file, &desc, n - tail, tail),
    ) {
        (Ok(f), Ok(l)) => (f, l),
        (Err(e), _) | (_, Err(e)) => return Some(out::fail(&e.to_string())),
    };
    let order = match desc.order {
        Order::C => "C",
        Order::Fortran => "F",
    };
    let bare = shmkit::name::validate(name).unwrap_or(name);
    let mut o = Out::new();
    if json {
        let doc = ArrayJson {
            name: bare,
            size: file.info().size,
            kind: "array",
            dtype: desc.dtype.to_string(),
            shape: &desc.shape,
            order,
            readonly: desc.readonly,
            first,
            last,
        };
        match serde_json::to_string_pretty(&doc) {
            Ok(text) => o.line(&text),
            Err(e) => return Some(out::fail(&format!("cannot write JSON: {e}"))),
        }
        return Some(crate::EXIT_OK);
    }
    o.line(&format!(
        "{}: array {}, {order} order{}, {} bytes of data",
        Quoted::str(bare),
        dtype_and_shape(&desc),
        if desc.readonly { ", read-only" } else { "" },
        desc.data_len,
    ));
    let mut line = format!("[{}", first.join(", "));
    if tail > 0 {
        line.push_str(if n > head + tail { ", ..., " } else { ", " });
        line.push_str(&last.join(", "));
    }
    line.push(']');
    o.line(&format!("{line} ({n} elements, in memory order)"));
    Some(crate::EXIT_OK)
}

/// Elements `from..from + count` (in memory order), each copied on its own
/// and at most [`MAX_ITEM`] bytes of it.
fn values(
    file: &ReadOnly,
    d: &Descriptor,
    from: usize,
    count: usize,
) -> shmkit::Result<Vec<String>> {
    let size = d.dtype.itemsize();
    let take = size.min(MAX_ITEM);
    (from..from + count)
        .map(|i| {
            // In range: i < len, and the descriptor was checked against
            // the segment's size.
            let at = d.data_offset + i * size;
            let bytes = file.copy(at, take)?;
            Ok(format_value(d.dtype, &bytes, take < size))
        })
        .collect()
}

/// One element as text; `cut` if only its first bytes were copied.
fn format_value(dtype: DType, b: &[u8], cut: bool) -> String {
    let big = dtype.byte_order() == ByteOrder::Big;
    let uint = |b: &[u8]| -> u64 {
        let mut v = 0u64;
        if big {
            b.iter().for_each(|&x| v = v << 8 | u64::from(x));
        } else {
            b.iter().rev().for_each(|&x| v = v << 8 | u64::from(x));
        }
        v
    };
    let float = |b: &[u8]| -> f64 {
        match b.len() {
            2 => half(uint(b) as u16),
            4 => f64::from(f32::from_bits(uint(b) as u32)),
            _ => f64::from_bits(uint(b)),
        }
    };
    let n = b.len();
    match dtype.kind() {
        ScalarKind::Bool => (if b[0] != 0 { "True" } else { "False" }).to_owned(),
        ScalarKind::UInt => uint(b).to_string(),
        ScalarKind::Int => {
            let shift = 64 - 8 * n as u32;
            (((uint(b) << shift) as i64) >> shift).to_string()
        }
        ScalarKind::Float => pyrepr::float_repr(float(b)),
        ScalarKind::Complex => {
            let (re, im) = (float(&b[..n / 2]), float(&b[n / 2..]));
            let sign = if im.is_sign_negative() { "-" } else { "+" };
            format!(
                "({}{sign}{}j)",
                pyrepr::float_repr(re),
                pyrepr::float_repr(im.abs())
            )
        }
        ScalarKind::Bytes => {
            let end = b.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
            format!(
                "{}{}",
                pyrepr::bytes_repr(&b[..end]),
                if cut { "…" } else { "" }
            )
        }
        ScalarKind::Str => {
            let text: String = b
                .chunks_exact(4)
                .map(|c| {
                    let c: [u8; 4] = c.try_into().expect("four bytes");
                    let v = if big {
                        u32::from_be_bytes(c)
                    } else {
                        u32::from_le_bytes(c)
                    };
                    char::from_u32(v).unwrap_or(char::REPLACEMENT_CHARACTER)
                })
                .collect();
            format!(
                "{}{}",
                pyrepr::str_repr(text.trim_end_matches('\0')),
                if cut { "…" } else { "" }
            )
        }
    }
}

/// An IEEE half-precision float.
fn half(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_as_numpy_prints_them() {
        let d = |s: &str| DType::parse(s).unwrap();
        assert_eq!(format_value(d("<i2"), &(-5i16).to_le_bytes(), false), "-5");
        assert_eq!(format_value(d(">u4"), &7u32.to_be_bytes(), false), "7");
        assert_eq!(
            format_value(d("<f2"), &0x3c00u16.to_le_bytes(), false),
            "1.0"
        );
        assert_eq!(format_value(d("<f8"), &2.5f64.to_le_bytes(), false), "2.5");
        let mut c = 1f32.to_le_bytes().to_vec();
        c.extend((-2f32).to_le_bytes());
        assert_eq!(format_value(d("<c8"), &c, false), "(1.0-2.0j)");
        assert_eq!(format_value(d("|b1"), &[2], false), "True");
        assert_eq!(format_value(d("|S4"), b"a\x1b\0\0", false), "b'a\\x1b'");
        let u: Vec<u8> = ['h', 'é', '\0']
            .iter()
            .flat_map(|&c| (c as u32).to_le_bytes())
            .collect();
        assert_eq!(format_value(d("<U3"), &u, false), "'hé'");
    }

    #[test]
    fn an_array_is_summarised_from_its_ends() {
        let a = shmkit::array::Array::create::<i64>(&[100, 2]).unwrap();
        a.write_from(&(0..200).collect::<Vec<i64>>()).unwrap();
        assert_eq!(holds(a.name()).unwrap(), "array <i8 (100, 2)");
        let file = ReadOnly::open(a.name()).unwrap();
        let desc = descriptor(&file).unwrap().unwrap();
        assert_eq!(values(&file, &desc, 198, 2).unwrap(), ["198", "199"]);
        let plain = shmkit::SharedMemory::create(4096).unwrap();
        assert_eq!(holds(plain.name()), None);
        plain.unlink().unwrap();
        a.unlink_if_unused().unwrap();
    }
}
