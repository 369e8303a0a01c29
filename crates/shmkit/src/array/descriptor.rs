//! The array descriptor: what an array segment says about its data (dtype,
//! shape, order, where the bytes are), its encoder and its decoder.
//!
//! The descriptor follows the object header ([`crate::object`]); the data
//! starts at the first page boundary after it ([`DATA_OFFSET`]):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 64 | object header, kind [`Kind::Array`], version [`VERSION`] |
//! | 64 | 4 | transfers in flight (atomic `u32`, see [`super::Array::begin_transfer`]) |
//! | 68 | 4 | flags: bit 0 read-only, bit 1 Fortran order |
//! | 72 | 8 | in flight until (atomic `u64`, `CLOCK_MONOTONIC` ns) |
//! | 80 | 8 | byte offset of the data |
//! | 88 | 8 | byte length of the data |
//! | 96 | 4 | number of dimensions (at most [`MAX_NDIM`]) |
//! | 100 | 4 | length of the dtype string (at most [`DTYPE_MAX`]) |
//! | 104 | 32 | the dtype as numpy's `dtype.str` (`<f8`, `|u1`, `|S10`…) |
//! | 136 | 8 × ndim | the shape, one `u64` per dimension |
//!
//! Every integer is little-endian. The decoder treats the bytes as hostile:
//! every field is checked, and it allocates nothing larger than the shape.

use crate::object::{self, Kind, HEADER_SIZE};

/// The layout version in the object header.
pub const VERSION: u32 = 1;
/// The most dimensions an array may have (numpy 2's limit).
pub const MAX_NDIM: usize = 64;
/// The longest dtype string.
pub const DTYPE_MAX: usize = 32;
/// Where the data starts: a page boundary, so any element type is aligned
/// and the data can be mapped on its own.
pub const DATA_OFFSET: usize = 4096;
/// The largest fixed-size `S`/`U` item, in characters: far beyond any real
/// use, and small enough that no item size arithmetic overflows.
const MAX_CHARS: usize = 1 << 24;

pub(crate) const IN_FLIGHT_AT: usize = HEADER_SIZE;
const FLAGS_AT: usize = HEADER_SIZE + 4;
pub(crate) const UNTIL_AT: usize = HEADER_SIZE + 8;
const DATA_OFFSET_AT: usize = HEADER_SIZE + 16;
const DATA_LEN_AT: usize = HEADER_SIZE + 24;
const NDIM_AT: usize = HEADER_SIZE + 32;
const DTYPE_LEN_AT: usize = HEADER_SIZE + 36;
const DTYPE_AT: usize = HEADER_SIZE + 40;
const SHAPE_AT: usize = DTYPE_AT + DTYPE_MAX;
/// The end of the largest descriptor: a decoder needs this many bytes.
pub const DESCRIPTOR_END: usize = SHAPE_AT + 8 * MAX_NDIM;
const _: () = assert!(DESCRIPTOR_END <= DATA_OFFSET);

const READONLY: u32 = 1;
const FORTRAN: u32 = 2;

/// What kind of value an element is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScalarKind {
    /// `b`: one byte, 0 or 1.
    Bool,
    /// `i`: a signed integer.
    Int,
    /// `u`: an unsigned integer.
    UInt,
    /// `f`: an IEEE float.
    Float,
    /// `c`: two IEEE floats, real then imaginary.
    Complex,
    /// `S`: fixed-size bytes, padded with NUL.
    Bytes,
    /// `U`: fixed-size UCS-4 text, padded with NUL.
    Str,
}

/// The byte order of an element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// `<`
    Little,
    /// `>`
    Big,
    /// `|`: single bytes, where order does not apply.
    NotApplicable,
}

impl ByteOrder {
    /// The order of this machine.
    pub const NATIVE: ByteOrder = if cfg!(target_endian = "little") {
        ByteOrder::Little
    } else {
        ByteOrder::Big
    };
}

/// One of numpy's simple dtypes, as its `dtype.str` spells it.
///
/// ```
/// use shmkit::array::{DType, ScalarKind};
///
/// let f8 = DType::parse("<f8").unwrap();
/// assert_eq!((f8.kind(), f8.itemsize()), (ScalarKind::Float, 8));
/// assert_eq!(DType::parse("<U4").unwrap().itemsize(), 16);
/// assert_eq!(f8.to_string(), "<f8");
/// assert!(DType::parse("<f3").is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DType {
    kind: ScalarKind,
    order: ByteOrder,
    /// For `S` and `U`, the length in characters; else the size in bytes.
    count: usize,
}

