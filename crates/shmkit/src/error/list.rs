//! [`ListError`]: what can go wrong reading or writing a shareable list.

/// A shareable-list operation was refused; carried by
/// [`Error::List`](crate::Error::List).
///
/// The comment on each variant names the Python exception that bindings
/// should raise for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// The index is outside `-len..len` (`IndexError`). CPython accepts
    /// indexes below `-len` and then reads its own metadata as items; shmkit
    /// refuses them.
    #[error("index {index} out of range for a list of {len} items")]
    IndexOutOfRange {
        /// The index as it was given.
        index: isize,
        /// The list's length.
        len: usize,
    },
    /// A `str` or `bytes` value is longer than the slot it is written into
    /// (`ValueError`, CPython's "bytes/str item exceeds available storage").
    /// Slots never grow; the item keeps its old value.
    #[error("bytes/str item exceeds available storage: {len} bytes into the {available}-byte slot of item {index}")]
    ExceedsStorage {
        /// The item's position.
        index: usize,
        /// The value's length in bytes (UTF-8 for `str`).
        len: usize,
        /// The slot's size in bytes.
        available: usize,
    },
    /// A `str` or `bytes` value ends in a NUL byte (`ValueError`).
    ///
    /// Every reader, CPython's included, strips trailing NULs (gh-106939),
    /// so the value could not be read back as written; shmkit refuses it
    /// rather than lose the NULs silently.
    #[error("item {index}: a {type_name} ending in NUL cannot be stored, because readers strip trailing NULs (gh-106939)")]
    TrailingNul {
        /// The item's position.
        index: usize,
        /// `"str"` or `"bytes"`.
        type_name: &'static str,
    },
    /// A `str` or `bytes` value of 9,999,992 bytes or more (`ValueError`):
    /// its format (`10000000s`) would not fit the 8 bytes CPython keeps for
    /// one.
    #[error(
        "item {index}: {len} bytes is too long; a ShareableList item holds at most 9999991 bytes"
    )]
    TooLong {
        /// The item's position.
        index: usize,
        /// The value's length in bytes.
        len: usize,
    },
    /// The segment's header or offset table is not that of a ShareableList
    /// of Python 3.9 or later (`ValueError`).
    #[error("not a ShareableList: {reason}")]
    Corrupt {
        /// What is inconsistent.
        reason: String,
    },
    /// The segment holds a ShareableList in the layout of Python 3.8, which
    /// stored slot sizes where 3.9 stores offsets (`ValueError`). The two
    /// layouts cannot be shared; neither can CPython 3.8 and 3.9. Detected
    /// by a heuristic: the first offset is not 0, and the table read as 3.8's
    /// slot sizes describes a list that fits the segment.
    #[error(
        "this is a ShareableList of Python 3.8, whose layout Python 3.9+ and shmkit cannot read"
    )]
    Python38Layout,
    /// An item's format or back-transform code is not one a ShareableList
    /// writes, or does not fit the item's slot (`ValueError`). Besides
    /// corruption, this is what an item caught halfway through another
    /// process's write can look like: ShareableList has no locking.
    #[error("item {index} has format {:?} with code {code}, which no ShareableList writes", format.escape_ascii().to_string())]
    BadItem {
        /// The item's position.
        index: usize,
        /// The item's raw 8 format bytes.
        format: [u8; 8],
        /// The item's back-transform code.
        code: i8,
    },
    /// A `str` item's bytes are not UTF-8 (`UnicodeDecodeError`); CPython's
    /// character-count sizing can cut a character in two (gh-88336).
    #[error("item {index} is a str whose bytes are not valid UTF-8 (from byte {valid_up_to} on)")]
    InvalidUtf8 {
        /// The item's position.
        index: usize,
        /// How many leading bytes are valid.
        valid_up_to: usize,
    },
    /// A typed accessor such as [`get_i64`](crate::ShareableList::get_i64)
    /// found an item of another type (`TypeError`).
    #[error("item {index} is {found}, not {expected}")]
    WrongType {
        /// The item's position.
        index: usize,
        /// The type the accessor reads.
        expected: &'static str,
        /// The type the item has.
        found: &'static str,
    },
}
