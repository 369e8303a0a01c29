//! Message framing, as CPython's `multiprocessing.connection` frames every
//! message on a socket: a 4-byte big-endian signed length, then the payload.
//! A payload longer than `0x7fffffff` bytes gets the length `-1` followed by
//! an 8-byte big-endian unsigned length.
//!
//! A reader names the longest payload it accepts: [`AUTH_MAX_LEN`] during
//! the handshake (CPython's `recv_bytes(256)`), [`DEFAULT_MAX_LEN`] after
//! unless configured otherwise. A longer declared length is refused before
//! anything is allocated, and memory then grows only with the bytes that
//! really arrive.

use std::io::{self, Read, Write};

use super::error::ManagerError;

/// The longest payload accepted while authenticating, as in CPython.
pub const AUTH_MAX_LEN: usize = 256;

/// The longest payload a [`Connection`](super::Connection) accepts after
/// authentication unless told otherwise: 64 MiB, far more than any manager
/// request needs.
pub const DEFAULT_MAX_LEN: usize = 64 << 20;

/// Payloads longer than this take the 12-byte header.
const SHORT_MAX: usize = 0x7fff_ffff;

/// CPython writes header and payload in one `write` up to this size.
const ONE_WRITE_MAX: usize = 16384;

/// The header that announces a payload of `len` bytes: 4 bytes, or 12 for
/// payloads over `0x7fffffff` bytes.
///
/// ```
/// use shmkit::manager::frame::header;
/// assert_eq!(header(5), [0, 0, 0, 5]);
/// assert_eq!(header(1 << 31), [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0]);
/// ```
pub fn header(len: usize) -> Vec<u8> {
    if len <= SHORT_MAX {
        (len as u32).to_be_bytes().to_vec()
    } else {
        let mut h = (-1i32).to_be_bytes().to_vec();
        h.extend_from_slice(&(len as u64).to_be_bytes());
        h
    }
}

/// Decodes the frame at the start of `buf`, without copying: `Ok(Some((payload,
/// consumed)))` for a whole frame, `Ok(None)` when `buf` ends before the
/// frame does, and an error for a length that is negative (other than the
/// `-1` escape) or longer than `max_len`.
///
/// ```
/// use shmkit::manager::frame::decode;
/// assert_eq!(decode(b"\0\0\0\x02hi!", 256)?, Some((&b"hi"[..], 6)));
/// assert_eq!(decode(b"\0\0\0\x02h", 256)?, None);
/// assert!(decode(b"\0\0\x01\x01", 256).is_err()); // 257 > 256
/// # Ok::<(), shmkit::manager::ManagerError>(())
/// ```
pub fn decode(buf: &[u8], max_len: usize) -> Result<Option<(&[u8], usize)>, ManagerError> {
    let Some(short) = buf.get(..4) else {
        return Ok(None);
    };
    let short = i32::from_be_bytes(short.try_into().expect("4 bytes"));
    let (len, start) = if short == -1 {
        let Some(long) = buf.get(4..12) else {
            return Ok(None);
        };
        (u64::from_be_bytes(long.try_into().expect("8 bytes")), 12)
    } else if short < 0 {
        return Err(ManagerError::BadLength(short));
    } else {
        (short as u64, 4)
    };
    let len = check_len(len, max_len)?;
    Ok(buf
        .get(start..)
        .and_then(|rest| rest.get(..len))
        .map(|payload| (payload, start + len)))
}

fn check_len(len: u64, max_len: usize) -> Result<usize, ManagerError> {
    match usize::try_from(len) {
        Ok(n) if n <= max_len => Ok(n),
        _ => Err(ManagerError::TooLong {
            len,
            max: max_len as u64,
        }),
    }
}

/// Reads one frame from `r` and returns its payload.
///
/// ```
/// use shmkit::manager::frame;
/// let mut wire = Vec::new();
/// frame::write(&mut wire, b"#WELCOME#")?;
/// assert_eq!(wire[..4], [0, 0, 0, 9]);
/// assert_eq!(frame::read(&mut &wire[..], frame::AUTH_MAX_LEN)?, b"#WELCOME#");
/// # Ok::<(), shmkit::manager::ManagerError>(())
/// ```
///
/// End of file before the first header byte is [`ManagerError::Eof`] (the
/// peer closed between messages, CPython's `EOFError`); anywhere later it is
/// [`ManagerError::Truncated`].
pub fn read<R: Read>(r: &mut R, max_len: usize) -> Result<Vec<u8>, ManagerError> {
    let len = read_len(r, max_len)?;
    read_payload(r, len)
}

