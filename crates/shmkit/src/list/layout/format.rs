//! The format table: what each item type writes in its 8-byte format and
//! back-transform code, and how big a slot a value needs.

use super::ListError;
use crate::error::Result;
use crate::list::value::ValueRef;

/// The longest `str` (in UTF-8 bytes) or `bytes` an item can hold: one more
/// and the slot's format, `10000000s`, would not fit its 8 bytes.
pub const MAX_ITEM_BYTES: usize = 9_999_991;

/// Back-transform codes.
pub(in crate::list) const CODE_PLAIN: i8 = 0;
pub(super) const CODE_STR: i8 = 1;
pub(super) const CODE_BYTES: i8 = 2;
pub(in crate::list) const CODE_NONE: i8 = 3;

pub(super) const fn word(fmt: &[u8; 8]) -> u64 {
    u64::from_ne_bytes(*fmt)
}

/// The formats of the four fixed-size types, as the 8-byte words stored.
pub(in crate::list) const FMT_INT: u64 = word(b"q\0\0\0\0\0\0\0");
pub(in crate::list) const FMT_FLOAT: u64 = word(b"d\0\0\0\0\0\0\0");
pub(in crate::list) const FMT_BOOL: u64 = word(b"xxxxxxx?");
pub(in crate::list) const FMT_NONE: u64 = word(b"xxxxxx?x");

/// What an item holds, decoded from its format and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    /// `int`: format `q`, code 0.
    Int,
    /// `float`: format `d`, code 0.
    Float,
    /// `bool`: format `xxxxxxx?`, code 0; the value is the slot's byte 7.
    Bool,
    /// `None`: format `xxxxxx?x`, code 3.
    None,
    /// `str`: format `<width>s`, code 1; UTF-8, trailing NULs stripped.
    Str {
        /// How many bytes of the slot the format covers.
        width: usize,
    },
    /// `bytes`: format `<width>s`, code 2; trailing NULs stripped.
    Bytes {
        /// How many bytes of the slot the format covers.
        width: usize,
    },
}

impl ItemType {
    /// The Python type's name: `"int"`, `"float"`, `"bool"`, `"None"`,
    /// `"str"` or `"bytes"`.
    pub fn type_name(self) -> &'static str {
        match self {
            ItemType::Int => "int",
            ItemType::Float => "float",
            ItemType::Bool => "bool",
            ItemType::None => "None",
            ItemType::Str { .. } => "str",
            ItemType::Bytes { .. } => "bytes",
        }
    }

    /// Decodes a format and code, or `None` for any pair that no
    /// ShareableList writes. The format may be NUL-padded.
    pub fn decode(format: [u8; 8], code: i8) -> Option<ItemType> {
        match (word(&format), code) {
            (FMT_INT, CODE_PLAIN) => Some(ItemType::Int),
            (FMT_FLOAT, CODE_PLAIN) => Some(ItemType::Float),
            (FMT_BOOL, CODE_PLAIN) => Some(ItemType::Bool),
            (FMT_NONE, CODE_NONE) => Some(ItemType::None),
            (_, CODE_STR) => s_width(format).map(|width| ItemType::Str { width }),
            (_, CODE_BYTES) => s_width(format).map(|width| ItemType::Bytes { width }),
            _ => None,
        }
    }

    /// How many bytes of its slot the item's format covers.
    pub fn width(self) -> usize {
        match self {
            ItemType::Str { width } | ItemType::Bytes { width } => width,
            _ => 8,
        }
    }
}

/// The width of a `<digits>s` format (`s` alone counts 1, as in `struct`),
/// or `None` for any other format.
pub(super) fn s_width(format: [u8; 8]) -> Option<usize> {
    let len = format.iter().rposition(|&b| b != 0)? + 1;
    let (&last, digits) = format[..len].split_last()?;
    if last != b's' || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.is_empty() {
        return Some(1);
    }
    // At most 7 digits, so this cannot overflow.
    Some(
        digits
            .iter()
            .fold(0, |n, &d| n * 10 + usize::from(d - b'0')),
    )
}

/// The format `<width>s`, NUL-padded, or `None` if it needs more than 8
/// bytes.
pub(super) fn s_format(width: usize) -> Option<[u8; 8]> {
    let text = format!("{width}s");
    let mut format = [0u8; 8];
    format
        .get_mut(..text.len())?
        .copy_from_slice(text.as_bytes());
    Some(format)
}

/// The slot a new `str`/`bytes` gets. CPython gives it the next multiple of
/// 8 strictly above its length in *units*: bytes for `bytes`, characters for
/// `str`, so that multibyte text can be cut short. We give the same slot
/// whenever the bytes fit it (so formats match CPython's, which its own tests
/// compare), and the next multiple of 8 above the byte length when not.
pub(super) fn var_slot(
    index: usize,
    data: &[u8],
    units: usize,
    type_name: &'static str,
) -> Result<usize> {
    check_var(index, data, type_name)?;
    let cpython = (units / 8 + 1) * 8;
    Ok(if data.len() <= cpython {
        cpython
    } else {
        (data.len() / 8 + 1) * 8
    })
}

/// What CPython sizes a `str`/`bytes` slot by: characters or bytes.
pub(super) fn units(value: ValueRef<'_>) -> usize {
    match value {
        ValueRef::Str(s) => s.chars().count(),
        ValueRef::Bytes(b) => b.len(),
        _ => 8,
    }
}

pub(super) fn check_var(index: usize, data: &[u8], type_name: &'static str) -> Result<()> {
    if data.last() == Some(&0) {
        return Err(ListError::TrailingNul { index, type_name }.into());
    }
    if data.len() > MAX_ITEM_BYTES {
        return Err(ListError::TooLong {
            index,
            len: data.len(),
        }
        .into());
    }
    Ok(())
}

/// A value as its slot holds it: fixed-size values as one word, `str` and
/// `bytes` as their bytes.
pub(super) enum Encoded<'a> {
    Word { format: u64, code: i8, bits: u64 },
    Var { code: i8, data: &'a [u8] },
}

impl<'a> Encoded<'a> {
    pub(super) fn of(value: ValueRef<'a>) -> Self {
        let (format, code, bits) = match value {
            ValueRef::Int(v) => (FMT_INT, CODE_PLAIN, v as u64),
            ValueRef::Float(v) => (FMT_FLOAT, CODE_PLAIN, v.to_bits()),
            ValueRef::Bool(v) => (FMT_BOOL, CODE_PLAIN, bool_word(v)),
            ValueRef::None => (FMT_NONE, CODE_NONE, 0),
            ValueRef::Str(s) => {
                return Encoded::Var {
                    code: CODE_STR,
                    data: s.as_bytes(),
                }
            }
            ValueRef::Bytes(b) => {
                return Encoded::Var {
                    code: CODE_BYTES,
                    data: b,
                }
            }
        };
        Encoded::Word { format, code, bits }
    }
}

/// A bool's slot: seven zero bytes, then 1 or 0.
pub(in crate::list) fn bool_word(v: bool) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[7] = u8::from(v);
    u64::from_ne_bytes(bytes)
}
