//! The bytes of a new list whose items all have 8-byte slots (int, float,
//! bool, None), written in one pass as the items come: nothing to plan,
//! since every offset is known from the count alone. `ShareableList(
//! range(100_000))` is the common case it serves; [`Layout::encode`] gives
//! the same bytes for the same values.

use super::layout::{
    bool_word, Layout, CODE_NONE, CODE_PLAIN, FMT_BOOL, FMT_FLOAT, FMT_INT, FMT_NONE,
};
use super::value::ValueRef;
use super::ListError;
use crate::error::{Error, Result};

/// A list of `n` fixed-size items being written.
///
/// ```
/// use shmkit::list::raw::{FixedImage, Layout};
/// use shmkit::list::ValueRef;
///
/// let values = [ValueRef::Int(-1), ValueRef::Float(2.5), ValueRef::Bool(true), ValueRef::None];
/// let mut image = FixedImage::new(values.len())?;
/// for &v in &values {
///     image.push(v)?;
/// }
/// let (layout, bytes) = image.finish()?;
/// assert_eq!(bytes, Layout::encode(&values)?);
/// assert_eq!(layout.size(), bytes.len());
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct FixedImage {
    bytes: Vec<u8>,
    n: usize,
    pushed: usize,
}

impl FixedImage {
    /// Room for `n` items: `25n + 16` bytes, header and offsets written.
    pub fn new(n: usize) -> Result<Self> {
        let size = n
            .checked_mul(25)
            .and_then(|s| s.checked_add(16))
            .filter(|&s| s <= isize::MAX as usize)
            .ok_or(Error::InvalidSize {
                size: u64::MAX,
                reason: "the list does not fit the address space",
            })?;
        let mut bytes = vec![0u8; size];
        bytes[..8].copy_from_slice(&(n as i64).to_ne_bytes());
        for (i, offset) in bytes[8..8 * (n + 2)].chunks_exact_mut(8).enumerate() {
            offset.copy_from_slice(&((8 * i) as i64).to_ne_bytes());
        }
        Ok(FixedImage {
            bytes,
            n,
            pushed: 0,
        })
    }

    /// Appends the next item. A `str` or `bytes` has no fixed slot: it is
    /// refused with [`ListError::Corrupt`], and the caller takes the
    /// general path ([`Layout::for_values`]).
    #[inline]
    pub fn push(&mut self, value: ValueRef<'_>) -> Result<()> {
        let (format, code, bits) = match value {
            ValueRef::Int(v) => (FMT_INT, CODE_PLAIN, v as u64),
            ValueRef::Float(v) => (FMT_FLOAT, CODE_PLAIN, v.to_bits()),
            ValueRef::Bool(v) => (FMT_BOOL, CODE_PLAIN, bool_word(v)),
            ValueRef::None => (FMT_NONE, CODE_NONE, 0),
            ValueRef::Str(_) | ValueRef::Bytes(_) => {
                return Err(corrupt("a str or bytes item has no fixed-size slot"))
            }
        };
        let (i, n) = (self.pushed, self.n);
        if i == n {
            return Err(corrupt("more items than the list was made for"));
        }
        let data = 8 * (n + 2) + 8 * i;
        let formats = 8 * (n + 2) + 8 * n + 8 * i;
        let codes = 8 * (n + 2) + 16 * n + i;
        self.bytes[data..data + 8].copy_from_slice(&bits.to_ne_bytes());
        self.bytes[formats..formats + 8].copy_from_slice(&format.to_ne_bytes());
        self.bytes[codes] = code as u8;
        self.pushed += 1;
        Ok(())
    }

    /// The layout and the bytes, once all `n` items are in.
    pub fn finish(self) -> Result<(Layout, Vec<u8>)> {
        if self.pushed != self.n {
            return Err(corrupt("fewer items than the list was made for"));
        }
        let data = 8 * (self.n + 2);
        let starts = (0..=self.n).map(|i| data + 8 * i).collect();
        Ok((Layout::new(starts), self.bytes))
    }
}

fn corrupt(reason: &str) -> Error {
    ListError::Corrupt {
        reason: reason.to_owned(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixed_value() -> impl Strategy<Value = ValueRef<'static>> {
        prop_oneof![
            any::<i64>().prop_map(ValueRef::Int),
            any::<f64>().prop_map(ValueRef::Float),
            any::<bool>().prop_map(ValueRef::Bool),
            Just(ValueRef::None),
        ]
    }

    proptest! {
        #[test]
        fn same_bytes_as_the_general_encoder(values in proptest::collection::vec(fixed_value(), 0..64)) {
            let mut image = FixedImage::new(values.len()).unwrap();
            for &v in &values {
                image.push(v).unwrap();
            }
            let (layout, bytes) = image.finish().unwrap();
            prop_assert_eq!(&bytes, &Layout::encode(&values).unwrap());
            prop_assert_eq!(layout.size(), bytes.len());
            prop_assert_eq!(Layout::attach(&bytes[..]).unwrap().len(), values.len());
        }
    }

    #[test]
    fn too_many_too_few_and_var_items_are_refused() {
        let mut image = FixedImage::new(1).unwrap();
        assert!(image.push(ValueRef::Str("a")).is_err());
        image.push(ValueRef::Int(1)).unwrap();
        assert!(image.push(ValueRef::Int(2)).is_err());
        assert!(FixedImage::new(2).unwrap().finish().is_err());
        assert!(FixedImage::new(usize::MAX / 8).is_err());
    }
}
