//! JSON string escaping straight into the output buffer.

use std::fmt;

/// Appends `s` to `out` as JSON string content (without the quotes), copying runs of
/// characters that need no escape in one go.
pub(crate) fn escape_into(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A `fmt::Write` that escapes as it writes, so `Debug` and `Display` output goes into
/// the line with no intermediate `String`.
pub(crate) struct Escaper<'a>(pub(crate) &'a mut String);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_what_json_requires() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd\u{1}e\u{7f}é");
        assert_eq!(out, "a\\\"b\\\\c\\nd\\u0001e\\u007fé");
    }

    proptest! {
        #[test]
        fn any_string_round_trips_through_serde(s in any::<String>()) {
            let mut out = String::from("\"");
            escape_into(&mut out, &s);
            out.push('"');
            let back: String = serde_json::from_str(&out).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
