//! Segment names: validation before any system call, and generation of
//! CPython-style `psm_xxxxxxxx` names.

use crate::error::{Error, NameProblem, Result};

/// The prefix of generated names, as CPython uses on POSIX (without its slash).
pub const PREFIX: &str = "psm_";

/// The longest name a segment may have, in bytes (Linux's `NAME_MAX`).
pub const MAX_LEN: usize = 255;

/// Checks a segment name and returns it without its leading slashes.
///
/// Leading slashes are dropped the way glibc's `shm_open` drops them, so
/// `"/psm_1"` and `"psm_1"` name the same segment. What remains must be
/// non-empty, free of `/` and NUL, not `.` or `..`, and at most 255 bytes.
///
/// ```
/// assert_eq!(shmkit::name::validate("/psm_0a1b2c3d")?, "psm_0a1b2c3d");
/// assert!(shmkit::name::validate("a/b").is_err());
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn validate(name: &str) -> Result<&str> {
    let bare = name.trim_start_matches('/');
    let problem = if bare.as_bytes().contains(&0) {
        Some(NameProblem::Nul)
    } else if bare.is_empty() {
        Some(NameProblem::Empty)
    } else if bare.len() > MAX_LEN {
        Some(NameProblem::TooLong)
    } else if bare.contains('/') {
        Some(NameProblem::Slash)
    } else if bare == "." || bare == ".." {
        Some(NameProblem::Dot)
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::InvalidName {
            name: name.to_owned(),
            problem,
        }),
        None => Ok(bare),
    }
}

/// A fresh random name: [`PREFIX`] followed by 8 lowercase hex digits drawn
/// from the operating system's CSPRNG, exactly as CPython makes them.
///
/// ```
/// let name = shmkit::name::generate();
/// assert!(name.starts_with("psm_") && name.len() == 12);
/// ```
pub fn generate() -> String {
    let mut bytes = [0u8; 4];
    // getrandom only fails when the OS has no entropy source at all; a
    // process on such a system cannot make safe names, so this is fatal.
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    let mut name = String::with_capacity(PREFIX.len() + 8);
    name.push_str(PREFIX);
    for b in bytes {
        name.push(char::from(HEX[usize::from(b >> 4)]));
        name.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    name
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_strips_leading_slashes() {
        assert_eq!(validate("psm_1").unwrap(), "psm_1");
        assert_eq!(validate("//psm_1").unwrap(), "psm_1");
        assert_eq!(validate(&"a".repeat(255)).unwrap().len(), 255);
        assert_eq!(validate("é€名").unwrap(), "é€名");
    }

    #[test]
    fn refuses_bad_names_with_the_right_problem() {
        let cases = [
            ("", NameProblem::Empty),
            ("/", NameProblem::Empty),
            ("a/b", NameProblem::Slash),
            ("a\0b", NameProblem::Nul),
            (".", NameProblem::Dot),
            ("/..", NameProblem::Dot),
        ];
        for (name, want) in cases {
            match validate(name) {
                Err(Error::InvalidName { problem, .. }) => assert_eq!(problem, want, "{name:?}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let long = "a".repeat(256);
        assert!(matches!(
            validate(&long),
            Err(Error::InvalidName {
                problem: NameProblem::TooLong,
                ..
            })
        ));
    }

    #[test]
    fn generated_names_look_like_cpythons_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        for n in [a, b] {
            assert_eq!(n.len(), 12);
            assert!(n[4..]
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            validate(&n).unwrap();
        }
    }
}
