//! N-dimensional arrays of numpy's simple dtypes in a segment, laid out so
//! that Python's `shmkit.numpy`, Rust and the `shmkit` command agree.
//!
//! A segment holds the object header ([`crate::object`], kind
//! [`Kind::Array`]), the [`Descriptor`] (dtype, shape, order, where the
//! data is, and the transfer fields), and the data from the first page
//! boundary on. Python arrays made by `shmkit.numpy` are such segments, so
//! a Rust process can open one by name and work on it, and the other way
//! round.
//!
//! As everywhere in shmkit, the data is never a plain `&[T]`: other
//! processes may write it at any moment. Elements are copied in and out
//! ([`Array::read_into`], [`Array::write_from`], [`Array::get`],
//! [`Array::set`]), or viewed as atomics ([`Array::atomic_u64`] and kin).
//!
//! ```
//! use shmkit::array::Array;
//!
//! let a = Array::create::<f64>(&[2, 3])?;
//! a.write_from(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//!
//! let b = Array::open(a.name())?; // another process would do this
//! assert_eq!((b.dtype().to_string().as_str(), b.shape()), ("<f8", &[2, 3][..]));
//! assert_eq!(b.get::<f64>(&[1, 0])?, 4.0);
//! b.set(&[0, 2], 9.5f64)?;
//! let mut all = [0.0; 6];
//! a.read_into(&mut all)?;
//! assert_eq!(all, [1.0, 2.0, 9.5, 4.0, 5.0, 6.0]);
//! drop(b);
//! assert!(a.unlink_if_unused()?); // nobody else holds it: gone
//! # Ok::<(), shmkit::Error>(())
//! ```

mod descriptor;
mod element;

pub use descriptor::{
    ByteOrder, DType, Descriptor, Order, ScalarKind, DATA_OFFSET, DESCRIPTOR_END, MAX_NDIM, VERSION,
};
pub use element::Element;

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::object::{self, Kind};
use crate::{Error, Options, SharedMemory};
use descriptor::{IN_FLIGHT_AT, UNTIL_AT};

/// From this many bytes of data on, a new array's pages are mapped in one
/// system call when it is created.
const POPULATE_FROM: usize = 1 << 20;

/// An array in a segment, created or opened by name.
///
/// Dropping it unmaps it and leaves the segment alone; see
/// [`Array::unlink_if_unused`] for freeing it once nobody holds it.
#[derive(Debug)]
pub struct Array {
    shm: SharedMemory,
    desc: Descriptor,
    /// False for an opened read-only array; its creator may fill it.
    writable: bool,
}

impl Array {
    /// A new, zero-filled array of `T` in C order, under a fresh name.
    pub fn create<T: Element>(shape: &[usize]) -> crate::Result<Array> {
        Array::create_with(&Options::new(), None, T::dtype(), shape, Order::C, false)
    }

    /// A new, zero-filled array: under `name` (a fresh one if `None`), of
    /// `dtype` and `shape` in `order`, opened with `opts` (tracking, mode).
    /// `readonly` marks it so that shmkit's views of it never write; the
    /// creator fills it through this handle first.
    pub fn create_with(
        opts: &Options,
        name: Option<&str>,
        dtype: DType,
        shape: &[usize],
        order: Order,
        readonly: bool,
    ) -> crate::Result<Array> {
        let bad = |reason: String, name: &str| Error::BadArray {
            name: name.to_owned(),
            reason,
        };
        let desc = Descriptor::new(dtype, shape, order, readonly)
            .map_err(|r| bad(r, name.unwrap_or("")))?;
        // An array left at exit is cleaned up as intended, not leaked.
        let opts = opts.clone().quiet();
        let shm = match name {
            Some(name) => opts.create_named(name, desc.segment_size())?,
            None => opts.create(desc.segment_size())?,
        };
        // The pages are reserved already (unless `reserve` was turned off):
        // mapping them all at once costs less than the page faults of a
        // first fill, which nearly every new array gets.
        if opts.reserves() && desc.data_len >= POPULATE_FROM {
            crate::sys::populate_write(shm.as_ptr().wrapping_add(desc.data_offset), desc.data_len);
        }
        shm.write_at(object::HEADER_SIZE, &desc.encode())?;
        object::publish(shm.region(), Kind::Array, VERSION)?;
        Ok(Array {
            shm,
            desc,
            writable: true,
        })
    }