impl DType {
    /// A dtype from its parts; `count` is the size in bytes, or for `S` and
    /// `U` the length in characters. Fails for combinations numpy's simple
    /// dtypes do not have.
    pub fn new(kind: ScalarKind, order: ByteOrder, count: usize) -> Result<DType, String> {
        use ScalarKind::*;
        let sizes: &[usize] = match kind {
            Bool => &[1],
            Int | UInt => &[1, 2, 4, 8],
            Float => &[2, 4, 8],
            Complex => &[8, 16],
            Bytes | Str => &[],
        };
        let ok_size = match kind {
            Bytes | Str => (1..=MAX_CHARS).contains(&count),
            _ => sizes.contains(&count),
        };
        if !ok_size {
            return Err(format!("no {kind:?} dtype of size {count}"));
        }
        // numpy writes `|` exactly for one-byte items, and `S` items.
        let single = matches!(kind, Bytes) || (count == 1 && kind != Str);
        if single != (order == ByteOrder::NotApplicable) {
            return Err("byte order does not fit the item size".into());
        }
        Ok(DType { kind, order, count })
    }

    /// Parses numpy's `dtype.str` of a simple dtype: `|b1`, `<i8`, `>u2`,
    /// `<f4`, `<c16`, `|S10`, `<U4`…
    pub fn parse(s: &str) -> Result<DType, String> {
        let mut chars = s.chars();
        let order = match chars.next() {
            Some('<') => ByteOrder::Little,
            Some('>') => ByteOrder::Big,
            Some('|') => ByteOrder::NotApplicable,
            _ => return Err(format!("dtype {s:?} does not start with <, > or |")),
        };
        let kind = match chars.next() {
            Some('b') => ScalarKind::Bool,
            Some('i') => ScalarKind::Int,
            Some('u') => ScalarKind::UInt,
            Some('f') => ScalarKind::Float,
            Some('c') => ScalarKind::Complex,
            Some('S') => ScalarKind::Bytes,
            Some('U') => ScalarKind::Str,
            _ => return Err(format!("dtype {s:?} is not a simple numpy dtype")),
        };
        let digits = chars.as_str();
        if digits.is_empty()
            || digits.len() > 9
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(format!("dtype {s:?} has no valid size"));
        }
        let count: usize = digits
            .parse()
            .map_err(|_| format!("dtype {s:?} has no valid size"))?;
        DType::new(kind, order, count).map_err(|e| format!("dtype {s:?}: {e}"))
    }

    /// What kind of value an element is.
    pub fn kind(&self) -> ScalarKind {
        self.kind
    }

    /// The byte order.
    pub fn byte_order(&self) -> ByteOrder {
        self.order
    }

    /// The size of one element in bytes.
    pub fn itemsize(&self) -> usize {
        match self.kind {
            ScalarKind::Str => self.count * 4,
            _ => self.count,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let order = match self.order {
            ByteOrder::Little => '<',
            ByteOrder::Big => '>',
            ByteOrder::NotApplicable => '|',
        };
        let kind = match self.kind {
            ScalarKind::Bool => 'b',
            ScalarKind::Int => 'i',
            ScalarKind::UInt => 'u',
            ScalarKind::Float => 'f',
            ScalarKind::Complex => 'c',
            ScalarKind::Bytes => 'S',
            ScalarKind::Str => 'U',
        };
        write!(f, "{order}{kind}{}", self.count)
    }
}

/// How the elements follow each other in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Order {
    /// Row-major: the last index varies fastest (numpy's default).
    #[default]
    C,
    /// Column-major: the first index varies fastest.
    Fortran,
}

/// What an array segment says about its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The element type.
    pub dtype: DType,
    /// The length of each dimension.
    pub shape: Vec<usize>,
    /// Row- or column-major.
    pub order: Order,
    /// Whether views of it must not write.
    pub readonly: bool,
    /// Where the data starts in the segment.
    pub data_offset: usize,
    /// The data's length in bytes: the item size times every dimension.
    pub data_len: usize,
}

impl Descriptor {
    /// The descriptor of a new array; fails if the shape has too many
    /// dimensions or too many bytes to address.
    pub fn new(
        dtype: DType,
        shape: &[usize],
        order: Order,
        readonly: bool,
    ) -> Result<Self, String> {
        if shape.len() > MAX_NDIM {
            return Err(format!("{} dimensions, more than {MAX_NDIM}", shape.len()));
        }
        let data_len = shape
            .iter()
            .try_fold(dtype.itemsize(), |n, &d| n.checked_mul(d))
            .filter(|&n| n <= isize::MAX as usize - DATA_OFFSET)
            .ok_or("the array has too many bytes to address")?;
        Ok(Descriptor {
            dtype,
            shape: shape.to_vec(),
            order,
            readonly,
            data_offset: DATA_OFFSET,
            data_len,
        })
    }

