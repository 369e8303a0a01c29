//! [`ShareableList`]: a fixed-length list of `int`, `float`, `bool`, `None`,
//! `str` and `bytes` in one shared memory segment, in the layout of CPython
//! 3.9–3.13's `multiprocessing.shared_memory.ShareableList`.
//!
//! A list made here reads in CPython and the reverse, item for item; the
//! layout itself is a pure codec (`list/layout/`). Where CPython loses data
//! silently, shmkit refuses instead:
//!
//! * **Multibyte `str`.** CPython sizes a `str` slot by its character count
//!   and truncates the UTF-8 bytes that do not fit (gh-88336); shmkit sizes
//!   slots by UTF-8 bytes. CPython reads such a list correctly, because each
//!   item's format carries its slot size.
//! * **Trailing NULs.** Readers, CPython's and shmkit's, strip trailing NUL
//!   bytes from `str` and `bytes` items (gh-106939), so shmkit refuses to
//!   write a value ending in NUL ([`ListError::TrailingNul`]) rather than
//!   hand back a different value later. NULs elsewhere in a value are kept.
//! * **Indexes below `-len`.** CPython reads and writes its own metadata for
//!   them; shmkit fails with [`ListError::IndexOutOfRange`].
//! * **Bad bytes.** A segment whose header, offsets, formats or codes are
//!   not those of a list gives an error, never a panic or a stray access;
//!   a Python 3.8 list is recognised as such ([`ListError::Python38Layout`]).
//!
//! Like CPython's, the list has no locking: a write is format, then code,
//! then value, and a reader in another process may see it halfway (then it
//! gets [`ListError::BadItem`] or the old value's bytes under the new type).
//!
//! ```
//! use shmkit::list::{ShareableList, Value};
//!
//! let list = ShareableList::create(&[Value::from("howdy"), Value::Int(100), Value::None])?;
//! let other = ShareableList::open(list.shm().name())?; // as another process would
//! other.set(1, 101)?;
//! assert_eq!(list.get(1)?, Value::Int(101));
//! assert_eq!(list.get_i64(-2)?, 101);
//! assert_eq!(list.format()?, "8sqxxxxxx?x");
//! list.shm().unlink()?;
//! # Ok::<(), shmkit::Error>(())
//! ```

mod bytes;
mod fixed;
mod layout;
mod value;

pub use crate::error::ListError;
pub use bytes::{ByteSink, ByteSource};
pub use layout::{ItemType, MAX_ITEM_BYTES};
pub use value::{Value, ValueRef};

/// The codec and the one-pass writer of fixed-size lists, for the Python
/// bindings' hot paths and the CLI's read-only decoder. Not a stable API:
/// it may change in any release.
#[doc(hidden)]
pub mod raw {
    pub use super::fixed::FixedImage;
    pub use super::layout::Layout;
}

use layout::Layout;

use crate::error::Result;
use crate::shared_memory::{Options, SharedMemory};

/// A fixed-length list in shared memory, readable and writable by CPython's
/// `ShareableList` in other processes. See the [module docs](self) for where
/// it differs from CPython.
///
/// Indexes are Python's: `-1` is the last item. Reads return owned
/// [`Value`]s; writes take anything that converts into a [`ValueRef`]
/// (`i64`, `f64`, `bool`, `&str`, `&[u8]`, `()`, `&Value`). For numbers,
/// [`get_i64`](Self::get_i64) and friends skip the [`Value`] altogether.
///
/// The list owns its [`SharedMemory`]: dropping it unmaps the segment, and
/// [`shm().unlink()`](SharedMemory::unlink) removes it.
pub struct ShareableList {
    shm: SharedMemory,
    layout: Layout,
}

impl std::fmt::Debug for ShareableList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareableList")
            .field("name", &self.shm.name())
            .field("len", &self.len())
            .finish()
    }
}

impl ShareableList {
    /// Creates a list of `values` in a new segment under a fresh
    /// `psm_xxxxxxxx` name.
    ///
    /// Fails before creating anything if a `str` or `bytes` ends in NUL or
    /// is longer than [`MAX_ITEM_BYTES`].
    ///
    /// ```
    /// use shmkit::list::{ShareableList, ValueRef};
    /// let list = ShareableList::create(&[ValueRef::Str("é"), ValueRef::Bytes(b"\x01")])?;
    /// assert_eq!(list.len(), 2);
    /// assert_eq!(list.shm().size(), 8 * 6 + 16 + 2);
    /// assert!(ShareableList::create(&[ValueRef::Bytes(b"x\0")]).is_err());
    /// list.shm().unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn create<'a, V: 'a>(values: &'a [V]) -> Result<Self>
    where
        &'a V: Into<ValueRef<'a>>,
    {
        Self::create_with(&Options::new(), None, values)
    }