/// Reads a frame's header from `r` and returns the payload length it
/// announces, refusing one over `max_len`; [`read_payload`] then reads the
/// payload. Split from [`read`] for a reader that must set memory aside for
/// the payload before receiving it.
pub fn read_len<R: Read>(r: &mut R, max_len: usize) -> Result<usize, ManagerError> {
    let mut short = [0u8; 4];
    match read_full(r, &mut short)? {
        0 => return Err(ManagerError::Eof),
        4 => {}
        _ => return Err(ManagerError::Truncated),
    }
    let short = i32::from_be_bytes(short);
    let len = if short == -1 {
        let mut long = [0u8; 8];
        if read_full(r, &mut long)? != 8 {
            return Err(ManagerError::Truncated);
        }
        u64::from_be_bytes(long)
    } else if short < 0 {
        return Err(ManagerError::BadLength(short));
    } else {
        short as u64
    };
    check_len(len, max_len)
}

/// Reads the `len`-byte payload of a frame whose header [`read_len`] read.
pub fn read_payload<R: Read>(r: &mut R, len: usize) -> Result<Vec<u8>, ManagerError> {
    // Grow with what arrives, so a peer that announces 64 MiB and sends
    // nothing costs nothing.
    let mut payload = Vec::with_capacity(len.min(64 << 10));
    r.take(len as u64)
        .read_to_end(&mut payload)
        .map_err(|e| ManagerError::io("receive", e))?;
    if payload.len() != len {
        return Err(ManagerError::Truncated);
    }
    Ok(payload)
}

/// Fills `buf` as far as the stream goes; returns how many bytes were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ManagerError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ManagerError::io("receive", e)),
        }
    }
    Ok(filled)
}

/// Writes `payload` as one frame: header and payload in a single write up to
/// 16 KiB, in two beyond, as CPython does.
pub fn write<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), ManagerError> {
    let mut head = header(payload.len());
    let result = if payload.len() <= ONE_WRITE_MAX {
        head.extend_from_slice(payload);
        w.write_all(&head)
    } else {
        w.write_all(&head).and_then(|()| w.write_all(payload))
    };
    result
        .and_then(|()| w.flush())
        .map_err(|e| ManagerError::io("send", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn round_trips_and_agrees_with_decode() {
        for len in [0usize, 1, 255, 256, 16384, 16385, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            write(&mut wire, &payload).unwrap();
            assert_eq!(wire.len(), 4 + len);
            assert_eq!(read(&mut Cursor::new(&wire), len).unwrap(), payload);
            assert_eq!(
                decode(&wire, len).unwrap(),
                Some((&payload[..], wire.len()))
            );
            if len > 0 {
                assert!(matches!(
                    read(&mut Cursor::new(&wire), len - 1),
                    Err(ManagerError::TooLong { .. })
                ));
            }
        }
    }

    #[test]
    fn the_long_form_is_read() {
        let mut wire = vec![0xff; 4];
        wire.extend_from_slice(&3u64.to_be_bytes());
        wire.extend_from_slice(b"abc");
        assert_eq!(read(&mut Cursor::new(&wire), 256).unwrap(), b"abc");
        assert_eq!(decode(&wire, 256).unwrap(), Some((&b"abc"[..], 15)));
    }

    #[test]
    fn huge_lengths_are_refused_without_allocating() {
        let mut wire = vec![0xff; 4];
        wire.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            read(&mut Cursor::new(&wire), DEFAULT_MAX_LEN),
            Err(ManagerError::TooLong { len: u64::MAX, .. })
        ));
        let wire = [0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            read(&mut Cursor::new(&wire), AUTH_MAX_LEN),
            Err(ManagerError::TooLong { .. })
        ));
        // Announced but never sent: no 64 MiB buffer, just Truncated.
        let wire = (DEFAULT_MAX_LEN as u32).to_be_bytes();
        assert!(matches!(
            read(&mut Cursor::new(&wire), DEFAULT_MAX_LEN),
            Err(ManagerError::Truncated)
        ));
    }

    #[test]
    fn eof_and_bad_lengths() {
        assert!(matches!(
            read(&mut Cursor::new(b""), 256),
            Err(ManagerError::Eof)
        ));
        assert!(matches!(
            read(&mut Cursor::new(b"\0\0"), 256),
            Err(ManagerError::Truncated)
        ));
        assert!(matches!(
            read(&mut Cursor::new(b"\xff\xff\xff\xff\0\0"), 256),
            Err(ManagerError::Truncated)
        ));
        assert!(matches!(
            read(&mut Cursor::new(b"\xff\xff\xff\xfe"), 256),
            Err(ManagerError::BadLength(-2))
        ));
        assert!(matches!(
            decode(b"\x80\0\0\0", 256),
            Err(ManagerError::BadLength(i32::MIN))
        ));
        assert_eq!(decode(b"\xff\xff\xff\xff\0", 256).unwrap(), None);
    }
}
