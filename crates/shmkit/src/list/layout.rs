//! The ShareableList layout of CPython 3.9–3.13, as a pure codec.
//!
//! Nothing here makes a system call: every function reads and writes through
//! a [`ByteSource`] or [`ByteSink`], which a [`Region`](crate::Region) of
//! shared memory implements with copies and atomics and a `[u8]` implements
//! in process memory. [`ShareableList`](super::ShareableList) is this codec
//! over a [`SharedMemory`](crate::SharedMemory).
//!
//! # The layout
//!
//! All integers are native-endian; N is the number of items.
//!
//! | offset | contents |
//! | --- | --- |
//! | 0 | N, `i64` |
//! | 8 | `offsets[0..=N]`, `i64`: where each item starts in the data area; `offsets[0] = 0`, `offsets[N]` = the data area's size |
//! | D = 8(N+2) | the data area: item *i* in the slot `D+offsets[i] .. D+offsets[i+1]` |
//! | F = `D+offsets[N]` | N formats of 8 bytes, ASCII, NUL-padded: `q`, `d`, `xxxxxxx?` (bool), `xxxxxx?x` (None), `16s` (str or bytes) |
//! | F+8N | N back-transform codes, `i8`: 0 plain, 1 str, 2 bytes, 3 None |
//!
//! Slots are multiples of 8, so every slot and the format area are 8-byte
//! aligned and an `int` or `float` is one aligned word.
//!
//! # Trust
//!
//! [`Layout::attach`] validates the header and offset table once (they never
//! change after creation) and keeps a copy; nothing read from the segment
//! afterwards can make the codec index outside it. Formats and codes, which
//! any process may rewrite at any time, are validated at every access.
//!
//! ```
//! use shmkit::list::{layout::Layout, Value, ValueRef};
//!
//! let bytes = Layout::encode(&[ValueRef::Int(100), ValueRef::Str("howdy")])?;
//! assert_eq!(bytes.len(), 8 * 6 + 16 + 2);
//! let layout = Layout::attach(&bytes[..])?;
//! assert_eq!(layout.get(&bytes[..], -1)?, Value::Str("howdy".into()));
//! # Ok::<(), shmkit::Error>(())
//! ```

use std::ops::Range;

use super::bytes::{ByteSink, ByteSource};
use super::error::ListError;
use super::value::{Value, ValueRef};
use crate::error::{Error, Result};

/// The longest `str` (in UTF-8 bytes) or `bytes` an item can hold: one more
/// and the slot's format, `10000000s`, would not fit its 8 bytes.
pub const MAX_ITEM_BYTES: usize = 9_999_991;

/// Back-transform codes.
pub(super) const CODE_PLAIN: i8 = 0;
const CODE_STR: i8 = 1;
const CODE_BYTES: i8 = 2;
pub(super) const CODE_NONE: i8 = 3;

const fn word(fmt: &[u8; 8]) -> u64 {
    u64::from_ne_bytes(*fmt)
}