    /// The size of the segment that holds it.
    pub fn segment_size(&self) -> usize {
        self.data_offset + self.data_len
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte step of each dimension.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.shape.len()];
        let mut step = self.dtype.itemsize();
        let mut set = |i: usize| {
            strides[i] = step;
            step = step.saturating_mul(self.shape[i]);
        };
        match self.order {
            Order::C => (0..self.shape.len()).rev().for_each(&mut set),
            Order::Fortran => (0..self.shape.len()).for_each(&mut set),
        }
        strides
    }

    /// The descriptor's bytes from offset [`HEADER_SIZE`] to
    /// [`DESCRIPTOR_END`], with the in-flight fields zero.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; DESCRIPTOR_END - HEADER_SIZE];
        let mut put = |at: usize, bytes: &[u8]| {
            out[at - HEADER_SIZE..at - HEADER_SIZE + bytes.len()].copy_from_slice(bytes)
        };
        let mut flags = 0;
        if self.readonly {
            flags |= READONLY;
        }
        if self.order == Order::Fortran {
            flags |= FORTRAN;
        }
        put(FLAGS_AT, &flags.to_le_bytes());
        put(DATA_OFFSET_AT, &(self.data_offset as u64).to_le_bytes());
        put(DATA_LEN_AT, &(self.data_len as u64).to_le_bytes());
        put(NDIM_AT, &(self.shape.len() as u32).to_le_bytes());
        let dtype = self.dtype.to_string();
        put(DTYPE_LEN_AT, &(dtype.len() as u32).to_le_bytes());
        put(DTYPE_AT, dtype.as_bytes());
        for (i, &d) in self.shape.iter().enumerate() {
            put(SHAPE_AT + 8 * i, &(d as u64).to_le_bytes());
        }
        out
    }

    /// Decodes the descriptor in a copy of a segment's first bytes (at
    /// least [`DESCRIPTOR_END`], or the whole segment if shorter), checking
    /// it against the segment's `size`. The error says what is wrong.
    ///
    /// ```
    /// use shmkit::array::{DType, Descriptor, Order};
    /// use shmkit::object::{Kind, HEADER_SIZE, MAGIC};
    ///
    /// let d = Descriptor::new(DType::parse("<i4").unwrap(), &[2, 3], Order::C, false).unwrap();
    /// let mut bytes = MAGIC.to_le_bytes().to_vec();
    /// bytes.extend(Kind::Array.code().to_le_bytes());
    /// bytes.extend(1u32.to_le_bytes());
    /// bytes.resize(HEADER_SIZE, 0);
    /// bytes.extend(d.encode());
    /// assert_eq!(Descriptor::decode(&bytes, d.segment_size() as u64), Ok(d.clone()));
    /// assert!(Descriptor::decode(&bytes, 4096).unwrap_err().contains("segment"));
    /// ```
    pub fn decode(bytes: &[u8], size: u64) -> Result<Descriptor, String> {
        match object::parse(bytes) {
            Some((Kind::Array, VERSION)) => {}
            Some((Kind::Array, v)) => return Err(format!("array layout version {v} is unknown")),
            Some((kind, _)) => return Err(format!("holds a {kind}, not an array")),
            None => return Err("holds no shmkit array".into()),
        }
        if bytes.len() < DESCRIPTOR_END {
            return Err("the segment is too small for an array descriptor".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let flags = u32_at(FLAGS_AT);
        if flags & !(READONLY | FORTRAN) != 0 {
            return Err(format!("unknown array flags {flags:#x}"));
        }
        let ndim = u32_at(NDIM_AT) as usize;
        if ndim > MAX_NDIM {
            return Err(format!("{ndim} dimensions, more than {MAX_NDIM}"));
        }
        let dtype_len = u32_at(DTYPE_LEN_AT) as usize;
        if dtype_len > DTYPE_MAX {
            return Err("the dtype string is too long".into());
        }
        let dtype = std::str::from_utf8(&bytes[DTYPE_AT..DTYPE_AT + dtype_len])
            .map_err(|_| "the dtype string is not UTF-8".to_string())
            .and_then(DType::parse)?;
        let mut shape = Vec::with_capacity(ndim);
        for i in 0..ndim {
            let d = usize::try_from(u64_at(SHAPE_AT + 8 * i))
                .map_err(|_| "a dimension is too large".to_string())?;
            shape.push(d);
        }
        let order = if flags & FORTRAN != 0 {
            Order::Fortran
        } else {
            Order::C
        };
        let expected = Descriptor::new(dtype, &shape, order, flags & READONLY != 0)?;
        let data_offset = u64_at(DATA_OFFSET_AT);
        let data_len = u64_at(DATA_LEN_AT);
        if data_offset != DATA_OFFSET as u64 {
            return Err(format!(
                "the data offset {data_offset} is not {DATA_OFFSET}"
            ));
        }
        if data_len != expected.data_len as u64 {
            return Err(format!(
                "the data length {data_len} does not match the dtype and shape ({} bytes)",
                expected.data_len
            ));
        }
        if data_offset
            .checked_add(data_len)
            .is_none_or(|end| end > size)
        {
            return Err(format!(
                "the data ({data_len} bytes at {data_offset}) lies outside the segment of {size} bytes"
            ));
        }
        Ok(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(d: &Descriptor) -> Vec<u8> {
        let mut bytes = object::MAGIC.to_le_bytes().to_vec();
        bytes.extend(Kind::Array.code().to_le_bytes());
        bytes.extend(VERSION.to_le_bytes());
        bytes.resize(HEADER_SIZE, 0);
        bytes.extend(d.encode());
        bytes
    }

    #[test]
    fn every_simple_dtype_round_trips_and_others_are_refused() {
        for s in [
            "|b1", "|i1", "<i2", ">i4", "<i8", "|u1", "<u2", "<u4", ">u8", "<f2", "<f4", "<f8",
            "<c8", ">c16", "|S1", "|S10", "<U4", ">U1",
        ] {
            assert_eq!(DType::parse(s).unwrap().to_string(), s);
        }
        for s in [
            "",
            "<",
            "f8",
            "<f",
            "<f16",
            "<f1",
            "|f8",
            "<b1",
            "<i1",
            "|i2",
            "<S3",
            "|U2",
            "<U0",
            "|S0",
            "<f08",
            "<f+8",
            "<c4",
            "<x8",
            "<f8 ",
            "|S99999999999",
        ] {
            assert!(DType::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn strides_follow_the_order() {
        let f4 = DType::parse("<f4").unwrap();
        let c = Descriptor::new(f4, &[2, 3, 4], Order::C, false).unwrap();
        assert_eq!(c.strides(), [48, 16, 4]);
        let f = Descriptor::new(f4, &[2, 3, 4], Order::Fortran, false).unwrap();
        assert_eq!(f.strides(), [4, 8, 24]);
        assert_eq!((c.data_len, c.len()), (96, 24));
    }

    #[test]
    fn a_descriptor_decodes_to_itself_and_each_bad_field_is_named() {
        let d = Descriptor::new(
            DType::parse("<U3").unwrap(),
            &[5, 0, 2],
            Order::Fortran,
            true,
        )
        .unwrap();
        let good = image(&d);
        assert_eq!(Descriptor::decode(&good, 4096).unwrap(), d);
        let bad = |at: usize, value: &[u8], words: &str| {
            let mut b = good.clone();
            b[at..at + value.len()].copy_from_slice(value);
            let err = Descriptor::decode(&b, 1 << 20).unwrap_err();
            assert!(err.contains(words), "{err}");
        };
        bad(12, &2u32.to_le_bytes(), "version 2");
        bad(8, &1u32.to_le_bytes(), "holds a lock");
        bad(0, b"x", "no shmkit array");
        bad(FLAGS_AT, &4u32.to_le_bytes(), "flags");
        bad(NDIM_AT, &65u32.to_le_bytes(), "65 dimensions");
        bad(DTYPE_LEN_AT, &33u32.to_le_bytes(), "too long");
        bad(DTYPE_AT, b"<q8", "not a simple");
        bad(DTYPE_AT, &[0xff], "UTF-8");
        bad(DATA_OFFSET_AT, &8192u64.to_le_bytes(), "offset");
        bad(DATA_LEN_AT, &1u64.to_le_bytes(), "does not match");
        bad(SHAPE_AT, &u64::MAX.to_le_bytes(), "too many bytes");
        let mut big = good.clone();
        big[SHAPE_AT + 8..SHAPE_AT + 16].copy_from_slice(&1u64.to_le_bytes());
        big[DATA_LEN_AT..DATA_LEN_AT + 8].copy_from_slice(&120u64.to_le_bytes());
        assert!(Descriptor::decode(&big, 4096 + 119)
            .unwrap_err()
            .contains("outside"));
        assert!(Descriptor::decode(&good[..DESCRIPTOR_END - 1], 4096)
            .unwrap_err()
            .contains("too small"));
    }
}
