//! [`ByteSource`] and [`ByteSink`]: where the list codec reads and writes.
//!
//! The codec in [`layout`](super::layout) never touches memory itself; it
//! asks one of these for copies and words. A [`Region`] answers with copies
//! and atomics, so shared memory is never seen as a `&[u8]`; a plain `[u8]`
//! or `Vec<u8>` answers from process memory, which is how the codec is unit
//! tested and fuzzed without `/dev/shm`.

use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::region::Region;

/// Bytes the list codec can read: copies out, and aligned words.
pub trait ByteSource {
    /// How many bytes there are.
    fn size(&self) -> usize;

    /// Copies `buf.len()` bytes starting at `offset` into `buf`, or fails
    /// with [`Error::OutOfBounds`].
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()>;

    /// The native-endian 8-byte word at `offset`. The codec only asks for
    /// words at multiples of 8.
    fn load_u64(&self, offset: usize) -> Result<u64> {
        let mut word = [0u8; 8];
        self.read(offset, &mut word)?;
        Ok(u64::from_ne_bytes(word))
    }

    /// The byte at `offset`.
    fn load_u8(&self, offset: usize) -> Result<u8> {
        let mut byte = [0u8; 1];
        self.read(offset, &mut byte)?;
        Ok(byte[0])
    }
}

/// Bytes the list codec can also write.
///
/// Writing takes `&mut self`, as for [`std::io::Write`]; shared memory is
/// written through a `&Region`, for which this trait is implemented.
pub trait ByteSink: ByteSource {
    /// Copies `data` in at `offset`, or fails with [`Error::OutOfBounds`].
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<()>;

    /// Stores a native-endian 8-byte word at `offset` (a multiple of 8).
    fn store_u64(&mut self, offset: usize, value: u64) -> Result<()> {
        self.write(offset, &value.to_ne_bytes())
    }

    /// Stores one byte at `offset`.
    fn store_u8(&mut self, offset: usize, value: u8) -> Result<()> {
        self.write(offset, &[value])
    }
}

fn out_of_bounds(offset: usize, len: usize, size: usize) -> Error {
    Error::OutOfBounds { offset, len, size }
}

fn range(offset: usize, len: usize, size: usize) -> Result<std::ops::Range<usize>> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(offset..end),
        _ => Err(out_of_bounds(offset, len, size)),
    }
}

impl ByteSource for [u8] {
    fn size(&self) -> usize {
        self.len()
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(&self[range(offset, buf.len(), self.len())?]);
        Ok(())
    }

    // Fixed-size copies compile to single moves; the generic `read` would
    // call memcpy for every word, which dominated encoding and decoding.
    #[inline]
    fn load_u64(&self, offset: usize) -> Result<u64> {
        let r = range(offset, 8, self.len())?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&self[r]);
        Ok(u64::from_ne_bytes(word))
    }

    #[inline]
    fn load_u8(&self, offset: usize) -> Result<u8> {
        self.get(offset)
            .copied()
            .ok_or_else(|| out_of_bounds(offset, 1, self.len()))
    }
}

impl ByteSink for [u8] {
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let r = range(offset, data.len(), self.len())?;
        self[r].copy_from_slice(data);
        Ok(())
    }

    #[inline]
    fn store_u64(&mut self, offset: usize, value: u64) -> Result<()> {
        let r = range(offset, 8, self.len())?;
        self[r].copy_from_slice(&value.to_ne_bytes());
        Ok(())
    }

    #[inline]
    fn store_u8(&mut self, offset: usize, value: u8) -> Result<()> {
        let len = self.len();
        let byte = self
            .get_mut(offset)
            .ok_or_else(|| out_of_bounds(offset, 1, len))?;
        *byte = value;
        Ok(())
    }
}

impl ByteSource for Vec<u8> {
    fn size(&self) -> usize {
        self.len()
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.as_slice().read(offset, buf)
    }

    #[inline]
    fn load_u64(&self, offset: usize) -> Result<u64> {
        self.as_slice().load_u64(offset)
    }

    #[inline]
    fn load_u8(&self, offset: usize) -> Result<u8> {
        self.as_slice().load_u8(offset)
    }
}

impl ByteSink for Vec<u8> {
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.as_mut_slice().write(offset, data)
    }

    #[inline]
    fn store_u64(&mut self, offset: usize, value: u64) -> Result<()> {
        self.as_mut_slice().store_u64(offset, value)
    }

    #[inline]
    fn store_u8(&mut self, offset: usize, value: u8) -> Result<()> {
        self.as_mut_slice().store_u8(offset, value)
    }
}

/// Reads are copies ([`Region::read_at`]) and relaxed atomic loads.
impl ByteSource for Region {
    fn size(&self) -> usize {
        self.len()
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.read_at(offset, buf)
    }

    #[inline]
    fn load_u64(&self, offset: usize) -> Result<u64> {
        Ok(self.atomic_u64(offset)?.load(Ordering::Relaxed))
    }

    #[inline]
    fn load_u8(&self, offset: usize) -> Result<u8> {
        Ok(self.atomic_u8(offset)?.load(Ordering::Relaxed))
    }
}

impl ByteSource for &Region {
    fn size(&self) -> usize {
        self.len()
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.read_at(offset, buf)
    }

    #[inline]
    fn load_u64(&self, offset: usize) -> Result<u64> {
        (**self).load_u64(offset)
    }

    #[inline]
    fn load_u8(&self, offset: usize) -> Result<u8> {
        (**self).load_u8(offset)
    }
}

/// Writes are copies ([`Region::write_at`]) and relaxed atomic stores; a
/// `&Region` suffices because the memory is shared anyway.
impl ByteSink for &Region {
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.write_at(offset, data)
    }

    #[inline]
    fn store_u64(&mut self, offset: usize, value: u64) -> Result<()> {
        self.atomic_u64(offset)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    #[inline]
    fn store_u8(&mut self, offset: usize, value: u8) -> Result<()> {
        self.atomic_u8(offset)?.store(value, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_check_bounds_like_regions() {
        let mut v = vec![0u8; 10];
        v.write(2, b"abc").unwrap();
        assert_eq!(v.load_u8(3).unwrap(), b'b');
        assert!(v.load_u64(3).is_err());
        assert!(v.write(8, b"abc").is_err());
        assert!(v.read(usize::MAX, &mut [0u8; 2]).is_err());
        v.store_u64(0, u64::from_ne_bytes(*b"12345678")).unwrap();
        assert_eq!(&v[..8], b"12345678");
    }
}