    /// Opens the array segment `name`.
    pub fn open(name: &str) -> crate::Result<Array> {
        Array::open_with(&Options::new(), name)
    }

    /// Opens the array segment `name` with `opts`. Fails with
    /// [`Error::WrongKind`] for a segment that is no array and
    /// [`Error::BadArray`] for one whose descriptor does not hold up.
    pub fn open_with(opts: &Options, name: &str) -> crate::Result<Array> {
        let shm = opts.clone().quiet().open(name)?;
        object::read(shm.region(), shm.name(), Kind::Array)?;
        let head = shm.read_vec(0, DESCRIPTOR_END.min(shm.size()))?;
        let desc =
            Descriptor::decode(&head, shm.size() as u64).map_err(|reason| Error::BadArray {
                name: shm.name().to_owned(),
                reason,
            })?;
        let writable = !desc.readonly;
        Ok(Array {
            shm,
            desc,
            writable,
        })
    }

    /// The segment's name, without a leading slash.
    pub fn name(&self) -> &str {
        self.shm.name()
    }

    /// The segment.
    pub fn shared_memory(&self) -> &SharedMemory {
        &self.shm
    }

    /// The descriptor read when the array was opened.
    pub fn descriptor(&self) -> &Descriptor {
        &self.desc
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.desc.dtype
    }

    /// The length of each dimension.
    pub fn shape(&self) -> &[usize] {
        &self.desc.shape
    }

    /// The byte step of each dimension.
    pub fn strides(&self) -> Vec<usize> {
        self.desc.strides()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.desc.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.desc.is_empty()
    }

    /// Whether the array is marked read-only.
    pub fn readonly(&self) -> bool {
        self.desc.readonly
    }

    /// The address of the first data byte in this process.
    pub fn data_ptr(&self) -> *mut u8 {
        self.shm.as_ptr().wrapping_add(self.desc.data_offset)
    }

    fn check<T: Element>(&self) -> crate::Result<()> {
        if T::dtype() == self.desc.dtype {
            return Ok(());
        }
        Err(Error::BadArray {
            name: self.name().to_owned(),
            reason: format!(
                "the array holds {}, not {} ({})",
                self.desc.dtype,
                T::dtype(),
                std::any::type_name::<T>()
            ),
        })
    }

    fn writable(&self) -> crate::Result<()> {
        if !self.writable {
            return Err(Error::BadArray {
                name: self.name().to_owned(),
                reason: "the array is read-only".into(),
            });
        }
        Ok(())
    }

    /// The byte offset in the segment of the element at `index`.
    fn offset_of(&self, index: &[usize]) -> crate::Result<usize> {
        let shape = &self.desc.shape;
        if index.len() != shape.len() || index.iter().zip(shape).any(|(i, d)| i >= d) {
            return Err(Error::BadArray {
                name: self.name().to_owned(),
                reason: format!("index {index:?} is outside the shape {shape:?}"),
            });
        }
        let at: usize = index.iter().zip(self.strides()).map(|(i, s)| i * s).sum();
        Ok(self.desc.data_offset + at)
    }