    /// Creates a list of `values` in a new segment named `name`; fails with
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists) if it is taken.
    pub fn create_named<'a, V: 'a>(name: &str, values: &'a [V]) -> Result<Self>
    where
        &'a V: Into<ValueRef<'a>>,
    {
        Self::create_with(&Options::new(), Some(name), values)
    }

    /// Creates a list of `values` in a new segment made with `options`,
    /// named `name` or, without one, under a fresh generated name.
    pub fn create_with<'a, V: 'a>(
        options: &Options,
        name: Option<&str>,
        values: &'a [V],
    ) -> Result<Self>
    where
        &'a V: Into<ValueRef<'a>>,
    {
        let values: Vec<ValueRef<'a>> = values.iter().map(Into::into).collect();
        let layout = Layout::for_values(&values)?;
        let shm = match name {
            Some(name) => options.create_named(name, layout.size())?,
            None => options.create(layout.size())?,
        };
        if let Err(err) = layout.write_new(&mut shm.region(), &values) {
            // Cannot happen (the segment has the layout's size), but a
            // half-written list must not outlive the error.
            let _ = shm.unlink();
            return Err(err);
        }
        Ok(ShareableList { shm, layout })
    }

    /// Attaches to the list in the existing segment `name`, validating its
    /// header and offsets (see [`Layout::attach`]).
    ///
    /// ```
    /// use shmkit::{list::{ListError, ShareableList}, Error, SharedMemory};
    /// let shm = SharedMemory::create(16)?;
    /// shm.write_at(0, &(-1i64).to_ne_bytes())?;
    /// assert!(matches!(
    ///     ShareableList::open(shm.name()),
    ///     Err(Error::List(ListError::Corrupt { .. }))
    /// ));
    /// shm.unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn open(name: &str) -> Result<Self> {
        Self::from_shm(SharedMemory::open(name)?)
    }

    /// Reads the list in a segment already open, validating its header and
    /// offsets (see [`Layout::attach`]).
    pub fn from_shm(shm: SharedMemory) -> Result<Self> {
        let layout = Layout::attach(shm.region())?;
        Ok(ShareableList { shm, layout })
    }

    /// The segment the list lives in (CPython's `sl.shm`).
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// Gives up the list, keeping the segment open.
    pub fn into_shm(self) -> SharedMemory {
        self.shm
    }

    /// The list's validated geometry, for callers that drive the codec
    /// themselves.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The number of items, fixed at creation.
    #[inline]
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Whether the list has no items.
    pub fn is_empty(&self) -> bool {
        self.layout.is_empty()
    }

    /// Reads item `index`.
    ///
    /// Fails with [`ListError::IndexOutOfRange`] outside `-len..len`,
    /// [`ListError::BadItem`] if its format or code are not a list's, and
    /// [`ListError::InvalidUtf8`] for a `str` that CPython truncated
    /// mid-character.
    #[inline]
    pub fn get(&self, index: isize) -> Result<Value> {
        self.layout.get(self.shm.region(), index)
    }

    /// Writes `value` to item `index`, as CPython's `sl[index] = value`.
    ///
    /// The item may change type; its slot keeps its size. A `str` or
    /// `bytes` that does not fit the slot fails with
    /// [`ListError::ExceedsStorage`], one ending in NUL with
    /// [`ListError::TrailingNul`]; either way the item keeps its old value.
    ///
    /// ```
    /// use shmkit::list::{ListError, ShareableList, Value};
    /// let list = ShareableList::create(&[Value::from("abc")])?;
    /// list.set(0, "12345678")?; // 8 bytes of an 8-byte slot
    /// assert!(list.set(0, "123456789").is_err());
    /// list.set(0, 2.5)?; // a float now, in the same slot
    /// assert_eq!(list.get(0)?, Value::Float(2.5));
    /// assert_eq!(list.item_format(0)?, "d");
    /// list.shm().unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    #[inline]
    pub fn set<'v>(&self, index: isize, value: impl Into<ValueRef<'v>>) -> Result<()> {
        self.layout.set(&mut self.shm.region(), index, value.into())
    }

    /// Reads item `index` if it is an `int`; fails with
    /// [`ListError::WrongType`] for any other type, `bool` included.
    ///
    /// ```
    /// use shmkit::list::{ShareableList, ValueRef};
    /// let list = ShareableList::create(&[ValueRef::Int(7), ValueRef::Float(0.5)])?;
    /// list.set_i64(0, -7)?;
    /// assert_eq!(list.get_i64(0)?, -7);
    /// assert_eq!(list.get_f64(1)?, 0.5);
    /// assert!(list.get_i64(1).is_err());
    /// list.shm().unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    #[inline]
    pub fn get_i64(&self, index: isize) -> Result<i64> {
        self.layout.get_i64(self.shm.region(), index)
    }

    /// Writes an `int` to item `index`, whatever it held before.
    #[inline]
    pub fn set_i64(&self, index: isize, value: i64) -> Result<()> {
        self.layout.set_i64(&mut self.shm.region(), index, value)
    }

    /// Reads item `index` if it is a `float`; fails with
    /// [`ListError::WrongType`] for any other type (an `int` is not
    /// converted).
    #[inline]
    pub fn get_f64(&self, index: isize) -> Result<f64> {
        self.layout.get_f64(self.shm.region(), index)
    }

    /// Writes a `float` to item `index`, whatever it held before.
    #[inline]
    pub fn set_f64(&self, index: isize, value: f64) -> Result<()> {
        self.layout.set_f64(&mut self.shm.region(), index, value)
    }

    /// Item `index`'s type.
    pub fn item_type(&self, index: isize) -> Result<ItemType> {
        self.layout.item_type(self.shm.region(), index)
    }

    /// Item `index`'s format (CPython's `_get_packing_format`): `"q"`,
    /// `"d"`, `"xxxxxxx?"`, `"xxxxxx?x"` or `"<width>s"`.
    pub fn item_format(&self, index: isize) -> Result<String> {
        self.layout.item_format(self.shm.region(), index)
    }

    /// All formats joined (CPython's `sl.format`), such as
    /// `"8s8sdqxxxxxx?xxxxxxxx?q"`.
    pub fn format(&self) -> Result<String> {
        self.layout.format(self.shm.region())
    }

    /// The items in order; each read may fail as [`get`](Self::get) does.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            list: self,
            front: 0,
            back: self.len(),
        }
    }

    /// All items, read one by one (CPython's `list(sl)`).
    pub fn to_vec(&self) -> Result<Vec<Value>> {
        self.iter().collect()
    }

    /// How many items equal `value` by Python's `==` (see
    /// [`ValueRef::py_eq`]: `1`, `1.0` and `True` are all equal).
    ///
    /// ```
    /// use shmkit::list::{ShareableList, ValueRef};
    /// let list = ShareableList::create(&[ValueRef::Int(1), ValueRef::Bool(true), ValueRef::Str("1")])?;
    /// assert_eq!(list.count(1.0)?, 2);
    /// assert_eq!(list.index(true)?, Some(0));
    /// assert_eq!(list.index(b"1")?, None);
    /// list.shm().unlink()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn count<'v>(&self, value: impl Into<ValueRef<'v>>) -> Result<usize> {
        let value = value.into();
        let mut n = 0;
        for item in self {
            n += usize::from(item?.as_ref().py_eq(value));
        }
        Ok(n)
    }

    /// The position of the first item equal to `value` by Python's `==`, or
    /// `None` (where CPython raises `ValueError`).
    pub fn index<'v>(&self, value: impl Into<ValueRef<'v>>) -> Result<Option<usize>> {
        let value = value.into();
        for (i, item) in self.iter().enumerate() {
            if item?.as_ref().py_eq(value) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

/// The items of a [`ShareableList`], front to back or back to front.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    list: &'a ShareableList,
    front: usize,
    back: usize,
}

impl Iterator for Iter<'_> {
    type Item = Result<Value>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.front += 1;
        Some(self.list.get(self.front as isize - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back - self.front;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.back -= 1;
        Some(self.list.get(self.back as isize))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a ShareableList {
    type Item = Result<Value>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}
