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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_bytes_build_a_c_string() {
        let mut line = Line::new();
        line.push(b"/proc/")
            .num(0)
            .push(b"/")
            .num(4_194_304)
            .push(b"\0");
        assert_eq!(line.c_str(), c"/proc/0/4194304");
        let mut max = Line::new();
        max.num(usize::MAX).push(b"\0");
        assert_eq!(max.c_str().to_bytes(), usize::MAX.to_string().as_bytes());
    }

    #[test]
    fn what_does_not_fit_is_cut_and_no_c_string() {
        let mut line = Line::new();
        line.push(&[b'a'; 1000]).push(&[b'b'; 100]).push(b"\0");
        assert_eq!(line.len, 1024);
        assert_eq!(line.c_str(), c"/", "no terminator fits");
        let mut inner = Line::new();
        inner.push(b"a\0b\0");
        assert_eq!(inner.c_str(), c"/", "a NUL inside");
    }
}