/// The formats of the four fixed-size types, as the 8-byte words stored.
pub(super) const FMT_INT: u64 = word(b"q\0\0\0\0\0\0\0");
pub(super) const FMT_FLOAT: u64 = word(b"d\0\0\0\0\0\0\0");
pub(super) const FMT_BOOL: u64 = word(b"xxxxxxx?");
pub(super) const FMT_NONE: u64 = word(b"xxxxxx?x");

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
fn s_width(format: [u8; 8]) -> Option<usize> {
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
fn s_format(width: usize) -> Option<[u8; 8]> {
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
fn var_slot(index: usize, data: &[u8], units: usize, type_name: &'static str) -> Result<usize> {
    check_var(index, data, type_name)?;
    let cpython = (units / 8 + 1) * 8;
    Ok(if data.len() <= cpython {
        cpython
    } else {
        (data.len() / 8 + 1) * 8
    })
}

/// What CPython sizes a `str`/`bytes` slot by: characters or bytes.
fn units(value: ValueRef<'_>) -> usize {
    match value {
        ValueRef::Str(s) => s.chars().count(),
        ValueRef::Bytes(b) => b.len(),
        _ => 8,
    }
}

fn check_var(index: usize, data: &[u8], type_name: &'static str) -> Result<()> {
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
enum Encoded<'a> {
    Word { format: u64, code: i8, bits: u64 },
    Var { code: i8, data: &'a [u8] },
}

impl<'a> Encoded<'a> {
    fn of(value: ValueRef<'a>) -> Self {
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
pub(super) fn bool_word(v: bool) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[7] = u8::from(v);
    u64::from_ne_bytes(bytes)
}

fn corrupt(reason: String) -> Error {
    ListError::Corrupt { reason }.into()
}

/// The validated geometry of one list: where its items, formats and codes
/// are. Fixed at creation; kept by [`ShareableList`](super::ShareableList)
/// so that no access re-reads the header.
#[derive(Clone, PartialEq, Eq)]
pub struct Layout {
    /// Absolute offsets of the N slots, then of the format area.
    starts: Box<[usize]>,
    /// `starts[N]`, kept apart so the typed fast paths need no lookup.
    formats: usize,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout")
            .field("len", &self.len())
            .field("size", &self.size())
            .finish()
    }
}

impl Layout {
    pub(super) fn new(starts: Vec<usize>) -> Self {
        let formats = *starts.last().expect("N+1 starts");
        Layout {
            starts: starts.into(),
            formats,
        }
    }

    /// Reads and validates the header and offset table of the list in `src`.
    ///
    /// Refuses, with [`ListError::Corrupt`], a negative count, a count or
    /// data size the bytes cannot hold, and offsets that do not start at 0,
    /// decrease, or are not multiples of 8; with [`ListError::Python38Layout`]
    /// a list written by Python 3.8. The count is checked against
    /// `src.size()` before anything is allocated, so memory use is bounded
    /// by the segment's size (about 8 bytes per item, a few times over). The
    /// format and code of each item are checked later, at each access.
    ///
    /// ```
    /// use shmkit::list::layout::Layout;
    /// assert_eq!(Layout::attach(&[0u8; 16][..])?.len(), 0);
    /// assert!(Layout::attach(&[0xffu8; 16][..]).is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn attach<S: ByteSource + ?Sized>(src: &S) -> Result<Self> {
        let size = src.size();
        if size < 8 {
            return Err(corrupt(format!(
                "{size} bytes cannot hold the 8-byte item count"
            )));
        }
        let count = src.load_u64(0)? as i64;
        if count < 0 {
            return Err(corrupt(format!("the item count is {count}")));
        }
        if size < 16 {
            // Python 3.8's empty list is the 8-byte count alone.
            return Err(if count == 0 {
                ListError::Python38Layout.into()
            } else {
                corrupt(format!("{size} bytes cannot hold {count} items"))
            });
        }
        // Each item needs at least 8 (offset) + 8 (format) + 1 (code) bytes
        // besides its slot, which bounds the table read below by `size`.
        if count as u64 > ((size - 16) / 17) as u64 {
            return Err(corrupt(format!("{size} bytes cannot hold {count} items")));
        }
        let n = count as usize;
        let mut table = vec![0u8; (n + 1) * 8];
        src.read(8, &mut table)?;
        let offsets: Vec<i64> = table
            .chunks_exact(8)
            .map(|c| i64::from_ne_bytes(c.try_into().expect("chunks of 8")))
            .collect();
        if offsets[0] != 0 {
            return Err(if looks_like_38(size, &offsets[..n]) {
                ListError::Python38Layout.into()
            } else {
                corrupt(format!("offsets[0] is {}, not 0", offsets[0]))
            });
        }
        for (i, pair) in offsets.windows(2).enumerate() {
            if pair[1] < pair[0] || pair[1] % 8 != 0 {
                return Err(corrupt(format!(
                    "offsets[{}] is {} after offsets[{i}] = {}",
                    i + 1,
                    pair[1],
                    pair[0]
                )));
            }
        }
        let data_start = (n + 2) * 8;
        let data_size = offsets[n] as u64;
        // Cannot overflow: every term is below 2^63.
        let total = data_start as u64 + data_size + 9 * n as u64;
        if total > size as u64 {
            return Err(corrupt(format!(
                "{n} items with {data_size} bytes of data need {total} bytes, but there are {size}"
            )));
        }
        let starts = offsets.iter().map(|&o| data_start + o as usize).collect();
        Ok(Layout::new(starts))
    }

    /// The layout a new list of `values` gets: each `int`, `float`, `bool`
    /// and `None` an 8-byte slot, each `str` and `bytes` the next multiple of
    /// 8 strictly above its length in bytes.
    ///
    /// Refuses a `str` or `bytes` that ends in NUL ([`ListError::TrailingNul`])
    /// or is longer than [`MAX_ITEM_BYTES`] ([`ListError::TooLong`]).
    pub fn for_values(values: &[ValueRef<'_>]) -> Result<Self> {
        let too_large = || Error::InvalidSize {
            size: u64::MAX,
            reason: "the list does not fit the address space",
        };
        let n = values.len();
        let data_start = n
            .checked_add(2)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(too_large)?;
        let mut starts = Vec::with_capacity(n + 1);
        let mut pos = data_start;
        for (i, &value) in values.iter().enumerate() {
            starts.push(pos);
            let slot = match Encoded::of(value) {
                Encoded::Word { .. } => 8,
                Encoded::Var { data, .. } => var_slot(i, data, units(value), value.type_name())?,
            };
            pos = pos.checked_add(slot).ok_or_else(too_large)?;
        }
        starts.push(pos);
        match pos.checked_add(9 * n) {
            Some(total) if total <= isize::MAX as usize => Ok(Layout::new(starts)),
            _ => Err(too_large()),
        }
    }

    /// The bytes of a new list of `values`, exactly as CPython lays them out
    /// (but with `str` slots sized by bytes: see [`for_values`](Self::for_values)).
    ///
    /// ```
    /// use shmkit::list::{layout::Layout, ValueRef};
    /// assert_eq!(Layout::encode(&[])?, [0u8; 16]);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn encode(values: &[ValueRef<'_>]) -> Result<Vec<u8>> {
        let layout = Layout::for_values(values)?;
        let mut bytes = vec![0u8; layout.size()];
        layout.write_new(&mut bytes, values)?;
        Ok(bytes)
    }

    /// Writes a new list of `values` into `sink`: header, offsets, items,
    /// formats and codes. `values` must be those this layout was made from
    /// by [`for_values`](Self::for_values).
    pub fn write_new<S: ByteSink + ?Sized>(
        &self,
        sink: &mut S,
        values: &[ValueRef<'_>],
    ) -> Result<()> {
        let n = self.len();
        if values.len() != n {
            return Err(corrupt(format!(
                "{} values for a layout of {n} items",
                values.len()
            )));
        }
        let data_start = self.data_offset();
        let mut header = Vec::with_capacity((n + 2) * 8);
        header.extend_from_slice(&(n as i64).to_ne_bytes());
        for &start in self.starts.iter() {
            header.extend_from_slice(&((start - data_start) as i64).to_ne_bytes());
        }
        sink.write(0, &header)?;
        let mut formats = vec![0u8; 8 * n];
        let mut codes = vec![0u8; n];
        for (i, &value) in values.iter().enumerate() {
            let slot = self.slot(i);
            let (format, code) = match Encoded::of(value) {
                Encoded::Word { format, code, bits } => {
                    if slot.len() != 8 {
                        return Err(corrupt(format!("item {i} does not match the layout")));
                    }
                    sink.store_u64(slot.start, bits)?;
                    (format.to_ne_bytes(), code)
                }
                Encoded::Var { code, data } => {
                    if var_slot(i, data, units(value), value.type_name())? != slot.len() {
                        return Err(corrupt(format!("item {i} does not match the layout")));
                    }
                    write_padded(sink, slot.start, data, slot.len())?;
                    // The slot is at most MAX_ITEM_BYTES + 1, whose format fits.
                    (s_format(slot.len()).expect("checked length"), code)
                }
            };
            formats[8 * i..8 * i + 8].copy_from_slice(&format);
            codes[i] = code as u8;
        }
        sink.write(self.formats_offset(), &formats)?;
        sink.write(self.codes_offset(), &codes)
    }

    /// The number of items.
    #[inline]
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Whether the list has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the list occupies: `8(2N+2) + offsets[N] + N`. A segment
    /// may be larger.
    pub fn size(&self) -> usize {
        self.codes_offset() + self.len()
    }

    /// Where the data area starts: `8(N+2)`.
    pub fn data_offset(&self) -> usize {
        (self.len() + 2) * 8
    }

    /// Where the format area starts.
    #[inline]
    pub fn formats_offset(&self) -> usize {
        self.formats
    }

    /// Where the code area starts.
    #[inline]
    pub fn codes_offset(&self) -> usize {
        self.formats_offset() + 8 * self.len()
    }

    /// Item `i`'s slot, as absolute offsets.
    ///
    /// # Panics
    /// If `i >= len()`; [`index`](Self::index) gives a checked `i`.
    #[inline]
    pub fn slot(&self, i: usize) -> Range<usize> {
        self.starts[i]..self.starts[i + 1]
    }

    /// Turns a Python-style index (negative counts from the end) into a
    /// position, refusing anything outside `-len..len`.
    ///
    /// ```
    /// # use shmkit::list::{layout::Layout, ValueRef};
    /// let layout = Layout::for_values(&[ValueRef::None, ValueRef::None])?;
    /// assert_eq!(layout.index(-2)?, 0);
    /// assert!(layout.index(-3).is_err()); // CPython would read its metadata
    /// assert!(layout.index(2).is_err());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    #[inline]
    pub fn index(&self, index: isize) -> Result<usize> {
        let len = self.len();
        // len < isize::MAX (it fits in memory), so this cannot wrap.
        let i = if index < 0 {
            index + len as isize
        } else {
            index
        };
        if (i as usize) < len {
            Ok(i as usize)
        } else {
            Err(index_error(index, len))
        }
    }

    /// Item `index`'s type, from its format and code, checked against its
    /// slot.
    pub fn item_type<S: ByteSource + ?Sized>(&self, src: &S, index: isize) -> Result<ItemType> {
        let i = self.index(index)?;
        self.item_type_at(src, i)
    }

    fn item_type_at<S: ByteSource + ?Sized>(&self, src: &S, i: usize) -> Result<ItemType> {
        self.decode_at(src, i).map(|(ty, _)| ty)
    }

    /// Item `i`'s type and raw format, read once.
    fn decode_at<S: ByteSource + ?Sized>(&self, src: &S, i: usize) -> Result<(ItemType, [u8; 8])> {
        let format = src.load_u64(self.formats_offset() + 8 * i)?.to_ne_bytes();
        let code = src.load_u8(self.codes_offset() + i)? as i8;
        match ItemType::decode(format, code) {
            Some(ty) if ty.width() <= self.slot(i).len() => Ok((ty, format)),
            _ => Err(ListError::BadItem {
                index: i,
                format,
                code,
            }
            .into()),
        }
    }

    /// Reads every item, in order, out of `src` (a segment's [`Region`] or
    /// a private copy of the list), handing each to `emit`; stops at the
    /// first error. The same values as [`get`](Self::get), with the four
    /// fixed-size types decoded in one tight pass of word loads: this is
    /// what iteration and `list(sl)` cost per item. From a segment, nothing
    /// is copied first; a writer racing the pass makes items torn one by
    /// one, as [`get`](Self::get) would.
    ///
    /// [`Region`]: crate::Region
    ///
    /// ```
    /// use shmkit::list::{layout::Layout, Value, ValueRef};
    /// let bytes = Layout::encode(&[ValueRef::Int(7), ValueRef::Str("hi")])?;
    /// let layout = Layout::attach(&bytes[..])?;
    /// let mut out = Vec::new();
    /// layout.decode_all(&bytes[..], |_, v| {
    ///     out.push(v);
    ///     Ok::<(), shmkit::Error>(())
    /// })?;
    /// assert_eq!(out, [Value::Int(7), Value::from("hi")]);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn decode_all<S: ByteSource + ?Sized, E: From<Error>>(
        &self,
        src: &S,
        mut emit: impl FnMut(usize, Value) -> Result<(), E>,
    ) -> Result<(), E> {
        let n = self.len();
        if self.size() > src.size() {
            return Err(Error::OutOfBounds {
                offset: 0,
                len: self.size(),
                size: src.size(),
            }
            .into());
        }
        let codes = self.codes_offset();
        for (i, bounds) in self.starts.windows(2).enumerate().take(n) {
            let (start, end) = (bounds[0], bounds[1]);
            let format = src.load_u64(self.formats + 8 * i)?;
            let code = src.load_u8(codes + i)? as i8;
            // Anything unusual (str, bytes, a short slot, bad bytes) takes the
            // general, checked path.
            let fixed = if end - start >= 8 {
                match (format, code) {
                    (FMT_INT, CODE_PLAIN) => Some(Value::Int(src.load_u64(start)? as i64)),
                    (FMT_FLOAT, CODE_PLAIN) => {
                        Some(Value::Float(f64::from_bits(src.load_u64(start)?)))
                    }
                    (FMT_BOOL, CODE_PLAIN) => Some(Value::Bool(src.load_u8(start + 7)? != 0)),
                    (FMT_NONE, CODE_NONE) => Some(Value::None),
                    _ => None,
                }
            } else {
                None
            };
            let value = match fixed {
                Some(value) => value,
                None => self.get(src, i as isize)?,
            };
            emit(i, value)?;
        }
        Ok(())
    }

    /// Item `index`'s format, as CPython's `_get_packing_format` returns it:
    /// `"q"`, `"d"`, `"xxxxxxx?"`, `"xxxxxx?x"` or `"<width>s"`.
    pub fn item_format<S: ByteSource + ?Sized>(&self, src: &S, index: isize) -> Result<String> {
        let (_, format) = self.decode_at(src, self.index(index)?)?;
        let len = format.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        // A format that decodes is ASCII without NULs before `len`.
        Ok(format[..len].iter().map(|&b| char::from(b)).collect())
    }

    /// All formats joined, as CPython's `ShareableList.format`.
    pub fn format<S: ByteSource + ?Sized>(&self, src: &S) -> Result<String> {
        let mut out = String::new();
        for i in 0..self.len() {
            out.push_str(&self.item_format(src, i as isize)?);
        }
        Ok(out)
    }

    /// Reads item `index`. Trailing NULs of `str` and `bytes` are stripped,
    /// as CPython strips them.
    pub fn get<S: ByteSource + ?Sized>(&self, src: &S, index: isize) -> Result<Value> {
        let i = self.index(index)?;
        let start = self.starts[i];
        Ok(match self.item_type_at(src, i)? {
            ItemType::Int => Value::Int(src.load_u64(start)? as i64),
            ItemType::Float => Value::Float(f64::from_bits(src.load_u64(start)?)),
            ItemType::Bool => Value::Bool(src.load_u8(start + 7)? != 0),
            ItemType::None => Value::None,
            ItemType::Bytes { width } => Value::Bytes(read_stripped(src, start, width)?),
            ItemType::Str { width } => {
                let bytes = read_stripped(src, start, width)?;
                Value::Str(
                    String::from_utf8(bytes).map_err(|e| ListError::InvalidUtf8 {
                        index: i,
                        valid_up_to: e.utf8_error().valid_up_to(),
                    })?,
                )
            }
        })
    }

    /// Writes `value` to item `index`, as CPython does: format, then code,
    /// then value, with no locking.
    ///
    /// A value of another type may replace the item's; the slot keeps its
    /// size. A `str` or `bytes` longer than the slot, or ending in NUL, is
    /// refused and the item left as it was. A `str`/`bytes` item keeps its
    /// format if the value fits it, else gets `<slot size>s` (CPython would
    /// keep a narrower format and truncate; it never writes one).
    pub fn set<S: ByteSink + ?Sized>(
        &self,
        sink: &mut S,
        index: isize,
        value: ValueRef<'_>,
    ) -> Result<()> {
        let i = self.index(index)?;
        match Encoded::of(value) {
            Encoded::Word { format, code, bits } => self.set_word(sink, i, format, code, bits),
            Encoded::Var { code, data } => self.set_var(sink, i, code, data, value.type_name()),
        }
    }

    /// Whether [`set`](Self::set) would accept `value` at `index`, without
    /// writing anything: for writers that must check several items before
    /// changing any (slice assignment).
    pub fn check_set(&self, index: isize, value: ValueRef<'_>) -> Result<()> {
        let i = self.index(index)?;
        let slot = self.slot(i);
        match Encoded::of(value) {
            Encoded::Word { .. } if slot.len() < 8 => Err(exceeds(i, 8, slot.len())),
            Encoded::Word { .. } => Ok(()),
            Encoded::Var { data, .. } => {
                check_var(i, data, value.type_name())?;
                if data.len() > slot.len() {
                    return Err(exceeds(i, data.len(), slot.len()));
                }
                Ok(())
            }
        }
    }

    #[inline]
    fn set_word<S: ByteSink + ?Sized>(
        &self,
        sink: &mut S,
        i: usize,
        format: u64,
        code: i8,
        bits: u64,
    ) -> Result<()> {
        let slot = self.slot(i);
        if slot.len() < 8 {
            return Err(exceeds(i, 8, slot.len()));
        }
        sink.store_u64(self.formats_offset() + 8 * i, format)?;
        sink.store_u8(self.codes_offset() + i, code as u8)?;
        sink.store_u64(slot.start, bits)
    }

    fn set_var<S: ByteSink + ?Sized>(
        &self,
        sink: &mut S,
        i: usize,
        code: i8,
        data: &[u8],
        type_name: &'static str,
    ) -> Result<()> {
        check_var(i, data, type_name)?;
        let slot = self.slot(i);
        if data.len() > slot.len() {
            return Err(exceeds(i, data.len(), slot.len()));
        }
        let format_at = self.formats_offset() + 8 * i;
        let current = sink.load_u64(format_at)?.to_ne_bytes();
        let (format, width) = match s_width(current) {
            Some(w) if (data.len()..=slot.len()).contains(&w) => (current, w),
            _ => (
                s_format(slot.len()).ok_or(ListError::TooLong {
                    index: i,
                    len: data.len(),
                })?,
                slot.len(),
            ),
        };
        sink.store_u64(format_at, u64::from_ne_bytes(format))?;
        sink.store_u8(self.codes_offset() + i, code as u8)?;
        write_padded(sink, slot.start, data, width)
    }

    /// Reads item `index` if it is an `int`, else fails with
    /// [`ListError::WrongType`] (a `bool` is not an `int` here).
    #[inline]
    pub fn get_i64<S: ByteSource + ?Sized>(&self, src: &S, index: isize) -> Result<i64> {
        Ok(self.get_word(src, index, FMT_INT, ItemType::Int)? as i64)
    }

    /// Reads item `index` if it is a `float`, else fails with
    /// [`ListError::WrongType`] (an `int` is not converted).
    #[inline]
    pub fn get_f64<S: ByteSource + ?Sized>(&self, src: &S, index: isize) -> Result<f64> {
        Ok(f64::from_bits(self.get_word(
            src,
            index,
            FMT_FLOAT,
            ItemType::Float,
        )?))
    }

    /// Writes an `int` to item `index`, whatever it held before.
    #[inline]
    pub fn set_i64<S: ByteSink + ?Sized>(
        &self,
        sink: &mut S,
        index: isize,
        value: i64,
    ) -> Result<()> {
        let i = self.index(index)?;
        self.set_word(sink, i, FMT_INT, CODE_PLAIN, value as u64)
    }

    /// Writes a `float` to item `index`, whatever it held before.
    #[inline]
    pub fn set_f64<S: ByteSink + ?Sized>(
        &self,
        sink: &mut S,
        index: isize,
        value: f64,
    ) -> Result<()> {
        let i = self.index(index)?;
        self.set_word(sink, i, FMT_FLOAT, CODE_PLAIN, value.to_bits())
    }

    /// The fast path of the typed getters: two loads to check the format
    /// and code, one for the value.
    #[inline]
    fn get_word<S: ByteSource + ?Sized>(
        &self,
        src: &S,
        index: isize,
        format: u64,
        expected: ItemType,
    ) -> Result<u64> {
        let i = self.index(index)?;
        let slot = self.slot(i);
        if src.load_u64(self.formats_offset() + 8 * i)? == format
            && src.load_u8(self.codes_offset() + i)? == CODE_PLAIN as u8
            && slot.len() >= 8
        {
            return src.load_u64(slot.start);
        }
        Err(self.wrong_type(src, i, expected))
    }

    #[cold]
    fn wrong_type<S: ByteSource + ?Sized>(&self, src: &S, i: usize, expected: ItemType) -> Error {
        match self.item_type_at(src, i) {
            Ok(found) => ListError::WrongType {
                index: i,
                expected: expected.type_name(),
                found: found.type_name(),
            }
            .into(),
            Err(e) => e,
        }
    }
}

#[cold]
fn index_error(index: isize, len: usize) -> Error {
    ListError::IndexOutOfRange { index, len }.into()
}

#[cold]
fn exceeds(index: usize, len: usize, available: usize) -> Error {
    ListError::ExceedsStorage {
        index,
        len,
        available,
    }
    .into()
}

/// Whether `offsets`, the N words after the count, read as Python 3.8's
/// table of slot sizes describe a list that fits `size` bytes.
fn looks_like_38(size: usize, sizes: &[i64]) -> bool {
    let mut data: u64 = 0;
    for &s in sizes {
        if s <= 0 || s % 8 != 0 {
            return false;
        }
        data = data.saturating_add(s as u64);
    }
    // n <= size / 17, so only the sum of sizes can overflow.
    let n = sizes.len() as u64;
    !sizes.is_empty() && data.saturating_add(17 * n + 8) <= size as u64
}

/// Writes `data` then zeros up to `width` bytes, as `struct` packs `<width>s`.
fn write_padded<S: ByteSink + ?Sized>(
    sink: &mut S,
    at: usize,
    data: &[u8],
    width: usize,
) -> Result<()> {
    const ZEROS: [u8; 256] = [0; 256];
    sink.write(at, data)?;
    let mut pos = at + data.len();
    let end = at + width;
    while pos < end {
        let n = (end - pos).min(ZEROS.len());
        sink.write(pos, &ZEROS[..n])?;
        pos += n;
    }
    Ok(())
}

/// Copies `width` bytes at `at`, without their trailing NULs.
fn read_stripped<S: ByteSource + ?Sized>(src: &S, at: usize, width: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; width];
    src.read(at, &mut bytes)?;
    let len = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    bytes.truncate(len);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn list_error(r: Result<impl std::fmt::Debug>) -> ListError {
        match r {
            Err(Error::List(e)) => e,
            other => panic!("expected a list error, got {other:?}"),
        }
    }

    fn values(bytes: &[u8]) -> Vec<Value> {
        let layout = Layout::attach(bytes).unwrap();
        (0..layout.len() as isize)
            .map(|i| layout.get(bytes, i).unwrap())
            .collect()
    }

    fn refs(values: &[Value]) -> Vec<ValueRef<'_>> {
        values.iter().map(ValueRef::from).collect()
    }

    /// The reference's §2.3 hexdump, row by row (CPython 3.11.7, x86-64).
    const HOWDY: &str = "
        07 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00
        08 00 00 00 00 00 00 00  10 00 00 00 00 00 00 00
        18 00 00 00 00 00 00 00  20 00 00 00 00 00 00 00
        28 00 00 00 00 00 00 00  30 00 00 00 00 00 00 00
        38 00 00 00 00 00 00 00
        68 6f 77 64 79 00 00 00  48 6f 57 64 59 00 00 00
        58 39 b4 c8 76 12 71 c0  64 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 01
        2a 00 00 00 00 00 00 00
        38 73 00 00 00 00 00 00  38 73 00 00 00 00 00 00
        64 00 00 00 00 00 00 00  71 00 00 00 00 00 00 00
        78 78 78 78 78 78 3f 78  78 78 78 78 78 78 78 3f
        71 00 00 00 00 00 00 00
        01 02 00 00 03 00 00";

    fn howdy_values() -> Vec<Value> {
        vec![
            Value::from("howdy"),
            Value::from(&b"HoWdY"[..]),
            Value::Float(-273.154),
            Value::Int(100),
            Value::None,
            Value::Bool(true),
            Value::Int(42),
        ]
    }

    #[test]
    fn encodes_the_reference_hexdump_byte_for_byte() {
        let expected = unhex(HOWDY);
        assert_eq!(expected.len(), 191);
        let values = howdy_values();
        let layout = Layout::for_values(&refs(&values)).unwrap();
        assert_eq!(
            (
                layout.data_offset(),
                layout.formats_offset(),
                layout.codes_offset()
            ),
            (72, 128, 184)
        );
        assert_eq!(Layout::encode(&refs(&values)).unwrap(), expected);
    }

    #[test]
    fn decodes_the_reference_hexdump() {
        let bytes = unhex(HOWDY);
        assert_eq!(values(&bytes), howdy_values());
        let layout = Layout::attach(&bytes[..]).unwrap();
        assert_eq!(
            layout.format(&bytes[..]).unwrap(),
            "8s8sdqxxxxxx?xxxxxxxx?q"
        );
        assert_eq!(layout.item_format(&bytes[..], -1).unwrap(), "q");
        assert_eq!(layout.get_i64(&bytes[..], 6).unwrap(), 42);
        assert_eq!(layout.get_f64(&bytes[..], 2).unwrap(), -273.154);
        assert_eq!(
            list_error(layout.get_i64(&bytes[..], 5)),
            ListError::WrongType {
                index: 5,
                expected: "int",
                found: "bool"
            }
        );
        assert_eq!(
            layout.item_type(&bytes[..], 0).unwrap(),
            ItemType::Str { width: 8 }
        );
    }

    /// `['123456789', 1, b'', 'é'*5, 2.5]` as CPython 3.11 writes it, with
    /// the last é cut off.
    const SECOND_CPYTHON: &str = "
        0500000000000000 0000000000000000 1000000000000000 1800000000000000
        2000000000000000 2800000000000000 3000000000000000
        3132333435363738 3900000000000000 0100000000000000 0000000000000000
        c3a9c3a9c3a9c3a9 0000000000000440
        3136730000000000 7100000000000000 3873000000000000 3873000000000000
        6400000000000000
        0100020100";

    #[test]
    fn second_example_reads_cpythons_truncation_and_sizes_by_bytes_itself() {
        let cpython = unhex(SECOND_CPYTHON);
        assert_eq!(cpython.len(), 149);
        let read = values(&cpython);
        assert_eq!(read[3], Value::from("éééé"));
        assert_eq!(
            read,
            vec![
                Value::from("123456789"),
                Value::Int(1),
                Value::Bytes(vec![]),
                Value::from("éééé"),
                Value::Float(2.5),
            ]
        );

        // shmkit gives the ten bytes of 'é'*5 a 16-byte slot: 8 bytes more,
        // and nothing lost. Everything else is as CPython lays it out.
        let ours = vec![
            Value::from("123456789"),
            Value::Int(1),
            Value::Bytes(vec![]),
            Value::from("ééééé"),
            Value::Float(2.5),
        ];
        let bytes = Layout::encode(&refs(&ours)).unwrap();
        assert_eq!(bytes.len(), 157);
        let layout = Layout::attach(&bytes[..]).unwrap();
        assert_eq!(layout.format(&bytes[..]).unwrap(), "16sq8s16sd");
        assert_eq!(values(&bytes), ours);
        assert_eq!(&bytes[..72], {
            let mut head = cpython[..40].to_vec();
            head.extend(unhex(
                "3000000000000000 3800000000000000 3132333435363738 3900000000000000",
            ));
            head
        });
    }

    #[test]
    fn empty_list_is_sixteen_zeros() {
        let bytes = Layout::encode(&[]).unwrap();
        assert_eq!(bytes, [0u8; 16]);
        let layout = Layout::attach(&bytes[..]).unwrap();
        assert!(layout.is_empty());
        assert_eq!(layout.size(), 16);
        assert_eq!(layout.format(&bytes[..]).unwrap(), "");
        assert!(layout.get(&bytes[..], 0).is_err());
        assert!(layout.get(&bytes[..], -1).is_err());
        // A segment may be larger than its list.
        assert_eq!(Layout::attach(&[0u8; 4096][..]).unwrap().len(), 0);
    }

    #[test]
    fn a_bytes_slot_may_be_cut_mid_character_by_cpython() {
        // CPython stores '€'*5 as its first 8 UTF-8 bytes.
        let mut bytes = Layout::encode(&[ValueRef::Str("€€")]).unwrap();
        bytes[24..32].copy_from_slice(&"€€€".as_bytes()[..8]);
        assert_eq!(
            list_error(Layout::attach(&bytes[..]).unwrap().get(&bytes[..], 0)),
            ListError::InvalidUtf8 {
                index: 0,
                valid_up_to: 6
            }
        );
    }

    fn python38(values: &[Value]) -> Vec<u8> {
        // 3.8: the count, N slot sizes, then the same data, formats, codes.
        let ours = Layout::encode(&refs(values)).unwrap();
        let layout = Layout::attach(&ours[..]).unwrap();
        let n = layout.len();
        let mut old = ours[..8].to_vec();
        for i in 0..n {
            old.extend((layout.slot(i).len() as i64).to_ne_bytes());
        }
        old.extend(&ours[layout.data_offset()..]);
        old
    }

    #[test]
    fn recognises_python_38_lists() {
        let old = python38(&howdy_values());
        assert_eq!(old.len(), 183);
        assert_eq!(
            list_error(Layout::attach(&old[..])),
            ListError::Python38Layout
        );
        // Sizes whose sum overflows (found by the fuzzer) are not 3.8's.
        let mut huge = old.clone();
        for i in 1..=7 {
            huge[8 * i..8 * i + 8].copy_from_slice(&(i64::MAX & !7).to_ne_bytes());
        }
        assert!(matches!(
            list_error(Layout::attach(&huge[..])),
            ListError::Corrupt { .. }
        ));
        // 3.8's empty list is the count alone.
        assert_eq!(
            list_error(Layout::attach(&[0u8; 8][..])),
            ListError::Python38Layout
        );
    }

    fn with_word(mut bytes: Vec<u8>, at: usize, value: i64) -> Vec<u8> {
        bytes[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        bytes
    }

    #[test]
    fn refuses_bad_headers_and_offsets() {
        let good = unhex(HOWDY);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short count", vec![0; 7]),
            ("count with no table", with_word(vec![0; 15], 0, 1)),
            ("negative count", with_word(good.clone(), 0, -1)),
            ("huge count", with_word(good.clone(), 0, i64::MAX)),
            ("count too big for the size", with_word(good.clone(), 0, 10)),
            ("first offset not 0", with_word(good.clone(), 8, 8)),
            ("decreasing", with_word(good.clone(), 24, 4 * 8)),
            ("not a multiple of 8", with_word(good.clone(), 24, 17)),
            ("negative offset", with_word(good.clone(), 16, -8)),
            ("data too big", with_word(good.clone(), 64, 64)),
            ("data huge", with_word(good.clone(), 64, i64::MAX & !7)),
            ("truncated", good[..190].to_vec()),
        ];
        for (what, bytes) in cases {
            match Layout::attach(&bytes[..]) {
                Err(Error::List(ListError::Corrupt { reason })) => {
                    assert!(!reason.is_empty(), "{what}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_bad_formats_and_codes_at_each_access() {
        let good = unhex(HOWDY);
        let layout = Layout::attach(&good[..]).unwrap();
        let fmt = |i: usize| layout.formats_offset() + 8 * i;
        let mut cases: Vec<(&str, Vec<u8>, usize)> = Vec::new();
        let mut set = |what, at: usize, data: &[u8], item| {
            let mut b = good.clone();
            b[at..at + data.len()].copy_from_slice(data);
            cases.push((what, b, item));
        };
        set("q with the None code", layout.codes_offset() + 3, &[3], 3);
        set("None with code 0", layout.codes_offset() + 4, &[0], 4);
        set("unknown code", layout.codes_offset(), &[9], 0);
        set("negative code", layout.codes_offset(), &[0xff], 0);
        set("width beyond the slot", fmt(0), b"9s", 0);
        set("16s in an 8-byte slot", fmt(1), b"16s\0", 1);
        set("garbage format", fmt(2), b"zzzzzzzz", 2);
        set("native-order prefix", fmt(3), b"@q\0", 3);
        set("NUL inside", fmt(0), b"8\0s\0", 0);
        set("empty format", fmt(6), &[0; 8], 6);
        set("sign in the width", fmt(0), b"+8s\0", 0);
        for (what, bytes, item) in cases {
            let layout = Layout::attach(&bytes[..]).unwrap();
            let i = item as isize;
            assert!(
                matches!(
                    list_error(layout.get(&bytes[..], i)),
                    ListError::BadItem { index, .. } if index == item
                ),
                "{what}"
            );
            assert!(layout.item_format(&bytes[..], i).is_err(), "{what}");
            assert!(layout.get_i64(&bytes[..], i).is_err(), "{what}");
            assert!(layout.get_f64(&bytes[..], i).is_err(), "{what}");
        }
    }

    #[test]
    fn reads_formats_cpython_never_writes_but_struct_accepts() {
        let mut bytes = unhex(HOWDY);
        let f = Layout::attach(&bytes[..]).unwrap().formats_offset();
        bytes[f..f + 8].copy_from_slice(b"3s\0\0\0\0\0\0");
        bytes[f + 8..f + 16].copy_from_slice(b"08s\0\0\0\0\0");
        let layout = Layout::attach(&bytes[..]).unwrap();
        assert_eq!(layout.get(&bytes[..], 0).unwrap(), Value::from("how"));
        assert_eq!(layout.item_format(&bytes[..], 1).unwrap(), "08s");
        assert_eq!(
            layout.get(&bytes[..], 1).unwrap(),
            Value::from(&b"HoWdY"[..])
        );
    }

    #[test]
    fn indexes_are_pythons_without_its_negative_bug() {
        let bytes = unhex(HOWDY);
        let layout = Layout::attach(&bytes[..]).unwrap();
        assert_eq!(layout.get(&bytes[..], -7).unwrap(), Value::from("howdy"));
        assert_eq!(layout.get(&bytes[..], -2).unwrap(), Value::Bool(true));
        for bad in [7, 8, -8, -9, -15, isize::MIN, isize::MAX] {
            assert_eq!(
                list_error(layout.get(&bytes[..], bad)),
                ListError::IndexOutOfRange { index: bad, len: 7 }
            );
        }
        let mut copy = bytes.clone();
        assert!(layout.set(&mut copy, -8, ValueRef::Int(1)).is_err());
        assert!(layout.set_i64(&mut copy, 7, 1).is_err());
        assert_eq!(copy, bytes);
    }

    #[test]
    fn set_follows_cpython_type_changes() {
        let mut bytes = unhex(HOWDY);
        let layout = Layout::attach(&bytes[..]).unwrap();
        // CPython's test: a str replaces None, in its 8-byte slot.
        layout.set(&mut bytes, 4, ValueRef::Str("encodés")).unwrap();
        assert_eq!(layout.format(&bytes[..]).unwrap(), "8s8sdq8sxxxxxxx?q");
        assert_eq!(layout.get(&bytes[..], 4).unwrap(), Value::from("encodés"));
        // The reference's chain: a str into a float slot, None into an int's.
        layout
            .set(&mut bytes, 2, ValueRef::Str("abcdefgh"))
            .unwrap();
        layout.set(&mut bytes, 3, ValueRef::None).unwrap();
        assert_eq!(
            layout.format(&bytes[..]).unwrap(),
            "8s8s8sxxxxxx?x8sxxxxxxx?q"
        );
        assert_eq!(bytes[layout.codes_offset()..], [1, 2, 1, 3, 1, 0, 0]);
        layout
            .set(&mut bytes, 0, ValueRef::Bytes(b"\0\x01"))
            .unwrap();
        assert_eq!(
            layout.get(&bytes[..], 0).unwrap(),
            Value::from(&b"\0\x01"[..])
        );
        layout.set(&mut bytes, -1, ValueRef::Float(0.5)).unwrap();
        layout.set_f64(&mut bytes, 1, -0.0).unwrap();
        layout.set_i64(&mut bytes, 5, 5).unwrap();
        assert_eq!(layout.get(&bytes[..], 1).unwrap(), Value::Float(-0.0));
        assert_eq!(layout.get_i64(&bytes[..], 5).unwrap(), 5);
        assert_eq!(layout.get_f64(&bytes[..], -1).unwrap(), 0.5);
        layout.set(&mut bytes, 5, ValueRef::Bool(false)).unwrap();
        assert_eq!(layout.get(&bytes[..], 5).unwrap(), Value::Bool(false));
        assert_eq!(
            layout.format(&bytes[..]).unwrap(),
            "8sd8sxxxxxx?x8sxxxxxxx?d"
        );
    }

    #[test]
    fn refused_writes_leave_the_item_intact() {
        let bytes = unhex(HOWDY);
        let layout = Layout::attach(&bytes[..]).unwrap();
        let mut copy = bytes.clone();
        let refused = [
            (0, ValueRef::Str("encodées")), // 9 bytes, 8 characters
            (1, ValueRef::Bytes(b"123456789")),
            (3, ValueRef::Str("x\0")),
            (0, ValueRef::Bytes(b"\0")),
        ];
        for (i, v) in refused {
            let e = list_error(layout.set(&mut copy, i, v));
            assert!(
                matches!(
                    e,
                    ListError::ExceedsStorage { .. } | ListError::TrailingNul { .. }
                ),
                "{e:?}"
            );
            assert_eq!(copy, bytes, "{v:?}");
        }
        assert!(
            list_error(layout.set(&mut copy, 0, ValueRef::Str("encodées")))
                .to_string()
                .contains("exceeds available storage")
        );
    }

    #[test]
    fn a_short_write_stays_in_its_slot() {
        let values = [ValueRef::Str("0123456789abcdef"), ValueRef::Int(-1)];
        let mut bytes = Layout::encode(&values).unwrap();
        let layout = Layout::attach(&bytes[..]).unwrap();
        assert_eq!(layout.slot(0).len(), 24);
        layout.set(&mut bytes, 0, ValueRef::Str("é")).unwrap();
        assert_eq!(layout.get(&bytes[..], 0).unwrap(), Value::from("é"));
        assert_eq!(layout.get_i64(&bytes[..], 1).unwrap(), -1);
        // An 8-byte value in a 24-byte slot leaves the tail as it was (so
        // does CPython), and it is harmless.
        layout
            .set(&mut bytes, 0, ValueRef::Str("0123456789abcdefghijklmn"))
            .unwrap();
        layout.set_i64(&mut bytes, 0, 7).unwrap();
        assert_eq!(
            &bytes[layout.slot(0).start + 8..layout.slot(0).end],
            b"89abcdefghijklmn"
        );
        layout.set(&mut bytes, 0, ValueRef::Bytes(b"")).unwrap();
        assert_eq!(layout.item_format(&bytes[..], 0).unwrap(), "24s");
        assert_eq!(layout.get(&bytes[..], 0).unwrap(), Value::Bytes(vec![]));
    }

    #[test]
    fn a_narrow_s_format_is_kept_when_it_fits_and_widened_when_not() {
        let values = [ValueRef::Str("0123456789")];
        let mut bytes = Layout::encode(&values).unwrap();
        let layout = Layout::attach(&bytes[..]).unwrap();
        let f = layout.formats_offset();
        bytes[f..f + 8].copy_from_slice(b"10s\0\0\0\0\0");
        layout.set(&mut bytes, 0, ValueRef::Str("abc")).unwrap();
        assert_eq!(layout.item_format(&bytes[..], 0).unwrap(), "10s");
        // CPython would keep "10s" and cut this to 10 bytes.
        layout
            .set(&mut bytes, 0, ValueRef::Str("abcdefghijkl"))
            .unwrap();
        assert_eq!(layout.item_format(&bytes[..], 0).unwrap(), "16s");
        assert_eq!(
            layout.get(&bytes[..], 0).unwrap(),
            Value::from("abcdefghijkl")
        );
    }

    #[test]
    fn sizes_and_limits() {
        let slot = |v: ValueRef<'_>| Layout::for_values(&[v]).unwrap().slot(0).len();
        assert_eq!(slot(ValueRef::Str("")), 8);
        assert_eq!(slot(ValueRef::Str("1234567")), 8);
        assert_eq!(slot(ValueRef::Str("12345678")), 16);
        // CPython's slot by characters when the bytes fit it, else by bytes.
        assert_eq!(slot(ValueRef::Str("éééé")), 8); // 8 bytes fit exactly
        assert_eq!(slot(ValueRef::Str("encodés")), 8);
        assert_eq!(slot(ValueRef::Str("ééééé")), 16); // 10 bytes
        let max = vec![b'a'; MAX_ITEM_BYTES];
        assert_eq!(slot(ValueRef::Bytes(&max)), 9_999_992);
        let bytes = Layout::encode(&[ValueRef::Bytes(&max)]).unwrap();
        let layout = Layout::attach(&bytes[..]).unwrap();
        assert_eq!(layout.item_format(&bytes[..], 0).unwrap(), "9999992s");
        let over = vec![b'a'; MAX_ITEM_BYTES + 1];
        assert_eq!(
            list_error(Layout::for_values(&[
                ValueRef::Int(0),
                ValueRef::Bytes(&over)
            ])),
            ListError::TooLong {
                index: 1,
                len: 9_999_992
            }
        );
        assert_eq!(
            list_error(Layout::for_values(&[ValueRef::Str("a\0")])),
            ListError::TrailingNul {
                index: 0,
                type_name: "str"
            }
        );
        assert!(Layout::for_values(&[ValueRef::Str("\0a")]).is_ok());
    }

    #[test]
    fn write_new_refuses_values_that_do_not_match() {
        let layout = Layout::for_values(&[ValueRef::Str("abc")]).unwrap();
        let mut bytes = vec![0u8; layout.size()];
        assert!(layout.write_new(&mut bytes, &[]).is_err());
        assert!(layout
            .write_new(&mut bytes, &[ValueRef::Str("12345678")])
            .is_err());
        assert!(layout
            .write_new(&mut bytes[..10], &[ValueRef::Str("abc")])
            .is_err());
    }

    pub(super) fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::None),
            ".{0,20}".prop_map(|s: String| Value::Str(s.trim_end_matches('\0').to_owned())),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|mut b| {
                while b.last() == Some(&0) {
                    b.pop();
                }
                Value::Bytes(b)
            }),
        ]
    }

    /// Equal, with floats compared bit for bit (NaN, -0.0).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    proptest! {
        #[test]
        fn round_trips(values in proptest::collection::vec(any_value(), 0..30)) {
            let bytes = Layout::encode(&refs(&values)).unwrap();
            let layout = Layout::attach(&bytes[..]).unwrap();
            prop_assert_eq!(layout.size(), bytes.len());
            prop_assert_eq!(layout.len(), values.len());
            for (i, v) in values.iter().enumerate() {
                let got = layout.get(&bytes[..], i as isize).unwrap();
                prop_assert!(same(&got, v), "{:?} != {:?}", got, v);
                let slot = layout.slot(i).len();
                prop_assert!(slot % 8 == 0 && slot >= 8);
            }
        }

        #[test]
        fn sets_match_a_model(
            initial in proptest::collection::vec(any_value(), 1..12),
            writes in proptest::collection::vec((any::<isize>(), any_value()), 0..30),
        ) {
            let mut bytes = Layout::encode(&refs(&initial)).unwrap();
            let layout = Layout::attach(&bytes[..]).unwrap();
            let mut model = initial.clone();
            for (index, v) in writes {
                let index = index % (model.len() as isize + 2);
                let before = bytes.clone();
                match layout.set(&mut bytes, index, v.as_ref()) {
                    Ok(()) => {
                        let i = layout.index(index).unwrap();
                        model[i] = v;
                    }
                    Err(_) => prop_assert_eq!(&bytes, &before),
                }
                for (i, m) in model.iter().enumerate() {
                    let got = layout.get(&bytes[..], i as isize).unwrap();
                    prop_assert!(same(&got, m), "{:?} != {:?}", got, m);
                }
            }
            prop_assert_eq!(Layout::attach(&bytes[..]).unwrap(), layout);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            exercise(&bytes);
        }

        #[test]
        fn damaged_lists_never_panic(
            values in proptest::collection::vec(any_value(), 0..10),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = Layout::encode(&refs(&values)).unwrap();
            for (at, b) in damage {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            exercise(&bytes);
        }
    }

    /// Everything a reader can do, on any bytes.
    fn exercise(bytes: &[u8]) {
        if let Ok(layout) = Layout::attach(bytes) {
            assert!(layout.size() <= bytes.len());
            let _ = layout.format(bytes);
            let mut copy = bytes.to_vec();
            for i in 0..layout.len() as isize {
                let _ = layout.get(bytes, i);
                let _ = layout.get_i64(bytes, i);
                let _ = layout.get_f64(bytes, i);
                let _ = layout.set(&mut copy, i, ValueRef::Str("abc"));
                let _ = layout.set_i64(&mut copy, -1 - i, i as i64);
            }
        }
    }
}
