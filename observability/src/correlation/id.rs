//! The correlation id and its validation.

use std::fmt;

use http::HeaderValue;

/// The longest correlation id accepted from a caller.
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// An id that follows one unit of work (a request and everything it causes) through
/// logs, spawned tasks and outgoing calls.
///
/// Ids made here are UUIDv7 (time-ordered, so they sort and index well). Ids that
/// callers send are accepted when they are 1 to 128 characters of ASCII letters, digits
/// and `- _ . : @ / + =`; anything else is refused and replaced, never echoed.
///
/// ```
/// use keel_observability::CorrelationId;
///
/// let fresh = CorrelationId::new();
/// assert_eq!(fresh.as_str().len(), 36);
/// assert!(fresh.is_uuid());
///
/// assert!(CorrelationId::parse("order-1234").is_some());
/// assert!(CorrelationId::parse("<script>").is_none());
/// assert!(CorrelationId::parse(&"x".repeat(129)).is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId {
    // A header value so that echoing it on a response or sending it on a call is a
    // reference-count increment, not a copy. Only validated text gets in.
    value: HeaderValue,
}

impl CorrelationId {
    /// A new UUIDv7 id.
    #[must_use]
    pub fn new() -> Self {
        let uuid = uuid::Uuid::now_v7();
        Self::from_uuid(uuid)
    }

    pub(crate) fn from_uuid(uuid: uuid::Uuid) -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = uuid.hyphenated().encode_lower(&mut buf);
        CorrelationId {
            value: HeaderValue::from_bytes(text.as_bytes())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        }
    }

    /// Validates an id received from outside. `None` when it is empty, longer than
    /// [`MAX_CORRELATION_ID_LEN`], or has a character outside the accepted set.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        if !is_valid(text.as_bytes()) {
            return None;
        }
        HeaderValue::from_str(text)
            .ok()
            .map(|value| CorrelationId { value })
    }

    /// Validates an id received in a header, keeping the header's bytes without a copy.
    #[must_use]
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        is_valid(value.as_bytes()).then(|| CorrelationId {
            value: value.clone(),
        })
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only validated ASCII gets in, so this never falls back.
        self.value.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    #[must_use]
    pub fn as_header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// Whether the id is a UUID in canonical hyphenated form, as Microsoft Graph expects
    /// of `client-request-id`.
    #[must_use]
    pub fn is_uuid(&self) -> bool {
        let b = self.value.as_bytes();
        b.len() == 36
            && b.iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_hexdigit(),
            })
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CorrelationId")
            .field(&self.as_str())
            .finish()
    }
}

fn is_valid(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_CORRELATION_ID_LEN
        && bytes.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'/' | b'+' | b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn new_ids_are_uuid_v7_and_ordered() {
        let a = CorrelationId::new();
        let b = CorrelationId::new();
        let parsed = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert!(a.is_uuid());
        assert!(a.as_str() <= b.as_str(), "v7 ids sort by time");
    }

    #[test]
    fn hostile_ids_are_refused() {
        for bad in [
            "",
            " ",
            "a b",
            "a\r\nx-injected: 1",
            "é",
            "a\0",
            "<x>",
            "\"q\"",
        ] {
            assert!(CorrelationId::parse(bad).is_none(), "accepted {bad:?}");
        }
        assert!(CorrelationId::parse(&"a".repeat(MAX_CORRELATION_ID_LEN)).is_some());
        assert!(CorrelationId::parse(&"a".repeat(MAX_CORRELATION_ID_LEN + 1)).is_none());
    }

    #[test]
    fn uuid_detection() {
        assert!(
            CorrelationId::parse("0190a6b2-7c4e-7d3a-9f1e-2b3c4d5e6f70")
                .unwrap()
                .is_uuid()
        );
        assert!(!CorrelationId::parse("order-1234").unwrap().is_uuid());
        assert!(
            !CorrelationId::parse("0190a6b2x7c4e-7d3a-9f1e-2b3c4d5e6f70")
                .unwrap()
                .is_uuid()
        );
    }

    proptest! {
        #[test]
        fn accepted_ids_are_safe_and_unchanged(s in ".{0,300}") {
            if let Some(id) = CorrelationId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(id.as_str().len() <= MAX_CORRELATION_ID_LEN);
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_graphic()));
            }
        }

        #[test]
        fn header_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes)
                && let Some(id) = CorrelationId::from_header(&value)
            {
                prop_assert_eq!(id.as_str().as_bytes(), &bytes[..]);
            }
        }
    }
}
