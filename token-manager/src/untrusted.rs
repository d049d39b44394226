//! How text that came with a token (a `kid`, an `alg`, a `typ`, a parser's complaint
//! about a claim) is shown in errors, headers and logs: bounded and escaped, because an
//! attacker chooses it.

/// The most characters of untrusted text shown, as long as our own key ids may be.
pub(crate) const SHOWN_MAX: usize = 128;

/// `text` as it may be shown: visible ASCII other than `"`, `\` and `%` as it is,
/// every other byte as `%XX`, cut to [`SHOWN_MAX`] characters with `...` after a cut.
/// The result is safe inside a quoted HTTP header parameter and a log line.
pub(crate) fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(SHOWN_MAX) + 3);
    for byte in text.bytes() {
        let plain = byte.is_ascii_graphic() && !matches!(byte, b'"' | b'\\' | b'%') || byte == b' ';
        let width = if plain { 1 } else { 3 };
        if out.len() + width > SHOWN_MAX {
            out.push_str("...");
            return out;
        }
        if plain {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_printable_text_is_unchanged() {
        assert_eq!(shown("2026-11 key/A+b="), "2026-11 key/A+b=");
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let long = "k".repeat(100_000);
        let out = shown(&long);
        assert_eq!(out.len(), SHOWN_MAX + 3);
        assert!(out.ends_with("..."));
    }

    #[test]
    fn quotes_controls_and_non_ascii_are_escaped() {
        assert_eq!(shown("a\"b\\c\r\nd%é"), "a%22b%5Cc%0D%0Ad%25%C3%A9");
        let out = shown(&"\u{1F600}".repeat(200));
        assert!(out.len() <= SHOWN_MAX + 3 && out.is_ascii());
    }
}
