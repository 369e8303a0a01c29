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
//! use shmkit::list::raw::Layout;
//! use shmkit::list::{Value, ValueRef};
//!
//! let bytes = Layout::encode(&[ValueRef::Int(100), ValueRef::Str("howdy")])?;
//! assert_eq!(bytes.len(), 8 * 6 + 16 + 2);
//! let layout = Layout::attach(&bytes[..])?;
//! assert_eq!(layout.get(&bytes[..], -1)?, Value::Str("howdy".into()));
//! # Ok::<(), shmkit::Error>(())
//! ```

use std::ops::Range;

use super::bytes::{ByteSink, ByteSource};
use super::value::{Value, ValueRef};
use super::ListError;
use crate::error::{Error, Result};

mod format;

use format::*;
pub(super) use format::{bool_word, CODE_NONE, CODE_PLAIN, FMT_BOOL, FMT_FLOAT, FMT_INT, FMT_NONE};
pub use format::{ItemType, MAX_ITEM_BYTES};

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
    /// use shmkit::list::raw::Layout;
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
    /// use shmkit::list::{raw::Layout, ValueRef};
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
    /// # use shmkit::list::{raw::Layout, ValueRef};
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
    /// use shmkit::list::{raw::Layout, Value, ValueRef};
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
mod tests;
