//! [`Region`]: a mapping of memory that other processes may write at any time.
//!
//! Rust's `&[u8]` promises that nobody changes the bytes while it lives, which
//! no process can promise about shared memory. So a region hands out raw
//! pointers, copies in and out, atomic views of aligned words, and slices only
//! through `unsafe` functions whose contract says what the caller must ensure.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8};

use crate::error::{Error, Result};
use crate::sys;

/// A live, read-write, shared mapping; unmapped when dropped. A
/// [`SharedMemory`](crate::SharedMemory) dereferences to its region.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Region is a pointer to memory that is shared with other processes
// by design; it holds no thread-local state, and every access it offers is
// either a copy, an atomic, or an `unsafe fn` whose contract covers races.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` offers nothing that `&mut Region` would guard.
unsafe impl Sync for Region {}

macro_rules! atomic_view {
    ($(#[$doc:meta])* $fn:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $fn(&self, offset: usize) -> Result<&$ty> {
            let ptr = self.aligned::<$ty>(offset)?;
            // SAFETY: `aligned` checked that the word lies inside the mapping
            // and is aligned for the atomic type; the mapping lives as long
            // as `&self`, and atomics are sound under concurrent writers.
            Ok(unsafe { &*ptr.cast::<$ty>() })
        }
    };
}

/// From this many bytes on, [`Region::write_at`] faults the pages in with
/// one system call before copying: a fresh 2.5 MiB list is written about
/// twice as fast.
const PREFAULT_FROM: usize = 64 << 10;

impl Region {
    /// Wraps a mapping made by `sys::map`.
    pub(crate) fn from_raw(ptr: NonNull<u8>, len: usize) -> Self {
        Region { ptr, len }
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true: empty segments cannot be
    /// mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte of the mapping. Writing through it is allowed; the
    /// memory may change under you at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    fn aligned<T>(&self, offset: usize) -> Result<*mut u8> {
        self.check(offset, std::mem::size_of::<T>())?;
        let align = std::mem::align_of::<T>();
        // The mapping is page-aligned, so the offset decides the alignment.
        if offset % align != 0 {
            return Err(Error::Misaligned { offset, align });
        }
        // SAFETY: `check` proved offset + size_of::<T>() <= len.
        Ok(unsafe { self.ptr.as_ptr().add(offset) })
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the mapping.
    ///
    /// ```
    /// # let shm = shmkit::SharedMemory::create(16)?;
    /// shm.write_at(4, b"abc")?;
    /// let mut out = [0u8; 3];
    /// shm.read_at(4, &mut out)?;
    /// assert_eq!(&out, b"abc");
    /// assert!(shm.read_at(15, &mut out).is_err());
    /// # shm.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        // SAFETY: the source range is inside the mapping (checked above) and
        // cannot overlap `buf`, which Rust owns exclusively. Another process
        // may write the source meanwhile; the copy then sees some mix of old
        // and new bytes, which is the nature of shared memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        if data.len() >= PREFAULT_FROM {
            // The range was checked to lie inside the mapping.
            crate::sys::populate_write(self.ptr.as_ptr().wrapping_add(offset), data.len());
        }
        // SAFETY: the destination range is inside the mapping (checked above)
        // and cannot overlap `data`, which lives in this process's own memory
        // and is borrowed immutably.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Copies `len` bytes starting at `offset` into a new vector.
    pub fn read_vec(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        self.check(offset, len)?;
        let mut out = vec![0u8; len];
        self.read_at(offset, &mut out)?;
        Ok(out)
    }

    atomic_view!(
        /// A view of the byte at `offset` as an atomic.
        atomic_u8,
        AtomicU8
    );
    atomic_view!(
        /// A view of the 4-byte word at `offset` (a multiple of 4) as an atomic.
        atomic_u32,
        AtomicU32
    );
    atomic_view!(
        /// A view of the 8-byte word at `offset` (a multiple of 8) as an atomic.
        ///
        /// ```
        /// use std::sync::atomic::Ordering;
        /// # let shm = shmkit::SharedMemory::create(64)?;
        /// let counter = shm.atomic_u64(8)?;
        /// counter.fetch_add(5, Ordering::SeqCst);
        /// assert_eq!(counter.load(Ordering::SeqCst), 5);
        /// assert!(shm.atomic_u64(4).is_err()); // misaligned
        /// # shm.unlink()?;
        /// # Ok::<(), shmkit::Error>(())
        /// ```
        atomic_u64,
        AtomicU64
    );
    atomic_view!(
        /// A view of the 8-byte word at `offset` (a multiple of 8) as a signed
        /// atomic.
        atomic_i64,
        AtomicI64
    );

    /// The whole mapping as a byte slice.
    ///
    /// # Safety
    /// For as long as the slice lives, no process, this one included, may
    /// write the mapping. Shared memory cannot enforce that; the caller's own
    /// protocol (a lock, a phase of a computation) must.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes while `self` lives;
        // the absence of writers is the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole mapping as a mutable byte slice.
    ///
    /// # Safety
    /// For as long as the slice lives, nothing else may read or write the
    /// mapping: no other process, no other slice or pointer in this one.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the mapping is valid for `len` bytes while `self` lives;
        // exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from one `sys::map`, and a dropped Region can no
        // longer hand out the pointer. munmap of a valid mapping cannot fail.
        let _ = unsafe { sys::unmap(self.ptr, self.len) };
    }
}
