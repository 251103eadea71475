//! Percent-encoding as SigV4 canonicalizes it, and a lenient decoder.
//!
//! Encoding keeps only the RFC 3986 unreserved bytes (`A-Z a-z 0-9 - _ . ~`), which is what
//! every AWS SDK does, so the same logical URL always yields the same canonical text.
//! Decoding keeps a `%` that is not followed by two hex digits as a literal, because a request
//! must never be rejected (or crash) over an escape before its signature is even checked.

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// Percent-encodes every byte but the unreserved ones (and `/` when `keep_slash`).
pub(crate) fn encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Decodes `%XX` escapes; `+` stays `+` (it is not form encoding).
pub(crate) fn decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(&[hi, lo])) => hex_value(hi).zip(hex_value(lo)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) => {
                out.push((hi << 4) | lo);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(encode(b"aZ09-_.~", false), "aZ09-_.~");
        assert_eq!(encode(b"a b/c:%", false), "a%20b%2Fc%3A%25");
        assert_eq!(encode(b"/a b/", true), "/a%20b/");
        assert_eq!(encode("é".as_bytes(), false), "%C3%A9");
    }

    #[test]
    fn decodes_leniently() {
        assert_eq!(decode("a%20b+c%3a"), b"a b+c:");
        assert_eq!(decode("100%"), b"100%");
        assert_eq!(decode("%zz%4"), b"%zz%4");
        assert_eq!(decode("%C3%A9"), "é".as_bytes());
    }
}