    /// Copies every element, in memory order, into `out` (exactly
    /// [`len`](Self::len) long).
    pub fn read_into<T: Element>(&self, out: &mut [T]) -> crate::Result<()> {
        self.check::<T>()?;
        self.check_len(out.len())?;
        let mut chunk = [0u8; 8192];
        let per = chunk.len() / T::SIZE;
        for (k, part) in out.chunks_mut(per).enumerate() {
            let bytes = &mut chunk[..part.len() * T::SIZE];
            self.shm
                .read_at(self.desc.data_offset + k * per * T::SIZE, bytes)?;
            for (v, b) in part.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
                *v = T::from_bytes(b);
            }
        }
        Ok(())
    }

    /// Copies `src` (exactly [`len`](Self::len) long, in memory order) over
    /// every element.
    pub fn write_from<T: Element>(&self, src: &[T]) -> crate::Result<()> {
        self.check::<T>()?;
        self.writable()?;
        self.check_len(src.len())?;
        let mut chunk = [0u8; 8192];
        let per = chunk.len() / T::SIZE;
        for (k, part) in src.chunks(per).enumerate() {
            let bytes = &mut chunk[..part.len() * T::SIZE];
            for (v, b) in part.iter().zip(bytes.chunks_exact_mut(T::SIZE)) {
                v.to_bytes(b);
            }
            self.shm
                .write_at(self.desc.data_offset + k * per * T::SIZE, bytes)?;
        }
        Ok(())
    }

    fn check_len(&self, n: usize) -> crate::Result<()> {
        if n != self.len() {
            return Err(Error::BadArray {
                name: self.name().to_owned(),
                reason: format!("{n} elements given for an array of {}", self.len()),
            });
        }
        Ok(())
    }

    /// A copy of the element at `index` (one index per dimension).
    pub fn get<T: Element>(&self, index: &[usize]) -> crate::Result<T> {
        self.check::<T>()?;
        let mut b = [0u8; 16];
        self.shm
            .read_at(self.offset_of(index)?, &mut b[..T::SIZE])?;
        Ok(T::from_bytes(&b[..T::SIZE]))
    }

    /// Writes `value` at `index`.
    pub fn set<T: Element>(&self, index: &[usize], value: T) -> crate::Result<()> {
        self.check::<T>()?;
        self.writable()?;
        let mut b = [0u8; 16];
        value.to_bytes(&mut b[..T::SIZE]);
        self.shm.write_at(self.offset_of(index)?, &b[..T::SIZE])
    }

    /// The `u64` element at `index` as an atomic.
    pub fn atomic_u64(&self, index: &[usize]) -> crate::Result<&AtomicU64> {
        self.check::<u64>()?;
        self.shm.atomic_u64(self.offset_of(index)?)
    }

    /// The `i64` element at `index` as an atomic.
    pub fn atomic_i64(&self, index: &[usize]) -> crate::Result<&AtomicI64> {
        self.check::<i64>()?;
        self.shm.atomic_i64(self.offset_of(index)?)
    }

    /// The `u32` element at `index` as an atomic.
    pub fn atomic_u32(&self, index: &[usize]) -> crate::Result<&AtomicU32> {
        self.check::<u32>()?;
        self.shm.atomic_u32(self.offset_of(index)?)
    }

    fn in_flight_word(&self) -> &AtomicU32 {
        self.shm
            .atomic_u32(IN_FLIGHT_AT)
            .expect("an array segment holds its descriptor")
    }

    fn until_word(&self) -> &AtomicU64 {
        self.shm
            .atomic_u64(UNTIL_AT)
            .expect("an array segment holds its descriptor")
    }

    /// Records that a view of the array is on its way to another process,
    /// which is to call [`end_transfer`](Self::end_transfer) once it has
    /// opened the array. Until then, or for at most `for_at_most`,
    /// [`unlink_if_unused`](Self::unlink_if_unused) leaves it alone.
    pub fn begin_transfer(&self, for_at_most: Duration) {
        let until = monotonic_ns().saturating_add(for_at_most.as_nanos() as u64);
        self.until_word().fetch_max(until, Ordering::AcqRel);
        self.in_flight_word().fetch_add(1, Ordering::AcqRel);
    }

    /// Records that a transfer arrived (never below zero: a transfer given
    /// up on may arrive late).
    pub fn end_transfer(&self) {
        let _ = self
            .in_flight_word()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// How many transfers are on their way and not yet given up on.
    pub fn in_flight(&self) -> u32 {
        if monotonic_ns() >= self.until_word().load(Ordering::Acquire) {
            return 0;
        }
        self.in_flight_word().load(Ordering::Acquire)
    }

    /// Unlinks the segment if no other open file of it holds a shmkit
    /// handle's lock (no other handle, in any process, uses it), no
    /// transfer is on its way, and the name still stands for this very
    /// segment. Returns whether it unlinked. Meant for a handle about to
    /// be dropped: a failed probe may leave this handle without its lock.
    pub fn unlink_if_unused(&self) -> crate::Result<bool> {
        let fd = self.shm.as_fd();
        if crate::sys::try_lock_exclusive(fd).is_err() || self.in_flight() > 0 {
            return Ok(false);
        }
        let (Ok(mine), Ok(now)) = (crate::sys::fd_stat(fd), crate::sys::shm_stat(self.name()))
        else {
            return Ok(false);
        };
        if mine.key != now.key {
            return Ok(false);
        }
        match crate::unlink(self.name()) {
            Ok(()) => {}
            Err(Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        crate::tracker::unregister(self.name());
        Ok(true)
    }
}

/// `CLOCK_MONOTONIC` in ns: the same clock in every process of the machine.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_type_index_or_length_is_refused() {
        let a = Array::create::<i32>(&[2, 2]).unwrap();
        assert!(a
            .get::<f32>(&[0, 0])
            .unwrap_err()
            .to_string()
            .contains("not <f4"));
        assert!(a
            .get::<i32>(&[2, 0])
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(a.get::<i32>(&[0]).is_err());
        assert!(a.write_from(&[1i32; 3]).is_err());
        a.set(&[1, 1], -7i32).unwrap();
        assert_eq!(a.get::<i32>(&[1, 1]).unwrap(), -7);
        assert!(a.atomic_u64(&[0, 0]).is_err());
        assert!(a.unlink_if_unused().unwrap());
    }

    #[test]
    fn a_transfer_in_flight_keeps_the_segment_until_it_arrives() {
        let a = Array::create::<u64>(&[4]).unwrap();
        a.begin_transfer(Duration::from_secs(30));
        assert_eq!(a.in_flight(), 1);
        assert!(!a.unlink_if_unused().unwrap());
        a.end_transfer();
        a.end_transfer(); // late arrivals never go below zero
        assert_eq!(a.in_flight(), 0);
        assert!(a.unlink_if_unused().unwrap());
        assert!(!crate::exists(a.name()));
    }

    #[test]
    fn a_transfer_given_up_on_no_longer_keeps_the_segment() {
        let a = Array::create::<u64>(&[4]).unwrap();
        a.begin_transfer(Duration::ZERO);
        assert_eq!(a.in_flight(), 0);
        assert!(a.unlink_if_unused().unwrap());
    }

    #[test]
    fn another_handle_keeps_the_segment() {
        let a = Array::create::<u64>(&[4]).unwrap();
        let b = Array::open(a.name()).unwrap();
        assert!(!a.unlink_if_unused().unwrap());
        drop(a);
        b.atomic_u64(&[3]).unwrap().fetch_add(5, Ordering::Relaxed);
        assert_eq!(b.get::<u64>(&[3]).unwrap(), 5);
        assert!(b.unlink_if_unused().unwrap());
    }

    #[test]
    fn a_read_only_array_refuses_writes() {
        let opts = Options::new();
        let a = Array::create_with(&opts, None, u8::dtype(), &[3], Order::C, true).unwrap();
        a.set(&[0], 1u8).unwrap(); // its creator fills it
        let b = Array::open(a.name()).unwrap();
        assert!(b.readonly());
        assert!(b
            .set(&[0], 2u8)
            .unwrap_err()
            .to_string()
            .contains("read-only"));
        assert_eq!(b.get::<u8>(&[0]).unwrap(), 1);
        drop(b);
        assert!(a.unlink_if_unused().unwrap());
    }
}
