//! The `xxd`-like lines `shmkit show` prints.

/// One line per 16 bytes: the offset, the bytes in hex, and the printable
/// ones as text. `base` is the offset of `bytes[0]` in the segment.
pub(crate) fn lines(bytes: &[u8], base: usize) -> impl Iterator<Item = String> + '_ {
    bytes.chunks(16).enumerate().map(move |(i, chunk)| {
        let mut hex = String::with_capacity(48);
        for (j, b) in chunk.iter().enumerate() {
            if j == 8 {
                hex.push(' ');
            }
            hex.push_str(&format!("{b:02x} "));
        }
        let text: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        format!("{:08x}: {hex:<49} {text}", base + i * 16)
    })
}

#[cfg(test)]
mod tests {
    use super::lines;

    #[test]
    fn formats_offset_hex_and_text() {
        let out: Vec<String> = lines(b"howdy\x00\x01abcdefghijkl", 0x40).collect();
        assert_eq!(out.len(), 2);
        assert!(
            out[0].starts_with("00000040: 68 6f 77 64 79 00 01 61  62 63"),
            "{}",
            out[0]
        );
        assert!(out[0].ends_with("howdy..abcdefghi"), "{}", out[0]);
        assert!(out[1].starts_with("00000050: 6a 6b 6c"), "{}", out[1]);
    }
}
