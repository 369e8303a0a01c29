//! What a segment holds: a ShareableList recognised and decoded from
//! private copies of its bytes, or plain bytes.

use shmkit::list::raw::Layout;
use shmkit::list::{ByteSource, ItemType, Value};
use shmkit::usage::ReadOnly;
use shmkit::{Error, Result};

/// The most bytes of list metadata (header, offsets, formats, codes) that
/// recognising a ShareableList copies: lists of up to about 3.9 million
/// items. Larger segments are reported as [`Contents::Data`].
pub const MAX_LIST_METADATA: usize = 64 << 20;

/// What a segment holds, recognised by its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Contents {
    /// Nothing: a size of zero.
    Empty,
    /// A `ShareableList` of Python 3.9+ (made by the stdlib or shmkit: the
    /// two are byte-identical) with this many items.
    ShareableList {
        /// The number of items.
        len: usize,
    },
    /// A shmkit object (a lock, an event, a queue…) marked by the
    /// [`shmkit::object`] header.
    Object {
        /// What it is.
        kind: shmkit::object::Kind,
    },
    /// A glibc named semaphore (`sem_open`), which lives in `/dev/shm` as
    /// `sem.NAME`.
    Semaphore,
    /// Anything else.
    Data,
}

/// The list codec's view of a segment opened read-only: private copies of
/// some ranges (the metadata), and `pread` for the rest. Nothing here is
/// memory another process can write while the codec reads it.
struct Copies<'a> {
    size: usize,
    pieces: Vec<(usize, Vec<u8>)>,
    file: Option<&'a ReadOnly>,
}

impl ByteSource for Copies<'_> {
    fn size(&self) -> usize {
        self.size
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let end = match offset.checked_add(buf.len()) {
            Some(end) if end <= self.size => end,
            _ => {
                return Err(Error::OutOfBounds {
                    offset,
                    len: buf.len(),
                    size: self.size,
                })
            }
        };
        for (start, bytes) in &self.pieces {
            if offset >= *start && end <= start + bytes.len() {
                buf.copy_from_slice(&bytes[offset - start..end - start]);
                return Ok(());
            }
        }
        match self.file {
            Some(file) => {
                buf.copy_from_slice(&file.copy(offset, buf.len())?);
                Ok(())
            }
            None => Err(Error::OutOfBounds {
                offset,
                len: buf.len(),
                size: self.size,
            }),
        }
    }
}

/// Recognises a ShareableList in `file`, copying only its metadata (at most
/// [`MAX_LIST_METADATA`] bytes): the count, checked against the size before
/// anything else is read; the offsets, validated by the codec; and every
/// item's format and code, which must be ones a list writes. The list must
/// fill the segment exactly, as CPython and shmkit make them on Linux.
fn recognise(file: &ReadOnly) -> Option<(Layout, Copies<'_>)> {
    let size = usize::try_from(file.info().size).ok()?;
    if size < 16 {
        return None;
    }
    let count = i64::from_ne_bytes(file.copy(0, 8).ok()?.try_into().ok()?);
    let n = usize::try_from(count).ok()?;
    // size = 8(n+2) + data + 9n, with data a multiple of 8.
    let metadata = n.checked_mul(17)?.checked_add(16)?;
    let data = size.checked_sub(metadata)?;
    if data % 8 != 0 || metadata > MAX_LIST_METADATA {
        return None;
    }
    let head = 8 * (n + 2);
    let mut src = Copies {
        size,
        pieces: vec![(0, file.copy(0, head).ok()?)],
        file: None,
    };
    let layout = Layout::attach(&src).ok()?;
    if layout.size() != size {
        return None;
    }
    let tail = layout.formats_offset();
    src.pieces.push((tail, file.copy(tail, size - tail).ok()?));
    for i in 0..n {
        layout.item_type(&src, i as isize).ok()?;
    }
    src.file = Some(file);
    Some((layout, src))
}

/// What the segment `name` holds. Reads only the list metadata, if any.
///
/// ```
/// use shmkit_cli::inspect::{self, Contents};
/// use shmkit::list::{ShareableList, ValueRef};
///
/// let list = ShareableList::create(&[ValueRef::Int(1), ValueRef::Str("two")])?;
/// assert_eq!(
///     inspect::contents(list.shm().name())?,
///     Contents::ShareableList { len: 2 }
/// );
/// list.shm().unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn contents(name: &str) -> Result<Contents> {
    let file = ReadOnly::open(name)?;
    Ok(contents_of(&file))
}

fn contents_of(file: &ReadOnly) -> Contents {
    if file.info().size == 0 {
        return Contents::Empty;
    }
    let mut header = [0u8; shmkit::object::HEADER_SIZE];
    if matches!(file.read_at(0, &mut header), Ok(n) if n == header.len()) {
        if let Some((kind, _)) = shmkit::object::parse(&header) {
            return Contents::Object { kind };
        }
    }
    if let Some((layout, _)) = recognise(file) {
        return Contents::ShareableList { len: layout.len() };
    }
    // glibc: `sem.NAME`, sizeof(sem_t) bytes (32 on 64-bit, 16 on 32-bit).
    if file.info().name.starts_with("sem.") && matches!(file.info().size, 16 | 32) {
        return Contents::Semaphore;
    }
    Contents::Data
}

