//! Text built on the stack: the paths and messages of code that may not
//! allocate (the tracker's watcher, after `fork`), and their one `write`
//! to stderr.

use std::ffi::CStr;

/// Up to 1 KiB of bytes on the stack; what does not fit is cut off.
pub(crate) struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    /// An empty line.
    pub(crate) fn new() -> Self {
        Line {
            buf: [0; 1024],
            len: 0,
        }
    }

    /// Appends `s`, as much of it as fits.
    pub(crate) fn push(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    /// Appends `v` in decimal.
    pub(crate) fn num(&mut self, mut v: usize) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
        self
    }

    /// The bytes so far, as a C string: they must end with the only NUL
    /// (`push(b"\0")` last); `/` if they do not, which names no file of
    /// ours.
    pub(crate) fn c_str(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..self.len]).unwrap_or(c"/")
    }

    /// Writes the line to stderr in one `write`, so that lines of several
    /// processes do not interleave mid-line. Best effort.
    pub(crate) fn emit(&self) {
        super::after_fork::write_stderr(&self.buf[..self.len]);
    }
}
