//! Writing output that survives a closed pipe, and the small formats the
//! commands share (sizes, ages, process names, user names).
//!
//! # Text from outside
//!
//! `/dev/shm` is writable by every local user, and a process may name itself
//! anything, so segment names, command names and anything read from a
//! segment may hold terminal escape sequences, a newline that would forge a
//! table row, or bytes that are not UTF-8. Every such string goes to the
//! terminal through [`Quoted`] (names, on their own) or [`sanitize`] (inside
//! a message), and every message on stderr through [`warn`], which sanitizes
//! it whole. `--json` output needs neither: JSON escapes control characters
//! itself.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{Read, Write};
use std::time::Duration;

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Whether a terminal shows `c` as itself: printable ASCII, or a character
/// that takes up room (not a control, format, zero-width or combining
/// character, which can hide, reorder or overwrite what is around them) and
/// is not a space other than ASCII's (which would pass for one).
fn shows_as_itself(c: char) -> bool {
    if c.is_ascii() {
        return matches!(c, ' '..='~');
    }
    c.width().is_some_and(|w| w > 0) && !c.is_whitespace()
}

/// Writes `bytes` (a character's, or a stray byte) as C escapes:
/// `\n`, `\t`, … for the usual controls, `\ooo` (octal) for the rest, as
/// `ls -b` and git's `core.quotePath` do.
fn escape_bytes(out: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    for &b in bytes {
        match b {
            0x07 => out.write_str("\\a")?,
            0x08 => out.write_str("\\b")?,
            b'\t' => out.write_str("\\t")?,
            b'\n' => out.write_str("\\n")?,
            0x0b => out.write_str("\\v")?,
            0x0c => out.write_str("\\f")?,
            b'\r' => out.write_str("\\r")?,
            b => write!(out, "\\{b:03o}")?,
        }
    }
    Ok(())
}

/// Calls `each` for every piece of `bytes`: a character, or a byte that is
/// not part of valid UTF-8 (as `None` with that byte).
fn pieces(bytes: &[u8], mut each: impl FnMut(Option<char>, &[u8]) -> fmt::Result) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        for (i, c) in valid.char_indices() {
            each(Some(c), &valid.as_bytes()[i..i + c.len_utf8()])?;
        }
        for b in chunk.invalid().chunks(1) {
            each(None, b)?;
        }
    }
    Ok(())
}

/// A name (or any other single string from outside) as a terminal should
/// show it: as it is when every character [shows as itself](shows_as_itself)
/// and it holds no space, `"` or `\`; else in double quotes, with `"` and
/// `\` backslashed and every other such character or stray byte escaped
/// (`"a\033]0;x\007"`), as git quotes paths. Two different names never look
/// the same, and the quoted form is one line of printable ASCII and
/// characters that take up room. (`psm_0bebf130` stays as it is; a name
/// of `a`, newline, `b` is shown as `"a\nb"`.)
pub struct Quoted<'a>(pub &'a [u8]);

impl Quoted<'_> {
    /// `text`, quoted.
    pub fn str(text: &str) -> Quoted<'_> {
        Quoted(text.as_bytes())
    }

    fn plain(&self) -> bool {
        std::str::from_utf8(self.0).is_ok_and(|s| {
            s.chars()
                .all(|c| shows_as_itself(c) && !matches!(c, ' ' | '"' | '\\'))
        })
    }
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.plain() {
            // Checked to be UTF-8 just above.
            return f.write_str(std::str::from_utf8(self.0).unwrap_or_default());
        }
        f.write_char('"')?;
        pieces(self.0, |c, bytes| match c {
            Some(c @ ('"' | '\\')) => {
                f.write_char('\\')?;
                f.write_char(c)
            }
            Some(c) if shows_as_itself(c) => f.write_char(c),
            _ => escape_bytes(f, bytes),
        })?;
        f.write_char('"')
    }
}

/// `text` with every character that would not [show as
/// itself](shows_as_itself) escaped as [`Quoted`] escapes it, and nothing
/// else changed: for messages and values that are already quoted or
/// delimited in their own way (a Python `repr`, a line on stderr).
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = pieces(text.as_bytes(), |c, bytes| match c {
        Some(c) if shows_as_itself(c) => out.write_char(c),
        _ => escape_bytes(&mut out, bytes),
    });
    out
}

/// How many terminal columns `text` takes up, once it is made of characters
/// that [show as themselves](shows_as_itself) (as [`Quoted`] and
/// [`sanitize`] leave it).
pub fn width(text: &str) -> usize {
    text.width()
}

/// `text` padded with spaces to `columns` terminal columns, on the right
/// (`left`) or on the left.
pub fn pad(text: &str, columns: usize, left: bool) -> String {
    let fill = " ".repeat(columns.saturating_sub(width(text)));
    if left {
        format!("{text}{fill}")
    } else {
        format!("{fill}{text}")
    }
}