/// One item of a list, as [`read_list`] found it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListItem {
    /// Its position.
    pub index: usize,
    /// Its slot's size in bytes.
    pub slot: usize,
    /// Its type and format (e.g. `"8s"`), or why they are not those of a
    /// list item (an item caught while another process rewrote it, …).
    pub kind: Result<(ItemType, String), String>,
    /// Its value, or why it could not be read (the above, or a `str` that
    /// CPython cut in the middle of a character, …).
    pub value: Result<Value, String>,
}

/// A copy of a list, read item by item.
#[derive(Debug, Clone, PartialEq)]
pub struct ListCopy {
    /// The segment's size (the list's size).
    pub size: usize,
    /// The items, in order.
    pub items: Vec<ListItem>,
}

impl ListCopy {
    /// All formats joined, as CPython's `ShareableList.format`; items whose
    /// format is not one a list writes add nothing.
    pub fn format(&self) -> String {
        self.items
            .iter()
            .filter_map(|i| i.kind.as_ref().ok())
            .map(|(_, f)| f.as_str())
            .collect()
    }
}

/// Reads the ShareableList in segment `name`, or `None` if it holds none.
///
/// ```
/// use shmkit_cli::inspect;
/// use shmkit::list::{ShareableList, Value, ValueRef};
///
/// let list = ShareableList::create(&[ValueRef::Float(2.5), ValueRef::None])?;
/// let copy = inspect::read_list(list.shm().name())?.unwrap();
/// assert_eq!(copy.format(), "dxxxxxx?x");
/// assert_eq!(copy.items[0].value, Ok(Value::Float(2.5)));
/// list.shm().unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn read_list(name: &str) -> Result<Option<ListCopy>> {
    let file = ReadOnly::open(name)?;
    let Some((layout, mut src)) = recognise(&file) else {
        return Ok(None);
    };
    // One copy of the items too, unless that is large: then each is read
    // when it is decoded.
    if src.size <= MAX_LIST_METADATA {
        src.pieces.push((0, file.copy(0, src.size)?));
    }
    let items = (0..layout.len())
        .map(|i| {
            let at = i as isize;
            let kind = layout
                .item_type(&src, at)
                .and_then(|ty| Ok((ty, layout.item_format(&src, at)?)))
                .map_err(|e| e.to_string());
            let value = match &kind {
                Ok(_) => layout.get(&src, at).map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            ListItem {
                index: i,
                slot: layout.slot(i).len(),
                kind,
                value,
            }
        })
        .collect();
    Ok(Some(ListCopy {
        size: src.size,
        items,
    }))
}

/// A private copy of up to `len` bytes of segment `name` from `offset`
/// (fewer at its end), and the segment's size.
///
/// ```
/// use shmkit::SharedMemory;
/// use shmkit_cli::inspect;
/// let shm = SharedMemory::create(8)?;
/// shm.write_at(2, b"hi")?;
/// assert_eq!(inspect::read(shm.name(), 2, 100)?, (b"hi\0\0\0\0".to_vec(), 8));
/// assert!(inspect::read(shm.name(), 9, 1).is_err());
/// shm.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn read(name: &str, offset: u64, len: usize) -> Result<(Vec<u8>, u64)> {
    let file = ReadOnly::open(name)?;
    let size = file.info().size;
    if offset > size {
        return Err(Error::OutOfBounds {
            offset: usize::try_from(offset).unwrap_or(usize::MAX),
            len,
            size: usize::try_from(size).unwrap_or(usize::MAX),
        });
    }
    let len = len.min(usize::try_from(size - offset).unwrap_or(usize::MAX));
    let mut buf = vec![0u8; len];
    let got = file.read_at(offset, &mut buf)?;
    buf.truncate(got);
    Ok((buf, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_lists_and_only_lists() {
        use shmkit::list::{ShareableList, ValueRef};
        use shmkit::SharedMemory;
        let list = ShareableList::create(&[ValueRef::Str("howdy"), ValueRef::Int(3)]).unwrap();
        let name = list.shm().name().to_owned();
        let got = contents(&name);
        let plain = SharedMemory::create(list.shm().size()).unwrap();
        let plain_got = contents(plain.name());
        let zeros16 = SharedMemory::create(16).unwrap();
        let zeros_got = contents(zeros16.name());
        let _ = list.shm().unlink();
        let _ = plain.unlink();
        let _ = zeros16.unlink();
        // Counts that the size cannot hold, or a table that is not one.
        let liar = SharedMemory::create(4096).unwrap();
        let mut lies = Vec::new();
        for count in [i64::MAX, -1, 200, 0] {
            liar.write_at(0, &count.to_ne_bytes()).unwrap();
            liar.write_at(8, &[0xff; 64]).unwrap();
            lies.push(contents(liar.name()));
        }
        let _ = liar.unlink();
        for lie in lies {
            assert_eq!(lie.unwrap(), Contents::Data);
        }
        assert_eq!(got.unwrap(), Contents::ShareableList { len: 2 });
        assert_eq!(plain_got.unwrap(), Contents::Data);
        // An empty list is 16 zero bytes.
        assert_eq!(zeros_got.unwrap(), Contents::ShareableList { len: 0 });
    }
}
