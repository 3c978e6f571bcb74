//! Low-level helpers for writing JSON by hand (the response shapes are fixed, so building
//! them directly into a `String` is both simpler and faster than going through serde).

use std::fmt::Write as _;

/// The sentence the default reply text is cut from, repeated as often as needed.
pub(crate) const SENTENCE: &str = "The quick brown fox jumps over the lazy dog. ";

/// Append `s` as a JSON string literal (with quotes).
pub(crate) fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` indexes an ASCII byte, so both slices fall on char boundaries.
        buf.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(buf, "\\u{b:04x}");
        } else {
            buf.push_str(esc);
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

/// Append a JSON string literal, or `null`.
pub(crate) fn push_json_opt(buf: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(buf, s),
        None => buf.push_str("null"),
    }
}

pub(crate) fn push_u64(buf: &mut String, n: u64) {
    let _ = write!(buf, "{n}");
}

/// Append `len` characters of the default reply text, starting at character `start`.
pub(crate) fn push_default_text(buf: &mut String, start: usize, len: usize) {
    let mut pos = start % SENTENCE.len();
    let mut left = len;
    while left > 0 {
        let take = (SENTENCE.len() - pos).min(left);
        buf.push_str(&SENTENCE[pos..pos + take]);
        left -= take;
        pos = 0;
    }
}

/// `ceil(n / 4)`
pub(crate) fn ceil4(n: u64) -> u64 {
    n.div_ceil(4)
}

/// Current unix time in seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Standard base64 (RFC 4648, with padding).
pub(crate) fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b0 = chunk[0];
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn escapes_like_serde() {
        let s = "a\"b\\c\nd\u{1}e\u{7f}é😀\t";
        let mut buf = String::new();
        push_json_str(&mut buf, s);
        assert_eq!(buf, serde_json::to_string(s).unwrap_or_default());
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn default_text_wraps() {
        let mut buf = String::new();
        push_default_text(&mut buf, 40, 10);
        assert_eq!(buf, "dog. The q");
    }
}