/// Lines on stdout. A closed pipe (`shmkit ls | head`) ends the output
/// quietly instead of panicking as `println!` would.
pub struct Out {
    out: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Out {
    pub fn new() -> Out {
        Out {
            out: std::io::stdout().lock(),
            closed: false,
        }
    }

    pub fn line(&mut self, text: &str) {
        if !self.closed && writeln!(self.out, "{text}").is_err() {
            self.closed = true;
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// One line on stderr, prefixed with `shmkit: `, [sanitized](sanitize): a
/// name or a system's message inside it cannot reach the terminal raw, nor
/// make it two lines.
pub fn warn(message: &str) {
    let _ = writeln!(std::io::stderr(), "shmkit: {}", sanitize(message));
}

/// Prints `message` as an error and returns [`crate::EXIT_ERROR`].
pub fn fail(message: &str) -> i32 {
    warn(message);
    crate::EXIT_ERROR
}

/// `191B`, `4.0K`, `512M`: powers of 1024, as `ls -h` prints them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// `42s`, `5m`, `3h`, `2d`.
pub fn human_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// File `file` of process `pid`'s `/proc` directory, as bytes, if the
/// process is there and the file can be read. procfs finds the process;
/// its parsers are not used, as they make the text UTF-8 (or fail on it),
/// and a process's own bytes are what tell two names apart.
pub fn proc_file(pid: u32, file: &str) -> Option<Vec<u8>> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let mut bytes = Vec::new();
    process
        .open_relative(file)
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// The command name of a process (`/proc/PID/comm`), if it can be read,
/// without the newline the kernel ends it with. Any process may give itself
/// any name, so it is text from outside: its bytes, not made UTF-8 here.
pub fn command_of(pid: u32) -> Option<Vec<u8>> {
    let mut comm = proc_file(pid, "comm")?;
    if comm.last() == Some(&b'\n') {
        comm.pop();
    }
    Some(comm)
}

/// User names by uid, as the C library's name services (NSS: files, LDAP,
/// systemd, …) give them, each uid asked once.
pub struct UserNames(uzers::UsersCache);

impl UserNames {
    pub fn new() -> UserNames {
        UserNames(uzers::UsersCache::new())
    }

    /// The name of user `uid`, if it has one; any bytes that are not UTF-8
    /// replaced by U+FFFD.
    pub fn get(&self, uid: u32) -> Option<String> {
        uzers::Users::get_user_by_uid(&self.0, uid)
            .map(|user| user.name().to_string_lossy().into_owned())
    }
}

/// The live processes among the shmkit trackers of segment `name`: while
/// one lives, its tracker will unlink the segment when its process tree
/// exits, and it may attach again meanwhile, so an unused segment it tracks
/// is idle, not leaked.
pub fn live_trackers(tracked: &HashMap<String, Vec<i32>>, name: &str) -> Vec<i32> {
    tracked
        .get(name)
        .map(|pids| {
            pids.iter()
                .copied()
                .filter(|p| *p > 0 && std::path::Path::new(&format!("/proc/{p}")).exists())
                .collect()
        })
        .unwrap_or_default()
}

/// `1234 (python3), 5678 (shmkit)`, each command name [quoted](Quoted).
pub fn pid_list(pids: &[u32]) -> String {
    pids.iter()
        .map(|&p| match command_of(p) {
            Some(c) => format!("{p} ({})", Quoted(&c)),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_ls() {
        assert_eq!(human_size(191), "191B");
        assert_eq!(human_size(4096), "4.0K");
        assert_eq!(human_size(512 << 20), "512M");
        assert_eq!(human_size(u64::MAX), "16E");
        assert_eq!(human_age(Duration::from_secs(5)), "5s");
        assert_eq!(human_age(Duration::from_secs(600)), "10m");
        assert_eq!(human_age(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(human_age(Duration::from_secs(5 * 86400)), "5d");
    }

    #[test]
    fn plain_names_stay_as_they_are() {
        for name in [
            "psm_0bebf130",
            "wnsm_1234",
            "données",
            "共有メモリ",
            "a-b.c_d+e",
        ] {
            assert_eq!(Quoted::str(name).to_string(), name);
            assert_eq!(sanitize(name), name);
        }
    }

    #[test]
    fn hostile_names_are_one_line_of_printable_characters() {
        for (name, want) in [
            (&b"x\x1b]0;pwned\x07"[..], r#""x\033]0;pwned\a""#),
            (b"\x1b[2J", r#""\033[2J""#),
            (b"a\nb", r#""a\nb""#),
            (b"tab\there\r", r#""tab\there\r""#),
            (b"a b", r#""a b""#),
            (b"q\"\\", r#""q\"\\""#),
            (b"\x7f\x01", r#""\177\001""#),
            // Not UTF-8: each stray byte.
            (b"bad\xff\xfe", r#""bad\377\376""#),
            // A C1 control (CSI), right-to-left override, zero-width space,
            // no-break space, line separator: UTF-8 bytes, escaped.
            ("c1\u{9b}".as_bytes(), r#""c1\302\233""#),
            ("rtl\u{202e}".as_bytes(), r#""rtl\342\200\256""#),
            ("zw\u{200b}".as_bytes(), r#""zw\342\200\213""#),
            ("nb\u{a0}".as_bytes(), r#""nb\302\240""#),
            ("ls\u{2028}".as_bytes(), r#""ls\342\200\250""#),
            // Printable characters beside them stay.
            ("é\n".as_bytes(), "\"é\\n\""),
        ] {
            let got = Quoted(name).to_string();
            assert_eq!(got, want, "{name:?}");
            assert!(got.chars().all(shows_as_itself), "{got:?}");
        }
    }

    #[test]
    fn sanitize_escapes_only_what_would_not_show() {
        assert_eq!(
            sanitize("in use by 12 (a\x1b[2J); not removed"),
            r"in use by 12 (a\033[2J); not removed"
        );
        assert_eq!(
            sanitize("'quoted' \"and\" \\ back"),
            "'quoted' \"and\" \\ back"
        );
        assert_eq!(sanitize("two\nlines"), r"two\nlines");
    }

    #[test]
    fn widths_count_columns_not_bytes() {
        assert_eq!(width("共有"), 4);
        assert_eq!(width("é"), 1);
        assert_eq!(pad("共", 4, true), "共  ");
        assert_eq!(pad("7", 3, false), "  7");
    }
}
